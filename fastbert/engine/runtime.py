"""Where and how the encoder runs: the one home of "is this device, dtype and backend valid here".

FastBertModel resolves its options with resolve_device_dtype_backend; the CLI and the worker pool check
the devices they are given with check_device, so every caller gets the same rules and messages."""

import torch

from fastbert.defaults import BACKENDS, DTYPE_NAMES

DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}


def check_device(device, name="device"):
    """'cpu', 'cuda' or 'cuda:N' (a string or torch.device) -> a torch.device this machine has, a CUDA
    device with its index filled in; else a ValueError whose message starts with `name` (the argument or
    option the device came from)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:  # torch's message lists twenty device types; ours names the choices
        raise ValueError(f"{name} must be cpu, cuda or cuda:N, got {device!r}") from err
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be cpu, cuda or cuda:N, got {str(parsed)!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {parsed} but no CUDA GPU is available")
        count = torch.cuda.device_count()
        if parsed.index is None:  # the current device, without creating a CUDA context just to ask
            parsed = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)
        if parsed.index >= count:
            raise ValueError(f"{name} is {parsed} but this machine has {count} CUDA device(s)")
    return parsed


def resolve_device_dtype_backend(device=None, dtype=None, backend="auto"):
    """Defaults: CUDA in fp16 when a GPU is present, else CPU in fp32; 'auto' = triton on CUDA, torch on CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type == "cuda" and dtype == torch.bfloat16:
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 0):
            raise ValueError(f"bfloat16 needs a GPU of compute capability 8.0 or newer (Ampere); "
                             f"{torch.cuda.get_device_name(device)} is sm_{major}{minor}: use dtype='float16' "
                             "(or float32)")
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        # Triton's interpreter computes bf16 arithmetic wrongly (silently); refuse rather than mislead.
        raise ValueError("the triton backend on CPU (Triton's interpreter) cannot run bfloat16: use "
                         "backend='torch', or float32/float16")
    return device, dtype, backend
