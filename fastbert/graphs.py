"""CUDA-graph replay of the packed encoder.

A Triton launch costs the host tens of microseconds, and a BERT-base forward is ~85 launches: for
small and medium batches the GPU would wait on Python. Replaying a captured graph costs one launch.

A graph is valid for every batch with the same (batch, seq_len, tokens, longest sequence): those fix
every tensor shape and kernel grid, while the sequence boundaries themselves are read by the
kernels from device buffers that are refilled before each replay. A shape is captured the second
time it is seen (the first run also warms Triton's autotuner, which must not run during capture);
the least recently used graphs are dropped beyond `max_graphs`."""

import warnings
from collections import OrderedDict

import torch

from .packing import Packing


class _Captured:
    def __init__(self, graph, inputs, packing, outputs):
        self.graph, self.inputs, self.packing, self.outputs = graph, inputs, packing, outputs


class GraphCache:
    def __init__(self, encode_packed, device, max_graphs=16):
        self.encode_packed = encode_packed
        self.device = device
        self.max_graphs = max_graphs
        self.graphs = OrderedDict()
        self.seen = OrderedDict()  # shapes run once, bounded like the graphs themselves
        self.pool = None
        self.disabled = False

    def __call__(self, packing, ids, positions, types, output_hidden_states):
        key = (packing.batch_size, packing.seq_len, packing.num_tokens, packing.max_seqlen, output_hidden_states)
        captured = self.graphs.get(key)
        if captured is None:
            if self.disabled or key not in self.seen:
                self.seen[key] = None
                if len(self.seen) > 64 * self.max_graphs:
                    self.seen.popitem(last=False)
                return self.encode_packed(packing, ids, positions, types, output_hidden_states)
            try:
                captured = self._capture(key, packing, ids, positions, types, output_hidden_states)
            except RuntimeError as error:
                # A capture can fail where the driver or a library refuses it; running without graphs
                # is slower but exactly as correct, so fall back rather than fail the user's call.
                warnings.warn(f"fastbert: CUDA graph capture failed, running without graphs: {error}", stacklevel=3)
                self.disabled = True
                return self.encode_packed(packing, ids, positions, types, output_hidden_states)
        self.graphs.move_to_end(key)
        static = captured.packing
        for buffer, value in zip(captured.inputs, (ids, positions, types)):
            buffer.copy_(value)
        static.token_indices.copy_(packing.token_indices)
        static.cu_seqlens.copy_(packing.cu_seqlens)
        captured.graph.replay()
        # The graphs share one memory pool, so results are copied out before another replay reuses it.
        last_hidden_state, pooled, states = captured.outputs
        return (last_hidden_state.clone(), pooled.clone() if pooled is not None else None,
                tuple(s.clone() for s in states) if states is not None else None)

    def _capture(self, key, packing, ids, positions, types, output_hidden_states):
        inputs = tuple(t.clone() for t in (ids, positions, types))
        static = Packing(packing.batch_size, packing.seq_len, packing.token_indices.clone(),
                         packing.cu_seqlens.clone(), list(packing.offsets), packing.max_seqlen)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        # Warm up on a side stream, as CUDA graph capture requires, then capture.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.encode_packed(static, *inputs, output_hidden_states)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.encode_packed(static, *inputs, output_hidden_states)
        captured = _Captured(graph, inputs, static, outputs)
        self.graphs[key] = captured
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return captured
