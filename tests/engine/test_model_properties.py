"""Property tests: random, mostly malformed inputs to FastBertModel.__call__ and encode, on both backends.
Each call either succeeds with a well-formed answer or raises a TypeError / ValueError: never another
exception type, and never a crash. Sizes of examples are set by the hypothesis profile (tests/conftest.py)."""

import shutil

import numpy as np
import pytest
import torch

from tests.bert_factory import load_fastbert, random_bert

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given = hypothesis.given

VOCAB, POSITIONS, TYPES, HIDDEN = 30522, 12, 2, 64


@pytest.fixture(scope="module", params=["torch", "triton"])
def model(request, tmp_path_factory, minilm_path):
    """A tiny random BERT with all-MiniLM's tokenizer (hence its vocabulary), and few positions, so long
    inputs run past them."""
    folder = tmp_path_factory.mktemp("bert")
    random_bert(folder, vocab_size=VOCAB, max_position_embeddings=POSITIONS, type_vocab_size=TYPES)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_path / name, folder / name)
    return load_fastbert(folder, request.param)


INTEGER_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32,
                  torch.uint64]
MASK_DTYPES = [torch.bool, *INTEGER_DTYPES, torch.float16, torch.float32, torch.float64]
OTHER_DTYPES = [torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]
NOT_TENSORS = [None, [[1, 2], [3, 4]], 3, "ids", (1, 2), {"input_ids": 1}]
BAD_VALUES = [-1, 2, TYPES, POSITIONS, VOCAB, 2**40, float("nan"), 0.5]


def _mutate(draw, tensor):
    """One thing wrong with a valid argument (or, as often, nothing)."""
    kind = draw(st.sampled_from(["none", "none", "none", "dtype", "value", "shape", "not_tensor", "strides"]))
    if kind == "dtype":
        return tensor.to(draw(st.sampled_from(OTHER_DTYPES)))
    if kind == "value" and tensor.numel():
        changed = tensor.to(torch.float64)
        changed.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = draw(st.sampled_from(BAD_VALUES))
        return changed if draw(st.booleans()) else changed.nan_to_num().to(torch.int64)
    if kind == "shape":
        return torch.zeros(draw(st.lists(st.integers(0, 4), max_size=3)), dtype=tensor.dtype)
    if kind == "not_tensor":
        return draw(st.sampled_from(NOT_TENSORS))
    if kind == "strides" and tensor.dim() == 2:
        return tensor.t().contiguous().t()  # same values, column-major: valid
    return tensor


@st.composite
def forward_inputs(draw):
    """A valid padded batch in random dtypes (empty batches and rows past the positions included), with at
    most a few of its arguments made wrong in one way each."""
    batch, seq = draw(st.integers(0, 3)), draw(st.integers(0, POSITIONS + 1))
    seed = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    ids = torch.randint(0, 120, (batch, seq), generator=seed).to(draw(st.sampled_from(INTEGER_DTYPES)))
    lengths = torch.randint(1, max(seq, 1) + 1, (batch, 1), generator=seed)
    mask = (torch.arange(seq)[None, :] < lengths).to(draw(st.sampled_from(MASK_DTYPES)))
    types = torch.randint(0, TYPES, (batch, seq), generator=seed).to(draw(st.sampled_from(INTEGER_DTYPES)))
    positions = torch.arange(seq).repeat(batch, 1).to(draw(st.sampled_from(INTEGER_DTYPES)))
    ids = _mutate(draw, ids)
    mask, types, positions = (_mutate(draw, t) if draw(st.booleans()) else None for t in (mask, types, positions))
    return ids, mask, types, positions


@given(inputs=forward_inputs())
def test_forward_answers_or_raises_a_clear_error(model, inputs):
    ids, mask, types, positions = inputs
    try:
        out = model(ids, mask, types, position_ids=positions)
    except (TypeError, ValueError) as err:
        assert str(err), "an error must say what is wrong"
        return
    batch, seq = ids.shape
    assert out.last_hidden_state.shape == (batch, seq, HIDDEN)
    assert out.pooler_output.shape == (batch, HIDDEN)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()


TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "a\ud800b", "\udfff", "word " * 40, "深度学习 🚀"]))


@st.composite
def encode_calls(draw):
    texts = draw(st.one_of(
        st.lists(TEXT, max_size=4), TEXT,
        st.lists(st.one_of(TEXT, st.none(), st.integers(), st.binary(max_size=4)), max_size=3),
        st.sampled_from([None, 3, b"bytes", {"a": "b"}, ("a", "b")]),
    ))
    options = {}
    for name, values in (
        ("batch_size", [1, 2, 0, -1, 1.5, "2", None]),
        ("max_tokens", [1, 7, 4096, 0, -3, 2.0]),
        ("pooling", ["mean", "cls", "max", "", None, 3]),
        ("normalize", [True, False]),
        ("max_length", [None, 2, 3, 5, 512, 1, 0, -4, 2.5, "8"]),
    ):
        if draw(st.booleans()):
            options[name] = draw(st.sampled_from(values))
    return texts, options


@given(call=encode_calls())
def test_encode_answers_or_raises_a_clear_error(model, call):
    texts, options = call
    try:
        embeddings = model.encode(texts, **options)
    except (TypeError, ValueError) as err:
        assert str(err), "an error must say what is wrong"
        return
    count = 1 if isinstance(texts, str) else len(texts)
    assert embeddings.shape == ((HIDDEN,) if isinstance(texts, str) else (count, HIDDEN))
    assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
