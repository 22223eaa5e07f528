"""Argument checks shared by every launcher: they run before any kernel, so bad input fails with a
message that names the argument instead of a device-side assert or a silent wrong answer."""

import functools
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


# triton.jit decides once, when it decorates a kernel, whether the kernel is interpreted; the mode
# is therefore captured when this package is imported, not re-read from the environment later.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_interpreter() -> bool:
    """True when this package's kernels run on CPU tensors through Triton's interpreter."""
    return _INTERPRETER


def expected_device_type() -> str:
    return "cpu" if is_interpreter() else "cuda"


def check_tensor(name, tensor, *, ndim=None, dtypes=FLOAT_DTYPES, unit_last_stride=True):
    """Validate one launcher argument; raise TypeError/ValueError naming it."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
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


@functools.cache
def _max_shared_bytes(device_index: int) -> int:
    import triton

    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def max_shared_bytes(tensor) -> int:
    """Shared memory one block may use on `tensor`'s GPU: the limit configs are pruned against."""
    index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    return _max_shared_bytes(index)
