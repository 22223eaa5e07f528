"""The load benchmark's pure parts: percentiles, summaries, texts and the report rendered from data."""

import pytest

from benchmarks.serve import make_texts, percentile, report, summarize


def test_percentile_interpolates_and_bounds():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(map(float, range(101))), 90) == pytest.approx(90.0)
    assert percentile([5.0, 1.0], 100) == 5.0
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summarize_rates_and_empty_cell():
    s = summarize([0.1, 0.2, 0.3], errors=1, wall=2.0, tokens=40)
    assert s["requests"] == 3 and s["errors"] == 1
    assert s["requests_per_s"] == pytest.approx(1.5) and s["tokens_per_s"] == pytest.approx(20.0)
    assert s["p50_ms"] == pytest.approx(200.0)
    assert summarize([], errors=4, wall=1.0, tokens=0)["p99_ms"] is None


def test_texts_are_deterministic_and_varied():
    texts = make_texts(64)
    assert texts == make_texts(64)
    assert len({len(t.split()) for t in texts}) > 5


def test_report_renders_every_cell():
    cells = [{"server": s, "concurrency": c, "batch": 1, **summarize([0.01 * c], 0, 1.0, 10)}
             for s in ("fastbert", "infinity") for c in (1, 8)]
    md = report({"environment": {"device": "cpu", "git_commit": "abc"}, "model": "m", "fastbert_commit": "def",
                 "servers": ["fastbert", "infinity"], "cells": cells, "max_requests": 5, "max_seconds": 1.0,
                 "notes": {"x": "y"}})
    assert md.count("| fastbert |") == 2 and md.count("| infinity |") == 2
    assert "commit def" in md and "- x: y" in md
