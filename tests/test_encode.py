"""FastBertModel.encode against sentence-transformers, batching and edge cases."""

import pytest
import torch

import fastbert
from fastbert.embedding import length_sorted_batches
from tests.bert_factory import device_for

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "Ça coûte très cher — naïve café, São Paulo",
    "深度学习改变了世界。自然语言处理很有趣。",
    "I love pizza 🍕🔥 and emoji 🙂",
    "",
    "long " * 400,  # > 256 tokens: truncated like sentence-transformers' max_seq_length
    "The quick brown fox jumps over the lazy dog. " * 12,
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return fastbert.from_pretrained(minilm_path, device="cpu", dtype=torch.float32, backend="torch")


@pytest.fixture(scope="module")
def st_embeddings(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_path), device="cpu")
    return model.encode(TEXTS, convert_to_tensor=True)


def test_matches_sentence_transformers(minilm, st_embeddings):
    ours = minilm.encode(TEXTS, batch_size=3)
    assert ours.dtype == torch.float32 and ours.shape == (len(TEXTS), 384)
    cosine = torch.nn.functional.cosine_similarity(ours, st_embeddings.float())
    assert cosine.min().item() >= 0.99999, cosine


def test_triton_backend_matches_sentence_transformers(minilm_path, st_embeddings):
    model = fastbert.from_pretrained(minilm_path, device=device_for("triton"), dtype=torch.float32, backend="triton")
    ours = model.encode(TEXTS[:6], max_tokens=64)
    cosine = torch.nn.functional.cosine_similarity(ours, st_embeddings[:6].float())
    assert cosine.min().item() >= 0.99999, cosine


def test_input_order_and_batch_invariance(minilm):
    together = minilm.encode(TEXTS, batch_size=8, max_tokens=100_000)
    alone = torch.stack([minilm.encode(text) for text in TEXTS])
    small_budget = minilm.encode(TEXTS, batch_size=2, max_tokens=40)
    assert (together - alone).abs().max().item() <= 1e-6
    assert (together - small_budget).abs().max().item() <= 1e-6


def test_options(minilm):
    raw = minilm.encode(TEXTS[:3], normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    cls = minilm.encode(TEXTS[:3], pooling="cls")
    assert not torch.allclose(cls, minilm.encode(TEXTS[:3]))
    assert minilm.encode("one text").shape == (384,)


def test_empty_list_gives_empty_result(minilm):
    assert minilm.encode([]).shape == (0, 384)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(texts=[1, "a"]), TypeError, r"texts\[0\] must be a string"),
    (dict(texts=None), TypeError, "texts must be"),
    (dict(texts=["a"], pooling="max"), ValueError, "pooling must be one of"),
    (dict(texts=["a"], batch_size=0), ValueError, "batch_size"),
    (dict(texts=["a"], max_tokens=-1), ValueError, "max_tokens"),
])
def test_bad_arguments(minilm, kwargs, error, match):
    with pytest.raises(error, match=match):
        minilm.encode(**kwargs)


def test_token_budget_batches():
    lengths = [5, 100, 7, 6, 99]
    batches = length_sorted_batches(lengths, batch_size=8, max_tokens=200)
    assert sorted(i for batch in batches for i in batch) == list(range(5))
    assert batches[0] == [1, 4]  # the two long texts together, never padding the short ones
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 200
    # A single text longer than the budget still forms its own batch.
    assert length_sorted_batches([500, 3], batch_size=4, max_tokens=100) == [[0], [1]]
