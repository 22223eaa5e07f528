"""The four operations a padding-free BERT layer needs, in two interchangeable implementations.

`TritonOps` (triton_ops.py) launches fastbert's kernels (on CUDA, or on CPU tensors through Triton's
interpreter; on CUDA each GEMM shape runs on the faster of the Triton kernel and cuBLAS, see gemm.py);
`TorchOps` runs the same packed algorithm in plain PyTorch, for CPU users. The encoder in model.py
is written once against this interface, so both backends share one data path."""

import torch
import torch.nn.functional as F

from fastbert.checkpoint.activations import EPILOGUE_FUNCTIONS
from fastbert.checkpoint.rotary import rotate
from fastbert.defaults import GEMMS

from .gemm import torch_linear


class TorchOps:
    """Packed BERT operations in plain PyTorch: [T, H] tokens, sequences delimited by host offsets. Weights
    come as the pieces of fastbert.checkpoint.encoder_weights.EncoderWeights."""

    def embeddings(self, input_ids, position_ids, token_type_ids, embeddings, eps):
        summed = embeddings.word[input_ids]
        if embeddings.position is not None:  # None: rotary families rotate q and k instead
            summed = summed + embeddings.position[position_ids]
        if embeddings.token_type is not None:
            summed = summed + embeddings.token_type[token_type_ids]
        return self.layer_norm(summed, embeddings.norm, eps)

    def linear(self, x, linear, activation=None, residual=None, glu=False):
        if glu:  # GeGLU: act(x @ W_in) * (x @ W_gate), the two halves of one [2N, K] weight
            if residual is not None:
                raise ValueError("linear(glu=True) takes no residual")
            value, gate = F.linear(x, linear.weight, linear.bias).chunk(2, dim=-1)
            return EPILOGUE_FUNCTIONS[activation](value) * gate
        return torch_linear(x, linear.weight, linear.bias, activation, residual)

    def attention(self, q, k, v, packing, *, window=None, position_bias=None, rotary=None):
        # Attention alone runs on a [B, max_seqlen] grid, so that one batched SDPA call serves every
        # sequence; the GEMMs around it stay padding-free. scale=1.0: the softmax scale is folded into
        # the Q projection at load. rotary (ModernBERT) turns q and k at each token's index in its sequence;
        # window (ModernBERT's sliding layers) masks keys further than it; position_bias [heads, 2R+1]
        # (MPNet) becomes an additive float mask.
        batch, longest = packing.batch_size, packing.max_seqlen
        tokens, heads, head_dim = q.shape
        if rotary is not None:
            index = packing.padded_layout[0] % longest  # the column in the [B, max_seqlen] grid
            cos, sin = (table[index] for table in rotary)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        mask = None
        if window is not None:
            columns = torch.arange(longest, device=q.device)
            mask = (columns[:, None] - columns[None, :]).abs() <= window
        if position_bias is not None:
            bias = _bias_grid(position_bias, longest, q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        if packing.num_tokens == batch * longest:  # equal lengths: the packed tokens already form the grid
            grid = [t.reshape(batch, longest, heads, head_dim).transpose(1, 2) for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*grid, attn_mask=mask, scale=1.0)
            return out.transpose(1, 2).reshape(tokens, heads, head_dim)
        positions, key_mask = packing.padded_layout
        if mask is None:
            mask = key_mask
        elif mask.dtype == torch.bool:
            mask = mask & key_mask
        else:  # every row keeps a real key (itself): no row is all -inf, so no NaN
            mask = mask.masked_fill(~key_mask, float("-inf"))
        grid = []
        for t in (q, k, v):
            padded = t.new_zeros(batch * longest, heads, head_dim)
            padded.index_copy_(0, positions, t)
            grid.append(padded.view(batch, longest, heads, head_dim).transpose(1, 2))
        out = F.scaled_dot_product_attention(*grid, attn_mask=mask, scale=1.0)
        return out.transpose(1, 2).reshape(batch * longest, heads, head_dim)[positions]

    def layer_norm(self, x, norm, eps, residual=None):
        if residual is not None:
            x = x + residual
        # Statistics in fp32: BERT's eps of 1e-12 vanishes next to fp16 variances.
        bias = norm.bias.float() if norm.bias is not None else None
        return F.layer_norm(x.float(), (x.shape[-1],), norm.weight.float(), bias, eps).to(x.dtype)


def _bias_grid(table, length, dtype):
    """position_bias [heads, 2R+1] -> [1, heads, length, length]: query i, key j read column clamp(j - i) + R."""
    reach = (table.shape[1] - 1) // 2
    index = torch.arange(length, device=table.device)
    distance = (index[None, :] - index[:, None]).clamp_(-reach, reach) + reach
    return table[:, distance].to(dtype)[None]


def _triton_ops(device, config, gemm):
    # Imported here, not at the top: triton_ops imports fastbert.kernels, and so triton, a Linux-only
    # dependency; `import fastbert` and the torch backend work where triton is not installed.
    from .triton_ops import TritonOps

    return TritonOps(device, config, gemm)


# backend name -> the Ops it runs on (device, config.Config, gemm choice)
OPS_BY_BACKEND = {
    "torch": lambda device, config, gemm: TorchOps(),
    "triton": _triton_ops,
}


def make_ops(backend, device, config, gemm="auto"):
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    return OPS_BY_BACKEND[backend](device, config, gemm)
