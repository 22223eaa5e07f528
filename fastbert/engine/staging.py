"""Host-to-GPU uploads through reused pinned buffers.

An upload from pageable memory makes the host wait for the copy; one from pinned memory is queued and
returns at once. Allocating pinned memory per call costs a driver call (cudaHostAlloc, or the caching
host allocator's event bookkeeping) on every forward, so each device keeps a small ring of pinned buffers
that grow to the largest upload seen and are reused: in steady state an upload allocates no pinned memory
and never waits.

A buffer may be refilled only once the GPU has finished copying out of it: each upload records an event
after its copy, and a buffer whose event has not completed is skipped. When every buffer of the ring is
still in flight (more uploads queued than the ring holds), the oldest one's copy is waited for.
"""

import threading

import torch

# Uploads in flight per device before one waits: a forward makes at most 5 (ids, positions, types, token
# indices, offsets), so the host can queue about three forwards ahead of the GPU (encode's pipelining).
RING_SIZE = 16


class _Slot:
    def __init__(self, buffer):
        self.buffer = buffer  # uint8 [capacity], pinned on a GPU machine
        self.event = None  # recorded after the last copy out of buffer; None: never used


class Staging:
    """upload(values, device, dtype, out=None) -> a device tensor (`out`, or a new one) holding `values` (a
    CPU tensor or a list of ints), copied asynchronously from a reused host buffer.

    pin_memory and new_event are parameters so that the reuse rule can be tested without a GPU."""

    def __init__(self, pin_memory=True, new_event=None, ring_size=RING_SIZE):
        self.pin_memory = pin_memory
        self.new_event = new_event or (lambda: torch.cuda.Event())
        self.ring_size = ring_size
        self.slots = []
        self.allocations = 0  # host buffers allocated so far (tests read it)
        self._next = 0
        self._lock = threading.Lock()  # encode() may upload from a worker thread while the main thread runs

    def upload(self, values, device, dtype=None, out=None):
        host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
        host = host.contiguous()
        nbytes = host.numel() * host.element_size()
        with self._lock:
            slot = self._free_slot(nbytes)
            staged = slot.buffer[:nbytes].view(host.dtype).view(host.shape)
            staged.copy_(host)
            if out is None:
                out = torch.empty(host.shape, dtype=host.dtype, device=device)
            out.copy_(staged, non_blocking=True)
            slot.event = self.new_event()
            slot.event.record()
        return out

    def _free_slot(self, nbytes):
        """A buffer of at least nbytes that no queued copy still reads: an idle one if any, else a new
        one while the ring has room, else the oldest, after waiting for its copy."""
        for _ in range(len(self.slots)):
            slot = self.slots[self._next]
            self._next = (self._next + 1) % len(self.slots)
            if slot.event is None or slot.event.query():
                if slot.buffer.numel() < nbytes:
                    slot.buffer = self._allocate(nbytes)
                return slot
        if len(self.slots) < self.ring_size:
            slot = _Slot(self._allocate(nbytes))
            self.slots.append(slot)
            return slot
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        slot.event.synchronize()  # only when more than ring_size uploads are in flight at once
        if slot.buffer.numel() < nbytes:
            slot.buffer = self._allocate(nbytes)
        return slot

    def _allocate(self, nbytes):
        self.allocations += 1
        # Powers of two from 4 KB: a buffer outgrown by a longer batch is replaced O(log) times, ever.
        capacity = max(4096, 1 << max(nbytes - 1, 0).bit_length())
        return torch.empty(capacity, dtype=torch.uint8, pin_memory=self.pin_memory)


_STAGING = {}
_STAGING_LOCK = threading.Lock()


def upload(values, device, dtype=None, out=None):
    """values (a CPU tensor, or a list of ints with `dtype`) as a new tensor on the CUDA `device` (or copied
    into `out` there), queued without waiting and without allocating pinned memory in steady state (one
    ring per device)."""
    device = torch.device(device)
    with _STAGING_LOCK:
        staging = _STAGING.get(device)
        if staging is None:
            staging = _STAGING[device] = Staging()
    with torch.cuda.device(device):  # the events belong to the stream the copy is queued on
        return staging.upload(values, device, dtype, out)
