"""Hopper GEMM with a fused epilogue: out = activation(x @ weight.T + bias), the same op and contract as
kernels/linear.py, built the way sm_90 wants it: a persistent grid (one program per SM, each looping over
output tiles) whose operand tiles arrive through TMA tensor descriptors, and whose output leaves through one.

x [M, K] may be a row view of a wider buffer (any row stride, unit last stride); weight [N, K] is in
nn.Linear layout; bias [N] is optional. fp32, fp16 and bf16, all operands the same dtype; the output is a
new contiguous [M, N] tensor in that dtype. fp32 accumulator, epilogue on it, one rounding at the store;
fp32 inputs use IEEE products unless torch.backends.cuda.matmul.allow_tf32 is set, as torch.matmul does.

Limits: CUDA compute capability 9.0+ (or Triton's interpreter); TMA needs 16-byte aligned base pointers and
row strides, so K and N times the element size must be multiples of 16 and x must start on a 16-byte
boundary: is_supported() says whether a call qualifies, and the launcher rejects one that does not.
The descriptors are built on the host (triton.tools.tensor_descriptor): no device allocator to install.
Inference only (no autograd).
"""

import functools

import torch
import triton
import triton.language as tl

from ._validate import is_interpreter, max_shared_bytes
from .linear import _apply_activation, check_linear_args, dot_precision

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton older than the host-side descriptor API: is_available() says False
    TensorDescriptor = None

# Programs under the interpreter: more than one, fewer than the test shapes' tiles, so the persistent
# loop really visits several tiles per program (the interpreter runs programs one after another anyway).
_INTERPRETER_PROGRAMS = 3


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped ordering: consecutive tiles sweep GROUP_M row tiles under one column tile, so the SMs working
    # at the same time share bands of x and weight in L2.
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (tile // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile % num_pid_in_group) % group_size_m
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


# M is not specialised: token counts change every call, and one binary serves every batch.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _linear_persistent_kernel(
    x_desc,  # descriptor of x [M, K] (row stride free, unit column stride), blocks [BLOCK_M, BLOCK_K]
    w_desc,  # descriptor of weight [N, K] (nn.Linear layout), blocks [BLOCK_N, BLOCK_K]
    out_desc,  # descriptor of out [M, N], contiguous, blocks [BLOCK_M, BLOCK_N]
    b_ptr,  # [N], or any pointer when HAS_BIAS is False
    M,  # rows of x and out (tokens)
    N,  # output features
    K,  # input features
    M_BUCKET,  # next power of two of M: unused in the body, only the autotuner's key
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "none", "gelu", "gelu_tanh" or "relu"
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision for fp32 inputs: "ieee" or "tf32"
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_programs = tl.num_programs(0)
    # The epilogue walks its own copy of the tile counter: with the loop flattened, the pipeliner issues the
    # next tile's loads before this tile's epilogue, and one value live across both is what its lowering has
    # mishandled (Triton's persistent-matmul tutorial keeps two counters for the same reason).
    epilogue_tile = tl.program_id(0) - num_programs
    # flatten=True: tiles x K steps form one software pipeline, so TMA loads for the next tile are already
    # in flight while this one runs its epilogue.
    for tile in tl.range(tl.program_id(0), num_tiles, num_programs, flatten=True):
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        # TMA zero-fills the parts of a box outside [M, K] / [N, K]: partial tiles and the K tail need no
        # mask and read nothing past the tensors (their neighbours in a wider buffer included).
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            a = x_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
            b = w_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)

        epilogue_tile += num_programs
        pid_m, pid_n = _tile_coords(epilogue_tile, num_pid_m, num_pid_n, GROUP_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Epilogue on the fp32 accumulator, then one rounding; the TMA store clips rows past M, columns past N.
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            acc += bias[None, :]
        acc = _apply_activation(acc, ACTIVATION)
        out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(out_desc.dtype))


def linear_persistent_configs(gpu: bool) -> list[triton.Config]:
    """Tile configurations the autotuner chooses from.

    gpu=True: 128-row tiles for wgmma with one or two warpgroups (4 or 8 warps), plus 128x64 and 64x128
    tiles that keep every SM busy when M*N is small; 2-4 pipeline stages, sized so that the stages and the
    output tile the TMA store stages fit sm_90's 227 KB in fp16/bf16. Not yet timed on a GPU.
    gpu=False: one large tile for the interpreter.
    """
    if not gpu:
        return [_config(64, 64, 64, 4, 1)]
    return [
        _config(128, 256, 64, 8, 3),
        _config(128, 128, 64, 8, 4),
        _config(128, 128, 64, 4, 3),
        _config(128, 128, 128, 8, 2),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
    ]


def _config(block_m, block_n, block_k, num_warps, num_stages):
    tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8}
    return triton.Config(tiles, num_warps=num_warps, num_stages=num_stages, pre_hook=_set_block_shapes)


def _set_block_shapes(nargs):
    # The block shape is part of a host descriptor (and of the compiled kernel's signature); the launcher
    # cannot know it before the autotuner picks a config, so each config writes its own before its launch.
    block_m, block_n, block_k = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [block_m, block_k]
    nargs["w_desc"].block_shape = [block_n, block_k]
    nargs["out_desc"].block_shape = [block_m, block_n]


def shared_bytes_estimate(config: triton.Config, element_size: int) -> int:
    """num_stages buffers of one x tile and one weight tile, the output tile staged for the TMA store, and
    2 KB for the pipeline's barriers and the epilogue's layout conversions (at most ~1 KB when compiled)."""
    tiles = config.kwargs
    pipeline = config.num_stages * (tiles["BLOCK_M"] + tiles["BLOCK_N"]) * tiles["BLOCK_K"]
    return (pipeline + tiles["BLOCK_M"] * tiles["BLOCK_N"]) * element_size + 2048


def _prune_configs(configs, named_args, **kwargs):
    # fp32 doubles every buffer: the widest tiles no longer fit, the smallest always does.
    if is_interpreter():
        return configs
    x = named_args["x_desc"].base
    limit = max_shared_bytes(x)
    kept = [c for c in configs if shared_bytes_estimate(c, x.element_size()) <= limit]
    return kept or [min(configs, key=lambda c: shared_bytes_estimate(c, x.element_size()))]


_linear_persistent = triton.autotune(
    configs=linear_persistent_configs(not is_interpreter()),
    # M enters only as a power-of-two bucket. Descriptors carry no .dtype for the autotuner to add to the
    # key, but b_ptr is always a tensor of the operands' dtype, so the dtype is keyed through it.
    key=["M_BUCKET", "N", "K", "HAS_BIAS", "ACTIVATION", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_linear_persistent_kernel)


def is_available(device) -> bool:
    """Whether this kernel can run on `device`: a CUDA GPU of compute capability 9.0+ (TMA) with a Triton
    that has host-side tensor descriptors, or CPU tensors under Triton's interpreter."""
    device = torch.device(device)
    if TensorDescriptor is None:
        return False
    if is_interpreter():
        return device.type == "cpu"
    if device.type != "cuda" or torch.version.hip is not None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _tma_problem(x, weight):
    """Why TMA cannot address these operands (a message naming the argument), or None if it can."""
    element_size = x.element_size()
    M, K = x.shape
    N = weight.shape[0]
    if K == 0:
        return "x has K=0: a TMA descriptor needs non-empty dimensions"
    for name, tensor in (("x", x), ("weight", weight)):
        if tensor.data_ptr() % 16 or (tensor.stride(0) * element_size) % 16:
            return (f"{name} must start on a 16-byte boundary with a row stride that is a multiple of 16 bytes "
                    f"for TMA (data_ptr % 16 = {tensor.data_ptr() % 16}, row stride {tensor.stride(0)} elements)")
    if (N * element_size) % 16:
        return f"weight has N={N}: the output's rows must be a multiple of 16 bytes for the TMA store"
    return None


def is_supported(x, weight) -> bool:
    """True when linear_persistent can take these operands: its device is available and TMA can address
    them (16-byte aligned x and weight, row strides and N*element_size multiples of 16 bytes)."""
    return is_available(x.device) and _tma_problem(x, weight) is None


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def linear_persistent(x, weight, bias=None, activation=None) -> torch.Tensor:
    """activation(x @ weight.T + bias), as kernels.linear.linear, on sm_90+ through TMA.

    x: [M, K], unit last stride, any row stride. weight: [N, K], unit last stride. bias: [N] or None.
    All of one float dtype (fp32, fp16, bf16) on one device. activation: None, "gelu", "gelu_tanh",
    "relu". Returns a contiguous [M, N] tensor in x's dtype. Raises ValueError where is_supported is False.
    """
    M, N, K = check_linear_args(x, weight, bias, activation)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if not is_available(x.device):
        raise ValueError(f"x is on {x.device}: linear_persistent needs a CUDA GPU of compute capability 9.0+")
    problem = _tma_problem(x, weight)
    if problem is not None:
        raise ValueError(problem)

    input_precision = dot_precision(x.dtype)
    # Placeholder block shapes: each config's pre-hook writes its own before the launch.
    x_desc = TensorDescriptor(x, [M, K], [x.stride(0), 1], [16, 16])
    w_desc = TensorDescriptor(weight, [N, K], [weight.stride(0), 1], [16, 16])
    out_desc = TensorDescriptor(out, [M, N], [N, 1], [16, 16])
    if is_interpreter():
        programs = _INTERPRETER_PROGRAMS
    else:
        programs = _num_sms(x.device.index if x.device.index is not None else torch.cuda.current_device())
    # Persistent: at most one program per SM, never more programs than tiles.
    grid = lambda meta: (min(programs, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)
    _linear_persistent[grid](
        x_desc, w_desc, out_desc, bias if bias is not None else out,
        M, N, K, triton.next_power_of_2(M),
        HAS_BIAS=bias is not None,
        ACTIVATION=activation or "none",
        INPUT_PRECISION=input_precision,
    )
    return out
