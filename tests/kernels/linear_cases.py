"""Inputs and the output check shared by the tests of every GEMM kernel (kernels/linear.py and
kernels/linear_persistent.py), so both are held to exactly the same cases and tolerances."""

import math

import torch

from tests.kernels.references import linear_ref
from tests.tolerances import assert_matches_reference

ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu", "silu")
# The projections of BERT-base (QKV, attention output, FFN in and out) and MiniLM, with the epilogue each
# one uses.
BERT_SHAPES = [
    (2304, 768, None), (768, 768, None), (3072, 768, "gelu"), (768, 3072, None),
    (1152, 384, None), (384, 384, None), (1536, 384, "gelu"), (384, 1536, None),
]


def make_inputs(M, N, K, dtype, device, bias=True):
    """Weights scaled by 1/sqrt(K) keep outputs O(1), where GELU and ReLU are not trivially linear."""
    x = torch.randn(M, K, device=device).to(dtype)
    weight = (torch.randn(N, K, device=device) / math.sqrt(K)).to(dtype)
    b = torch.randn(N, device=device).to(dtype) if bias else None
    return x, weight, b


def check(out, x, weight, bias, activation, backend):
    """out against the float64 reference, within tests/tolerances.py's multiple of PyTorch's own error."""
    assert out.dtype == x.dtype and out.is_contiguous()
    assert_matches_reference(out, linear_ref, x, weight, bias, activation, backend=backend)
