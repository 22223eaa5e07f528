"""The four operations a padding-free BERT layer needs, in two interchangeable implementations.

`TritonOps` launches fastbert's kernels (on CUDA, or on CPU tensors through Triton's interpreter; on
CUDA each GEMM shape runs on the faster of the Triton kernel and cuBLAS, see gemm.py);
`TorchOps` runs the same packed algorithm in plain PyTorch, for CPU users. The encoder in model.py
is written once against this interface, so both backends share one data path."""

import importlib
import os
import re
import sys

import torch
import torch.nn.functional as F

from .gemm import GEMMS, Candidate, GemmPicker, torch_linear


class TorchOps:
    """Packed BERT operations in plain PyTorch: [T, H] tokens, sequences delimited by host offsets. Weights
    come as the pieces of fastbert.checkpoint.encoder_weights.EncoderWeights."""

    def embeddings(self, input_ids, position_ids, token_type_ids, embeddings, eps):
        summed = embeddings.word[input_ids] + embeddings.position[position_ids]
        if embeddings.token_type is not None:
            summed = summed + embeddings.token_type[token_type_ids]
        return self.layer_norm(summed, embeddings.norm, eps)

    def linear(self, x, linear, activation=None, residual=None):
        return torch_linear(x, linear.weight, linear.bias, activation, residual)

    def attention(self, q, k, v, packing):
        # Attention alone runs on a [B, max_seqlen] grid, so that one batched SDPA call serves every
        # sequence; the GEMMs around it stay padding-free. scale=1.0: the softmax scale is folded into
        # the Q projection at load.
        batch, longest = packing.batch_size, packing.max_seqlen
        tokens, heads, head_dim = q.shape
        if packing.num_tokens == batch * longest:  # equal lengths: the packed tokens already form the grid
            grid = [t.reshape(batch, longest, heads, head_dim).transpose(1, 2) for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*grid, scale=1.0)
            return out.transpose(1, 2).reshape(tokens, heads, head_dim)
        positions, key_mask = packing.padded_layout
        grid = []
        for t in (q, k, v):
            padded = t.new_zeros(batch * longest, heads, head_dim)
            padded.index_copy_(0, positions, t)
            grid.append(padded.view(batch, longest, heads, head_dim).transpose(1, 2))
        out = F.scaled_dot_product_attention(*grid, attn_mask=key_mask, scale=1.0)
        return out.transpose(1, 2).reshape(batch * longest, heads, head_dim)[positions]

    def layer_norm(self, x, norm, eps, residual=None):
        if residual is not None:
            x = x + residual
        # Statistics in fp32: BERT's eps of 1e-12 vanishes next to fp16 variances.
        return F.layer_norm(x.float(), (x.shape[-1],), norm.weight.float(), norm.bias.float(), eps).to(x.dtype)


class TritonOps:
    """Packed BERT operations as fastbert kernel launches: 7 per layer (4 GEMMs, the residual adds fused into
    the attention-out and FFN-out GEMMs, attention, 2 LayerNorms). On a GPU, a GEMM whose tiles would leave
    SMs idle (a few hundred tokens) splits K and launches a second, reducing kernel (up to 11 per layer), and
    one served by cuBLAS launches its activation or residual add separately."""

    def __init__(self, device, config, gemm="auto"):
        self.kernels = load_kernels(device)
        extra = {}
        persistent = importlib.import_module("fastbert.kernels.linear_persistent")
        if persistent.is_available(device):
            # Hopper and newer (or Triton's interpreter, where gemm='triton_persistent' tests it): the TMA
            # persistent GEMM competes too, where TMA can address the operands.
            extra["triton_persistent"] = Candidate(persistent.linear_persistent, persistent.is_supported)
        elif gemm == "triton_persistent":
            raise ValueError("gemm='triton_persistent' needs a CUDA GPU of compute capability 9.0 or newer")
        self.gemm = GemmPicker(self.kernels.linear, gemm, extra=extra)
        if config.head_dim not in self.kernels.ATTENTION_HEAD_DIMS:
            raise ValueError(
                f"head_dim={config.head_dim} (hidden_size {config.hidden_size} / {config.num_attention_heads} heads) "
                f"is not supported by the triton attention kernel {self.kernels.ATTENTION_HEAD_DIMS}: "
                "use backend='torch'"
            )

    def embeddings(self, input_ids, position_ids, token_type_ids, embeddings, eps):
        return self.kernels.embeddings(
            input_ids, position_ids, embeddings.word, embeddings.position, embeddings.norm.weight,
            embeddings.norm.bias, eps,
            # A family without token types (DistilBERT) has no table: its (all-zero) type ids are not read.
            token_type_ids=token_type_ids if embeddings.token_type is not None else None,
            token_type_embeddings=embeddings.token_type,
            check_indices=False,  # the encoder validated every id once, before any launch
        )

    def linear(self, x, linear, activation=None, residual=None):
        return self.gemm(x, linear.weight, linear.bias, activation, residual)

    def attention(self, q, k, v, packing):
        # Packing built cu_seqlens from the validated mask: no need to read it back (a sync) every layer.
        return self.kernels.attention(q, k, v, packing.cu_seqlens, packing.max_seqlen, scale=1.0,
                                      check_indices=False)

    def layer_norm(self, x, norm, eps, residual=None):
        return self.kernels.layer_norm(x, norm.weight, norm.bias, eps, residual=residual)


def load_kernels(device):
    """Import fastbert.kernels in the mode `device` needs.

    triton.jit decides at decoration time whether a kernel runs on the GPU or through the CPU
    interpreter, so the choice is made here, at first use, instead of at `import fastbert`."""
    device = torch.device(device)
    if device.type == "cpu":
        check_interpreter_support()
    loaded = sys.modules.get("fastbert.kernels")
    if loaded is None:
        if device.type == "cpu":
            already_set = "TRITON_INTERPRET" in os.environ
            os.environ["TRITON_INTERPRET"] = "1"
            if "triton" in sys.modules:  # imported before us, by sentence-transformers, torch or the user
                try:
                    interpret_imported_triton()
                except RuntimeError:
                    # Refused (a GPU machine): leave the environment as it was, so a later CUDA model in this
                    # process still gets compiled kernels.
                    if not already_set:
                        del os.environ["TRITON_INTERPRET"]
                    raise
        loaded = importlib.import_module("fastbert.kernels")
    interpreted = loaded.is_interpreter()
    if device.type == "cpu" and not interpreted:
        raise RuntimeError(
            "the triton backend on CPU needs Triton's interpreter, but fastbert.kernels was already imported "
            "for the GPU in this process: use backend='torch' on CPU, or set TRITON_INTERPRET=1 before importing"
        )
    if device.type == "cuda" and interpreted:
        raise RuntimeError(
            "fastbert.kernels was imported in interpreter mode (TRITON_INTERPRET=1), which cannot run CUDA "
            "tensors: unset TRITON_INTERPRET, or use backend='torch'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported by the triton backend (cuda or cpu)")
    return loaded


def interpret_imported_triton():
    """Make an already imported Triton's own library functions (tl.sum, tl.cdiv, tl.sigmoid, ...) run
    inside interpreted kernels.

    triton.jit picks compiled or interpreted when it decorates a function, so the functions Triton
    decorated at its import, before TRITON_INTERPRET was set, are compiled-kernel functions that the
    interpreter cannot call. Each is decorated again here, now that the interpreter is on, exactly as
    an import with TRITON_INTERPRET=1 would have: in triton.language's modules and as tensor methods
    (nothing to do where Triton was imported with the interpreter on). The switch is for the whole
    process; on a machine with a GPU it would break other libraries' GPU kernels, so there the user
    must choose (the error says how)."""
    import triton
    from triton.runtime.jit import JITFunction

    modules = [module for name, module in list(sys.modules.items())
               if module is not None and (name == "triton.language" or name.startswith("triton.language."))]
    namespaces = [*modules, *(value for module in modules for value in vars(module).values()
                              if isinstance(value, type) and value.__module__ == module.__name__)]
    compiled = [(namespace, name, value) for namespace in namespaces for name, value in vars(namespace).items()
                if isinstance(value, JITFunction)]
    if not compiled:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "the triton backend on CPU runs through Triton's interpreter, but triton is already imported for "
            "the GPU in this process (switching it would break GPU kernels): set TRITON_INTERPRET=1 in the "
            "environment before starting Python, run on device='cuda', or use backend='torch' on CPU"
        )
    redecorated = {}  # one interpreted function per original, however many names it has
    for namespace, name, function in compiled:
        if id(function) not in redecorated:
            redecorated[id(function)] = triton.jit(function.fn)
        setattr(namespace, name, redecorated[id(function)])


def _version_tuple(version):
    """(major, minor) of a version string such as '3.6.0', '2.4.0rc1' or '3.7.0+git1234'."""
    major_minor = re.match(r"(\d+)\.(\d+)", version)
    return (int(major_minor[1]), int(major_minor[2])) if major_minor else (0, 0)


def check_interpreter_support():
    """Triton 3.6's interpreter converts 1-element arrays to ints, which NumPy 2.4 made an error: every
    kernel loop then fails deep inside Triton. Say so plainly instead (checked: 3.6 fails, 3.7 and 3.9 work)."""
    # Versions from package metadata: importing triton here, before TRITON_INTERPRET is set, would fix
    # Triton's interpreter settings too early and break interpreted kernels that call helpers.
    from importlib.metadata import PackageNotFoundError, version

    try:
        triton_version, numpy_version = version("triton"), version("numpy")
    except PackageNotFoundError:
        return
    if _version_tuple(triton_version) < (3, 7) and _version_tuple(numpy_version) >= (2, 4):
        raise RuntimeError(
            f"Triton {triton_version}'s CPU interpreter does not work with NumPy {numpy_version}: "
            "install 'numpy<2.4' or 'triton>=3.7', or use backend='torch' on CPU"
        )


def make_ops(backend, device, config, gemm="auto"):
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    return TritonOps(device, config, gemm) if backend == "triton" else TorchOps()
