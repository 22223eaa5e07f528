"""FastBertModel.encode against sentence-transformers, batching, streaming and edge cases."""

import threading

import numpy as np
import pytest
import torch

import fastbert
from fastbert.sentence.stream import length_sorted_batches
from tests.bert_factory import device_for, random_batch
from tests.st_factory import TEXTS as TINY_TEXTS
from tests.st_factory import save_pipeline, tiny_encoder
from tests.tolerances import GRAPH_REPLAY, REBATCHED_ATOL, SENTENCE_COSINE, SENTENCE_COSINE_HALF

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
    ours = torch.from_numpy(minilm.encode(TEXTS, batch_size=3))
    assert ours.dtype == torch.float32 and ours.shape == (len(TEXTS), 384)
    cosine = torch.nn.functional.cosine_similarity(ours, st_embeddings.float())
    assert cosine.min().item() >= SENTENCE_COSINE, cosine


def test_triton_backend_matches_sentence_transformers(minilm_path, st_embeddings):
    model = fastbert.from_pretrained(minilm_path, device=device_for("triton"), dtype=torch.float32, backend="triton")
    ours = model.encode(TEXTS[:6], max_tokens=64, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(ours, st_embeddings[:6].float())
    assert cosine.min().item() >= SENTENCE_COSINE, cosine


def test_input_order_and_batch_invariance(minilm):
    together = minilm.encode(TEXTS, batch_size=8, max_tokens=100_000, convert_to_tensor=True)
    alone = torch.stack([minilm.encode(text, convert_to_tensor=True) for text in TEXTS])
    small_budget = minilm.encode(TEXTS, batch_size=2, max_tokens=40, convert_to_tensor=True)
    assert (together - alone).abs().max().item() <= REBATCHED_ATOL
    assert (together - small_budget).abs().max().item() <= REBATCHED_ATOL


def test_sentence_transformers_batch_size_is_an_upper_bound(minilm, st_embeddings):
    ours = minilm.encode(TEXTS, batch_size=32, max_tokens=512, chunk_size=3, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(ours, st_embeddings.float())
    assert cosine.min().item() >= SENTENCE_COSINE, cosine


def test_options(minilm):
    raw = minilm.encode(TEXTS[:3], normalize=False, convert_to_tensor=True)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    cls = minilm.encode(TEXTS[:3], pooling="cls")
    assert not np.allclose(cls, minilm.encode(TEXTS[:3]))
    assert minilm.encode("one text").shape == (384,)


def test_empty_list_gives_empty_result(minilm):
    assert minilm.encode([]).shape == (0, 384)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(texts=[1, "a"]), TypeError, r"texts\[0\] must be a string"),
    (dict(texts=None), TypeError, "texts must be"),
    (dict(texts=b"bytes"), TypeError, "texts must be"),
    (dict(texts={"a": 1}), TypeError, "texts must be"),
    (dict(texts=iter(["a", "b", 3])), TypeError, r"texts\[2\] must be a string, got int"),
    (dict(texts=["a"], pooling="median"), ValueError, r"unknown pooling mode\(s\) \['median'\]"),
    (dict(texts=["a"], batch_size=0), ValueError, "batch_size"),
    (dict(texts=["a"], max_tokens=-1), ValueError, "max_tokens"),
    (dict(texts=["a"], chunk_size=1.5), ValueError, "chunk_size"),
    (dict(texts=["a"], normalize="yes"), TypeError, "normalize must be None, True or False"),
    (dict(texts=["a"], truncate_dim=0), ValueError, "truncate_dim"),
    (dict(texts=["a"], truncate_dim=385), ValueError, "truncate_dim=385 exceeds the embedding size 384"),
    (dict(texts=["a"], prompt=3), TypeError, "prompt must be a string"),
    (dict(texts=["a"], max_length=1), ValueError, "max_length must be an integer >= 2"),
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


# ---------------------------------------------------------------------------------------------------
# Streaming: chunks, a background tokenizer, bounded read-ahead


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_pipeline(folder, tiny_encoder(folder / "encoder"), pooling=("mean", "cls"), normalize=True)
    return fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch")


def test_any_iterable_in_chunks_gives_the_list_result(tiny):
    texts = TINY_TEXTS * 3
    expected = tiny.encode(texts, convert_to_tensor=True)
    from_generator = tiny.encode((text for text in texts), chunk_size=5, max_tokens=50, batch_size=3,
                                 convert_to_tensor=True)
    torch.testing.assert_close(from_generator, expected, atol=REBATCHED_ATOL, rtol=0)
    chunks = list(fastbert.iter_encode(tiny, iter(texts), chunk_size=7, convert_to_tensor=True))
    assert [len(chunk) for chunk in chunks] == [7, 7, 7, 3]
    torch.testing.assert_close(torch.cat(chunks), expected, atol=REBATCHED_ATOL, rtol=0)
    assert tiny.encode(iter([])).shape == (0, 128)
    with pytest.raises(TypeError, match="single string"):
        fastbert.iter_encode(tiny, "one text")


def test_read_ahead_is_bounded_and_earlier_chunks_survive_a_bad_record(tiny):
    """The reader runs at most a few chunks ahead of the consumer (memory bounded by the chunk, not the
    input), and a bad record fails only when its chunk is reached, after the chunks before it."""
    read = []

    def records():
        for position in range(1000):
            read.append(position)
            yield "a man" if position != 40 else None

    stream = fastbert.iter_encode(tiny, records(), chunk_size=4)
    first = next(stream)
    # One chunk encoded, one queued, one being tokenized, one being read.
    assert len(first) == 4 and len(read) <= 4 * 4
    chunks = [first]
    with pytest.raises(TypeError, match=r"texts\[40\] must be a string, got NoneType"):
        for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) == 10 and len(read) == 41


def test_tokenization_overlaps_the_model_and_stops_with_the_consumer(tiny, monkeypatch):
    """While the model encodes chunk 0, the background thread tokenizes chunk 1 (the model waits for it,
    with a timeout, so a serial implementation fails rather than hangs); closing the generator early
    stops the thread."""
    tokenizer = tiny.get_tokenizer()
    calls, second_chunk_started = [], threading.Event()
    original_call, original_forward = type(tokenizer).__call__, tiny.forward_tokens

    def tokenize(self, texts, *args, **kwargs):
        calls.append(threading.current_thread())
        if len(calls) == 2:
            second_chunk_started.set()
        return original_call(self, texts, *args, **kwargs)

    overlapped = []

    def forward_tokens(*args):
        if not overlapped:
            overlapped.append(second_chunk_started.wait(timeout=30))
        return original_forward(*args)

    monkeypatch.setattr(type(tokenizer), "__call__", tokenize)
    monkeypatch.setattr(tiny, "forward_tokens", forward_tokens)
    stats = fastbert.EncodeStats()
    stream = fastbert.iter_encode(tiny, iter(TINY_TEXTS * 100), chunk_size=8, stats=stats)
    next(stream)
    assert overlapped == [True]
    assert all(thread is not threading.main_thread() for thread in calls)
    stream.close()
    assert not any(t.name == "fastbert-tokenize" and t.is_alive() for t in threading.enumerate())
    assert stats.texts == 8 and stats.chunks == 1 and stats.tokens > 8 and stats.batches >= 1
    assert 0 < stats.tokenize_seconds and 0 <= stats.stall_seconds <= stats.wall_seconds
    assert 0 < stats.tokenize_share and 0 <= stats.stall_share <= 1


def test_an_untokenizable_text_is_named_by_its_input_position(tiny):
    texts = ["a", "b", "c", "d", "bad \ud800", "e", "f \udfff"]
    with pytest.raises(ValueError, match=r"cannot tokenize texts\[4\] \(a lone surrogate .*texts\[6\]") as caught:
        tiny.encode(iter(texts), chunk_size=4)
    assert caught.value.indices == [4, 6]


def test_stats_accumulate_over_calls(tiny):
    stats = fastbert.EncodeStats()
    tiny.encode(TINY_TEXTS, stats=stats)
    tiny.encode(TINY_TEXTS[:3], stats=stats, chunk_size=2)
    assert (stats.texts, stats.chunks) == (len(TINY_TEXTS) + 3, 3)


def test_packed_output_equals_the_padded_output_on_real_tokens(tmp_path):
    """FastBertModel.forward_tokens (what pooling reads) against forward's [B, S, H], eagerly and through
    CUDA-graph replay (emulated on CPU by tests/engine/helpers.py's EagerReplay)."""
    from fastbert.engine.graphs import GraphCache
    from fastbert.engine.packing import pack_inputs
    from tests.bert_factory import random_bert
    from tests.engine.helpers import EagerReplay

    random_bert(tmp_path)
    model = fastbert.FastBertModel.from_pretrained(tmp_path, device="cpu", backend="triton")
    for lengths in ([5, 1, 9], [9, 2, 7], [1]):
        ids, mask, types = random_batch(211, lengths, seed=len(lengths))
        expected = model(ids, mask, types).last_hidden_state[mask.bool()]
        packed = pack_inputs(model.config, model.device, ids, mask, types)
        torch.testing.assert_close(model.forward_tokens(*packed), expected, atol=0, rtol=0)
        model._graphs = GraphCache(model._encode_packed, model._encode_tokens, model.device, runner=EagerReplay())
        for _ in range(2):  # seen, then captured and replayed
            torch.testing.assert_close(model.forward_tokens(*packed), expected, **GRAPH_REPLAY)
        model._graphs = None


@pytest.mark.gpu
def test_gpu_half_precision_with_graphs_matches_fp32(minilm_path):
    """The GPU path: fp16, CUDA-graph replay of the packed output, chunks handed over one behind."""
    gpu = fastbert.from_pretrained(minilm_path)  # CUDA, fp16, triton, graphs
    cpu = fastbert.from_pretrained(minilm_path, device="cpu", dtype=torch.float32, backend="torch")
    texts = TEXTS * 8
    expected = cpu.encode(texts, convert_to_tensor=True)
    for _ in range(3):  # eager, captured, replayed
        stats = fastbert.EncodeStats()
        ours = torch.cat(list(fastbert.iter_encode(gpu, iter(texts), chunk_size=16, max_tokens=512, stats=stats,
                                                   convert_to_tensor=True))).cpu()
        cosine = torch.nn.functional.cosine_similarity(ours, expected)
        assert cosine.min().item() >= SENTENCE_COSINE_HALF, cosine
        assert stats.chunks == 4 and stats.texts == len(texts)
    assert gpu._graphs is not None and gpu._graphs.graphs
