"""#17's attention flags (position_bias, window, rotary) against a plain-torch reference, under the
tolerance rule of tests/tolerances.py, on NaN-surrounded ragged inputs."""

import pytest
import torch

from fastbert.kernels.attention import attention
from tests.tolerances import assert_close, nan_padded


def _rotate(x, cos, sin):
    n = x.shape[0]
    c = torch.cat([cos[:n], cos[:n]], -1)[:, None].to(x.dtype)
    s = torch.cat([sin[:n], sin[:n]], -1)[:, None].to(x.dtype)
    x1, x2 = x.chunk(2, -1)
    return x * c + torch.cat([-x2, x1], -1) * s


def flags_ref(q, k, v, cu_seqlens, window=None, position_bias=None, rotary=None, upcast=True):
    """Per sequence: rotary first (in the compute dtype), scores * scale + bias gather, window mask."""
    dtype = torch.float64 if upcast else q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if rotary is not None and not upcast:
        # The kernel rotates in fp32: PyTorch's own result does too, then rounds back.
        q32, k32 = q.float(), k.float()
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    scale = q.shape[-1] ** -0.5
    for a, e in zip(bounds[:-1], bounds[1:]):
        n = e - a
        qs, ks = q[a:e], k[a:e]
        if rotary is not None:
            cos, sin = (t.to(torch.float64 if upcast else torch.float32) for t in rotary)
            if upcast:
                qs, ks = _rotate(qs, cos, sin), _rotate(ks, cos, sin)
            else:
                qs, ks = _rotate(q32[a:e], cos, sin).to(dtype), _rotate(k32[a:e], cos, sin).to(dtype)
        scores = torch.einsum("ihd,jhd->hij", qs, ks) * scale
        d = torch.arange(n)[None] - torch.arange(n)[:, None]
        if position_bias is not None:
            r = (position_bias.shape[1] - 1) // 2
            scores = scores + position_bias.to(dtype)[:, d.clamp(-r, r) + r]
        if window is not None:
            scores = scores.masked_fill(d.abs() > window, float("-inf"))
        out[a:e] = torch.einsum("hij,jhd->ihd", scores.float().softmax(-1).to(dtype) if not upcast
                                else scores.softmax(-1), v[a:e])
    return out


def _inputs(bounds, heads, head_dim, dtype, radius=8):
    torch.manual_seed(0)
    tokens = bounds[-1]
    q, k, v = nan_padded(torch.randn(tokens, 3, heads, head_dim).to(dtype)).unbind(1)
    cu = torch.tensor(bounds, dtype=torch.int32)
    bias = torch.randn(heads, 2 * radius + 1)
    positions = torch.arange(64)[:, None] * (10000.0 ** (-torch.arange(head_dim // 2) / (head_dim // 2)))[None]
    return q, k, v, cu, bias, (positions.cos().contiguous(), positions.sin().contiguous())


@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("window, use_bias, use_rotary", [
    (None, True, False), (0, False, False), (3, False, False), (100, False, False),
    (None, False, True), (3, False, True), (3, True, False),
])
def test_attention_flags(head_dim, window, use_bias, use_rotary, backend):
    q, k, v, cu, bias, rotary = _inputs([0, 5, 37, 40], 2, head_dim, torch.float32)
    kwargs = dict(window=window, position_bias=bias if use_bias else None, rotary=rotary if use_rotary else None)
    out = attention(q, k, v, cu, 32, **kwargs)
    assert_close(out, flags_ref(q, k, v, cu, **kwargs), torch.float32, backend,
                 torch_same_dtype=flags_ref(q, k, v, cu, upcast=False, **kwargs))


@pytest.mark.parametrize("change, error, match", [
    ({"window": True}, TypeError, "window must be None or a Python int"),
    ({"window": -1}, ValueError, "window must be >= 0"),
    ({"position_bias": torch.randn(2, 16)}, ValueError, "position_bias must be"),
    ({"position_bias": torch.randn(3, 17)}, ValueError, "position_bias must be"),
    ({"position_bias": torch.randn(2, 17).double()}, TypeError, "position_bias has dtype"),
    ({"rotary": [torch.randn(64, 16), torch.randn(64, 16)]}, TypeError, "rotary must be"),
    ({"rotary": (torch.randn(64, 8), torch.randn(64, 8))}, ValueError, "rotary cos must be"),
    ({"rotary": (torch.randn(4, 16), torch.randn(4, 16))}, ValueError, "rotary cos must be"),
])
def test_attention_flags_validation(change, error, match):
    q, k, v, cu, _, _ = _inputs([0, 5, 37, 40], 2, 32, torch.float32)
    with pytest.raises(error, match=match):
        attention(q, k, v, cu, 32, **change)
