"""Prove on a CPU-only machine that kernels compile for real GPUs: triton.compile with a GPUTarget
builds PTX and cubin without a device. Runs in one subprocess per batch of cases, with TRITON_INTERPRET=0
(the interpreter replaces triton.jit, so in-process kernels cannot be compiled; and without a GPU,
fastbert/kernels/_runtime.py would choose the interpreter unless told otherwise)."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCHS = (80, 90)
# Largest shared memory one block may opt into: A100 (sm_80) 163 KB, H100 (sm_90) 227 KB.
MAX_SHARED_BYTES = {80: 166912, 90: 232448}
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CompileCase:
    """One kernel specialisation. signature: argument name -> Triton type ("*fp16", "i32", "constexpr")."""

    label: str
    module: str
    kernel: str
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    arch: int = 90
    # Arguments a real launch specialises as multiples of 16 (16-byte aligned pointers, strides and sizes
    # divisible by 16). Without them loads cannot be vectorised, the async-copy pipeline is not built and
    # the reported shared memory is a single stage's, not what a GPU run uses.
    divisible_by_16: list = field(default_factory=list)


def compile_cases(cases):
    """Compile every case; returns one dict per case: ok, error, shared, wgmma, mma, tma, local_memory_spill."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    completed = subprocess.run(
        [sys.executable, "-m", "tests.kernels._compile_worker"],
        input=json.dumps([asdict(case) for case in cases]),
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"compile worker failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout)


def config_constexprs(config):
    """A triton.Config's tile sizes, and its warps/stages, as plain values for a CompileCase."""
    return dict(config.kwargs), config.num_warps, config.num_stages
