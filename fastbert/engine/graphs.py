"""CUDA-graph replay of the packed encoder, shared by batches of similar shape.

A Triton launch costs the host tens of microseconds, and a BERT-base forward is ~85 launches: for
small and medium batches the GPU would wait on Python. Replaying a captured graph costs one launch.

A graph fixes every tensor shape and kernel grid, so it is captured for a *bucket* of batches: the
packed token count rounded up to a quarter octave, the longest sequence to a power of two, and the
number of sequences to a quarter octave too (GraphShape.of). A batch smaller than its bucket is padded
with filler tokens, grouped into filler sequences no longer than the longest: they are valid ids that
attend only among themselves, and their outputs are dropped. Sequence boundaries are read by the
kernels from a device buffer refilled before each replay, so one graph serves every batch of its
bucket: the sentence batches of an encode() call, whose shapes all differ, replay a handful of graphs.

A bucket is captured the second time it is seen, after one eager warm-up run of the exact padded batch
the graph will hold, so that Triton's autotuners and fastbert's GEMM picker have decided every shape at
the token count the graph serves (neither may time anything during capture); the least recently used
graphs are dropped beyond `max_graphs`. Per replay the host copies the batch into the graph's inputs and
uploads its sequence offsets through a reused pinned buffer (fastbert/staging.py): no allocation of
pinned memory and no wait for the GPU."""

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch

from . import staging
from .packing import Packing


def _quarter_octave(n, minimum):
    """n rounded up to the next of minimum, ..., 2^k, 1.25 * 2^k, 1.5 * 2^k, 1.75 * 2^k, 2^(k+1), ...:
    at most 25% of a bucket is filler."""
    n = max(n, minimum)
    step = max(1, 1 << max(n.bit_length() - 3, 0))
    return math.ceil(n / step) * step


@dataclass(frozen=True)
class GraphShape:
    """The bucket a packed batch runs in: sequences (real and filler), tokens, longest sequence."""

    batch: int
    tokens: int
    longest: int

    @classmethod
    def of(cls, packing):
        longest = 1 << max(packing.max_seqlen - 1, 15).bit_length()  # a power of two, at least 16
        tokens = _quarter_octave(packing.num_tokens, 16)
        fillers = math.ceil((tokens - packing.num_tokens) / longest)
        return cls(_quarter_octave(packing.batch_size + fillers, 8), tokens, longest)

    def cu_seqlens(self, offsets):
        """The real sequences' offsets, then filler sequences of at most `longest` tokens up to `tokens`,
        then empty sequences up to `batch`: [batch + 1] host ints."""
        bounds = list(offsets)
        while bounds[-1] < self.tokens:
            bounds.append(min(bounds[-1] + self.longest, self.tokens))
        bounds += [self.tokens] * (self.batch + 1 - len(bounds))
        return bounds


class CudaGraphs:
    """Captures with torch.cuda.graph into one memory pool shared by all graphs of a model (they never
    run concurrently). Tests on machines without a GPU substitute a runner that replays eagerly."""

    def __init__(self, device):
        self.device = device
        self.pool = None

    def warm_up(self, fn):
        """One eager run of fn on a side stream, as CUDA graph capture requires. Nothing is being captured,
        so Triton's autotuners and the GEMM picker (which time, and so synchronise) decide here."""
        with torch.cuda.device(self.device):  # the model's GPU, whichever is current
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, fn):
        """(graph with .replay(), fn's outputs, which every replay rewrites in place); fn was warmed up."""
        with torch.cuda.device(self.device):
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = fn()
        return graph, outputs


class _Captured:
    def __init__(self, graph, inputs, cu_seqlens, outputs):
        self.graph, self.inputs, self.cu_seqlens, self.outputs = graph, inputs, cu_seqlens, outputs


class GraphCache:
    """encode_packed(packing, ids, positions, types, output_hidden_states) with graph replay.

    encode_packed: the eager path, unpacked results ([B, S, H] hidden states, [B, H] pooled).
    encode_tokens: the same computation up to packed results ([T, H], [B, H]): what a graph captures."""

    def __init__(self, encode_packed, encode_tokens, device, max_graphs=32, runner=None):
        self.encode_packed = encode_packed
        self.encode_tokens = encode_tokens
        self.device = device
        self.max_graphs = max_graphs
        self.runner = runner if runner is not None else CudaGraphs(device)
        self.graphs = OrderedDict()
        self.seen = OrderedDict()  # buckets run once, bounded like the graphs themselves
        self.disabled = False

    def __call__(self, packing, ids, positions, types, output_hidden_states, unpack=True):
        """(last hidden state, pooler output, hidden states): [B, S, H] like encode_packed, or with
        unpack=False packed [T, H] like encode_tokens (what pooling on packed tokens reads)."""
        shape = GraphShape.of(packing)
        key = (shape, output_hidden_states)
        captured = self.graphs.get(key)
        if captured is None:
            if self.disabled or key not in self.seen:
                self.seen[key] = None
                if len(self.seen) > 64 * self.max_graphs:
                    self.seen.popitem(last=False)
                return self._eager(unpack, packing, ids, positions, types, output_hidden_states)
            try:
                captured = self._capture(key, shape, packing, ids, positions, types)
            except RuntimeError as error:
                # A capture can fail where the driver or a library refuses it; running without graphs
                # is slower but exactly as correct, so fall back rather than fail the user's call.
                warnings.warn(f"fastbert: CUDA graph capture failed, running without graphs: {error}", stacklevel=3)
                self.disabled = True
                return self._eager(unpack, packing, ids, positions, types, output_hidden_states)
        self.graphs.move_to_end(key)
        self._load(captured, shape, packing, ids, positions, types)
        captured.graph.replay()
        # Results are copied out of the graph's buffers, which the next replay overwrites.
        tokens, batch = packing.num_tokens, packing.batch_size
        hidden, pooled, states = captured.outputs

        def copy_out(packed):
            return packing.unpack(packed[:tokens], copy=True) if unpack else packed[:tokens].clone()

        # Packed callers (forward_tokens: sentence pooling) read the hidden states alone.
        return (copy_out(hidden), pooled[:batch].clone() if pooled is not None and unpack else None,
                tuple(copy_out(s) for s in states) if states is not None else None)

    def _eager(self, unpack, *args):
        return self.encode_packed(*args) if unpack else self.encode_tokens(*args)

    @staticmethod
    def _load(captured, shape, packing, ids, positions, types):
        """Refill the graph's inputs: the real tokens first; the filler tokens behind them keep whatever
        ids, positions and types earlier batches left there, all valid because all were validated."""
        tokens = packing.num_tokens
        for buffer, value in zip(captured.inputs, (ids, positions, types)):
            buffer[:tokens].copy_(value)
        bounds = shape.cu_seqlens(packing.offsets)
        if captured.cu_seqlens.device.type == "cuda":
            # From a reused pinned buffer: queued without waiting, and no pinned allocation per replay.
            staging.upload(bounds, captured.cu_seqlens.device, torch.int32, out=captured.cu_seqlens)
        else:
            captured.cu_seqlens.copy_(torch.tensor(bounds, dtype=torch.int32))

    def _capture(self, key, shape, packing, ids, positions, types):
        inputs = tuple(torch.zeros(shape.tokens, dtype=t.dtype, device=t.device) for t in (ids, positions, types))
        cu_seqlens = torch.zeros(shape.batch + 1, dtype=torch.int32, device=packing.device)
        bounds = shape.cu_seqlens(packing.offsets)
        static = Packing(shape.batch, shape.longest, None, bounds, shape.longest, packing.device, cu_seqlens)
        captured = _Captured(None, inputs, cu_seqlens, None)
        self._load(captured, shape, packing, ids, positions, types)
        run = lambda: self.encode_tokens(static, *inputs, key[1])  # noqa: E731
        # The warm-up runs the exact batch that is captured, eagerly: every GEMM shape is decided at the
        # token count the graph will serve before capture starts (the picker refuses to decide inside).
        self.runner.warm_up(run)
        captured.graph, captured.outputs = self.runner.capture(run)
        self.graphs[key] = captured
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return captured
