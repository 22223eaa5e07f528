"""What each hidden_act a BERT-family config.json may name computes, in one table: the GEMM epilogue that
fuses it (the ACTIVATION names of fastbert/kernels/linear.py, which cannot import this package) and
transformers' own function, written as transformers computes it.

"gelu" and "gelu_python" are the exact erf form; "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh" and
"gelu_fast" are all the tanh approximation (they differ only in rounding: gelu_fast writes sqrt(2/pi)
with 10 digits, 3e-12 relative); "silu" and "swish" are x * sigmoid(x). The reference encoder applies
each row's own function, so it reproduces transformers to the last bit it can; the engine computes the
epilogue, in fp32 in the kernel or with PyTorch's own kernel for it (EPILOGUE_FUNCTIONS)."""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gelu_erf_python(x: torch.Tensor) -> torch.Tensor:
    """transformers' "gelu_python"."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh_new(x: torch.Tensor) -> torch.Tensor:
    """transformers' "gelu_new"."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_tanh_python(x: torch.Tensor) -> torch.Tensor:
    """transformers' "gelu_python_tanh"."""
    return x * 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_tanh_fast(x: torch.Tensor) -> torch.Tensor:
    """transformers' "gelu_fast": the tanh approximation with sqrt(2/pi) written to 10 digits."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


gelu_tanh_pytorch = functools.partial(F.gelu, approximate="tanh")


@dataclass(frozen=True)
class Activation:
    epilogue: str  # the GEMM kernel's name for it
    function: Callable[[torch.Tensor], torch.Tensor]  # transformers' function, as transformers computes it


ACTIVATIONS = {
    "gelu": Activation("gelu", F.gelu),
    "gelu_python": Activation("gelu", gelu_erf_python),
    "gelu_new": Activation("gelu_tanh", gelu_tanh_new),
    "gelu_pytorch_tanh": Activation("gelu_tanh", gelu_tanh_pytorch),
    "gelu_python_tanh": Activation("gelu_tanh", gelu_tanh_python),
    "gelu_fast": Activation("gelu_tanh", gelu_tanh_fast),
    "relu": Activation("relu", F.relu),
    "silu": Activation("silu", F.silu),
    "swish": Activation("silu", F.silu),
}

# Each epilogue in plain PyTorch (the torch backend, and the cuBLAS GEMM followed by its activation): the
# function of the hidden_act that is PyTorch's own kernel for it. None: no activation.
EPILOGUE_FUNCTIONS = {
    None: lambda y: y,
    **{ACTIVATIONS[hidden_act].epilogue: ACTIVATIONS[hidden_act].function
       for hidden_act in ("gelu", "gelu_pytorch_tanh", "relu", "silu")},
}
