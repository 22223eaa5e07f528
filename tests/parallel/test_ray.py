"""fastbert.parallel.ray on a local Ray cluster on CPU: the Embedder in map_batches and `fastbert encode --ray`.

One cluster of 2 CPUs for the module (starting Ray takes seconds); each pipeline starts one actor,
which loads the model once. The batch formats and the errors are checked on an Embedder called directly."""

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")

import fastbert  # noqa: E402
import fastbert.parallel.ray  # noqa: E402
from fastbert.cli.main import main  # noqa: E402
from tests.tolerances import BATCHING_ATOL, batching_error  # noqa: E402

TEXTS = [("word " * ((5 * i) % 23)) + f"passage {i}" for i in range(13)] + ["", "Ça coûte 🍕", "long " * 300]
CPU = dict(device="cpu", backend="torch", dtype="float32")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def expected(minilm_path):
    model = fastbert.from_pretrained(minilm_path, **CPU)
    return model.encode(TEXTS)


@pytest.fixture(scope="module")
def embedder(minilm_path):
    return fastbert.parallel.ray.Embedder(minilm_path, text_column="body", embedding_column="vector", **CPU)


def assert_same(actual, expected):
    actual = np.asarray(actual, dtype=np.float32)
    assert actual.shape == expected.shape
    assert batching_error(actual, expected) <= BATCHING_ATOL


def _cli(minilm_path, source, destination, *extra):
    return main(["encode", "--ray", "--input", str(source), "--output", str(destination), "--model",
                 str(minilm_path), "--backend", "torch", "--device", "cpu", *extra])


def test_cli_refuses_before_starting_ray(tmp_path, minilm_path, capsys):
    source = tmp_path / "corpus.jsonl"
    source.write_text('{"text": "a"}\n')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "part-0.parquet").write_bytes(b"keep me")
    cases = [(tmp_path / "taken", "already exists"), (source, "overlap"), (tmp_path / "out.npy", "Parquet or JSONL"),
             (tmp_path / "x.parquet", None)]
    for destination, message in cases:
        if message is None:  # an input that is not Parquet or JSONL
            (tmp_path / "corpus.txt").write_text("a\n")
            code = _cli(minilm_path, tmp_path / "corpus.txt", destination)
            message = "give Parquet"
        else:
            code = _cli(minilm_path, source, destination)
        assert code == 2 and message in capsys.readouterr().err
    assert main(["encode", "--ray", "hello", "--model", str(minilm_path)]) == 2
    assert "--ray reads --input" in capsys.readouterr().err
    assert (tmp_path / "taken" / "part-0.parquet").read_bytes() == b"keep me"
    assert not ray.is_initialized()  # refusals come before any cluster starts (this test runs first)


def test_map_batches_matches_encode_and_keeps_columns(cluster, minilm_path, expected):
    rows = [{"id": i, "text": text, "lang": "en"} for i, text in enumerate(TEXTS)]
    dataset = ray.data.from_items(rows).map_batches(
        fastbert.parallel.ray.Embedder, fn_constructor_kwargs={"model": minilm_path, **CPU}, concurrency=1, num_cpus=1,
        batch_size=4)
    out = sorted(dataset.take_all(), key=lambda row: row["id"])
    del dataset  # its actor holds a CPU of the 2 until the dataset goes
    assert [(row["text"], row["lang"]) for row in out] == [(text, "en") for text in TEXTS]
    assert_same(np.stack([row["embedding"] for row in out]), expected)


def test_output_format_rules(tmp_path):
    source = tmp_path / "corpus.jsonl"
    source.write_text('{"text": "a"}\n')
    assert fastbert.parallel.ray.input_format(source) == "json"
    assert fastbert.parallel.ray.output_format(tmp_path / "out", source, "json") == "json"  # no suffix: the input's
    assert fastbert.parallel.ray.output_format(tmp_path / "out.parquet", source, "json") == "parquet"
    (tmp_path / "folder").mkdir()
    for name in ("a.parquet", "b.parquet", "_SUCCESS", ".a.parquet.crc"):
        (tmp_path / "folder" / name).write_bytes(b"")
    assert fastbert.parallel.ray.input_format(tmp_path / "folder") == "parquet"
    for name, expected_format in (("x.jsonl.gz", "json"), ("x.pq", "parquet"), ("x.parquet.gz", None)):
        (tmp_path / name).write_bytes(b"")
        if expected_format is None:
            with pytest.raises(ValueError, match="give Parquet"):
                fastbert.parallel.ray.input_format(tmp_path / name)
        else:
            assert fastbert.parallel.ray.input_format(tmp_path / name) == expected_format
    (tmp_path / "folder" / "c.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="mixes"):
        fastbert.parallel.ray.input_format(tmp_path / "folder")
    with pytest.raises(FileNotFoundError):
        fastbert.parallel.ray.input_format(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="overlap"):
        fastbert.parallel.ray.output_format(tmp_path / "folder" / "out", tmp_path / "folder", "parquet")


def test_batch_formats(embedder, expected):
    texts = np.array(TEXTS[:5], dtype=object)
    numpy_batch = embedder({"id": np.arange(5), "body": texts})
    assert list(numpy_batch) == ["id", "body", "vector"] and numpy_batch["vector"].dtype == np.float32
    assert_same(numpy_batch["vector"], expected[:5])
    frame = embedder(pd.DataFrame({"id": range(5), "body": TEXTS[:5]}))
    assert list(frame.columns) == ["id", "body", "vector"]
    assert_same(np.stack(frame["vector"]), expected[:5])
    table = embedder(pa.table({"id": range(5), "body": TEXTS[:5]}))
    assert table.column_names == ["id", "body", "vector"]
    assert_same(table.column("vector").combine_chunks().to_numpy_ndarray(), expected[:5])
    assert embedder({"body": np.array([], dtype=object)})["vector"].shape == (0, 384)


@pytest.mark.parametrize("batch, error, match", [
    ({"text": np.array(["a"], dtype=object)}, KeyError, "no column 'body'"),
    ({"body": np.array(["a"], dtype=object), "vector": np.zeros(1)}, ValueError, "already has a column 'vector'"),
    ({"body": np.array(["a", None], dtype=object)}, TypeError, "row 1 of this batch is NoneType"),
    ("text", TypeError, "dict of NumPy arrays"),
])
def test_bad_batches(embedder, batch, error, match):
    with pytest.raises(error, match=match):
        embedder(batch)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_tokens=0), ValueError, "max_tokens"),
    (dict(devices=["cpu"]), ValueError, "do not apply under Ray"),
    (dict(embedding_column="text"), ValueError, "must differ"),
    (dict(text_column=""), TypeError, "text_column"),
])
def test_bad_embedder_options(minilm_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        fastbert.parallel.ray.Embedder(minilm_path, **{"device": "cpu", "backend": "torch", **kwargs})


def test_bad_chunk_size(tmp_path):
    for chunk_size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            fastbert.parallel.ray.encode_files(tmp_path / "in.jsonl", tmp_path / "out", "model", chunk_size=chunk_size)


def test_bad_model_argument():
    with pytest.raises(TypeError, match="checkpoint folder or a Hub id"):
        fastbert.parallel.ray.Embedder(object())


def test_cli_parquet_to_jsonl_in_input_order(cluster, tmp_path, minilm_path, expected):
    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), source, row_group_size=5)
    assert _cli(minilm_path, source, tmp_path / "out.jsonl") == 0
    lines = [json.loads(line) for path in sorted((tmp_path / "out.jsonl").iterdir()) for line in open(path)]
    assert [row["id"] for row in lines] == list(range(len(TEXTS)))  # input order, other columns kept
    assert_same([row["embedding"] for row in lines], expected)


def test_cli_jsonl_to_parquet(cluster, tmp_path, minilm_path, expected, monkeypatch):
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(TEXTS)))
    batch_sizes, map_batches = [], ray.data.Dataset.map_batches

    def recording_map_batches(self, fn, **kwargs):
        batch_sizes.append(kwargs["batch_size"])
        return map_batches(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", recording_map_batches)
    assert _cli(minilm_path, source, tmp_path / "out.parquet", "--no-normalize", "--chunk-size", "3") == 0
    assert batch_sizes == [3]  # --chunk-size sizes the batches Ray Data hands each actor
    table = pq.read_table(tmp_path / "out.parquet").to_pandas().sort_values("id")
    assert table["text"].tolist() == TEXTS
    embeddings = np.stack(table["embedding"].to_list())
    assert not np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)
    assert_same(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), expected)
