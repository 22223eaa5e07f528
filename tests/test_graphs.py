"""CUDA-graph replay gives the same results as running the kernels directly (GPU only)."""

import pytest
import torch

from fastbert import FastBertModel
from tests.bert_factory import random_batch, random_bert


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
    # Same (batch, seq_len, tokens, longest) but different boundaries and ids: one graph serves all.
    batches = [random_batch(211, lengths, seq_len=20, seed=seed)
               for seed, lengths in enumerate([[20, 10, 5], [15, 15, 5], [20, 5, 10], [20, 12, 3]])]
    for ids, mask, types in batches:
        ids, mask, types = ids.cuda(), mask.cuda(), types.cuda()
        ours = graphed(ids, mask, types, output_hidden_states=True)
        reference = eager(ids, mask, types, output_hidden_states=True)
        torch.testing.assert_close(ours.last_hidden_state, reference.last_hidden_state, atol=0, rtol=0)
        torch.testing.assert_close(ours.pooler_output, reference.pooler_output, atol=0, rtol=0)
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
