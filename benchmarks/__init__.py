"""fastbert benchmark suite: FLOP/byte models, timing, pytest-benchmark suites, the report generator, and the
run behind `fastbert bench` (suite.py)."""
