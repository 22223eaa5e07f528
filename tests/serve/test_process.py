"""The real `fastbert serve` as a subprocess: the command line, the API key, several models, 429 under
overload and a graceful SIGTERM (the in-flight request completes, exit 0). Each starts a process that
imports torch and loads the model: the slow tier."""

import signal
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

LONG = "the quick brown fox jumps over the lazy dog " * 30


def test_api_key_and_two_models(server_process, minilm_path, monkeypatch):
    openai = pytest.importorskip("openai")
    monkeypatch.setenv("FASTBERT_API_KEY", "sekrit")
    server = server_process("--model", str(minilm_path), "--served-name", "one", "--model", str(minilm_path),
                            "--served-name", "two")
    assert server.url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}):
            reply = client.post("/v1/embeddings", json={"input": "a", "model": "one"}, headers=headers)
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
            assert client.post("/embed", json={"inputs": "a"}, headers=headers).json()["error_type"]
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="sekrit", max_retries=0, timeout=60)
    assert [m.id for m in sdk.models.list().data] == ["one", "two"]
    one = sdk.embeddings.create(input=["hello"], model="one").data[0].embedding
    two = sdk.embeddings.create(input=["hello"], model="two").data[0].embedding
    assert len(one) == 384 and max(abs(a - b) for a, b in zip(one, two)) <= 1e-6


def test_429_when_overloaded_and_sigterm_drains_in_flight_work(server_process, minilm_path):
    server = server_process("--model", str(minilm_path), "--max-concurrent-requests", "1")
    slow = {}

    def post_slow():
        with httpx.Client(base_url=server.url, timeout=300) as client:
            slow["reply"] = client.post("/embed", json={"inputs": [LONG + str(i) for i in range(384)]})

    worker = threading.Thread(target=post_slow)
    worker.start()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        deadline = time.monotonic() + 60
        while "fastbert_requests_in_flight 1.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline and worker.is_alive(), "the slow request never started"
            time.sleep(0.05)
        refused = client.post("/embed", json={"inputs": "a"})
        assert refused.status_code == 429 and refused.json()["error_type"] == "Overloaded"
        refused = client.post("/v1/embeddings", json={"input": "a"})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    server.proc.send_signal(signal.SIGTERM)
    worker.join(300)
    assert slow["reply"].status_code == 200 and len(slow["reply"].json()) == 384
    assert server.proc.wait(60) == 0


def test_sigint_exits_0_when_idle(server_process, minilm_path):
    server = server_process("--model", str(minilm_path))
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0
