"""fastbert's Triton kernels. Imports only torch and triton; knows nothing of BERT.

Set TRITON_INTERPRET=1 *before* importing this package to run the kernels on CPU tensors through
Triton's interpreter (fastbert does that for you when it picks the triton backend on a CPU)."""

from ._validate import is_interpreter

__all__ = ["is_interpreter"]
