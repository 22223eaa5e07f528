"""Plain-PyTorch references for every kernel, in one place. upcast=True computes in float64: the exact
answer, for practical purposes, for the same rounded inputs, whatever dtype the kernel ran in.
upcast=False computes in the inputs' own dtype: PyTorch's result, whose error is the yardstick of
tests/tolerances.py."""

import math

import torch
import torch.nn.functional as F


def activation_ref(x, activation):
    if activation is None:
        return x
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "relu":
        return F.relu(x)
    if activation == "silu":
        return F.silu(x)
    raise ValueError(activation)


def linear_ref(x, weight, bias=None, activation=None, upcast=True, residual=None):
    """activation(x @ weight.T + bias) + residual (the residual is added after the activation)."""
    if upcast:
        x, weight = x.double(), weight.double()
        bias = bias.double() if bias is not None else None
        residual = residual.double() if residual is not None else None
    out = activation_ref(F.linear(x, weight, bias), activation)
    return out + residual if residual is not None else out


def linear_glu_ref(x, weight, bias=None, activation=None, upcast=True):
    """transformers' gated projection: input, gate = F.linear(x, weight, bias).chunk(2, -1); act(input) * gate."""
    if upcast:
        x, weight = x.double(), weight.double()
        bias = bias.double() if bias is not None else None
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return activation_ref(value, activation) * gate


def attention_ref(q, k, v, cu_seqlens, scale=None, upcast=True):
    """q, k, v [T, heads, head_dim]; cu_seqlens [B+1]. Bidirectional attention within each sequence."""
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # [heads, L, D]
        scores = (qs @ ks.transpose(-1, -2)) * scale
        out[start:end] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


def layer_norm_ref(x, weight, bias, eps, residual=None, upcast=True):
    if upcast:
        x, weight = x.double(), weight.double()
        bias = bias.double() if bias is not None else None
        residual = residual.double() if residual is not None else None
    if residual is not None:
        x = x + residual
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def embeddings_ref(input_ids, position_ids, token_type_ids, word, position, token_type, ln_weight, ln_bias, eps,
                   upcast=True):
    """input_ids, position_ids, token_type_ids [T] (token_type_ids may be None: type 0). position may be None
    (no position term), ln_bias may be None."""
    if upcast:
        word, ln_weight = word.double(), ln_weight.double()
        position, token_type, ln_bias = (t.double() if t is not None else None for t in (position, token_type, ln_bias))
    summed = word[input_ids.long()]
    if position is not None:
        summed = summed + position[position_ids.long()]
    if token_type is not None:
        types = token_type_ids.long() if token_type_ids is not None else torch.zeros_like(input_ids).long()
        summed = summed + token_type[types]
    return F.layer_norm(summed, (summed.shape[-1],), ln_weight, ln_bias, eps)
