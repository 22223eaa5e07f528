"""Rotary position embedding tables (ModernBERT), built once at load.

For each layer type's theta: cos and sin of position * inv_freq, inv_freq[i] = 1 / theta ** (2i / head_dim),
in fp32 exactly as transformers' default rotary embedding computes them, as [max_position_embeddings,
head_dim // 2] tables (the rotate-half convention repeats the same half for both halves of a head)."""

import torch


def rotary_tables(config, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer type -> (cos, sin), each contiguous float32 [max_position_embeddings, head_dim // 2] on `device`."""
    dim = config.head_dim
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    tables = {}
    for layer_type, theta in config.rope_theta.items():
        inv_freq = 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = positions[:, None] * inv_freq[None, :]
        tables[layer_type] = (angles.cos().to(device).contiguous(), angles.sin().to(device).contiguous())
    return tables


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, heads, head_dim] rotated at per-token tables cos, sin [..., T, head_dim // 2] (in fp32,
    returned in x's dtype): x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), rotate_half(x) = cat(-x2, x1)."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    cos, sin = (torch.cat((t, t), dim=-1).unsqueeze(-2) for t in (cos, sin))
    return (x32 * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)
