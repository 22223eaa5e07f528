"""`fastbert bench` finds this checkout's benchmark suite without being told where it is."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_finds_the_checkouts_benchmarks(monkeypatch):
    from fastbert.cli.main import collect_info

    monkeypatch.delenv("FASTBERT_BENCHMARKS", raising=False)
    assert collect_info()["benchmarks"] == str(ROOT / "benchmarks")
    assert (ROOT / "benchmarks" / "suite.py").is_file()
