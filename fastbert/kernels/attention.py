"""Bidirectional flash-style attention over packed variable-length sequences (the varlen layout of
flash_attn_varlen_func): out[t] = softmax(scale * q[t] @ k[s].T) @ v[s] over the tokens s of t's sequence.

q, k, v [T, heads, head_dim] hold B sequences back to back; sequence b is rows cu_seqlens[b] to
cu_seqlens[b+1]. Each may be a strided view (fastbert passes views of the fused QKV GEMM output
[T, 3, heads, head_dim]); only the last stride must be 1. fp32, fp16 and bf16, all three the same dtype; the
output is a new contiguous [T, heads, head_dim] tensor in that dtype. head_dim 32, 64, 80, 96 or 128.

Keys stream through in BLOCK_N tiles with an online softmax (running max and running sum in fp32, exp2
with log2(e) folded into the scale), so no [S, S] score matrix ever exists. Q @ K^T and P @ V run on tensor
cores with operands in the input dtype and fp32 accumulation; fp32 inputs use IEEE fp32 products unless
torch.backends.cuda.matmul.allow_tf32 is set, as torch.matmul does.

cu_seqlens must start at 0, never decrease and end at T, and max_seqlen must be at least every sequence
length. The launcher checks that (check_indices=True, the default), which reads cu_seqlens back to the
host: one device sync. A caller that built cu_seqlens itself (fastbert's encoder) passes
check_indices=False to skip the sync; then contents that break these rules read and write out of bounds.
Limits: inference only (no autograd); at most 65535 sequences and 65535 heads (CUDA grid limits);
offsets are int64, so T * token stride may exceed 2**31.
"""

import math

import torch
import triton
import triton.language as tl

from ._common import dot_precision, pruning_rule
from ._runtime import is_interpreter
from ._validate import check_cu_seqlens, check_flag, check_positive_fp32, check_same, check_tensor

HEAD_DIMS = (32, 64, 80, 96, 128)
_LOG2E = 1.4426950408889634
_MAX_GRID_YZ = 65535
_MAX_INT32 = 2**31 - 1


@triton.jit
def _load_tile(ptrs, rows, row_limit, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               MASK_ROWS: tl.constexpr):
    """Load a [rows, BLOCK_D] tile in its storage dtype, zero past HEAD_DIM and (if MASK_ROWS) past
    row_limit. Zeros in the padded head-dim columns leave both products exact."""
    if MASK_ROWS:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs, mask=(rows < row_limit)[:, None], other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows < row_limit)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return tile


@triton.jit
def _load_rotated(ptrs, rows, row_limit, offs_d, cos_ptr, sin_ptr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  MASK_ROWS: tl.constexpr):
    """Load a tile as _load_tile does and rotate it at its rows' positions within the sequence, the
    rotate-half convention: x' = x * cos + cat(-x2, x1) * sin, in fp32, returned in the storage dtype."""
    HALF: tl.constexpr = HEAD_DIM // 2
    tile = _load_tile(ptrs, rows, row_limit, offs_d, HEAD_DIM, BLOCK_D, MASK_ROWS)
    # Rotary tables and the partner half are read masked always: past seqlen the rows are never used, and
    # past P (>= max_seqlen >= seqlen) the tables hold nothing.
    mask = (rows < row_limit)[:, None] & (offs_d < HEAD_DIM)[None, :]
    partner_d = (offs_d + HALF) % HEAD_DIM
    partner = tl.load(ptrs + (partner_d - offs_d)[None, :], mask=mask, other=0.0).to(tl.float32)
    table = rows.to(tl.int64)[:, None] * HALF + (offs_d % HALF)[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    sign = tl.where(offs_d < HALF, -1.0, 1.0)[None, :]
    rotated = tile.to(tl.float32) * cos + sign * partner * sin
    return rotated.to(tile.dtype)


@triton.jit
def _attend_key_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_start, seqlen, offs_m, offs_n, offs_d, scale_log2e,
                     bias_ptr, bias_radius, window, cos_ptr, sin_ptr,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KEYS: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     HAS_ROTARY: tl.constexpr):
    """Fold keys key_start .. key_start + BLOCK_N of one sequence into the running softmax state.

    m_i: running max of scale*log2(e)*score per query row; l_i: running sum of exp2(score - m_i);
    acc: running sum of exp2(score - m_i) * v. Without a window every tile holds at least one valid key
    (the caller never starts a tile at or past seqlen), so the new max is finite and exp2(m_i - m_new)
    never sees -inf - -inf; with one, a row may see no key of a tile, and a guard covers that case.
    """
    keys = key_start + offs_n
    if HAS_ROTARY:
        k = _load_rotated(k_ptrs, keys, seqlen, offs_d, cos_ptr, sin_ptr, HEAD_DIM, BLOCK_D, MASK_KEYS)
    else:
        k = _load_tile(k_ptrs, keys, seqlen, offs_d, HEAD_DIM, BLOCK_D, MASK_KEYS)
    scores = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # [BLOCK_M, BLOCK_N], fp32
    if HAS_BIAS or HAS_WINDOW:
        # Distance j - i of key to query within the sequence: the bias's column and the window's test.
        distance = keys[None, :] - offs_m[:, None]
    if HAS_BIAS:
        # The bias is constant beyond +-R, so clamping the distance is exact; the index stays in the row
        # whatever the keys, but padded keys are masked anyway so no load depends on them.
        column = tl.minimum(tl.maximum(distance, -bias_radius), bias_radius) + bias_radius
        bias = tl.load(bias_ptr + column, mask=(keys < seqlen)[None, :], other=0.0)
        scores = scores * scale_log2e + bias * 1.4426950408889634
    if MASK_KEYS or HAS_WINDOW:
        allowed = (keys < seqlen)[None, :]
        if HAS_WINDOW:
            allowed = allowed & (distance <= window) & (distance >= -window)
        scores = tl.where(allowed, scores, float("-inf"))
    if HAS_BIAS:
        m_new = tl.maximum(m_i, tl.max(scores, 1))
    else:
        # The scale is positive, so max(scores) * scale is the max of the scaled scores; scaling inside the
        # exponent's argument lets the compiler fuse it into one FMA per score.
        m_new = tl.maximum(m_i, tl.max(scores, 1) * scale_log2e)
    if HAS_WINDOW:
        # A row with no key so far and none in this tile keeps m = -inf: exponentiate against 0 instead,
        # so its p and alpha are exp2(-inf) = 0 rather than NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new
    if HAS_BIAS:
        p = tl.math.exp2(scores - m_ref[:, None])
    else:
        p = tl.math.exp2(scores * scale_log2e - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)  # 0 on the first tile, where m_i is -inf and m_new finite
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_tile(v_ptrs, keys, seqlen, offs_d, HEAD_DIM, BLOCK_D, MASK_KEYS)
    # P is rounded to the input dtype for the tensor-core product, as flash attention does; its entries
    # lie in [0, 1] and the sum l_i stays fp32, so the rounding costs one ulp of the dtype per weight.
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attention_kernel(
    q_ptr,  # [T, heads, HEAD_DIM], token stride stride_qt, head stride stride_qh, unit last stride
    k_ptr,  # [T, heads, HEAD_DIM], strides stride_kt, stride_kh, 1
    v_ptr,  # [T, heads, HEAD_DIM], strides stride_vt, stride_vh, 1
    out_ptr,  # [T, heads, HEAD_DIM], strides stride_ot, stride_oh, 1
    cu_seqlens_ptr,  # [B + 1] int32: sequence b is tokens cu_seqlens[b] .. cu_seqlens[b+1]
    bias_ptr,  # [heads, 2 * bias_radius + 1] fp32 contiguous, read if HAS_BIAS: bias of distance j - i
    cos_ptr,  # [P, HEAD_DIM // 2] fp32 contiguous, read if HAS_ROTARY: cos at each position of a sequence
    sin_ptr,  # [P, HEAD_DIM // 2] fp32 contiguous, read if HAS_ROTARY
    scale_log2e,  # fp32: softmax scale times log2(e), so the kernel exponentiates with exp2
    bias_radius,  # R: distances clamp to [-R, R] (used if HAS_BIAS)
    window,  # w >= 0: query i sees keys j with |i - j| <= w (used if HAS_WINDOW)
    SEQLEN_BUCKET,  # next power of two of max_seqlen: unused in the body, only the autotuner's key
    PROGRAMS_BUCKET,  # bucket of the program count (program_count_bucket): unused in the body, a key
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,  # 32, 64, 80, 96 or 128
    BLOCK_D: tl.constexpr,  # next power of two of HEAD_DIM (tl.arange needs one)
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision for fp32 inputs: "ieee" or "tf32"
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop tile
    HAS_BIAS: tl.constexpr,  # add bias_ptr's relative-position bias to the scores
    HAS_WINDOW: tl.constexpr,  # local attention: only keys within `window` of the query
    HAS_ROTARY: tl.constexpr,  # rotate q and k (rotary position embedding) as they load
):
    # Grid (query tiles, sequences, heads): query tiles of one (sequence, head) are neighbours in launch
    # order, so they read the same keys and values while those are still in L2.
    pid_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)
    first_token = tl.load(cu_seqlens_ptr + seq)
    seqlen = tl.load(cu_seqlens_ptr + seq + 1) - first_token
    start = first_token.to(tl.int64)
    if pid_m * BLOCK_M >= seqlen:
        # The grid is sized for max_seqlen: shorter (and empty) sequences have spare query tiles.
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # int64 row offsets: a long sequence times a fused-QKV token stride can pass 2**31 elements.
    rows = offs_m.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = q_ptr + (start * stride_qt + head * stride_qh) + rows[:, None] * stride_qt + offs_d[None, :]
    k_ptrs = k_ptr + (start * stride_kt + head * stride_kh) + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_ptr + (start * stride_vt + head * stride_vh) + offs_n[:, None] * stride_vt + offs_d[None, :]
    if HAS_BIAS:
        bias_ptr += head * (2 * bias_radius + 1)
    # Rows past seqlen load as zeros: their scores are 0, finite, and their results are never stored.
    if HAS_ROTARY:
        q = _load_rotated(q_ptrs, offs_m, seqlen, offs_d, cos_ptr, sin_ptr, HEAD_DIM, BLOCK_D, True)
    else:
        q = _load_tile(q_ptrs, offs_m, seqlen, offs_d, HEAD_DIM, BLOCK_D, True)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if HAS_WINDOW:
        # Only key tiles overlapping [m_start - w, m_end + w) can hold a key in any row's window: the
        # loop starts and stops there, so the cost is O(BLOCK_M + 2w) keys per program, not O(seqlen).
        # Every tile is masked (the window cuts across tiles); the launcher clamps w to max_seqlen.
        m_start = pid_m * BLOCK_M
        key_lo = (tl.maximum(m_start - window, 0) // BLOCK_N) * BLOCK_N
        key_hi = tl.minimum(m_start + BLOCK_M + window, seqlen)
        k_ptrs += key_lo.to(tl.int64) * stride_kt
        v_ptrs += key_lo.to(tl.int64) * stride_vt
        for key_start in range(key_lo, key_hi, BLOCK_N):
            acc, m_i, l_i = _attend_key_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_start, seqlen, offs_m, offs_n,
                                             offs_d, scale_log2e, bias_ptr, bias_radius, window, cos_ptr, sin_ptr,
                                             HEAD_DIM, BLOCK_D, True, INPUT_PRECISION, HAS_BIAS, HAS_WINDOW,
                                             HAS_ROTARY)
            k_ptrs += BLOCK_N * stride_kt
            v_ptrs += BLOCK_N * stride_vt
    else:
        # Full key tiles need no key mask; only the last, partial tile (if any) pays for one.
        full_end = (seqlen // BLOCK_N) * BLOCK_N
        for key_start in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _attend_key_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, key_start, seqlen, offs_m, offs_n,
                                             offs_d, scale_log2e, bias_ptr, bias_radius, window, cos_ptr, sin_ptr,
                                             HEAD_DIM, BLOCK_D, False, INPUT_PRECISION, HAS_BIAS, HAS_WINDOW,
                                             HAS_ROTARY)
            k_ptrs += BLOCK_N * stride_kt
            v_ptrs += BLOCK_N * stride_vt
        if full_end < seqlen:
            acc, m_i, l_i = _attend_key_tile(acc, m_i, l_i, q, k_ptrs, v_ptrs, full_end, seqlen, offs_m, offs_n,
                                             offs_d, scale_log2e, bias_ptr, bias_radius, window, cos_ptr, sin_ptr,
                                             HEAD_DIM, BLOCK_D, True, INPUT_PRECISION, HAS_BIAS, HAS_WINDOW,
                                             HAS_ROTARY)

    # l_i >= 1 for every row that saw a key (its max term is exp2(0)); the guard keeps a row with no key
    # at zeros rather than 0/0.
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out_ptrs = out_ptr + (start * stride_ot + head * stride_oh) + rows[:, None] * stride_ot + offs_d[None, :]
    mask = (offs_m < seqlen)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def attention_configs(gpu: bool) -> list[triton.Config]:
    """Tile configurations the autotuner chooses from.

    gpu=True: a short list for Hopper/Ampere tensor cores. 128-row query tiles with 8 warps suit long
    sequences (more reuse of each key tile); 64-row tiles give short sequences (BERT's 128) enough programs
    to fill every SM; 32-row tiles are for the smallest launches (one sequence of 128 with 12 heads is 24
    programs of 64 rows for 100+ SMs), where more, shorter programs finish sooner. gpu=False: one large tile for the interpreter, whose time grows with the number of
    programs; 64 keys per tile still exercise both the full-tile loop and the masked tail tile in tests.
    """
    if not gpu:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]

    def config(block_m, block_n, num_warps, num_stages):
        return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)

    return [
        config(128, 64, 8, 3),
        config(128, 128, 8, 2),
        config(128, 64, 4, 3),
        config(128, 32, 4, 3),
        config(64, 64, 4, 3),
        config(64, 128, 4, 2),
        config(64, 32, 4, 3),
        config(128, 128, 8, 3),
        config(32, 64, 4, 3),
        config(32, 128, 4, 2),
    ]


def shared_bytes_estimate(config: triton.Config, head_dim: int, element_size: int) -> int:
    """Shared memory of one program: the Q tile, num_stages buffers of a K and a V tile, and one
    BLOCK_M x BLOCK_N staging buffer for P on its way from registers into the second product."""
    tiles = config.kwargs
    block_d = triton.next_power_of_2(head_dim)
    q_tile = tiles["BLOCK_M"] * block_d
    kv_tiles = config.num_stages * 2 * tiles["BLOCK_N"] * block_d
    p_tile = tiles["BLOCK_M"] * tiles["BLOCK_N"]
    return (q_tile + kv_tiles + p_tile) * element_size


# For GPUs with little shared memory (a T4, sm_75: 64 KB per block), where no entry of
# attention_configs(True) fits by the estimate in fp32: one K/V stage of 32-key tiles, 53 KB in fp32 at
# head_dim 128 (sm_75 has no asynchronous copies to pipeline anyway).
SMALL_SHARED_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)


def fitting_configs(configs, fits) -> list[triton.Config]:
    """The configs the pruning rule `fits` keeps (_common.pruning_rule: the shared-memory footprint grows
    with head_dim and doubles for fp32, an A100 offers less than an H100, and IEEE fp32 products need
    registers), or SMALL_SHARED_CONFIG when it keeps none."""
    return [config for config in configs if fits(config)] or [SMALL_SHARED_CONFIG]


def _prune_configs(configs, named_args, **kwargs):
    q = named_args["q_ptr"]
    head_dim, element_size = kwargs["HEAD_DIM"], q.element_size()
    shared_bytes = lambda config: shared_bytes_estimate(config, head_dim, element_size)
    return fitting_configs(configs, pruning_rule(q, kwargs["INPUT_PRECISION"], shared_bytes))


# Program-count buckets (at 64 query rows per program): up to about one program per SM of a large GPU,
# up to a few waves, and beyond. 1x128 (BERT-base: 24 programs) and 32x128 (768) fall in different buckets.
PROGRAM_BUCKETS = (128, 512, 2048)


def program_count_bucket(batch: int, heads: int, max_seqlen: int) -> int:
    """The autotune key's measure of launch size: batch x heads x query blocks of 64 rows, as the
    smallest PROGRAM_BUCKETS entry that holds it (or one past the largest). The best tile depends on it as
    much as on the length: few programs want small tiles that reach every SM, many want large ones."""
    programs = batch * heads * triton.cdiv(max_seqlen, 64)
    return next((bucket for bucket in PROGRAM_BUCKETS if programs <= bucket), PROGRAM_BUCKETS[-1] * 2)


_attention = triton.autotune(
    configs=attention_configs(not is_interpreter()),
    # max_seqlen enters only as a power-of-two bucket and the launch size as a program-count bucket:
    # varlen batches change T and max_seqlen every call, and each new key is a full autotuning sweep.
    key=["SEQLEN_BUCKET", "PROGRAMS_BUCKET", "HEAD_DIM", "INPUT_PRECISION", "HAS_BIAS", "HAS_WINDOW",
         "HAS_ROTARY"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_attention_kernel)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def attention(q, k, v, cu_seqlens, max_seqlen, scale=None, check_indices=True, *,
              window=None, position_bias=None, rotary=None) -> torch.Tensor:
    """Bidirectional attention within each packed sequence.

    q, k, v: [T, heads, head_dim], unit last stride, any other strides; one float dtype, one device.
    cu_seqlens: contiguous int32 [B + 1] on that device: 0, then each sequence's end, the last one T.
    max_seqlen: Python int, at least every sequence length. scale: positive float, default
    1/sqrt(head_dim). check_indices: verify cu_seqlens and max_seqlen against each other and T (one
    device sync); False only where the caller guarantees them. Returns a contiguous [T, heads, head_dim]
    tensor in q's dtype.
    """
    check_tensor("q", q, ndim=3)
    check_tensor("k", k, ndim=3)
    check_tensor("v", v, ndim=3)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    for name, tensor in (("k", k), ("v", v)):
        if tensor.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but q has {tuple(q.shape)}: "
                             "tokens, heads and head_dim must match")
    T, heads, head_dim = q.shape
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"q has head_dim {head_dim}; supported: {HEAD_DIMS}")
    # Contiguous: the kernel reads entry b at cu_seqlens_ptr + b.
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,))
    check_same("cu_seqlens", cu_seqlens, "q", q, dtype=False)
    if cu_seqlens.shape[0] < 1:
        raise ValueError("cu_seqlens must hold at least one entry (B + 1 for B sequences)")
    if not _is_int(max_seqlen):
        raise TypeError(f"max_seqlen must be a Python int, got {type(max_seqlen).__name__}")
    if max_seqlen < 0 or (T > 0 and max_seqlen < 1):
        raise ValueError(f"max_seqlen must be at least the longest sequence's length, got {max_seqlen} for T={T}")
    if max_seqlen > _MAX_INT32:
        raise ValueError(f"max_seqlen must fit cu_seqlens' int32, got {max_seqlen}")
    if T > _MAX_INT32:
        raise ValueError(f"q holds T={T} tokens, more than cu_seqlens' int32 can delimit")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else check_positive_fp32("scale", scale)
    scale_log2e = check_positive_fp32("scale * log2(e)", scale * _LOG2E)  # the kernel's fp32 scalar
    check_flag("check_indices", check_indices)
    batch = cu_seqlens.shape[0] - 1
    if batch == 0 and T != 0:
        raise ValueError(f"cu_seqlens describes no sequence but q holds T={T} tokens")
    if batch > _MAX_GRID_YZ or heads > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} sequences and heads per call, got {batch} and {heads}")

    if check_indices:
        # Known now, the longest sequence sizes the grid: an overstated max_seqlen (up to 2**31 - 1) would
        # otherwise launch millions of programs that exit at once.
        max_seqlen = check_cu_seqlens(cu_seqlens, T, max_seqlen)

    if window is not None:
        if not _is_int(window):
            raise TypeError(f"window must be None or a Python int, got {type(window).__name__}")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        window = min(window, max_seqlen)  # |i - j| < max_seqlen: a wider window changes nothing
    bias_radius = 0
    if position_bias is not None:
        check_tensor("position_bias", position_bias, ndim=2, dtypes=(torch.float32,))
        check_same("position_bias", position_bias, "q", q, dtype=False)
        if not position_bias.is_contiguous():
            raise ValueError("position_bias must be contiguous")
        if position_bias.shape[0] != heads or position_bias.shape[1] % 2 != 1:
            raise ValueError(f"position_bias must be [heads={heads}, 2R+1 (odd)], got {tuple(position_bias.shape)}")
        bias_radius = (position_bias.shape[1] - 1) // 2
    cos = sin = q
    if rotary is not None:
        if not isinstance(rotary, tuple) or len(rotary) != 2:
            raise TypeError("rotary must be None or a tuple (cos, sin)")
        cos, sin = rotary
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head_dim, got {head_dim}")
        for name, table in (("rotary cos", cos), ("rotary sin", sin)):
            check_tensor(name, table, ndim=2, dtypes=(torch.float32,))
            check_same(name, table, "q", q, dtype=False)
            if not table.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
            if table.shape[1] != head_dim // 2 or table.shape[0] < max_seqlen:
                raise ValueError(f"{name} must be [P >= max_seqlen={max_seqlen}, head_dim // 2={head_dim // 2}], "
                                 f"got {tuple(table.shape)}")

    out = torch.empty((T, heads, head_dim), dtype=q.dtype, device=q.device)
    if T == 0 or batch == 0 or heads == 0:
        return out

    grid = lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), batch, heads)
    _attention[grid](
        q, k, v, out, cu_seqlens,
        q if position_bias is None else position_bias, cos, sin,  # q: a placeholder never read
        scale_log2e,
        bias_radius, 0 if window is None else window,
        max(triton.next_power_of_2(max_seqlen), 16),
        program_count_bucket(batch, heads, max_seqlen),
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        INPUT_PRECISION=dot_precision(q.dtype),
        HAS_BIAS=position_bias is not None, HAS_WINDOW=window is not None, HAS_ROTARY=rotary is not None,
    )
    return out
