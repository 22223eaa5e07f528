"""Hypothesis fuzz of request bodies: whatever JSON (or bytes) a client sends to any route, the answer is a
response with a JSON error body below 500, never a 5xx or a dropped connection. The ci profile keeps it to
a few examples per route."""

import json

import httpx
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastbert.serve import ServedModelSpec, ServeSettings, build_app  # noqa: E402

from .conftest import live_server  # noqa: E402

ROUTES = ("/v1/embeddings", "/embed", "/rerank", "/predict", "/tokenize", "/decode")
FIELDS = ("input", "inputs", "model", "encoding_format", "dimensions", "normalize", "truncate",
          "truncation_direction", "prompt_name", "query", "texts", "raw_scores", "ids", "add_special_tokens")

scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=40)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=12)
bodies = st.dictionaries(st.sampled_from(FIELDS), values | st.lists(st.integers(-5, 40000), max_size=6), max_size=5)


@pytest.fixture(scope="module")
def client(minilm_path):
    app = build_app([ServedModelSpec(minilm_path, "mini")], ServeSettings(max_client_batch_size=8,
                                                                          payload_limit=20_000))
    with live_server(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _check(reply):
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        body = reply.json()
        assert "error" in body


@given(route=st.sampled_from(ROUTES), body=bodies)
def test_json_bodies_never_give_5xx(client, route, body):
    _check(client.post(route, content=json.dumps(body), headers={"content-type": "application/json"}))


@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_raw_bytes_never_give_5xx(client, route, raw):
    _check(client.post(route, content=raw, headers={"content-type": "application/json"}))
