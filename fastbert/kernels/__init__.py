"""fastbert's Triton kernels. Imports only torch and triton; knows nothing of BERT.

Whether the kernels run compiled on a CUDA GPU or on CPU tensors through Triton's interpreter is decided
once, by _runtime (imported first, before any kernel is defined): TRITON_INTERPRET in the environment
wins, otherwise the interpreter runs them exactly when there is no CUDA device."""

# First, before any kernel module (each imports triton and defines kernels): the mode is chosen here.
from ._runtime import check_interpreter_support, is_interpreter
from .attention import HEAD_DIMS as ATTENTION_HEAD_DIMS
from .attention import attention
from .embeddings import embeddings
from .layer_norm import layer_norm
from .linear import linear
from .linear_persistent import linear_persistent

__all__ = ["ATTENTION_HEAD_DIMS", "attention", "check_interpreter_support", "embeddings", "is_interpreter",
           "layer_norm", "linear", "linear_persistent"]
