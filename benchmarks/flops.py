"""Explicit work models: FLOPs and bytes per call, and the device peaks they are compared with.

FLOPs count 2 per multiply-accumulate of the matrix products only. Excluded everywhere (each is at most a
few percent of a BERT layer and none runs on tensor cores): softmax, GELU, bias and residual adds, the
attention scale, LayerNorm, embeddings, pooling and the optional pooler. Throughput figures computed from
these models count only *useful* work: for a padded batch, the real tokens, never the padding.

Bytes are the minimum HBM traffic a perfect kernel must move (each input read once, each output written
once); achieved GB/s against the device's HBM peak is then an honest upper-bound fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncoderShape:
    """The dimensions of a BERT encoder that determine its work."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    glu: bool = False  # ModernBERT's GeGLU: the FFN's first GEMM computes 2I outputs (input and gate)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


BERT_BASE = EncoderShape(layers=12, hidden=768, heads=12, intermediate=3072)
MINILM_L6 = EncoderShape(layers=6, hidden=384, heads=12, intermediate=1536)
MODERNBERT_BASE = EncoderShape(layers=22, hidden=768, heads=12, intermediate=1152, glu=True)


def gemm_flops(m: int, n: int, k: int) -> int:
    """out[m, n] = x[m, k] @ w[n, k]^T: m*n*k multiply-accumulates."""
    return 2 * m * n * k


def gemm_bytes(m: int, n: int, k: int, elem_bytes: int, bias: bool = False) -> int:
    """Read x and w once, write out once (plus the bias vector)."""
    return elem_bytes * (m * k + n * k + m * n + (n if bias else 0))


def attention_flops(seq_lens: Sequence[int], heads: int, head_dim: int) -> int:
    """Bidirectional attention within each sequence: S = Q K^T and O = P V, each 2*L*L*head_dim per head.

    Quadratic in each sequence's *own* length (a padding-free kernel never multiplies across sequences or
    over padding)."""
    return sum(4 * length * length * heads * head_dim for length in seq_lens)


def attention_bytes(tokens: int, heads: int, head_dim: int, elem_bytes: int) -> int:
    """Read q, k, v once and write the output once (the flash-attention minimum)."""
    return 4 * tokens * heads * head_dim * elem_bytes


def encoder_flops_breakdown(shape: EncoderShape, seq_lens: Sequence[int]) -> dict[str, int]:
    """Per-forward FLOPs of each matrix product of the encoder, summed over layers.

    T = sum(seq_lens) real tokens, H = hidden, I = intermediate, per layer:
    qkv 2*T*H*3H, attention sum_i 4*L_i^2*H, output projection 2*T*H*H, FFN 2*T*H*I twice (GeGLU: its first
    GEMM 2*T*H*2I). Attention counts every key of every layer, windowed layers included (ModernBERT's
    sliding layers skip keys beyond their window, so their useful work is smaller on long sequences)."""
    tokens = sum(seq_lens)
    h, i, layers = shape.hidden, shape.intermediate, shape.layers
    return {
        "qkv": layers * gemm_flops(tokens, 3 * h, h),
        "attention": layers * attention_flops(seq_lens, shape.heads, shape.head_dim),
        "out_proj": layers * gemm_flops(tokens, h, h),
        "ffn": layers * (gemm_flops(tokens, 2 * i if shape.glu else i, h) + gemm_flops(tokens, h, i)),
    }


def encoder_flops(shape: EncoderShape, seq_lens: Sequence[int]) -> int:
    """Total useful FLOPs of one encoder forward over the given real sequence lengths."""
    return sum(encoder_flops_breakdown(shape, seq_lens).values())


def layer_norm_bytes(rows: int, hidden: int, elem_bytes: int, residual: bool = False) -> int:
    """Read x (and the residual), write out, read weight and bias once."""
    return elem_bytes * (rows * hidden * (3 if residual else 2) + 2 * hidden)


def embeddings_bytes(tokens: int, hidden: int, elem_bytes: int, index_bytes: int = 8,
                     token_types: bool = True) -> int:
    """Gather-add-LayerNorm: per token read its ids (input, position, optional type) and one row of each
    table, write one output row; plus the LayerNorm weight and bias. Table rows are counted once per token
    (position and type rows are mostly cache hits, so this slightly overstates the HBM traffic)."""
    tables = 3 if token_types else 2
    per_token = index_bytes * tables + elem_bytes * hidden * (tables + 1)
    return tokens * per_token + 2 * hidden * elem_bytes


@dataclass(frozen=True)
class DevicePeak:
    """Public datasheet peaks: dense tensor-core TFLOP/s per dtype (no sparsity) and HBM GB/s."""

    name: str
    fp16_tflops: float | None
    bf16_tflops: float | None
    fp32_tflops: float | None  # plain fp32 (CUDA cores): what fp32 matmuls get with TF32 disabled
    hbm_gbps: float | None


# Keyed by a case-insensitive substring of torch.cuda.get_device_name(); the first match wins, so the
# more specific names come first (e.g. "H100 80GB HBM3" is the SXM part, matched by the plain "H100").
# Figures: NVIDIA H100/H200/A100 datasheets (dense, i.e. half the "with sparsity" numbers).
DEVICE_PEAKS: list[tuple[str, DevicePeak]] = [
    ("H200 NVL", DevicePeak("H200 NVL", 835.5, 835.5, 60.0, 4800.0)),
    ("H200", DevicePeak("H200 SXM", 989.4, 989.4, 66.9, 4800.0)),
    ("H100 NVL", DevicePeak("H100 NVL", 835.5, 835.5, 60.0, 3900.0)),
    ("H100 PCIe", DevicePeak("H100 PCIe", 756.5, 756.5, 51.2, 2000.0)),
    ("H100", DevicePeak("H100 SXM", 989.4, 989.4, 66.9, 3350.0)),
    ("A100-SXM4-80GB", DevicePeak("A100 SXM4 80GB", 312.0, 312.0, 19.5, 2039.0)),
    ("A100 80GB PCIe", DevicePeak("A100 PCIe 80GB", 312.0, 312.0, 19.5, 1935.0)),
    ("A100", DevicePeak("A100 40GB", 312.0, 312.0, 19.5, 1555.0)),
]
UNKNOWN_PEAK = DevicePeak("unknown", None, None, None, None)


def device_peak(device_name: str | None) -> DevicePeak:
    """The peak entry for a device name, or UNKNOWN_PEAK (all None: % of peak is then not reported)."""
    lowered = (device_name or "").lower()
    for key, peak in DEVICE_PEAKS:
        if key.lower() in lowered:
            return peak
    return UNKNOWN_PEAK


def _dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).replace("torch.", "")


def peak_tflops(device_name: str | None, dtype: torch.dtype | str) -> float | None:
    peak = device_peak(device_name)
    return {"float16": peak.fp16_tflops, "bfloat16": peak.bf16_tflops,
            "float32": peak.fp32_tflops}.get(_dtype_name(dtype))


def peak_gbps(device_name: str | None) -> float | None:
    return device_peak(device_name).hbm_gbps


def elem_bytes(dtype: torch.dtype | str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}[_dtype_name(dtype)]
