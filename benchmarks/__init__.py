"""fastbert benchmark suite: FLOP/byte models, timing, pytest-benchmark suites and the report generator."""
