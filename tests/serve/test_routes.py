"""Every route of an in-process server (uvicorn in a thread, the real all-MiniLM-L6-v2 served twice under
two names) against model.encode, plus the errors each style returns.

Batch invariance: fp32 on the CPU, a text's vector may differ in the last bits with the batch it ran in
(the GEMMs' blocking depends on the packed token count), so "the same" is max |diff| <= 1e-6 here, against
embeddings of norm 1."""

import base64
import concurrent.futures

import httpx
import numpy as np
import pytest

import fastbert
from fastbert.serve import ServedModelSpec, ServeSettings, build_app

from .conftest import live_server

TEXTS = ["A man is eating food.", "A cat sits on the mat, looking out of the window at the birds.",
         "深度学习是什么", "x " * 400]


@pytest.fixture(scope="module")
def model(minilm_path):
    return fastbert.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def server(minilm_path):
    settings = ServeSettings(max_client_batch_size=64, payload_limit=200_000, max_batch_tokens=512)
    app = build_app([ServedModelSpec(minilm_path, "mini"), ServedModelSpec(minilm_path, "mini-b")], settings)
    with live_server(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _close(got, expected, atol=1e-5):
    got, expected = np.asarray(got, dtype=np.float32), np.asarray(expected, dtype=np.float32)
    cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)


def test_openai_route_and_alias_match_encode(client, model):
    expected = model.encode(TEXTS)
    for path in ("/v1/embeddings", "/embeddings"):
        reply = client.post(path, json={"input": TEXTS, "model": "mini"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "list" and body["model"] == "mini"
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        _close([d["embedding"] for d in body["data"]], expected)
        tokens = int(model.get_tokenizer()(TEXTS, max_length=256)["attention_mask"].sum())
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        for header in ("x-total-time", "x-queue-time", "x-inference-time", "x-tokenization-time"):
            assert int(reply.headers[header]) >= 0
        assert int(reply.headers["x-compute-tokens"]) == tokens


def test_embed_route_matches_encode_and_serves_the_second_model(client, model):
    expected = model.encode(TEXTS)
    reply = client.post("/embed", json={"inputs": TEXTS})
    assert reply.status_code == 200, reply.text
    _close(reply.json(), expected)
    single = client.post("/embed", json={"inputs": TEXTS[0], "model": "mini-b"})
    _close(single.json(), expected[:1])
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["mini", "mini-b"]


def test_official_openai_client_base64_and_float(server, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    expected = model.encode(TEXTS[:2])
    default = client.embeddings.create(input=TEXTS[:2], model="mini")  # the SDK asks for base64
    _close([d.embedding for d in default.data], expected)
    floats = client.embeddings.create(input=TEXTS[:2], model="mini", encoding_format="float")
    _close([d.embedding for d in floats.data], expected)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0


def test_base64_is_little_endian_float32(client):
    floats = client.post("/v1/embeddings", json={"input": "hello", "encoding_format": "float"}).json()
    packed = client.post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(floats["data"][0]["embedding"], dtype=np.float32))


def test_token_id_inputs_equal_their_text(client, model):
    ids = [[t["id"] for t in row] for row in client.post("/tokenize", json={"inputs": TEXTS[:2]}).json()]
    assert ids[0][0] == 101 and ids[0][-1] == 102
    expected = model.encode(TEXTS[:2])
    many = client.post("/v1/embeddings", json={"input": ids}).json()
    _close([d["embedding"] for d in many["data"]], expected)
    one = client.post("/embed", json={"inputs": ids[0]}).json()
    _close(one, expected[:1])
    assert client.post("/decode", json={"ids": ids[0]}).json() == ["a man is eating food."]


def test_dimensions_truncate_then_renormalize(client, model):
    full = model.encode(TEXTS[:2])[:, :64]
    expected = full / np.linalg.norm(full, axis=1, keepdims=True)
    reply = client.post("/v1/embeddings", json={"input": TEXTS[:2], "dimensions": 64}).json()
    got = np.asarray([d["embedding"] for d in reply["data"]])
    assert got.shape == (2, 64)
    _close(got, expected)
    _close(client.post("/embed", json={"inputs": TEXTS[:2], "dimensions": 64}).json(), expected)
    for bad in (0, 385, -1):
        reply = client.post("/v1/embeddings", json={"input": "a", "dimensions": bad})
        assert reply.status_code == 400 and "dimensions" in reply.json()["error"]["message"]


def test_batch_invariance(client):
    alone = np.asarray(client.post("/embed", json={"inputs": TEXTS[1]}).json()[0])
    crowd = client.post("/embed", json={"inputs": [TEXTS[3], TEXTS[0], TEXTS[1], TEXTS[2] * 20]}).json()
    assert np.abs(np.asarray(crowd[2]) - alone).max() <= 1e-6


def test_200_concurrent_requests_each_get_their_own_vectors(client, model):
    texts = [f"request number {i} asks about {'cats' if i % 2 else 'the weather in Paris'}" for i in range(200)]
    expected = model.encode(texts)

    def ask(i):
        return client.post("/v1/embeddings", json={"input": texts[i], "encoding_format": "float"})

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(ask, range(200), timeout=300))
    assert all(r.status_code == 200 for r in replies)
    got = [r.json()["data"][0]["embedding"] for r in replies]
    _close(got, expected)


def test_health_info_metrics(client):
    assert client.get("/health").status_code == 200
    info = client.get("/info").json()
    assert info["model_id"] == "mini" and info["max_input_length"] == 256 and info["max_batch_tokens"] == 512
    assert info["model_type"]["embedding"]["pooling"] == "mean"
    assert [m["name"] for m in info["served_models"]] == ["mini", "mini-b"]
    client.post("/embed", json={"inputs": ["a", "b"]})
    metrics = client.get("/metrics").text
    for name in ("fastbert_requests_total", "fastbert_request_errors_total", "fastbert_queue_sequences",
                 "fastbert_batch_tokens_bucket", "fastbert_batch_size_bucket", "fastbert_queue_seconds_bucket",
                 "fastbert_tokenization_seconds_bucket", "fastbert_inference_seconds_bucket"):
        assert name in metrics
    assert 'fastbert_requests_total{route="/embed",status="200"}' in metrics


def _openai_error(reply, status):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert isinstance(error["message"], str) and error["type"]
    return error["message"]


def _tei_error(reply, status):
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert isinstance(body["error"], str) and body["error_type"]
    return body["error"]


def test_errors_in_each_style(client):
    post = lambda path, body: client.post(path, content=body, headers={"content-type": "application/json"})
    _openai_error(post("/v1/embeddings", b'{"input": '), 400)
    _tei_error(post("/embed", b'{"inputs": '), 400)
    _openai_error(client.post("/v1/embeddings", json={"input": 3}), 400)
    _tei_error(client.post("/embed", json={"inputs": [1.5]}), 422)
    _openai_error(client.post("/v1/embeddings", json={"input": []}), 400)
    _tei_error(client.post("/embed", json={"inputs": []}), 400)
    assert "empty string" in _openai_error(client.post("/v1/embeddings", json={"input": ["a", ""]}), 400)
    assert "nope" in _openai_error(client.post("/v1/embeddings", json={"input": "a", "model": "nope"}), 404)
    assert "30522" in _openai_error(client.post("/v1/embeddings", json={"input": [101, 30522, 102]}), 422)
    assert "-1" in _tei_error(client.post("/decode", json={"ids": [-1]}), 422)
    assert "64" in _tei_error(client.post("/embed", json={"inputs": ["a"] * 65}), 413)
    _tei_error(client.post("/embed", json={"inputs": "a" * 300_000}), 413)
    assert "256" in _tei_error(client.post("/embed", json={"inputs": TEXTS[3], "truncate": False}), 413)
    _tei_error(client.post("/embed", json={"inputs": "a", "prompt_name": "nope"}), 422)
    _tei_error(client.post("/rerank", json={"query": "q", "texts": ["a"]}), 400)  # no reranker served
    _tei_error(client.get("/nowhere"), 404)
    assert "surrogate" in _tei_error(post("/embed", b'{"inputs": "\\ud800"}'), 422)


def test_left_truncation_keeps_the_end(client, model):
    words = " ".join(f"w{i}" for i in range(600))
    left = np.asarray(client.post("/embed", json={"inputs": words, "truncation_direction": "Left"}).json())
    right = np.asarray(client.post("/embed", json={"inputs": words}).json())
    _close(right, model.encode([words]))
    assert np.abs(left - right).max() > 1e-3


def _metric(client, name):
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_a_disconnected_clients_queued_work_is_dropped(server, client):
    import json
    import socket
    import time

    before = _metric(client, "fastbert_batch_size_sum")
    body = json.dumps({"inputs": [f"{i} " + "many words in a long text " * 60 for i in range(64)]}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 30
        while _metric(client, "fastbert_batch_size_sum") == before:  # wait until it runs
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 30
    while _metric(client, "fastbert_queue_sequences") > 0 or _metric(client, "fastbert_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "the disconnected request's work was not dropped"
        time.sleep(0.05)
    assert _metric(client, "fastbert_batch_size_sum") - before < 64  # 2 sequences a batch: most never ran


def test_tokenize_spans_and_unnormalized_embed(client, model):
    [spans] = client.post("/tokenize", json={"inputs": "A cat"}).json()
    assert [(t["id"], t["text"], t["special"], t["start"], t["stop"]) for t in spans] == [
        (101, "[CLS]", True, None, None), (1037, "a", False, 0, 1), (4937, "cat", False, 2, 5),
        (102, "[SEP]", True, None, None)]
    bare = client.post("/tokenize", json={"inputs": "A cat", "add_special_tokens": False}).json()[0]
    assert [t["id"] for t in bare] == [1037, 4937]
    raw = client.post("/embed", json={"inputs": TEXTS[:2], "normalize": False}).json()
    _close(raw, model.encode(TEXTS[:2], normalize=False))


def test_failing_batches_fail_their_requests_and_health_says_so(server, client, monkeypatch):
    served = server.server.config.app.state.serve.registry.models["mini-b"]

    def broken(group, sequences, device):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(served, "run", broken)
    for _ in range(2):  # a failing batch fails its own request only
        reply = client.post("/embed", json={"inputs": "a", "model": "mini-b"})
        assert reply.status_code == 500 and reply.json()["error_type"] == "Backend" and "fell over" in reply.text
        assert client.post("/embed", json={"inputs": "a", "model": "mini"}).status_code == 200
    assert client.get("/health").status_code == 200
    for _ in range(3):  # batches failing in a row: unhealthy, yet still trying
        assert client.post("/embed", json={"inputs": "a", "model": "mini-b"}).status_code == 500
    reply = client.get("/health")
    assert reply.status_code == 503 and reply.json()["error_type"] == "Unhealthy"
    monkeypatch.undo()
    assert client.post("/embed", json={"inputs": "a", "model": "mini-b"}).status_code == 200
    assert client.get("/health").status_code == 200
