"""The triton backend: the packed BERT operations as launches of fastbert's kernels, on a CUDA GPU or, on
CPU tensors, through Triton's interpreter (fastbert/kernels/_runtime.py chooses which, once per process).
The only fastbert module outside fastbert/kernels that imports them; backends.make_ops reaches it."""

import torch

from fastbert import kernels
from fastbert.kernels.linear_persistent import is_available as persistent_is_available
from fastbert.kernels.linear_persistent import is_supported as persistent_is_supported

from .gemm import Candidate, GemmPicker


def check_kernel_mode(device):
    """The kernels run where this process's kernel mode says: compiled on CUDA, interpreted on CPU."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported by the triton backend (cuda or cpu)")
    if device.type == "cpu":
        if not kernels.is_interpreter():
            raise RuntimeError(
                "the triton backend on CPU needs Triton's interpreter, but fastbert's kernels are compiled for "
                "the GPU in this process (a CUDA device is present, or TRITON_INTERPRET=0): use "
                "backend='torch' on CPU, or set TRITON_INTERPRET=1 before starting Python"
            )
        kernels.check_interpreter_support()
    elif kernels.is_interpreter():
        raise RuntimeError(
            "fastbert's kernels run through Triton's interpreter in this process (TRITON_INTERPRET is set, or "
            "no CUDA device was found when they were loaded), which cannot run CUDA tensors: unset "
            "TRITON_INTERPRET, or use backend='torch'"
        )


class TritonOps:
    """Packed BERT operations as fastbert kernel launches: 7 per layer (4 GEMMs, the residual adds fused into
    the attention-out and FFN-out GEMMs, attention, 2 LayerNorms). On a GPU, a GEMM whose tiles would leave
    SMs idle (a few hundred tokens) splits K and launches a second, reducing kernel (up to 11 per layer), and
    one served by cuBLAS launches its activation or residual add separately."""

    def __init__(self, device, config, gemm="auto"):
        check_kernel_mode(device)
        # The launchers, through one handle: a test counts launches by swapping it.
        self.kernels = kernels
        extra = {}
        if persistent_is_available(device):
            # Hopper and newer (or Triton's interpreter, where gemm='triton_persistent' tests it): the TMA
            # persistent GEMM competes too, where TMA can address the operands.
            extra["triton_persistent"] = Candidate(kernels.linear_persistent, persistent_is_supported)
        elif gemm == "triton_persistent":
            raise ValueError("gemm='triton_persistent' needs a CUDA GPU of compute capability 9.0 or newer")
        self.gemm = GemmPicker(kernels.linear, gemm, extra=extra)
        if config.head_dim not in kernels.ATTENTION_HEAD_DIMS:
            raise ValueError(
                f"head_dim={config.head_dim} (hidden_size {config.hidden_size} / {config.num_attention_heads} heads) "
                f"is not supported by the triton attention kernel {kernels.ATTENTION_HEAD_DIMS}: use backend='torch'"
            )

    def embeddings(self, input_ids, position_ids, token_type_ids, embedding_weights, eps):
        table = embedding_weights
        return self.kernels.embeddings(
            input_ids, position_ids, table.word, table.position, table.norm.weight, table.norm.bias, eps,
            # A family without token types (DistilBERT) has no table: its (all-zero) type ids are not read.
            token_type_ids=token_type_ids if table.token_type is not None else None,
            token_type_embeddings=table.token_type,
            check_indices=False,  # the encoder validated every id once, before any launch
        )

    def linear(self, x, linear, activation=None, residual=None, glu=False):
        # glu: linear.weight is [2N, K]; out = act(x @ W[:N].T + b[:N]) * (x @ W[N:].T + b[N:]), one launch.
        return self.gemm(x, linear.weight, linear.bias, activation, residual, glu=glu)

    def attention(self, q, k, v, packing, *, window=None, position_bias=None, rotary=None):
        # Packing built cu_seqlens from the validated mask: no need to read it back (a sync) every layer.
        return self.kernels.attention(q, k, v, packing.cu_seqlens, packing.max_seqlen, scale=1.0, check_indices=False,
                                      window=window, position_bias=position_bias, rotary=rotary)

    def layer_norm(self, x, norm, eps, residual=None):
        return self.kernels.layer_norm(x, norm.weight, norm.bias, eps, residual=residual)
