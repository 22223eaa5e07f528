"""`fastbert encode` on files: record readers, row writers, the partial output and its progress record,
and the run that commits one chunk at a time."""
