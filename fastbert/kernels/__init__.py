"""fastbert's Triton kernels. Imports only torch and triton; knows nothing of BERT.

Set TRITON_INTERPRET=1 *before* importing this package to run the kernels on CPU tensors through
Triton's interpreter (fastbert does that for you when it picks the triton backend on a CPU)."""

from ._validate import is_interpreter
from .attention import HEAD_DIMS as ATTENTION_HEAD_DIMS
from .attention import attention
from .embeddings import embeddings
from .layer_norm import layer_norm
from .linear import linear
from .linear_persistent import linear_persistent

__all__ = ["ATTENTION_HEAD_DIMS", "attention", "embeddings", "is_interpreter", "layer_norm", "linear",
           "linear_persistent"]
