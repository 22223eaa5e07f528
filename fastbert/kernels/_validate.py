"""Argument checks shared by every launcher: they run before any kernel, so bad input fails with a
message that names the argument instead of a device-side assert or a silent wrong answer."""

import functools
import math

import torch

from ._runtime import is_interpreter

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
FP32_TINY = float(torch.finfo(torch.float32).tiny)  # the smallest normal fp32 value
FP32_MAX = float(torch.finfo(torch.float32).max)


def expected_device_type() -> str:
    return "cpu" if is_interpreter() else "cuda"


def check_tensor(name, tensor, *, ndim=None, dtypes=FLOAT_DTYPES, unit_last_stride=True):
    """Validate one launcher argument; raise TypeError/ValueError naming it."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    # Kernels address raw memory through strides: sparse, nested or mkldnn layouts have none, and a lazily
    # negated or conjugated view would be read without its sign.
    if tensor.layout != torch.strided or tensor.is_nested:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if tensor.is_neg() or tensor.is_conj():
        raise ValueError(f"{name} is a lazily negated or conjugated view: call .resolve_neg() / .resolve_conj()")
    if ndim is not None and tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    if dtypes is not None and tensor.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(tensor.dtype).replace('torch.', '')}; expected one of {allowed}")
    if tensor.dtype == torch.bfloat16:
        check_bf16_supported(name, tensor.device)
    device_type = expected_device_type()
    if tensor.device.type != device_type:
        where = "Triton's interpreter (TRITON_INTERPRET=1)" if device_type == "cpu" else "a CUDA GPU"
        raise ValueError(f"{name} is on {tensor.device} but kernels run on {where}: move it to {device_type}")
    if unit_last_stride and tensor.dim() > 0 and tensor.shape[-1] > 1 and tensor.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dimension, got strides {tensor.stride()}")


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


BF16_MIN_CAPABILITY = (8, 0)  # bf16 tensor-core instructions (and Triton's bf16 support) start with Ampere


def check_bf16_supported(name, device):
    """bfloat16 on a GPU older than Ampere (a T4 is sm_75) has no tensor-core path and Triton does not
    compile it: refuse with a message that says what to use instead, instead of a compiler error."""
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = _capability(index)
    if (major, minor) < BF16_MIN_CAPABILITY:
        raise TypeError(f"{name} is bfloat16, which needs a GPU of compute capability 8.0 or newer; "
                        f"{torch.cuda.get_device_name(index)} is sm_{major}{minor}: use float16 or float32")


def check_same(name, tensor, reference_name, reference, *, dtype=True, device=True):
    if dtype and tensor.dtype != reference.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but {reference_name} has {reference.dtype}")
    if device and tensor.device != reference.device:
        raise ValueError(f"{name} is on {tensor.device} but {reference_name} is on {reference.device}")


def check_positive_fp32(name, value):
    """A Python number the kernel receives as an fp32 scalar: finite, positive and a normal fp32 value, so
    it neither flushes to 0 nor overflows to inf on the way (bool and tensors rejected: a tensor would need
    a host sync)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a positive finite fp32 value, got an integer too large for a float") from None
    if not (math.isfinite(value) and FP32_TINY <= value <= FP32_MAX):
        raise ValueError(f"{name} must be a positive finite fp32 value (in [{FP32_TINY:.3g}, {FP32_MAX:.3g}]), got {value}")
    return value


def check_index_ranges(named_ids):
    """named_ids: (name, ids, number of rows of the table they index). Data-dependent: every min and max is
    read back in one transfer (one host sync), so launchers run it only when check_indices=True."""
    bounds = torch.stack([torch.stack(ids.aminmax()).long() for _, ids, _ in named_ids]).tolist()
    for (name, _, rows), (low, high) in zip(named_ids, bounds, strict=True):
        if low < 0 or high >= rows:
            raise ValueError(f"{name} must lie in [0, {rows}), got values in [{low}, {high}]")


def check_cu_seqlens(cu_seqlens, num_tokens, max_seqlen):
    """cu_seqlens [B + 1] must start at 0, never decrease and end at num_tokens, and no sequence may be
    longer than max_seqlen (the grid covers max_seqlen query rows). Data-dependent: first, last, shortest
    and longest length are read back in one transfer (one host sync). Returns the longest length."""
    cu_seqlens = cu_seqlens.long()  # int32 differences could wrap around and hide a decrease
    lengths = cu_seqlens.diff()
    ends = [cu_seqlens[0], cu_seqlens[-1]]
    if lengths.numel() > 0:
        ends += list(lengths.aminmax())
    stats = torch.stack(ends).tolist()
    first, last = stats[:2]
    shortest, longest = stats[2:] if len(stats) == 4 else (0, 0)
    if first != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {first}")
    if shortest < 0:
        at = int((lengths < 0).nonzero()[0])  # error path only: a second sync is fine here
        pair = cu_seqlens[at : at + 2].tolist()
        raise ValueError(f"cu_seqlens must never decrease, got cu_seqlens[{at}]={pair[0]} > cu_seqlens[{at + 1}]={pair[1]}")
    if last != num_tokens:
        raise ValueError(f"cu_seqlens must end at the number of tokens T={num_tokens}, got {last}")
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is less than the longest sequence ({longest} tokens)")
    return longest


def check_flag(name, value):
    """A launcher's bool option (no truthy stand-ins: check_indices=None must not mean False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")

