"""Launch rules every tl.dot kernel shares (linear, linear_persistent, attention): the products' precision,
and the one pruning rule their config lists are filtered by. Host-side only; imports torch and triton."""

import functools

import torch
import triton

from ._runtime import is_interpreter


def dot_precision(dtype) -> str:
    """tl.dot's input_precision: fp32 operands get IEEE products unless PyTorch allows TF32 for its own
    matmuls (torch.backends.cuda.matmul.allow_tf32); 16-bit operands run on tensor cores whatever the flag
    ("tf32" is then ignored)."""
    allow_tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if dtype != torch.float32 or allow_tf32 else "ieee"


def fits_registers(config: triton.Config, input_precision: str) -> bool:
    """The register rule: IEEE fp32 products run on CUDA cores (FMA), which hold operand fragments in
    registers beside the fp32 product tile; past 32 of its values per thread ptxas spills (compiled for
    sm_90: 64x64 on 4 warps fits, 128x64 spills). The product tile is BLOCK_M x BLOCK_N: for a GEMM the
    output tile; for attention the score tile, where the rule drops the configs that spill most, while the
    ones it keeps still spill some in IEEE fp32 (the output tile is live beside it; compiled for sm_90).
    Tensor-core products (16-bit, TF32) fit every config."""
    tiles = config.kwargs
    return input_precision != "ieee" or tiles["BLOCK_M"] * tiles["BLOCK_N"] <= 32 * 32 * config.num_warps


@functools.cache
def _max_shared_bytes(device_index: int) -> int:
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def max_shared_bytes(tensor) -> int:
    """Shared memory one block may use on `tensor`'s GPU: the limit configs are pruned against."""
    index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    return _max_shared_bytes(index)


def pruning_rule(x, input_precision, shared_bytes):
    """The one pruning rule of every tl.dot config list, as a predicate on a config: it fits the register
    file (fits_registers) and the shared memory of x's GPU (shared_bytes(config), the kernel's own
    estimate, at most the device's limit; no limit under the interpreter)."""
    limit = None if is_interpreter() else max_shared_bytes(x)
    return lambda config: fits_registers(config, input_precision) and (limit is None or shared_bytes(config) <= limit)
