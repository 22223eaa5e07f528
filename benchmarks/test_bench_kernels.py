"""Kernel benchmarks: each fastbert kernel against its PyTorch equivalent on the same inputs.

BERT-base shapes (4096 tokens, hidden 768): QKV, FFN up (+GELU) and FFN down GEMMs; attention at seq
128 and 512 with head_dim 64; LayerNorm with and without the residual add; the embeddings gather.
On GPU every case cycles through enough copies of its inputs to exceed the L2 cache, so the bandwidth
numbers are HBM numbers, not cache numbers, and is timed as replays of a CUDA graph of 20 calls, so the
numbers are device time, not launcher time (both sides of a comparison get the same treatment).

Run: python -m pytest benchmarks/test_bench_kernels.py --benchmark-enable --benchmark-json=kernels.json
"""

import contextlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import flops

ROTATE_BYTES = 256 * 2**20  # several times the largest L2 (H100/H200: 50-60 MB)
EPS = 1e-12  # BERT's LayerNorm eps

# name: (N, K, activation); every BERT projection has a bias
LINEAR_SHAPES = {"qkv": (2304, 768, None), "ffn_up": (3072, 768, "gelu"), "ffn_down": (768, 3072, None)}
TINY_LINEAR_SHAPES = {"qkv": (96, 64, None), "ffn_up": (128, 64, "gelu"), "ffn_down": (64, 128, None)}
LINEAR_IMPLS = ("triton", "triton_persistent", "torch_matmul", "torch_linear", "torch_unfused")
ACTIVATIONS = {None: lambda y: y, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
               "relu": F.relu}


def _sizes(size):
    """tokens (M) for GEMM/LayerNorm/embeddings, attention (seq, total tokens) pairs, hidden, heads."""
    if size == "tiny":
        return {"tokens": 64, "attention": [(16, 32)], "hidden": 64, "heads": 2, "head_dim": 32,
                "linear": TINY_LINEAR_SHAPES, "vocab": 128}
    attention_tokens = (8192,) if size == "quick" else (4096, 16384)
    return {"tokens": 4096, "attention": [(s, t) for s in (128, 512) for t in attention_tokens],
            "hidden": 768, "heads": 12, "head_dim": 64, "linear": LINEAR_SHAPES, "vocab": 30522}


def pytest_generate_tests(metafunc):
    from benchmarks.conftest import bench_settings

    settings = bench_settings(metafunc.config)
    if not settings.gpu and settings.size != "tiny":
        # Kernels on CPU run through Triton's interpreter: only the tiny smoke sizes are meaningful.
        names = [n for n in ("dtype", "sizes", "shape", "impl", "seq_tokens", "residual")
                 if n in metafunc.fixturenames]
        skip = pytest.mark.skip(reason="kernel benchmarks need a GPU (or --bench-size tiny)")
        metafunc.parametrize(names, [pytest.param(*[None] * len(names), marks=skip)])
        return
    sizes = _sizes(settings.size)
    dtype_names = [str(d).replace("torch.", "") for d in settings.dtypes]
    metafunc.parametrize("dtype", settings.dtypes, ids=dtype_names)
    metafunc.parametrize("sizes", [sizes], ids=[settings.size])
    name = metafunc.function.__name__
    if name == "test_linear":
        metafunc.parametrize("shape", list(sizes["linear"]))
        metafunc.parametrize("impl", LINEAR_IMPLS)
    elif name == "test_attention":
        pairs = sizes["attention"]
        metafunc.parametrize("seq_tokens", pairs, ids=[f"s{s}-t{t}" for s, t in pairs])
        metafunc.parametrize("impl", ("triton", "sdpa"))
    elif name == "test_layer_norm":
        metafunc.parametrize("residual", (True, False), ids=("residual", "plain"))
        metafunc.parametrize("impl", ("triton", "torch", "same_bytes"))
    elif name == "test_embeddings":
        metafunc.parametrize("impl", ("triton", "torch"))


def _copies(settings, set_bytes, make):
    """Input sets to cycle through: enough to exceed L2 on GPU, one on CPU."""
    count = min(16, max(1, math.ceil(ROTATE_BYTES / set_bytes))) if settings.gpu else 1
    return [make() for _ in range(count)]


def _cycling(sets, op):
    it = itertools.cycle(sets)
    return lambda: op(*next(it))


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def test_linear(measure, settings, sizes, dtype, shape, impl):
    n, k, activation = sizes["linear"][shape]
    m, dev = sizes["tokens"], settings.device
    weight = torch.randn(n, k, device=dev, dtype=dtype) / math.sqrt(k)
    bias = torch.randn(n, device=dev, dtype=dtype)
    size = flops.elem_bytes(dtype)
    sets = _copies(settings, size * m * k, lambda: (torch.randn(m, k, device=dev, dtype=dtype),))
    act = ACTIVATIONS[activation]
    if impl == "triton":
        from fastbert.kernels.linear import linear

        fn = _cycling(sets, lambda x: linear(x, weight, bias, activation))
    elif impl == "triton_persistent":  # the TMA kernel, sm_90+ only
        from fastbert.kernels.linear_persistent import is_supported, linear_persistent

        if not is_supported(sets[0][0], weight):
            pytest.skip("linear_persistent needs sm_90+ and TMA-addressable operands")
        fn = _cycling(sets, lambda x: linear_persistent(x, weight, bias, activation))
    elif impl == "torch_matmul":  # cuBLAS GEMM alone: the ceiling the fused epilogue is judged against
        fn = _cycling(sets, lambda x: torch.matmul(x, weight.t()))
    elif impl == "torch_linear":  # what eager transformers runs: addmm with the bias, then the activation
        fn = _cycling(sets, lambda x: act(F.linear(x, weight, bias)))
    else:  # matmul, then bias and activation as separate kernels
        fn = _cycling(sets, lambda x: act(torch.matmul(x, weight.t()) + bias))
    measure(fn, cuda_graph=True, case=f"linear {shape} M={m} N={n} K={k} act={activation} {_dtype_name(dtype)}",
            impl=impl, ours=impl.startswith("triton"), op="linear", dtype=_dtype_name(dtype), bound="compute",
            params={"M": m, "N": n, "K": k, "bias": True, "activation": activation, "shape": shape},
            flops=flops.gemm_flops(m, n, k), bytes=flops.gemm_bytes(m, n, k, size, bias=True))


def test_attention(measure, settings, sizes, dtype, seq_tokens, impl):
    seq, tokens = seq_tokens
    batch, heads, head_dim, dev = max(1, tokens // seq), sizes["heads"], sizes["head_dim"], settings.device
    tokens = batch * seq
    size = flops.elem_bytes(dtype)
    # Q, K and V as strided views of one fused projection output, exactly as the encoder produces them.
    sets = _copies(settings, 3 * tokens * heads * head_dim * size,
                   lambda: (torch.randn(batch, seq, 3, heads, head_dim, device=dev, dtype=dtype),))
    cu_seqlens = torch.arange(0, tokens + 1, seq, device=dev, dtype=torch.int32)
    flash = settings.gpu and dtype in (torch.float16, torch.bfloat16)
    if impl == "triton":
        from fastbert.kernels.attention import attention

        def op(qkv):
            q, k, v = qkv.view(tokens, 3, heads, head_dim).unbind(1)
            return attention(q, k, v, cu_seqlens, seq, check_indices=False)  # as the encoder calls it: no sync

        context, name = contextlib.nullcontext(), "triton"
    else:
        def op(qkv):
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, heads, S, head_dim] views
            return F.scaled_dot_product_attention(q, k, v)

        if flash:  # pin the flash backend: the baseline to beat, never a silent fallback to math
            from torch.nn.attention import SDPBackend, sdpa_kernel

            context, name = sdpa_kernel([SDPBackend.FLASH_ATTENTION]), "sdpa_flash"
        else:
            context, name = contextlib.nullcontext(), "sdpa"
    with context:
        measure(_cycling(sets, op), cuda_graph=True,
                case=f"attention seq={seq} batch={batch} heads={heads} d={head_dim} {_dtype_name(dtype)}",
                impl=name, ours=impl == "triton", op="attention",
                dtype=_dtype_name(dtype), bound="compute",
                params={"seq": seq, "batch": batch, "heads": heads, "head_dim": head_dim, "tokens": tokens},
                flops=flops.attention_flops([seq] * batch, heads, head_dim),
                bytes=flops.attention_bytes(tokens, heads, head_dim, size))

def test_layer_norm(measure, settings, sizes, dtype, residual, impl):
    rows, hidden, dev = sizes["tokens"], sizes["hidden"], settings.device
    weight = torch.rand(hidden, device=dev, dtype=dtype) + 0.5
    bias = torch.randn(hidden, device=dev, dtype=dtype)
    size = flops.elem_bytes(dtype)
    per_set = (2 if residual else 1) * rows * hidden * size
    sets = _copies(settings, per_set, lambda: tuple(
        torch.randn(rows, hidden, device=dev, dtype=dtype) for _ in range(2 if residual else 1)))
    if impl == "triton":
        from fastbert.kernels.layer_norm import layer_norm

        op = lambda x, r=None: layer_norm(x, weight, bias, EPS, residual=r)  # noqa: E731
    elif impl == "same_bytes":
        # The ceiling at this size: PyTorch moving the same bytes with no arithmetic (x + residual, or a
        # copy of x). Its % of peak says how much of the HBM target any kernel of this size can reach.
        op = lambda x, r=None: x.clone() if r is None else torch.add(x, r)  # noqa: E731
    else:
        op = lambda x, r=None: F.layer_norm(x if r is None else x + r, (hidden,), weight, bias, EPS)  # noqa: E731
    measure(_cycling(sets, op), cuda_graph=True,
            case=f"layer_norm{'+residual' if residual else ''} [{rows}, {hidden}] {_dtype_name(dtype)}",
            impl=impl, ours=impl == "triton", op="layer_norm",
            dtype=_dtype_name(dtype), bound="memory",
            params={"rows": rows, "hidden": hidden, "residual": residual},
            flops=None, bytes=flops.layer_norm_bytes(rows, hidden, size, residual=residual))


def test_embeddings(measure, settings, sizes, dtype, impl):
    tokens, hidden, vocab, dev = sizes["tokens"], sizes["hidden"], sizes["vocab"], settings.device
    seq = min(128, tokens)
    word = torch.randn(vocab, hidden, device=dev, dtype=dtype)
    position = torch.randn(512, hidden, device=dev, dtype=dtype)
    token_type = torch.randn(2, hidden, device=dev, dtype=dtype)
    ln_weight = torch.rand(hidden, device=dev, dtype=dtype) + 0.5
    ln_bias = torch.randn(hidden, device=dev, dtype=dtype)
    positions = torch.arange(tokens, device=dev) % seq
    sets = _copies(settings, tokens * hidden * flops.elem_bytes(dtype), lambda: (
        torch.randint(0, vocab, (tokens,), device=dev), torch.randint(0, 2, (tokens,), device=dev)))
    if impl == "triton":
        from fastbert.kernels.embeddings import embeddings

        op = lambda ids, types: embeddings(ids, positions, word, position, ln_weight, ln_bias, EPS,  # noqa: E731
                                           token_type_ids=types, token_type_embeddings=token_type,
                                           check_indices=False)  # as the encoder calls it: no host sync
    else:
        op = lambda ids, types: F.layer_norm(  # noqa: E731
            word[ids] + position[positions] + token_type[types], (hidden,), ln_weight, ln_bias, EPS)
    measure(_cycling(sets, op), cuda_graph=True,
            case=f"embeddings tokens={tokens} vocab={vocab} hidden={hidden} {_dtype_name(dtype)}",
            impl=impl, ours=impl == "triton", op="embeddings",
            dtype=_dtype_name(dtype), bound="memory",
            params={"tokens": tokens, "hidden": hidden, "vocab": vocab, "token_types": True},
            flops=None, bytes=flops.embeddings_bytes(tokens, hidden, flops.elem_bytes(dtype)))
