"""TritonOps with the #17 options: a gated linear (glu=True), Linear and LayerNorm without bias, embeddings
without a position table, each through to its launcher, against plain torch."""

import types

import pytest
import torch

from fastbert.checkpoint.encoder_weights import EmbeddingWeights, Linear, Norm
from tests.kernels.references import embeddings_ref, layer_norm_ref, linear_glu_ref, linear_ref
from tests.tolerances import assert_matches_reference


@pytest.fixture
def ops(device):
    from fastbert.engine.triton_ops import TritonOps

    return TritonOps(device, types.SimpleNamespace(head_dim=64), gemm="triton")


@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_glu_linear(activation, has_bias, ops, device, backend):
    x, weight = torch.randn(7, 48, device=device), torch.randn(2 * 33, 48, device=device) / 7
    bias = torch.randn(2 * 33, device=device) if has_bias else None
    out = ops.linear(x, Linear(weight, bias), activation, glu=True)
    assert out.shape == (7, 33)
    assert_matches_reference(out, linear_glu_ref, x, weight, bias, activation, backend=backend)


def test_glu_linear_refuses_a_residual(ops, device):
    x, weight = torch.randn(7, 48, device=device), torch.randn(2 * 33, 48, device=device)
    with pytest.raises(ValueError, match="residual must be None with glu=True"):
        ops.linear(x, Linear(weight, None), "gelu", residual=torch.zeros(7, 33, device=device), glu=True)


def test_linear_without_bias(ops, device, backend):
    x, weight, residual = torch.randn(7, 48, device=device), torch.randn(40, 48, device=device) / 7, None
    out = ops.linear(x, Linear(weight, None), "gelu")
    assert_matches_reference(out, linear_ref, x, weight, None, "gelu", residual=residual, backend=backend)


@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_without_bias(with_residual, ops, device, backend):
    x, weight = torch.randn(7, 96, device=device), 1 + 0.1 * torch.randn(96, device=device)
    residual = torch.randn(7, 96, device=device) if with_residual else None
    out = ops.layer_norm(x, Norm(weight, None), 1e-5, residual=residual)
    assert_matches_reference(out, layer_norm_ref, x, weight, None, 1e-5, residual, backend=backend)


@pytest.mark.parametrize("ln_bias", [False, True])
def test_embeddings_without_positions(ln_bias, ops, device, backend):
    """ModernBERT: no position table (rotary), no token types, LayerNorm without bias; position_ids None."""
    word, weight = torch.randn(50, 64, device=device), 1 + 0.1 * torch.randn(64, device=device)
    bias = 0.1 * torch.randn(64, device=device) if ln_bias else None
    table = EmbeddingWeights(word=word, position=None, token_type=None, norm=Norm(weight, bias), project=None)
    input_ids = torch.tensor([0, 49, 3, 7, 7], device=device)
    token_type_ids = torch.zeros_like(input_ids)
    out = ops.embeddings(input_ids, None, token_type_ids, table, 1e-5)
    args = (input_ids, None, None, word, None, None, weight, bias, 1e-5)
    assert_matches_reference(out, embeddings_ref, *args, backend=backend)
