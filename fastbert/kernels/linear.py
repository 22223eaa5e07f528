"""GEMM with a fused epilogue: out = activation(x @ weight.T + bias) + residual, the nn.Linear of every BERT
projection (the fused QKV projection is one call on a [3*hidden, hidden] weight; the residual add serves the
attention-output and FFN-out projections, whose sums feed a LayerNorm).

x [M, K] may be a row view of a wider buffer (any row stride, unit last stride); weight [N, K] is in
nn.Linear layout; bias [N] and residual [M, N] (any row stride, unit last stride) are optional. fp32, fp16
and bf16, all operands the same dtype; the output is a new contiguous [M, N] tensor in that dtype. The
product accumulates in fp32; bias, activation and residual are applied to the fp32 accumulator, in that
order, and the result is rounded once, at the store. fp32 inputs use IEEE fp32 products unless
torch.backends.cuda.matmul.allow_tf32 is set, as torch.matmul does.

Grid: every launch keeps the GPU's SMs busy (kernels/_gemm_grid.py). Where one of the autotuned tiles gives
at least one program per SM, the autotuner chooses among those tiles. Where none does (few tokens, or a narrow
N: BERT's projections at M <= 512), the launcher splits K instead (plan_split_k): each program reduces a slice
of K into an fp32 partial tile, and a second kernel sums the partials in a fixed order (deterministic) and
applies the epilogue once, after the sum, so GELU never sees a partial sum.

glu=True (ModernBERT's gated MLP): weight [2N, K], bias [2N] or None, out[:, j] = activation(x @ W[j] + b[j]) *
(x @ W[N + j] + b[N + j]), [M, N]. A second fp32 accumulator over the gate rows shares every x tile; no residual,
and K is never split (the launch takes the tile giving the most programs unsplit instead).

Activations: None, "gelu" (exact, erf), "gelu_tanh" (tanh approximation), "relu", "silu" (x * sigmoid(x)).
Limits: inference only (no autograd); M*row_stride and N*K may exceed 2**31 (offsets are int64).
"""


import torch
import triton
import triton.language as tl

from ._common import dot_precision, pruning_rule
from ._gemm_grid import check_num_sms, plan_launch, reduce_block_m, resolve_num_sms, tiles_of
from ._runtime import is_interpreter
from ._validate import check_same, check_tensor

ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu", "silu")


@triton.jit
def _apply_activation(acc, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu":
        # Exact GELU, as BERT's "gelu": x * Phi(x) with Phi from erf.
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    elif ACTIVATION == "gelu_tanh":
        # 0.5 * x * (1 + tanh(u)) == x * sigmoid(2u): no libdevice tanh (missing under the interpreter),
        # and sigmoid saturates cleanly to 0 or 1 for large |u| instead of overflowing.
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * u)
    elif ACTIVATION == "relu":
        acc = tl.maximum(acc, 0.0)
    elif ACTIVATION == "silu":
        # SiLU / swish; tl.sigmoid saturates to 0 or 1 for large |x|, so no overflow to NaN.
        acc = acc * tl.sigmoid(acc)
    return acc


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped ordering: consecutive tiles sweep GROUP_M row tiles under one column tile before moving right,
    # so a band of x rows and a band of weight rows stay in L2 while the SMs working at once reuse them.
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (tile // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile % num_pid_in_group) % group_size_m
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, b_ptr, r_ptr, stride_rm,
              HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
              gate=None, GLU: tl.constexpr = False):
    """activation(acc + bias) + residual on an fp32 tile [len(offs_m), len(offs_n)] (shared by every GEMM).
    GLU: activation(acc + bias[:N]) * (gate + bias[N:]), gate being the tile of the weight's rows N..2N-1."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if GLU:
            gate += tl.load(b_ptr + N + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    acc = _apply_activation(acc, ACTIVATION)
    if GLU:
        acc = acc * gate
    if HAS_RESIDUAL:
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        acc += tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _epilogue_store(acc, offs_m, offs_n, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
                    gate=None, GLU: tl.constexpr = False):
    acc = _epilogue(acc, offs_m, offs_n, M, N, b_ptr, r_ptr, stride_rm, HAS_BIAS, HAS_RESIDUAL, ACTIVATION,
                    gate, GLU)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


# M is not specialised (a multiple of 16, or 1): token counts change every call and nothing is vectorised
# along M, so one binary serves every batch.
@triton.jit(do_not_specialize=["M", "M_BUCKET", "FILLING"])
def _linear_kernel(
    x_ptr,  # [M, K], row stride stride_xm, unit column stride
    w_ptr,  # [N, K] (GLU: [2N, K]), row stride stride_wn, unit column stride (nn.Linear layout)
    b_ptr,  # [N] (GLU: [2N]), or None
    r_ptr,  # [M, N] residual, row stride stride_rm, unit column stride; or None
    out_ptr,  # [M, N], row stride stride_om, unit column stride; split K: [splits, M, N] fp32 partials
    M,  # rows of x and out (tokens)
    N,  # output features (GLU: half the weight's rows)
    K,  # input features
    M_BUCKET,  # next power of two of M: unused in the body, only the autotuner's key
    FILLING,  # bitmask of the autotuner's configs that fill the GPU at this M: unused, only the key
    stride_xm,
    stride_wn,
    stride_rm,
    stride_om,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "none", "gelu", "gelu_tanh", "relu" or "silu"
    GLU: tl.constexpr,  # gated: out = act(x @ W[:N].T + b[:N]) * (x @ W[N:].T + b[N:]); no split, no residual
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision for fp32 inputs: "ieee" or "tf32"
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: the K loop needs no mask
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SUBTILES: tl.constexpr,  # 1, or 2: the epilogue runs on column halves of the tile
):
    # Axis 1 splits K: program k of S reduces K blocks [k*blocks/S, (k+1)*blocks/S) and stores its fp32
    # partial tile in slice k of out (the launcher then passes no bias, residual or activation). S = 1
    # (a 1-D grid) is the plain GEMM.
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    split, splits = tl.program_id(1), tl.num_programs(1)
    k_blocks = tl.cdiv(K, BLOCK_K)
    k_first = split * k_blocks // splits
    k_last = (split + 1) * k_blocks // splits

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past M (columns past N) wrap onto valid ones, so the main loop loads without a mask on them and
    # never reads outside x or weight; the wrapped results are dropped by the store mask.
    rows = offs_m % M
    cols = offs_n % N
    x_ptrs = x_ptr + rows[:, None] * stride_xm + (k_first * BLOCK_K + offs_k)[None, :]  # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :] * stride_wn + (k_first * BLOCK_K + offs_k)[:, None]  # [BLOCK_K, BLOCK_N], K-major

    # GLU: the gate half of the weight (rows N + cols) gets its own accumulator, fed by the same x tile.
    g_ptrs = w_ptrs + N.to(tl.int64) * stride_wn

    # Operands stay in their storage dtype into tl.dot (fp16/bf16 tensor cores); the accumulator is fp32.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # unused, and compiled away, without GLU
    for k in range(k_first, k_last):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        if GLU:
            if EVEN_K:
                g = tl.load(g_ptrs)
            else:
                g = tl.load(g_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            gate = tl.dot(a, g, gate, input_precision=INPUT_PRECISION)
            g_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    out_ptr += split.to(tl.int64) * M * stride_om  # this split's partial tile (slice 0 without a split)
    # Epilogue on the fp32 accumulator, then one rounding at the store.
    if EPILOGUE_SUBTILES == 2:
        # Column halves, one after the other: the exact-erf GELU's temporaries then cover half the tile, which
        # keeps the widest tiles within the register file (no spills).
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        gate_left, gate_right = left, right  # placeholders without GLU
        if GLU:
            gate_left, gate_right = tl.split(tl.permute(tl.reshape(gate, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        offs_left = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue_store(left, offs_m, offs_left, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                        HAS_BIAS, HAS_RESIDUAL, ACTIVATION, gate_left, GLU)
        _epilogue_store(right, offs_m, offs_left + BLOCK_N // 2, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                        HAS_BIAS, HAS_RESIDUAL, ACTIVATION, gate_right, GLU)
    else:
        _epilogue_store(acc, offs_m, offs_n, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                        HAS_BIAS, HAS_RESIDUAL, ACTIVATION, gate, GLU)


@triton.jit(do_not_specialize=["M", "SPLITS"])
def _linear_split_reduce_kernel(
    partials_ptr,  # [SPLITS, M, N] fp32, contiguous: the split-K partial products
    b_ptr,  # [N], or None
    r_ptr,  # [M, N] residual, row stride stride_rm, unit column stride; or None
    out_ptr,  # [M, N], row stride stride_om, unit column stride
    M,
    N,
    SPLITS,  # number of partials
    stride_rm,
    stride_om,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    ptrs = partials_ptr + offs_m[:, None] * N + offs_n[None, :]
    # Summed in split order, always: the same inputs give the same bits on every run.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(SPLITS):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += M.to(tl.int64) * N
    _epilogue_store(acc, offs_m, offs_n, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                    HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


def _config(block_m, block_n, block_k, num_warps, num_stages, subtiles=1):
    tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "EPILOGUE_SUBTILES": subtiles}
    return triton.Config(tiles, num_warps=num_warps, num_stages=num_stages)


def linear_configs(gpu: bool) -> list[triton.Config]:
    """Tile configurations the autotuner chooses from (among those that fill the GPU at the call's M).

    gpu=True: a short list for Hopper/Ampere tensor cores. Multiples of 4 warps and tiles of at least 64
    rows let sm_90 use wgmma; the 128- and 256-wide tiles serve BERT's large projections (which one wins
    per shape: benchmarks/results), the 64-wide tiles keep all SMs busy for small M*N. gpu=False: one
    large tile for the interpreter, whose time grows with the number of programs.
    """
    if not gpu:
        return [_config(64, 64, 64, 4, 1)]
    return [
        _config(128, 256, 64, 8, 3, subtiles=2),
        _config(256, 128, 64, 8, 3, subtiles=2),
        _config(128, 128, 64, 8, 4),
        # Small enough in shared memory and (with the epilogue in halves) registers for two blocks per SM on
        # sm_90, so one block's epilogue overlaps another's main loop.
        _config(128, 128, 64, 8, 3, subtiles=2),
        _config(128, 128, 64, 4, 3, subtiles=2),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
        _config(64, 64, 64, 4, 4),
    ]


def split_k_configs() -> list[triton.Config]:
    """Tiles for launches that split K, largest first (plan_split_k takes the first that fills the GPU).
    The 32- and 16-row tiles serve few tokens (batch-1 sentences) on narrow projections, where even 64x64
    tiles with one K block per program leave SMs idle; two stages there, because their programs walk two or
    three K blocks and IEEE fp32 on 32x64x64 spills registers (sm_90) with a third. Last, the one config that
    fits every GPU in every dtype (SMALL_SHARED_CONFIG), so a plan always exists."""
    return [
        _config(128, 128, 64, 8, 3),
        _config(64, 128, 64, 4, 3),
        _config(128, 64, 64, 4, 3),
        _config(64, 64, 64, 4, 3),
        _config(32, 64, 64, 4, 2),
        _config(16, 64, 64, 4, 2),
        SMALL_SHARED_CONFIG,
    ]


def shared_bytes_estimate(config: triton.Config, element_size: int, glu: bool = False) -> int:
    """Shared memory of the software pipeline: num_stages buffers of one x tile and one weight tile (GLU:
    two weight tiles, the activated and the gate half)."""
    tiles = config.kwargs
    weight_tiles = 2 if glu else 1
    return config.num_stages * (tiles["BLOCK_M"] + weight_tiles * tiles["BLOCK_N"]) * tiles["BLOCK_K"] * element_size


# GLU holds two fp32 accumulators per output: at more than 64 outputs per thread (128x128 on 4 warps) the
# two alone take 256 registers, and ptxas spills (checked by tests/kernels/test_linear_glu.py on sm_90).
GLU_MAX_OUTPUTS_PER_THREAD = 64


def fits_glu(config: triton.Config) -> bool:
    """Whether a tile leaves registers for GLU's second accumulator (see GLU_MAX_OUTPUTS_PER_THREAD)."""
    outputs = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
    return outputs <= GLU_MAX_OUTPUTS_PER_THREAD * 32 * config.num_warps


# For GPUs with little shared memory (a T4, sm_75: 64 KB per block), where no other tile fits in fp32: one
# stage of 64x64x32 tiles, 16 KB in fp32 (sm_75 has no asynchronous copies to pipeline). The launcher's last
# resort (split_k_configs ends with it).
SMALL_SHARED_CONFIG = _config(64, 64, 32, 4, 1)
# Built once: linear() consults it on every launch, eager calls included.
_SPLIT_K_CONFIGS = split_k_configs()


def _prune_configs(configs, named_args, **kwargs):
    # The launcher already kept only the configs that fit this GPU (registers, shared memory) and fill its SMs.
    return [config for i, config in enumerate(configs) if named_args["FILLING"] >> i & 1]


_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
# flash-attention style: an absent bias or residual is a None pointer, and its code is compiled out.
_optional_inputs = triton.heuristics({"HAS_BIAS": lambda args: args["b_ptr"] is not None,
                                      "HAS_RESIDUAL": lambda args: args["r_ptr"] is not None})

_linear = triton.autotune(
    configs=linear_configs(not is_interpreter()),
    # M enters only as a power-of-two bucket (varlen batches change the token count every call) and as the
    # set of configs that fill the GPU at it.
    key=["M_BUCKET", "FILLING", "N", "K", "HAS_BIAS", "HAS_RESIDUAL", "ACTIVATION", "GLU", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_even_k(_linear_kernel))
_linear_autotuned = _optional_inputs(_linear)
_linear_one_config = _optional_inputs(_even_k(_linear_kernel))
_linear_split_reduce = _optional_inputs(_linear_split_reduce_kernel)


def check_linear_args(x, weight, bias, activation, residual=None, num_sms=None, glu=False):
    """Validate a linear call (errors name the argument); returns (M, N, K), N the output's width (GLU: half
    the weight's rows). Shared by every GEMM kernel of this op, so they accept and reject the same inputs."""
    if not isinstance(glu, bool):
        raise TypeError(f"glu must be a bool, got {glu!r}")
    if glu and residual is not None:
        raise ValueError("residual must be None with glu=True (a gated projection feeds another linear)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_tensor("x", x, ndim=2)
    check_tensor("weight", weight, ndim=2)
    check_same("weight", weight, "x", x)
    M, K = x.shape
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"weight has shape {tuple(weight.shape)}: its second dimension must equal x's K={K}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_same("bias", bias, "x", x)
        if bias.shape[0] != N:
            raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({N},) to match weight's N")
    if residual is not None:
        check_tensor("residual", residual, ndim=2)
        check_same("residual", residual, "x", x)
        if residual.shape != (M, N):
            raise ValueError(f"residual has shape {tuple(residual.shape)}; expected ({M}, {N}), the output's")
    check_num_sms(num_sms)  # also when the output is empty and nothing launches
    if glu:
        if N % 2:
            raise ValueError(f"glu=True needs an even number of weight rows (activated and gate halves), "
                             f"got weight shape {tuple(weight.shape)}")
        N //= 2
    return M, N, K


def linear(x, weight, bias=None, activation=None, residual=None, *, num_sms=None, glu=False) -> torch.Tensor:
    """activation(x @ weight.T + bias) + residual; with glu=True, weight is [2N, K], bias [2N] or None and
    out[:, j] = activation(x @ weight[j] + bias[j]) * (x @ weight[N + j] + bias[N + j]) (transformers'
    `input, gate = Wi(x).chunk(2, -1); act(input) * gate`), residual None.

    x: [M, K], unit last stride, any row stride. weight: [N, K], unit last stride. bias: [N] or None.
    residual: [M, N] (unit last stride) or None. All of one float dtype (fp32, fp16, bf16) on one device.
    activation: None, "gelu", "gelu_tanh", "relu", "silu". num_sms: the SM count to fill (default: the GPU's).
    Returns a contiguous [M, N] tensor in x's dtype.
    """
    M, N, K = check_linear_args(x, weight, bias, activation, residual, num_sms, glu)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    num_sms = resolve_num_sms(x.device, num_sms)
    precision = dot_precision(x.dtype)
    rule = pruning_rule(x, precision, lambda config: shared_bytes_estimate(config, x.element_size(), glu))
    fits = rule
    if glu:
        fits = lambda config: rule(config) and fits_glu(config)
    # GLU never splits K (below): planning it as a one-K-block product makes plan_split_k pick, among the
    # split-K tiles, the largest that fills the GPU unsplit, else the one giving the most programs.
    plan = plan_launch(M, N, 1 if glu else K, num_sms, _linear.configs, _SPLIT_K_CONFIGS, fits)
    common = dict(ACTIVATION=activation or "none", GLU=glu, INPUT_PRECISION=precision)
    r_stride = residual.stride(0) if residual is not None else 0
    if plan.filling:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
        _linear_autotuned[grid](
            x, weight, bias, residual, out,
            M, N, K, triton.next_power_of_2(M), plan.filling,
            x.stride(0), weight.stride(0), r_stride, out.stride(0),
            **common,
        )
        return out

    split = plan.split
    config = split.config
    tiles = tiles_of(config, M, N)
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages, **config.kwargs)
    # GLU never splits K: the partials would have to hold both halves ([splits, M, 2N]) and the reduction
    # apply the gate, a second code path for the case (few tokens) where the GLU's wide intermediate N
    # already gives more tiles than a plain projection of the hidden width. Its plan always has splits == 1.
    if split.splits == 1:
        _linear_one_config[(tiles,)](
            x, weight, bias, residual, out, M, N, K, triton.next_power_of_2(M), 0,
            x.stride(0), weight.stride(0), r_stride, out.stride(0), **common, **launch,
        )
        return out
    # fp32 partials, then one pass that sums them and applies the epilogue once.
    partials = torch.empty((split.splits, M, N), dtype=torch.float32, device=x.device)
    _linear_one_config[(tiles, split.splits)](
        x, weight, None, None, partials, M, N, K, triton.next_power_of_2(M), 0,
        x.stride(0), weight.stride(0), 0, N,
        ACTIVATION="none", GLU=False, INPUT_PRECISION=common["INPUT_PRECISION"], **launch,
    )
    block_m = reduce_block_m(M, N, num_sms)
    _linear_split_reduce[(triton.cdiv(M, block_m), triton.cdiv(N, 128))](
        partials, bias, residual, out, M, N, split.splits, r_stride, out.stride(0),
        ACTIVATION=common["ACTIVATION"], BLOCK_M=block_m, BLOCK_N=128, num_warps=4,
    )
    return out
