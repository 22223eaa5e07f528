"""Property tests: every kernel on random ragged shapes and dtypes against the float64 references, by the
rule of tests/tolerances.py. Shapes stay tiny (the interpreter's time grows with every element) but cross
the interpreter's tile sizes (64) where that is where edges live. Example counts come from the hypothesis
profile registered in tests/conftest.py."""


import pytest
import torch

from fastbert.kernels.attention import HEAD_DIMS, attention
from fastbert.kernels.embeddings import embeddings
from fastbert.kernels.layer_norm import layer_norm
from fastbert.kernels.linear import linear
from fastbert.kernels.linear_persistent import is_available, linear_persistent
from tests.conftest import HAS_CUDA
from tests.kernels.linear_cases import make_inputs
from tests.kernels.references import attention_ref, embeddings_ref, layer_norm_ref, linear_ref
from tests.tolerances import assert_matches_reference

hypothesis = pytest.importorskip("hypothesis")  # the dev extra; a bare GPU box skips these tests
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# bf16 arithmetic is wrong under the interpreter (see tests/conftest.py): GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**16)
activations = st.sampled_from([None, "gelu", "gelu_tanh", "relu"])


def _randn(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, device=device) * scale).to(dtype)


def _check_gemm(gemm, M, N, K, dtype, epilogue, num_sms, seed, device, backend):
    has_bias, activation, has_residual = epilogue
    torch.manual_seed(seed)
    x, weight, bias = make_inputs(M, N, K, dtype, device, bias=has_bias)
    residual = _randn((M, N), dtype, device) if has_residual else None
    out = gemm(x, weight, bias, activation, residual, num_sms=num_sms)
    assert out.shape == (M, N) and out.dtype == dtype and out.is_contiguous()
    assert_matches_reference(out, linear_ref, x, weight, bias, activation, residual=residual, backend=backend)


# bias, activation, residual; num_sms: the SM count the grid must fill (None: the device's, 1 under the
# interpreter), up to more programs than the tiles give, where K is split.
epilogues = st.tuples(st.booleans(), activations, st.booleans())
sm_counts = st.none() | st.integers(1, 200)


@given(M=st.integers(0, 70), N=st.integers(1, 70), K=st.integers(1, 200), dtype=dtypes, epilogue=epilogues,
       num_sms=sm_counts, seed=seeds)
def test_linear_property(M, N, K, dtype, epilogue, num_sms, seed, device, backend):
    _check_gemm(linear, M, N, K, dtype, epilogue, num_sms, seed, device, backend)


@given(M=st.integers(0, 70), n_blocks=st.integers(1, 9), k_blocks=st.integers(1, 20), dtype=dtypes,
       epilogue=epilogues, num_sms=sm_counts, seed=seeds)
def test_linear_persistent_property(M, n_blocks, k_blocks, dtype, epilogue, num_sms, seed, device, backend):
    """N and K in steps of 8 elements: TMA needs 16-byte rows, which 8 fp16 (or fp32) elements always give."""
    if not is_available(device):
        return  # a GPU older than sm_90: test_linear_persistent.py skips it likewise
    _check_gemm(linear_persistent, M, 8 * n_blocks, 8 * k_blocks, dtype, epilogue, num_sms, seed, device, backend)


@given(lengths=st.lists(st.integers(0, 70), min_size=1, max_size=4), heads=st.integers(1, 3),
       head_dim=st.sampled_from(HEAD_DIMS), dtype=dtypes, fused_qkv=st.booleans(),
       scale=st.none() | st.floats(0.05, 2.0), magnitude=st.sampled_from([1.0, 4.0]), seed=seeds)
def test_attention_property(lengths, heads, head_dim, dtype, fused_qkv, scale, magnitude, seed, device, backend):
    torch.manual_seed(seed)
    tokens = sum(lengths)
    if fused_qkv:  # views of one [T, 3, heads, head_dim] buffer, as fastbert passes them
        q, k, v = _randn((tokens, 3, heads, head_dim), dtype, device, magnitude).unbind(1)
    else:
        q, k, v = (_randn((tokens, heads, head_dim), dtype, device, magnitude) for _ in range(3))
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=device)
    out = attention(q, k, v, cu_seqlens, max(lengths), scale=scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert_matches_reference(out, attention_ref, q, k, v, cu_seqlens, scale=scale, backend=backend)


@given(M=st.integers(0, 20), N=st.integers(1, 300), dtype=dtypes, has_residual=st.booleans(),
       fp32_params=st.booleans(), eps=st.sampled_from([1e-12, 1e-5, 0.1]), offset=st.sampled_from([0.0, 30.0]),
       seed=seeds)
def test_layer_norm_property(M, N, dtype, has_residual, fp32_params, eps, offset, seed, device, backend):
    torch.manual_seed(seed)
    param_dtype = torch.float32 if fp32_params else dtype
    x = (torch.randn(M, N, device=device) + offset).to(dtype)
    residual = _randn((M, N), dtype, device) if has_residual else None
    weight = (1 + 0.1 * torch.randn(N, device=device)).to(param_dtype)
    bias = (0.1 * torch.randn(N, device=device)).to(param_dtype)
    out = layer_norm(x, weight, bias, eps, residual=residual)
    assert out.shape == (M, N) and out.dtype == dtype
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, eps, residual, backend=backend)


@given(T=st.integers(0, 40), H=st.integers(1, 200), vocab=st.integers(1, 50), positions=st.integers(1, 40),
       types=st.sampled_from(["ids", "type0", "none"]), type_rows=st.integers(1, 3),
       index_dtypes=st.tuples(*[st.sampled_from([torch.int32, torch.int64])] * 3), dtype=dtypes,
       fp32_params=st.booleans(), seed=seeds)
def test_embeddings_property(T, H, vocab, positions, types, type_rows, index_dtypes, dtype, fp32_params, seed,
                             device, backend):
    torch.manual_seed(seed)
    param_dtype = torch.float32 if fp32_params else dtype
    word, position = _randn((vocab, H), dtype, device), _randn((positions, H), dtype, device)
    token_type = _randn((type_rows, H), dtype, device) if types != "none" else None
    weight = (1 + 0.1 * torch.randn(H, device=device)).to(param_dtype)
    bias = (0.1 * torch.randn(H, device=device)).to(param_dtype)
    input_ids = torch.randint(0, vocab, (T,), device=device, dtype=index_dtypes[0])
    position_ids = torch.randint(0, positions, (T,), device=device, dtype=index_dtypes[1])
    token_type_ids = torch.randint(0, type_rows, (T,), device=device, dtype=index_dtypes[2]) if types == "ids" else None
    out = embeddings(input_ids, position_ids, word, position, weight, bias, 1e-12,
                     token_type_ids=token_type_ids, token_type_embeddings=token_type)
    assert out.shape == (T, H) and out.dtype == dtype
    assert_matches_reference(out, embeddings_ref, input_ids, position_ids, token_type_ids, word, position,
                             token_type, weight, bias, 1e-12, backend=backend)
