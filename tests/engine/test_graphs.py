"""CUDA-graph replay gives the same results as running the kernels directly (GPU only)."""

import pytest
import torch

from fastbert import FastBertModel
from tests.bert_factory import random_batch, random_bert
from tests.engine.helpers import EagerReplay
from tests.tolerances import GRAPH_POOLER_ATOL_HALF, GRAPH_REPLAY


@pytest.mark.gpu
def test_graph_replay_matches_eager_for_new_batches_of_a_captured_shape(tmp_path):
    random_bert(tmp_path, num_hidden_layers=2, hidden_size=128, num_attention_heads=2)
    # One GEMM for both models: with gemm="auto" each model times Triton against cuBLAS on its own, and
    # the two may pick differently, which no bitwise comparison survives.
    graphed = FastBertModel.from_pretrained(tmp_path, dtype=torch.float16, device="cuda", backend="triton",
                                            gemm="triton")
    eager = FastBertModel.from_pretrained(tmp_path, dtype=torch.float16, device="cuda", backend="triton",
                                          cuda_graphs=False, gemm="triton")
    assert graphed._graphs is not None and eager._graphs is None
    # Different boundaries, ids, token counts and batch sizes within one bucket (tokens <= 40, longest
    # <= 32, sequences <= 8): one graph serves all, the filler tokens changing nothing.
    batches = [random_batch(211, lengths, seq_len=20, seed=seed) for seed, lengths in enumerate(
        [[20, 10, 5], [20, 15, 5], [20, 5, 10], [20, 12, 3], [20, 10, 4], [20, 19], [17, 9, 9, 3, 2]])]
    for ids, mask, types in batches:
        ids, mask, types = ids.cuda(), mask.cuda(), types.cuda()
        ours = graphed(ids, mask, types, output_hidden_states=True)
        reference = eager(ids, mask, types, output_hidden_states=True)
        torch.testing.assert_close(ours.last_hidden_state, reference.last_hidden_state, atol=0, rtol=0)
        # The pooler is one cuBLAS GEMM over the bucket's sequences, whose algorithm may differ by batch size.
        torch.testing.assert_close(ours.pooler_output, reference.pooler_output, atol=GRAPH_POOLER_ATOL_HALF, rtol=0)
        for a, b in zip(ours.hidden_states, reference.hidden_states):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert len(graphed._graphs.graphs) == 1 and not graphed._graphs.disabled
    # Results are copies: a later replay does not overwrite what an earlier call returned.
    first = graphed(*(t.cuda() for t in batches[0])).last_hidden_state
    kept = first.clone()
    graphed(*(t.cuda() for t in batches[1]))
    assert torch.equal(first, kept)


def test_graphs_need_cuda(tmp_path):
    random_bert(tmp_path)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        FastBertModel.from_pretrained(tmp_path, device="cpu", cuda_graphs=True)


def test_graph_shapes_bound_the_filler():
    from fastbert.engine.graphs import GraphShape
    from fastbert.engine.packing import Packing

    for lengths in ([1], [5, 3], [128] * 32, [100, 7, 64, 33], [300, 1, 1], list(range(1, 40))):
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        packing = Packing(len(lengths), max(lengths), None, offsets, max(lengths), torch.device("cpu"))
        shape = GraphShape.of(packing)
        bounds = shape.cu_seqlens(offsets)
        assert len(bounds) == shape.batch + 1 and bounds[: len(offsets)] == offsets and bounds[-1] == shape.tokens
        assert all(0 <= b - a <= shape.longest for a, b in zip(bounds, bounds[1:]))
        assert shape.tokens - offsets[-1] <= max(0.25 * offsets[-1], 16) and shape.longest >= max(lengths)


def test_bucketed_replay_matches_eager_for_batches_of_every_shape(tmp_path):
    """Batches of different sizes, lengths and padding share graphs and give the eager results (on CPU
    through the interpreter, with the replay emulated)."""
    from fastbert.engine.graphs import GraphCache

    random_bert(tmp_path, num_hidden_layers=2, hidden_size=64, num_attention_heads=2)
    model = FastBertModel.from_pretrained(tmp_path, device="cpu", backend="triton")
    runner = EagerReplay()
    graphs = GraphCache(model._encode_packed, model._encode_tokens, model.device, runner=runner)
    shapes = [[9, 4, 7], [8, 8, 2], [9, 9, 1], [3, 9], [9, 5, 6, 1], [9, 2, 2], [8, 8, 8]]
    for seed, lengths in enumerate(shapes + shapes):
        ids, mask, types = random_batch(211, lengths, seq_len=max(lengths), seed=seed)
        model._graphs = None
        expected = model(ids, mask, types, output_hidden_states=True)
        model._graphs = graphs
        ours = model(ids, mask, types, output_hidden_states=True)
        torch.testing.assert_close(ours.last_hidden_state, expected.last_hidden_state, **GRAPH_REPLAY)
        torch.testing.assert_close(ours.pooler_output, expected.pooler_output, **GRAPH_REPLAY)
        for a, b in zip(ours.hidden_states, expected.hidden_states, strict=True):
            torch.testing.assert_close(a, b, **GRAPH_REPLAY)
    # Seven batch shapes, two passes: a few buckets, each captured once and replayed from then on.
    assert 1 <= runner.captures == len(graphs.graphs) <= 3
    # Results are copies: a later replay does not overwrite what an earlier call returned.
    kept = ours.last_hidden_state.clone()
    model(*random_batch(211, shapes[-1], seq_len=8, seed=99))
    assert torch.equal(ours.last_hidden_state, kept)
