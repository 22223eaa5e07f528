"""/rerank and /predict against sentence-transformers' CrossEncoder.predict on random reranker folders (one
score, three labels), served beside an embedding model in one process. They need fastbert.classify (the
native classifier the server runs cross-encoders with): skipped until it is there."""

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("fastbert.classify")
st = pytest.importorskip("sentence_transformers")

from fastbert.serve import ServedModelSpec, build_app  # noqa: E402
from tests.st_factory import PAIRS, reranker_folder  # noqa: E402

from .conftest import live_server  # noqa: E402

ATOL = 1e-4  # scores of random models in [0, 1] (or logits of a few units), fp32 against fp32


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("rerankers")
    return {labels: reranker_folder(root / f"labels{labels}", minilm_path, labels) for labels in (1, 3)}


@pytest.fixture(scope="module")
def client(folders, minilm_path):
    app = build_app([ServedModelSpec(minilm_path, "mini"), ServedModelSpec(folders[1], "rerank"),
                     ServedModelSpec(folders[3], "three")])
    with live_server(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_rerank_matches_cross_encoder_predict(client, folders):
    model = st.CrossEncoder(str(folders[1]), device="cpu", max_length=64)
    query = PAIRS[0][0]
    texts = [document for _, document in PAIRS]
    expected = model.predict([(query, text) for text in texts])
    raw = model.predict([(query, text) for text in texts], activation_fn=torch.nn.Identity())
    ranks = client.post("/rerank", json={"query": query, "texts": texts, "return_text": True}).json()
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    by_index = {r["index"]: r for r in ranks}
    assert sorted(by_index) == list(range(len(texts)))
    np.testing.assert_allclose([by_index[i]["score"] for i in range(len(texts))], expected, atol=ATOL)
    assert all(by_index[i]["text"] == texts[i] for i in range(len(texts)))
    raw_ranks = client.post("/rerank", json={"query": query, "texts": texts, "raw_scores": True}).json()
    np.testing.assert_allclose([{r["index"]: r["score"] for r in raw_ranks}[i] for i in range(len(texts))], raw,
                               atol=ATOL)


def test_predict_matches_cross_encoder_predict(client, folders):
    model = st.CrossEncoder(str(folders[3]), device="cpu", max_length=64)
    expected = model.predict(PAIRS, apply_softmax=True)
    replies = client.post("/predict", json={"inputs": [list(pair) for pair in PAIRS], "model": "three"}).json()
    assert len(replies) == len(PAIRS)
    for reply, row in zip(replies, expected):
        scores = {int(p["label"].removeprefix("LABEL_")): p["score"] for p in reply}
        np.testing.assert_allclose([scores[i] for i in range(3)], row, atol=ATOL)
    single = client.post("/predict", json={"inputs": list(PAIRS[0]), "model": "three"}).json()
    assert isinstance(single, list) and {"score", "label"} <= set(single[0])
    one = st.CrossEncoder(str(folders[1]), device="cpu", max_length=64).predict([PAIRS[2]])
    reply = client.post("/predict", json={"inputs": list(PAIRS[2]), "model": "rerank"}).json()
    np.testing.assert_allclose(reply[0]["score"], one[0], atol=ATOL)


def test_kinds_and_errors(client):
    info = {m["name"]: m["kind"] for m in client.get("/info").json()["served_models"]}
    assert info == {"mini": "embed", "rerank": "classify", "three": "classify"}
    assert client.get("/info", params={"model": "three"}).json()["model_type"]["classifier"]["id2label"]
    assert client.post("/rerank", json={"query": "q", "texts": ["a"], "model": "three"}).status_code == 400
    assert client.post("/rerank", json={"query": "q", "texts": ["a"], "model": "mini"}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": "a", "model": "rerank"}).status_code == 400
    assert client.post("/rerank", json={"query": "q", "texts": []}).status_code == 400
    assert client.post("/predict", json={"inputs": [["a", "b", "c"]]}).status_code == 422
