"""LayerNorm over the last dimension, with an optional fused residual add:

    out = (x + residual - mean) / sqrt(var + eps) * weight + bias

x, residual: [M, N] in fp32, fp16 or bf16, last stride 1, any row stride; weight, bias: [N] in the dtype of
x or in fp32, bias optional (None: LayerNorm(bias=False), no shift) (mixed-precision checkpoints keep LayerNorm parameters in fp32; the kernel upcasts them anyway).
out: [M, N], contiguous, dtype of x. 1 <= N <= 8192 (BERT widths are 128..1024).

Statistics are fp32 and two-pass over the row held in registers: the mean first, then the variance of the
centred values. E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std, and BERT's eps (1e-12) gives no
protection against the resulting tiny or negative variances.

Each program normalises ROWS_PER_PROGRAM whole rows: BLOCK_N = next_power_of_2(N) columns, the tail masked.
"""

import torch
import triton
import triton.language as tl

from ._runtime import is_interpreter
from ._validate import check_positive_fp32, check_same, check_tensor

MAX_N = 8192
MIN_BLOCK_N = 64


@triton.jit
def _normalize_rows(x, mask, weight_ptr, bias_ptr, cols, col_mask, N, eps, HAS_BIAS: tl.constexpr):
    """LayerNorm of the fp32 tile x [ROWS, BLOCK_N] along its columns; masked entries of x must be 0.
    bias_ptr is only read when HAS_BIAS. Returns the fp32 result (shared with the embeddings kernel)."""
    # IEEE-rounded division (Triton's "/" is approximate): a mean one ulp off turns a constant row into
    # +-1 ulp of noise, which rstd ~ 1/sqrt(eps) = 1e6 for BERT's eps blows up to a visible error.
    n = N * 1.0  # fp32 whether N arrives as an i32 or as the constexpr 1
    mean = tl.math.div_rn(tl.sum(x, axis=1), n)
    # Re-mask after centring: the padded columns would otherwise contribute mean^2 each to the variance.
    centred = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.math.div_rn(tl.sum(centred * centred, axis=1), n)
    rstd = 1.0 / tl.sqrt(var + eps)
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * weight[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return y


@triton.jit
def _layer_norm_kernel(
    x_ptr,  # [M, N] input, last stride 1
    residual_ptr,  # [M, N] added to x before normalising, last stride 1; or None
    weight_ptr,  # [N] scale
    bias_ptr,  # [N] shift; or None (LayerNorm(bias=False))
    out_ptr,  # [M, N] output, contiguous
    M,  # rows
    N,  # columns (normalised dimension)
    stride_x_row,  # elements between rows of x
    stride_residual_row,  # elements between rows of residual
    stride_out_row,  # elements between rows of out
    eps,  # fp32 added to the variance
    HAS_RESIDUAL: tl.constexpr,  # residual_ptr is not None (set by the heuristic below)
    HAS_BIAS: tl.constexpr,  # bias_ptr is not None (set by the heuristic below)
    BLOCK_N: tl.constexpr,  # next_power_of_2(N): a whole row per tile
    ROWS_PER_PROGRAM: tl.constexpr,  # rows per program, so that narrow rows still keep enough bytes in flight
):
    # int64 rows: rows * stride overflows int32 beyond 2**31 elements.
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]

    x = tl.load(x_ptr + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual_offsets = rows[:, None] * stride_residual_row + cols[None, :]
        x += tl.load(residual_ptr + residual_offsets, mask=mask, other=0.0).to(tl.float32)

    y = _normalize_rows(x, mask, weight_ptr, bias_ptr, cols, col_mask, N, eps, HAS_BIAS)
    tl.store(out_ptr + rows[:, None] * stride_out_row + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


# Programs a launch should have at least before rows are shared: two per SM of a 132-SM GPU. Below that
# (a batch of one sequence: 128 rows), every row gets its own program so that the launch spreads over as
# many SMs as it can; the GPU's own SM count is not read, so the launch policy stays a pure function.
MIN_PROGRAMS = 264


def _config(block_n, gpu, rows_per_program=None):
    """Launch policy for one row width (a heuristic table, not an autotune list: a row-wise LayerNorm has one
    sensible shape per width, and autotuning would retune on every new token count).

    GPU: tiles of at least 2048 elements (ROWS_PER_PROGRAM = 2048 // BLOCK_N rows when rows are narrower) and
    one warp per 512 elements, i.e. 16 values per thread and input, chosen by a sweep over rows and warps
    per width (benchmarks/results/nvidia-h200-kernel-dev): fewer values per thread leaves too few bytes in
    flight, more (or wider tiles) cost occupancy. rows_per_program=1 is the small-launch variant (see config_for).
    Interpreter: one program per 16384 elements, since its time grows with the number of programs."""
    if not gpu:
        return triton.Config({"BLOCK_N": block_n, "ROWS_PER_PROGRAM": max(1, 16384 // block_n)}, num_warps=4)
    rows = rows_per_program or max(1, 2048 // block_n)
    return triton.Config({"BLOCK_N": block_n, "ROWS_PER_PROGRAM": rows}, num_warps=max(1, rows * block_n // 512))


def config_for(M, N, gpu=True):
    """The config a launch of M rows of width N uses: chosen by row width (block_n) and, when the rows
    are too few to give every SM work with several rows per program, one row per program."""
    block_n = max(MIN_BLOCK_N, triton.next_power_of_2(N))
    config = _config(block_n, gpu)
    if gpu and config.kwargs["ROWS_PER_PROGRAM"] > 1 and triton.cdiv(M, config.kwargs["ROWS_PER_PROGRAM"]) < MIN_PROGRAMS:
        config = _config(block_n, gpu, rows_per_program=1)
    return config


# flash-attention style: an absent residual or bias is a None pointer, and its code is compiled out.
_layer_norm = triton.heuristics({"HAS_RESIDUAL": lambda args: args["residual_ptr"] is not None,
                                 "HAS_BIAS": lambda args: args["bias_ptr"] is not None})(_layer_norm_kernel)


def check_eps(eps):
    """eps: a positive Python number the kernel can hold in fp32 (see check_positive_fp32)."""
    check_positive_fp32("eps", eps)


def check_norm_params(weight, bias, n, dtype, weight_name="weight", bias_name="bias"):
    """LayerNorm weight and bias: [n], in `dtype` or fp32, on the device of the activations. bias may be None."""
    for name, param in ((weight_name, weight), (bias_name, bias)):
        if param is None and name == bias_name:
            continue
        check_tensor(name, param, ndim=1)
        if param.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n},), got {tuple(param.shape)}")
        if param.dtype not in (dtype, torch.float32):
            raise TypeError(f"{name} has dtype {param.dtype}; expected {dtype} or torch.float32")


def layer_norm(x, weight, bias, eps, residual=None) -> torch.Tensor:
    """LayerNorm(x + residual) over the last dimension (see the module docstring for shapes and dtypes)."""
    check_tensor("x", x, ndim=2)
    M, N = x.shape
    if not 1 <= N <= MAX_N:
        raise ValueError(f"x must have 1..{MAX_N} columns (one row per tile), got shape {tuple(x.shape)}")
    if residual is not None:
        check_tensor("residual", residual, ndim=2)
        if residual.shape != x.shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}")
        check_same("residual", residual, "x", x)
    check_norm_params(weight, bias, N, x.dtype)
    check_same("weight", weight, "x", x, dtype=False)
    if bias is not None:
        check_same("bias", bias, "x", x, dtype=False)
    check_eps(eps)

    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    config = config_for(M, N, gpu=not is_interpreter())
    rows = config.kwargs["ROWS_PER_PROGRAM"]
    grid = (triton.cdiv(M, rows),)
    _layer_norm[grid](
        x, residual, weight, bias, out,
        M, N,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
        float(eps),
        **config.kwargs,
        num_warps=config.num_warps,
    )
    return out
