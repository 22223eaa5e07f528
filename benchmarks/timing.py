"""Timing and the environment record.

GPU work is asynchronous: a timer that only reads the clock measures kernel *launches*. Every GPU clock
read here synchronises first (`synchronized_timer`, handed to pytest-benchmark as its timer), so a round
of N back-to-back calls is timed from an idle device to an idle device and divided by N; no per-call
synchronisation inflates short kernels. `time_callable` does the same with CUDA events outside pytest.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def synchronized_timer() -> float:
    """time.perf_counter after draining queued CUDA work (plain perf_counter when CUDA is unused)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Seconds per call over `rounds` rounds of `iterations` back-to-back calls each."""

    median: float
    q1: float
    q3: float
    min: float
    rounds: int
    iterations: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def summarize(samples: list[float], iterations: int = 1) -> Timing:
    """Median and quartiles of per-call times (samples are already divided by iterations)."""
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Timing(statistics.median(ordered), q1, q3, ordered[0], len(ordered), iterations)


def plan_iterations(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 3,
                    round_s: float = 0.02, max_iterations: int = 10_000) -> int:
    """Warm up (first calls compile and autotune), then pick how many calls make one round last about
    round_s, so that launch and clock granularity vanish from short-kernel timings."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(max_iterations, math.ceil(round_s / once)))


def time_callable(fn: Callable[[], object], device: torch.device | str, *, rounds: int = 10,
                  warmup: int = 3, round_s: float = 0.02) -> Timing:
    """Median/IQR seconds per call: CUDA events around each round on GPU, perf_counter on CPU."""
    iterations = plan_iterations(fn, device, warmup=warmup, round_s=round_s)
    samples = []
    for _ in range(rounds):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iterations):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / iterations)
        else:
            begin = time.perf_counter()
            for _ in range(iterations):
                fn()
            samples.append((time.perf_counter() - begin) / iterations)
    return summarize(samples, iterations)


def time_once(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall seconds of a single synchronised call (used for compile time: the first call compiles)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def device_name(device: torch.device | str | None = None) -> str:
    """The accelerator's marketing name, or the CPU architecture when running on CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.machine() or 'unknown'}"


def device_slug(device: torch.device | str | None = None) -> str:
    """Folder name for a device's results, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-x86_64'."""
    return re.sub(r"[^a-z0-9_]+", "-", device_name(device).lower()).strip("-") or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device | str | None = None) -> dict:
    """Everything needed to interpret a result, and nothing that identifies the host."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from benchmarks.flops import device_peak  # local: flops imports nothing from here

    name = device_name(device)
    env = {
        "device": name,
        "device_slug": device_slug(device),
        "peak": asdict(device_peak(name)),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "pytest_benchmark": _version("pytest-benchmark"),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.machine()}",
        "cpu_threads": torch.get_num_threads(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "git_commit": os.environ.get("FASTBERT_GIT_COMMIT") or _git("rev-parse", "HEAD"),
        "git_dirty": None,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    env["git_dirty"] = bool(status) if status is not None else os.environ.get("FASTBERT_GIT_DIRTY")
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["sm_count"] = props.multi_processor_count
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    return env
