"""Hopper GEMM with a fused epilogue: out = activation(x @ weight.T + bias) + residual, the same op and
contract as kernels/linear.py, built the way sm_90 wants it: a persistent grid (one program per SM, each
looping over output tiles) whose operand tiles arrive through TMA tensor descriptors, and whose output leaves
through one. Where no tile shape gives every SM a tile (few tokens), a persistent grid would leave SMs idle:
such calls run kernels/linear.py's split-K launch instead.

x [M, K] may be a row view of a wider buffer (any row stride, unit last stride); weight [N, K] is in
nn.Linear layout; bias [N] and residual [M, N] (unit last stride) are optional. fp32, fp16 and bf16, all operands the same dtype; the output is a
new contiguous [M, N] tensor in that dtype. fp32 accumulator, epilogue on it, one rounding at the store;
fp32 inputs use IEEE products unless torch.backends.cuda.matmul.allow_tf32 is set, as torch.matmul does.

Limits: CUDA compute capability 9.0+ (or Triton's interpreter); TMA needs 16-byte aligned base pointers and
row strides, so K and N times the element size must be multiples of 16 and x must start on a 16-byte
boundary: is_supported() says whether a call qualifies, and the launcher rejects one that does not.
The descriptors are built on the host (triton.tools.tensor_descriptor): no device allocator to install.
Inference only (no autograd).
"""

import torch
import triton
import triton.language as tl

from ._common import dot_precision, pruning_rule
from ._gemm_grid import filling_mask, resolve_num_sms
from ._runtime import is_interpreter
from .linear import _epilogue, _optional_inputs, _tile_coords, check_linear_args, linear

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton older than the host-side descriptor API: is_available() says False
    TensorDescriptor = None

# Programs under the interpreter: more than one, fewer than the test shapes' tiles, so the persistent
# loop really visits several tiles per program (the interpreter runs programs one after another anyway).
_INTERPRETER_PROGRAMS = 3


# M is not specialised: token counts change every call, and one binary serves every batch.
@triton.jit(do_not_specialize=["M", "M_BUCKET", "FILLING"])
def _linear_persistent_kernel(
    x_desc,  # descriptor of x [M, K] (row stride free, unit column stride), blocks [BLOCK_M, BLOCK_K]
    w_desc,  # descriptor of weight [N, K] (nn.Linear layout), blocks [BLOCK_N, BLOCK_K]
    out_desc,  # descriptor of out [M, N], contiguous, blocks [BLOCK_M, BLOCK_N // EPILOGUE_SUBTILES]
    b_ptr,  # [N], or None
    r_ptr,  # [M, N] residual, row stride stride_rm, unit column stride; or None
    M,  # rows of x and out (tokens)
    N,  # output features
    K,  # input features
    M_BUCKET,  # next power of two of M: unused in the body, only the autotuner's key
    FILLING,  # bitmask of the configs that give every SM a tile at this M: unused, only the key
    stride_rm,
    DTYPE: tl.constexpr,  # the operands' dtype, e.g. "torch.float16": unused in the body, only the autotuner's key
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "none", "gelu", "gelu_tanh" or "relu"
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision for fp32 inputs: "ieee" or "tf32"
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SUBTILES: tl.constexpr,  # 1, or 2: the epilogue runs on column halves of the tile
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
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        # Epilogue on the fp32 accumulator, then one rounding; the TMA store clips rows past M, columns past N.
        if EPILOGUE_SUBTILES == 2:
            # Column halves, one after the other: the exact-erf GELU's temporaries then cover half the tile,
            # which keeps the wide tiles within the register file (no spills).
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            offs_left = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
            left = _epilogue(left, offs_m, offs_left, M, N, b_ptr, r_ptr, stride_rm, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], left.to(out_desc.dtype))
            right = _epilogue(right, offs_m, offs_left + BLOCK_N // 2, M, N, b_ptr, r_ptr, stride_rm,
                              HAS_BIAS, HAS_RESIDUAL, ACTIVATION)
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2], right.to(out_desc.dtype))
        else:
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            acc = _epilogue(acc, offs_m, offs_n, M, N, b_ptr, r_ptr, stride_rm, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(out_desc.dtype))


def linear_persistent_configs(gpu: bool) -> list[triton.Config]:
    """Tile configurations the autotuner chooses from.

    gpu=True: 128-row tiles for wgmma with one or two warpgroups (4 or 8 warps), plus 128x64 and 64x128
    tiles that keep every SM busy when M*N is small; 2-4 pipeline stages, sized so that the stages and the
    output tile the TMA store stages fit sm_90's 227 KB in fp16/bf16.
    gpu=False: one large tile for the interpreter.
    """
    if not gpu:
        return [_config(64, 64, 64, 4, 1)]
    # Epilogue in column halves where the whole tile's GELU or residual add would spill registers (sm_90).
    return [
        _config(128, 256, 64, 8, 3, subtiles=2),
        _config(128, 128, 64, 8, 4),
        _config(128, 128, 64, 4, 3, subtiles=2),
        _config(128, 128, 128, 8, 2),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
    ]


def _config(block_m, block_n, block_k, num_warps, num_stages, subtiles=1):
    tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "EPILOGUE_SUBTILES": subtiles}
    return triton.Config(tiles, num_warps=num_warps, num_stages=num_stages, pre_hook=_set_block_shapes)


def _set_block_shapes(nargs):
    # The block shape is part of a host descriptor (and of the compiled kernel's signature); the launcher
    # cannot know it before the autotuner picks a config, so each config writes its own before its launch.
    block_m, block_n, block_k = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [block_m, block_k]
    nargs["w_desc"].block_shape = [block_n, block_k]
    nargs["out_desc"].block_shape = [block_m, block_n // nargs["EPILOGUE_SUBTILES"]]


def shared_bytes_estimate(config: triton.Config, element_size: int, residual: bool = False) -> int:
    """num_stages buffers of one x tile and one weight tile, the output tile (or subtile) staged for the TMA
    store, with a residual as much again for converting its tile to the accumulator's layout (compiled for
    sm_90: 8-32 KB), and 2 KB for the pipeline's barriers and the epilogue's other layout conversions."""
    tiles = config.kwargs
    pipeline = config.num_stages * (tiles["BLOCK_M"] + tiles["BLOCK_N"]) * tiles["BLOCK_K"]
    staged = tiles["BLOCK_M"] * tiles["BLOCK_N"] // tiles["EPILOGUE_SUBTILES"]
    return (pipeline + staged * (2 if residual else 1)) * element_size + 2048


def _prune_configs(configs, named_args, **kwargs):
    # The launcher already kept only the configs that fit this GPU's shared memory (fp32 doubles every
    # buffer: the widest tiles no longer fit) and give every SM a tile.
    return [config for i, config in enumerate(configs) if named_args["FILLING"] >> i & 1]


_linear_persistent = triton.autotune(
    configs=linear_persistent_configs(not is_interpreter()),
    # M enters only as a power-of-two bucket and as the set of configs that fill the GPU at it. Descriptors
    # carry no .dtype for the autotuner to add to the key (and bias may be None), hence DTYPE.
    key=["M_BUCKET", "FILLING", "N", "K", "DTYPE", "HAS_BIAS", "HAS_RESIDUAL", "ACTIVATION", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_linear_persistent_kernel)
_linear_persistent_launch = _optional_inputs(_linear_persistent)


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
        if tensor.shape[0] > 1 and tensor.stride(0) < K:
            # A TMA descriptor describes disjoint rows; broadcast (stride 0) or overlapping rows it cannot.
            return f"{name} has row stride {tensor.stride(0)} < K={K}: TMA needs rows that do not overlap"
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


def linear_persistent(x, weight, bias=None, activation=None, residual=None, *, num_sms=None) -> torch.Tensor:
    """activation(x @ weight.T + bias) + residual, as kernels.linear.linear, on sm_90+ through TMA.

    x: [M, K], unit last stride, any row stride. weight: [N, K], unit last stride. bias: [N] or None.
    residual: [M, N] (unit last stride) or None. All of one float dtype (fp32, fp16, bf16) on one device.
    activation: None, "gelu", "gelu_tanh", "relu". num_sms: the SM count to fill (default: the GPU's).
    Returns a contiguous [M, N] tensor in x's dtype. Raises ValueError where is_supported is False.
    """
    M, N, K = check_linear_args(x, weight, bias, activation, residual, num_sms)
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=x.dtype, device=x.device)
    if not is_available(x.device):
        raise ValueError(f"x is on {x.device}: linear_persistent needs a CUDA GPU of compute capability 9.0+")
    problem = _tma_problem(x, weight)
    if problem is not None:
        raise ValueError(problem)

    # The SMs to fill; under the interpreter a few programs, fewer than most test shapes' tiles, so that the
    # persistent loop really visits several tiles per program.
    if num_sms is None and is_interpreter():
        programs = _INTERPRETER_PROGRAMS
    else:
        programs = resolve_num_sms(x.device, num_sms)
    precision = dot_precision(x.dtype)
    shared_bytes = lambda config: shared_bytes_estimate(config, x.element_size(), residual is not None)
    filling = filling_mask(_linear_persistent.configs, M, N, programs, pruning_rule(x, precision, shared_bytes))
    if not filling:
        # Too few tiles for a persistent grid at any tile shape (kernels/linear.py splits K instead), or IEEE
        # fp32 products, which the register rule keeps off these wgmma-sized tiles (they would spill).
        return linear(x, weight, bias, activation, residual, num_sms=programs)

    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    # Placeholder block shapes: each config's pre-hook writes its own before the launch.
    x_desc = TensorDescriptor(x, [M, K], [x.stride(0), 1], [16, 16])
    w_desc = TensorDescriptor(weight, [N, K], [weight.stride(0), 1], [16, 16])
    out_desc = TensorDescriptor(out, [M, N], [N, 1], [16, 16])
    # Persistent: at most one program per SM, never more programs than tiles.
    grid = lambda meta: (min(programs, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)
    _linear_persistent_launch[grid](
        x_desc, w_desc, out_desc, bias, residual,
        M, N, K, triton.next_power_of_2(M), filling,
        residual.stride(0) if residual is not None else 0,
        DTYPE=str(x.dtype),
        ACTIVATION=activation or "none",
        INPUT_PRECISION=precision,
    )
    return out
