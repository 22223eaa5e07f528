"""GEMM with a fused epilogue: out = activation(x @ weight.T + bias), the nn.Linear of every BERT
projection (the fused QKV projection is one call on a [3*hidden, hidden] weight).

x [M, K] may be a row view of a wider buffer (any row stride, unit last stride); weight [N, K] is in
nn.Linear layout; bias [N] is optional. fp32, fp16 and bf16, all operands the same dtype; the output is a
new contiguous [M, N] tensor in that dtype. The product accumulates in fp32; bias and activation are
applied to the fp32 accumulator and the result is rounded once, at the store. fp32 inputs use IEEE fp32
products unless torch.backends.cuda.matmul.allow_tf32 is set, as torch.matmul does.

Activations: None, "gelu" (exact, erf), "gelu_tanh" (tanh approximation), "relu".
Limits: inference only (no autograd); M*row_stride and N*K may exceed 2**31 (offsets are int64).
"""


import torch
import triton
import triton.language as tl

from ._validate import check_same, check_tensor, is_interpreter, max_shared_bytes

ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu")


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
    return acc


# M is not specialised (a multiple of 16, or 1): token counts change every call and nothing is vectorised
# along M, so one binary serves every batch.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _linear_kernel(
    x_ptr,  # [M, K], row stride stride_xm, unit column stride
    w_ptr,  # [N, K], row stride stride_wn, unit column stride (nn.Linear layout)
    b_ptr,  # [N], or any pointer when HAS_BIAS is False
    out_ptr,  # [M, N], row stride stride_om, unit column stride
    M,  # rows of x and out (tokens)
    N,  # output features
    K,  # input features
    M_BUCKET,  # next power of two of M: unused in the body, only the autotuner's key
    stride_xm,
    stride_wn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "none", "gelu", "gelu_tanh" or "relu"
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision for fp32 inputs: "ieee" or "tf32"
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: the K loop needs no mask
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped ordering: consecutive programs sweep GROUP_M row tiles under one column tile before moving
    # right, so a band of x rows and a band of weight rows stay in L2 while they are reused.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past M (columns past N) wrap onto valid ones, so the main loop loads without a mask on them and
    # never reads outside x or weight; the wrapped results are dropped by the store mask.
    rows = offs_m % M
    cols = offs_n % N
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N]: weight tile, K-major

    # Operands stay in their storage dtype into tl.dot (fp16/bf16 tensor cores); the accumulator is fp32.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    # Epilogue on the fp32 accumulator, then one rounding at the store.
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    acc = _apply_activation(acc, ACTIVATION)

    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def linear_configs(gpu: bool) -> list[triton.Config]:
    """Tile configurations the autotuner chooses from.

    gpu=True: a short list for Hopper/Ampere tensor cores. Multiples of 4 warps and tiles of at least 64
    rows let sm_90 use wgmma. On an H200 at BERT/MiniLM shapes (M 4096..16384) the winners were
    128x128x64 (most shapes), 128x256x64 (the wide FFN-in GEMM with GELU) and 256x128x64 (M=16384
    QKV); the 64-wide tiles keep all SMs busy for small M*N. gpu=False: one large tile for the
    interpreter, whose time grows with the number of programs.
    """
    if not gpu:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=1)]

    def config(block_m, block_n, block_k, num_warps, num_stages):
        tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8}
        return triton.Config(tiles, num_warps=num_warps, num_stages=num_stages)

    return [
        config(128, 256, 64, 8, 3),
        config(256, 128, 64, 8, 3),
        config(128, 128, 64, 8, 4),
        # 96 KB of shared memory: two blocks per SM, so one block's epilogue overlaps another's main loop.
        config(128, 128, 64, 8, 3),
        config(128, 128, 64, 4, 3),
        config(128, 64, 64, 4, 4),
        config(64, 128, 64, 4, 4),
        config(64, 64, 64, 4, 4),
    ]


def shared_bytes_estimate(config: triton.Config, element_size: int) -> int:
    """Shared memory of the software pipeline: num_stages buffers of one x tile and one weight tile."""
    tiles = config.kwargs
    return config.num_stages * (tiles["BLOCK_M"] + tiles["BLOCK_N"]) * tiles["BLOCK_K"] * element_size


def fits_shared_memory(config: triton.Config, element_size: int, max_shared_bytes: int) -> bool:
    """The pruning rule: fp32 operands double the pipeline's footprint, and an A100 offers less than an
    H100, so some entries of linear_configs(True) cannot launch for every dtype and GPU."""
    return shared_bytes_estimate(config, element_size) <= max_shared_bytes


def _prune_configs(configs, named_args, **kwargs):
    if is_interpreter():
        return configs
    x = named_args["x_ptr"]
    limit = max_shared_bytes(x)
    kept = [c for c in configs if fits_shared_memory(c, x.element_size(), limit)]
    # linear_configs(True) always holds a config that fits a 163 KB A100 in fp32; a 64 KB T4 in fp32 gets
    # SMALL_SHARED_CONFIG.
    return kept or [SMALL_SHARED_CONFIG]


# For GPUs with little shared memory (a T4, sm_75: 64 KB per block), where no entry of linear_configs(True)
# fits in fp32: one stage of 64x64x32 tiles, 16 KB in fp32 (sm_75 has no asynchronous copies to pipeline).
SMALL_SHARED_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4,
                                    num_stages=1)


_linear = triton.autotune(
    configs=linear_configs(not is_interpreter()),
    # M enters only as a power-of-two bucket: varlen batches change the token count every call.
    key=["M_BUCKET", "N", "K", "HAS_BIAS", "ACTIVATION", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_linear_kernel))


def check_linear_args(x, weight, bias, activation):
    """Validate a linear call (errors name the argument); returns (M, N, K). Shared by every GEMM kernel
    of this op, so they accept and reject exactly the same inputs."""
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
    return M, N, K


def dot_precision(dtype):
    """tl.dot's input_precision: fp32 operands get IEEE products unless PyTorch allows TF32 for its own
    matmuls; 16-bit operands run on tensor cores whatever the flag ("tf32" is then ignored)."""
    allow_tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if dtype != torch.float32 or allow_tf32 else "ieee"


def linear(x, weight, bias=None, activation=None) -> torch.Tensor:
    """activation(x @ weight.T + bias).

    x: [M, K], unit last stride, any row stride. weight: [N, K], unit last stride. bias: [N] or None.
    All of one float dtype (fp32, fp16, bf16) on one device. activation: None, "gelu", "gelu_tanh",
    "relu". Returns a contiguous [M, N] tensor in x's dtype.
    """
    M, N, K = check_linear_args(x, weight, bias, activation)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out

    input_precision = dot_precision(x.dtype)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _linear[grid](
        x, weight, bias if bias is not None else x, out,
        M, N, K, triton.next_power_of_2(M),
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None,
        ACTIVATION=activation or "none",
        INPUT_PRECISION=input_precision,
    )
    return out
