"""The benchmark run behind `fastbert bench`: this machine's suite, then its report, then (asked) the targets.

On a GPU it is gpu_check.sh (its stages, budgets and log); on CPU, the encoder suite under pytest-benchmark
followed by report.py. Each step runs in its own process with this checkout first on PYTHONPATH, so the
benchmarks measure a fresh interpreter, and the steps are found beside this file: a stand-in folder with
the same file names runs the same way (tests/cli/test_cli.py).

`run` returns the command's exit status: 0 done (with check: every target this machine can measure is
met); 1 a stage failed, or with check a target is not met or there are no results to check.
"""

import os
import subprocess
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
ROOT = FOLDER.parent
RESULTS = FOLDER / "results"
# A full GPU run's stage budgets (seconds): gpu_check.sh's defaults are sized for the quick grid's 9 minutes.
FULL_GPU_BUDGETS_S = {"HEADLINE": "400", "KERNELS": "300", "ENCODER": "600", "TOTAL": "1500"}
GPU_RESULTS = ("headline", "kernels", "encoder")


def run(out_root, *, quick=False, check=False):
    """Benchmark this machine into out_root/<device slug>/ (an existing folder) and write REPORT.md there;
    `quick` picks the quick grid, `check` also holds the results to benchmarks/targets.py."""
    import torch

    size = "quick" if quick else "full"
    env = _environment()
    if torch.cuda.is_available():
        return _run_gpu(Path(out_root), size, check, env)
    return _run_cpu(Path(out_root), size, check, env)


def _environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHON", sys.executable)  # gpu_check.sh runs $PYTHON: this interpreter, not python3
    return env


def _run_gpu(out_root, size, check, env):
    # gpu_check.sh's settings, unless the user set them: benchmarks only (correctness is `fastbert verify`
    # and the test suite), sized by --quick; a full run gets budgets that fit the full grid.
    env.setdefault("FASTBERT_CHECK_SIZE", size)
    env.setdefault("FASTBERT_CHECK_TESTS_S", "0")
    if size == "full":
        for stage, seconds in FULL_GPU_BUDGETS_S.items():
            env.setdefault(f"FASTBERT_CHECK_{stage}_S", seconds)
    if _run(["bash", FOLDER / "gpu_check.sh", "--out", out_root], env) != 0:
        print(f"fastbert bench: {FOLDER / 'gpu_check.sh'} reported a failing stage (see its log)", file=sys.stderr)
        return 1
    out = out_root / _device_slug(env)
    print(f"benchmark report in {out}", file=sys.stderr)
    if check:
        return _check_targets(out, [out / f"{name}.json" for name in GPU_RESULTS], env)
    return 0


def _run_cpu(out_root, size, check, env):
    out = out_root / _device_slug(env)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "cpu.json"
    command = [sys.executable, "-m", "pytest", FOLDER / "test_bench_encoder.py", "-q", "-p", "no:cacheprovider",
               "--benchmark-enable", "--bench-size", size, "--benchmark-sort=name",
               "--benchmark-columns=median,iqr,rounds", f"--benchmark-json={data}"]
    if _run(command, env) != 0:
        print("fastbert bench: the CPU benchmark suite failed", file=sys.stderr)
        return 1
    if _run([sys.executable, "-m", "benchmarks.report", "--input", data, "--out", out], env) != 0:
        print("fastbert bench: writing the report failed", file=sys.stderr)
        return 1
    print(f"benchmark report in {out}", file=sys.stderr)
    return _check_targets(out, [data], env) if check else 0


def _run(command, env):
    print(f"$ {' '.join(str(part) for part in command)}", file=sys.stderr, flush=True)
    return subprocess.run([str(part) for part in command], cwd=ROOT, env=env).returncode


def _device_slug(env):
    """The results sub-folder the suite names after this machine's device, asked of a fresh interpreter as
    the suite's own processes see it."""
    code = "from benchmarks.timing import device_slug; print(device_slug())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def _check_targets(out, inputs, env):
    """Regenerate the report with --check: 0 when every target this machine can measure is met, 1 (with the
    report's list of unmet targets on stderr) otherwise."""
    inputs = [path for path in inputs if path.is_file() and path.stat().st_size > 0]
    if not inputs:
        print("fastbert bench --check: no benchmark results to check", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "benchmarks.report", "--out", out, "--check"]
    for path in inputs:
        command += ["--input", path]
    if (out / "profile.json").is_file():
        command += ["--profile", out / "profile.json"]
    if _run(command, env) != 0:
        print(f"fastbert bench --check: targets not met (see {out / 'REPORT.md'})", file=sys.stderr)
        return 1
    return 0
