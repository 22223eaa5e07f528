"""pytest-benchmark harness: options, the `measure` fixture, the environment record, and crash-safe JSON.

Options (command line, or the environment variable in brackets):
  --bench-size tiny|headline|quick|full [FASTBERT_BENCH_SIZE, default quick]  tiny = CPU smoke sizes;
                                                  headline = the encoder rows that decide the next step
  --bench-models bert-base,minilm,mpnet-base [FASTBERT_BENCH_MODELS]            tiny defaults to the 'tiny' model,
                                                                     headline to bert-base
  --bench-dtypes float16,bfloat16 [FASTBERT_BENCH_DTYPES]            quick: float16; full: both
  --bench-budget SECONDS [FASTBERT_BENCH_BUDGET]  tests starting after the budget are skipped, so a
                                                  stage ends on time and still writes its JSON
  --bench-compile 0|1 [FASTBERT_BENCH_COMPILE, default 1 on CUDA]  torch.compile max-autotune baseline
  FASTBERT_BENCH_COMPILE_MIN_S (default 150): budget seconds left needed to start a compile
"""

import os

import torch

# Before any fastbert import: triton.jit reads TRITON_INTERPRET when a kernel is decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from benchmarks.timing import environment, plan_iterations, synchronized_timer  # noqa: E402

SIZES = ("tiny", "headline", "quick", "full")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# rounds per benchmark, target seconds per round, warm-up calls
ROUNDS = {"tiny": (2, 0.0, 1), "headline": (10, 0.02, 3), "quick": (10, 0.02, 3), "full": (25, 0.05, 5)}


@dataclass(frozen=True)
class Settings:
    size: str
    models: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    device: torch.device
    compile: bool
    deadline: float | None
    compile_min_s: float

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def remaining_s(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()


def pytest_addoption(parser):
    group = parser.getgroup("fastbert benchmarks")
    group.addoption("--bench-size", default=os.environ.get("FASTBERT_BENCH_SIZE", "quick"), choices=SIZES)
    group.addoption("--bench-models", default=os.environ.get("FASTBERT_BENCH_MODELS"))
    group.addoption("--bench-dtypes", default=os.environ.get("FASTBERT_BENCH_DTYPES"))
    group.addoption("--bench-budget", type=float, default=os.environ.get("FASTBERT_BENCH_BUDGET"))
    group.addoption("--bench-compile", default=os.environ.get("FASTBERT_BENCH_COMPILE"))


def pytest_configure(config):
    config.addinivalue_line("markers", "compile_baseline: torch.compile cases, run last (slow to compile)")
    config._fastbert_start = time.time()


def bench_settings(config) -> Settings:
    if hasattr(config, "_fastbert_settings"):
        return config._fastbert_settings
    size = config.getoption("--bench-size")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default_models = {"tiny": "tiny", "headline": "bert-base"}.get(size, "bert-base,minilm,mpnet-base")
    models = config.getoption("--bench-models") or default_models
    default_dtypes = {"tiny": "float32", "headline": "float16", "quick": "float16", "full": "float16,bfloat16"}[size]
    dtypes = config.getoption("--bench-dtypes") or default_dtypes
    compile_opt = config.getoption("--bench-compile")
    budget = config.getoption("--bench-budget")
    settings = Settings(
        size=size,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        dtypes=tuple(DTYPES[d.strip()] for d in dtypes.split(",") if d.strip()),
        device=device,
        compile=(compile_opt not in ("0", "false", "no")) if compile_opt else device.type == "cuda",
        deadline=config._fastbert_start + float(budget) if budget else None,
        compile_min_s=float(os.environ.get("FASTBERT_BENCH_COMPILE_MIN_S", "150")),
    )
    config._fastbert_settings = settings
    return settings


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return bench_settings(request.config)


def pytest_collection_modifyitems(config, items):
    # Every clock read drains the GPU queue first: see benchmarks/timing.py.
    for item in items:
        item.add_marker(pytest.mark.benchmark(timer=synchronized_timer))
    # Slow-to-compile baselines last, so a stage that runs out of budget loses only them.
    items.sort(key=lambda item: item.get_closest_marker("compile_baseline") is not None)


def pytest_runtest_setup(item):
    settings = bench_settings(item.config)
    if settings.remaining_s() <= 0:
        pytest.skip("benchmark budget (--bench-budget) exhausted")


@pytest.fixture
def measure(benchmark, settings):
    """measure(fn, case=..., impl=..., **extra): warm up, size rounds, time, and attach extra_info.

    extra_info is the data the report works from: `case` names one comparison (all impls of the same
    work share it), `impl` the implementation, plus the work model (`flops`, `bytes`) and its context."""

    def run(fn, *, case: str, impl: str, cuda_graph: bool = False, **extra):
        rounds, round_s, warmup = ROUNDS[settings.size]
        benchmark.group = case
        benchmark.extra_info.update({"case": case, "impl": impl, "device": str(settings.device), **extra})
        try:
            if cuda_graph and settings.gpu:
                fn, calls = _graphed(fn, warmup)
                benchmark.extra_info["calls_per_call"] = calls
            benchmark.extra_info["timing"] = "cuda_graph" if cuda_graph and settings.gpu else "eager"
            iterations = plan_iterations(fn, settings.device, warmup=warmup, round_s=round_s)
            benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            pytest.skip(f"{case} {impl}: out of GPU memory")

    return run


GRAPH_CALLS = 20  # calls captured per graph: more than the input sets a kernel case cycles through


def _graphed(fn, warmup: int):
    """(replay, calls): GRAPH_CALLS calls of fn captured in one CUDA graph.

    A single kernel launch costs the host more than many BERT-sized kernels take on an H100 (Triton's
    launcher tens of microseconds, PyTorch's several), so back-to-back eager calls time the launcher.
    Kernel cases therefore time graph replays, both ours and PyTorch's, and the report divides by
    `calls_per_call`. Warm-up runs first, outside the capture, so autotuning never happens inside it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    torch.cuda.synchronize()
    return graph.replay, GRAPH_CALLS


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.pop("node", None)  # hostname-free
    settings = bench_settings(config)
    env = environment(settings.device)
    env.update(bench_size=settings.size, bench_models=list(settings.models),
               bench_dtypes=[str(d).replace("torch.", "") for d in settings.dtypes])
    machine_info["fastbert"] = env


def _json_path(session) -> str | None:
    """The --benchmark-json target: a path (pytest-benchmark >= 5) or a file it opened for writing (4.x)."""
    target = session.json
    return getattr(target, "name", None) if hasattr(target, "write") else (str(target) if target else None)


def pytest_runtest_teardown(item, nextitem):
    """Rewrite the --benchmark-json file after every test, so a stage killed by its timeout keeps what it
    measured (pytest-benchmark itself writes only at session end). Saving is best effort: a failure here
    warns, and never turns a measured benchmark into an error."""
    config = item.config
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.json:
        return
    finished = [b for b in session.benchmarks if b.stats.data]
    if not finished:
        return
    try:
        if not hasattr(config, "_fastbert_info"):
            commit = config.hook.pytest_benchmark_generate_commit_info(config=config)
            config._fastbert_info = (session.get_machine_info(), commit)
        machine, commit = config._fastbert_info
        output = config.hook.pytest_benchmark_generate_json(
            config=config, benchmarks=finished, include_data=True, machine_info=machine, commit_info=commit)
        output["partial"] = True
        path = _json_path(session)
        if hasattr(session.json, "write"):
            # pytest-benchmark 4.x holds this file open and writes it from offset 0 at the end: write the
            # same inode through another handle (never replace it), and trim its tail after that final write.
            with open(path, "w") as fh:
                json.dump(output, fh, indent=1, default=str)
        else:
            with open(path + ".tmp", "w") as fh:
                json.dump(output, fh, indent=1, default=str)
            os.replace(path + ".tmp", path)
    except Exception as error:  # noqa: BLE001 - the measurement stands even if saving it early fails
        warnings.warn(f"could not save partial benchmark JSON: {error!r}", stacklevel=1)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """After pytest-benchmark 4.x's final write over a longer partial file, drop the partial file's tail."""
    bench = getattr(session.config, "_benchmarksession", None)
    if bench is None or not hasattr(bench.json, "write"):
        return
    path = _json_path(bench)
    try:
        text = Path(path).read_text()
        _, end = json.JSONDecoder().raw_decode(text)
        if text[end:].strip():
            with open(path, "r+") as fh:
                fh.truncate(len(text[:end].encode()))
    except (OSError, ValueError, TypeError) as error:
        warnings.warn(f"could not tidy benchmark JSON {path}: {error!r}", stacklevel=1)
