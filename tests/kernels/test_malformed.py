"""Malformed input to every public kernel launcher must raise TypeError or ValueError before any launch:
never a crash (an out-of-bounds access kills the interpreter's process, or the GPU context), never another
exception type from deep inside torch or Triton.

Each test draws a valid call, then tries every corruption of each argument that makes it invalid by
construction, one at a time:
not a tensor, a dtype no launcher accepts, a dimension too many or too few, a shape that disagrees with
another argument, a foreign device, a sparse layout, a lazily negated view, a non-unit last stride, or a
bad scalar. The index contents (ids, cu_seqlens) are drawn at random instead, and the launcher must accept
exactly the valid ones, and then give the reference's answer."""

import math

import pytest
import torch

from fastbert.kernels.attention import attention
from fastbert.kernels.embeddings import embeddings
from fastbert.kernels.layer_norm import layer_norm
from fastbert.kernels.linear import linear
from fastbert.kernels.linear_persistent import is_available, linear_persistent
from tests.kernels.references import attention_ref, embeddings_ref
from tests.tolerances import assert_matches_reference

hypothesis = pytest.importorskip("hypothesis")  # the dev extra; a bare GPU box skips these tests
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Dtypes no argument of any launcher accepts, for float arguments and for index arguments.
NOT_FLOAT = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.float64,
             torch.complex64]
NOT_INDEX = [torch.int8, torch.uint8, torch.int16, torch.bool, torch.float16, torch.float32, torch.float64]
BAD_POSITIVE_FLOATS = [0.0, -1e-5, float("nan"), float("inf"), float("-inf"), 1e-50, 1e300, 10**400, True, "1e-12",
                       torch.tensor(1e-12), [1e-12]]


def _call(launcher, args):
    """Call and require a TypeError or ValueError with a message; anything else fails the test."""
    with pytest.raises((TypeError, ValueError)) as error:
        launcher(**args)
    assert str(error.value), "the error must say what is wrong"


def _tensor_corruptions(name, tensor, index):
    """(label, corrupted value) pairs that make `tensor` invalid wherever a launcher takes it."""
    bad_dtypes = NOT_INDEX if index else NOT_FLOAT
    corruptions = [("list", tensor.tolist()), ("numpy", tensor.cpu().numpy()),
                   ("unsqueeze", tensor.unsqueeze(0)), ("meta", tensor.to("meta")),
                   ("sparse", tensor.to_sparse())]
    corruptions += [(f"dtype {dtype}", tensor.to(dtype)) for dtype in bad_dtypes]
    if tensor.dim() > 0:
        fewer = torch.zeros(tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
        corruptions.append(("drop a dimension", fewer))
    if not index:
        corruptions.append(("negated view", tensor.clone()._neg_view()))
        if tensor.shape[-1] > 1:  # index arguments may be strided (cu_seqlens has its own case)
            wide = torch.zeros(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype, device=tensor.device)
            corruptions.append(("last stride 2", wide[..., ::2]))
    return [(f"{name}: {label}", value) for label, value in corruptions]


def _grow(tensor, dim):
    """`tensor` with one more entry along `dim`: a shape that disagrees with the other arguments."""
    shape = list(tensor.shape)
    shape[dim] += 1
    return torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)


def _corruptions(args, index_args, grow, scalars):
    """Every corruption of a valid call: each tensor argument's, the shape disagreements `grow` lists as
    (argument, dim), and the bad values `scalars` lists per scalar argument."""
    cases = []
    for name, value in args.items():
        if isinstance(value, torch.Tensor):
            cases += [(n, name, v) for n, v in _tensor_corruptions(name, value, name in index_args)]
    cases += [(f"{name}: grow dim {dim}", name, _grow(args[name], dim)) for name, dim in grow if args[name] is not None]
    cases += [(f"{name}={value!r}", name, value) for name, values in scalars.items() for value in values]
    return cases


def _check_corruptions(launcher, args, index_args, grow, scalars, extra=()):
    """extra: further (label, None, {argument: value, ...}) cases that change several arguments at once."""
    for label, name, value in _corruptions(args, index_args, grow, scalars) + list(extra):
        try:
            _call(launcher, {**args, **value} if name is None else {**args, name: value})
        except BaseException as error:
            error.add_note(f"corruption: {label}")
            raise


GEMM_GROW = [("weight", 1), ("bias", 0), ("residual", 0), ("residual", 1)]
GEMM_SCALARS = {"activation": ["no-such-activation", "GELU", "", 1, torch.nn.GELU()],
                "num_sms": [0, -1, 2.0, "132", True]}


def _gemm_args(M, N, K, has_bias, has_residual, device):
    return {"x": torch.randn(M, K, device=device), "weight": torch.randn(N, K, device=device),
            "bias": torch.randn(N, device=device) if has_bias else None, "activation": "gelu",
            "residual": torch.randn(M, N, device=device) if has_residual else None}


@given(M=st.integers(0, 9), N=st.integers(2, 9), K=st.integers(2, 9), has_bias=st.booleans(),
       has_residual=st.booleans())
def test_linear_rejects_malformed(M, N, K, has_bias, has_residual, device):
    _check_corruptions(linear, _gemm_args(M, N, K, has_bias, has_residual, device), (), GEMM_GROW, GEMM_SCALARS)


@given(M=st.integers(0, 9), has_bias=st.booleans(), has_residual=st.booleans())
def test_linear_persistent_rejects_malformed(M, has_bias, has_residual, device):
    if not is_available(device):
        return
    _check_corruptions(linear_persistent, _gemm_args(M, 8, 16, has_bias, has_residual, device), (), GEMM_GROW,
                       GEMM_SCALARS)


@given(M=st.integers(0, 9), N=st.integers(2, 70), has_residual=st.booleans())
def test_layer_norm_rejects_malformed(M, N, has_residual, device):
    args = {"x": torch.randn(M, N, device=device), "weight": torch.ones(N, device=device),
            "bias": torch.zeros(N, device=device), "eps": 1e-12,
            "residual": torch.randn(M, N, device=device) if has_residual else None}
    grow = [("x", 1), ("weight", 0), ("bias", 0), ("residual", 0), ("residual", 1)]
    _check_corruptions(layer_norm, args, (), grow, {"eps": BAD_POSITIVE_FLOATS})


def _bounds(lengths):
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    return bounds


@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=3), heads=st.integers(1, 2))
def test_attention_rejects_malformed(lengths, heads, device):
    tokens = sum(lengths)
    q, k, v = torch.randn(3, tokens, heads, 32, device=device).unbind(0)
    args = {"q": q, "k": k, "v": v, "cu_seqlens": torch.tensor(_bounds(lengths), dtype=torch.int32, device=device),
            "max_seqlen": max(max(lengths), 1), "scale": None}
    grow = [("k", 0), ("v", 0), ("k", 1), ("v", 2)]
    scalars = {"max_seqlen": [-1, 2**40, 5.0, True, "5", None, torch.tensor(5)],
               "scale": BAD_POSITIVE_FLOATS, "check_indices": [1, "yes", None]}
    # head_dim no kernel supports, the same in q, k and v; cu_seqlens not contiguous.
    unsupported = {name: torch.randn(tokens, heads, 48, device=device) for name in ("q", "k", "v")}
    wide = torch.zeros(2 * (len(lengths) + 1), dtype=torch.int32, device=device)
    wide[::2] = args["cu_seqlens"]
    extra = [("head_dim 48", None, unsupported), ("cu_seqlens: stride 2", None, {"cu_seqlens": wide[::2]})]
    _check_corruptions(attention, args, ("cu_seqlens",), grow, scalars, extra)


@given(bounds=st.lists(st.integers(-3, 24) | st.sampled_from([-(2**31), 2**31 - 1]), min_size=1, max_size=5),
       tokens=st.integers(0, 20), max_seqlen=st.integers(0, 24) | st.just(2**31 - 1), data=st.data())
def test_attention_accepts_exactly_consistent_cu_seqlens(bounds, tokens, max_seqlen, data, device, backend):
    """Random cu_seqlens and max_seqlen, valid or not: a ValueError exactly when they break a rule (start at
    0, never decrease, end at T, no sequence longer than max_seqlen), else the reference's answer."""
    if data.draw(st.booleans(), label="make it consistent"):  # random lists are rarely valid on their own
        bounds = [0] + sorted(min(max(b, 0), tokens) for b in bounds[1:]) + [tokens]
        max_seqlen = max([b - a for a, b in zip(bounds, bounds[1:])] + [max_seqlen])
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    valid = (bounds[0] == 0 and bounds[-1] == tokens and all(n >= 0 for n in lengths)
             and max(lengths, default=0) <= max_seqlen and not (tokens > 0 and len(bounds) == 1))
    q, k, v = torch.randn(3, tokens, 2, 32, device=device).unbind(0)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=device)
    if not valid:
        with pytest.raises(ValueError, match="cu_seqlens|max_seqlen"):
            attention(q, k, v, cu_seqlens, max_seqlen)
        return
    out = attention(q, k, v, cu_seqlens, max_seqlen)
    assert_matches_reference(out, attention_ref, q, k, v, cu_seqlens, backend=backend)


def _embedding_args(T, H, device, with_types):
    return {"input_ids": torch.randint(0, 11, (T,), device=device),
            "position_ids": torch.randint(0, 7, (T,), device=device, dtype=torch.int32),
            "word_embeddings": torch.randn(11, H, device=device),
            "position_embeddings": torch.randn(7, H, device=device),
            "ln_weight": torch.ones(H, device=device), "ln_bias": torch.zeros(H, device=device), "eps": 1e-12,
            "token_type_ids": torch.randint(0, 2, (T,), device=device) if with_types else None,
            "token_type_embeddings": torch.randn(2, H, device=device) if with_types else None}


@given(T=st.integers(0, 9), H=st.integers(2, 70), with_types=st.booleans())
def test_embeddings_rejects_malformed(T, H, with_types, device):
    args = _embedding_args(T, H, device, with_types)
    grow = [("position_ids", 0), ("token_type_ids", 0), ("position_embeddings", 1), ("token_type_embeddings", 1),
            ("ln_weight", 0), ("ln_bias", 0)]
    _check_corruptions(embeddings, args, ("input_ids", "position_ids", "token_type_ids"), grow,
                       {"eps": BAD_POSITIVE_FLOATS, "check_indices": [1, None]})


@given(T=st.integers(1, 9), H=st.integers(1, 40), with_types=st.booleans(),
       bad=st.lists(st.tuples(st.sampled_from(["input_ids", "position_ids", "token_type_ids"]), st.integers(0, 8),
                              st.sampled_from([-(2**40), -1, 0, 1, 2**31 - 1, 2**40])), max_size=2),
)
def test_embeddings_accepts_exactly_ids_in_range(T, H, with_types, bad, device, backend):
    """Ids shifted by random amounts (some past either end of their table, some still inside): a ValueError
    naming the ids exactly when one leaves its table, else the reference's answer."""
    args = _embedding_args(T, H, device, with_types)
    rows = {"input_ids": 11, "position_ids": 7, "token_type_ids": 2}
    for name, position, shift in bad:
        ids = args[name]
        if ids is None:
            continue
        shifted = int(ids[position % T]) + shift
        if ids.dtype == torch.int32 and not -(2**31) <= shifted < 2**31:
            continue  # not representable: the caller could not have passed it
        ids[position % T] = shifted
    out_of_range = [name for name, limit in rows.items()
                    if args[name] is not None and not (0 <= int(args[name].min()) and int(args[name].max()) < limit)]
    if out_of_range:
        with pytest.raises(ValueError, match=rf"({'|'.join(out_of_range)}) must lie in \[0, "):
            embeddings(**args)
        return
    out = embeddings(**args)
    assert_matches_reference(out, embeddings_ref, args["input_ids"], args["position_ids"], args["token_type_ids"],
                             args["word_embeddings"], args["position_embeddings"], args["token_type_embeddings"],
                             args["ln_weight"], args["ln_bias"], 1e-12, backend=backend)


def test_the_issue_example_no_longer_segfaults(device):
    """cu_seqlens [0, 4, 20] for 10 tokens used to read and write past q and out (a segfault under the
    interpreter, an illegal memory access on a GPU)."""
    q = torch.randn(10, 2, 64, device=device)
    with pytest.raises(ValueError, match="cu_seqlens must end at the number of tokens T=10, got 20"):
        attention(q, q, q, torch.tensor([0, 4, 20], dtype=torch.int32, device=device), 16)
    assert math.isfinite(attention(q, q, q, torch.tensor([0, 4, 10], dtype=torch.int32, device=device), 6).sum())
