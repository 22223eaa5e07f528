"""Many devices: a pool of worker processes (one per device) behind one queue, and Ray Data actors."""
