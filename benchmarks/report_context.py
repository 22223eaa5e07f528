"""The report's context: the environment table and the notes on its columns, each showing only what the
run's data holds. Models, dtypes and fastbert backends are read from the records, not from the suite's
settings (a CPU run of the GPU grid's defaults names models it never loaded); GPU-only rows, peaks and
notes appear only where a record needs them; FLOP rates take the unit that fits their values."""

from __future__ import annotations

from dataclasses import asdict

from benchmarks.flops import device_peak
from benchmarks.targets import NOISY_IQR_SHARE

ENV_KEYS = ["device", "cpu", "compute_capability", "sm_count", "memory_gib", "torch", "cuda", "triton",
            "transformers", "sentence_transformers", "pytest_benchmark", "python", "os", "cpu_threads",
            "triton_interpret", "tf32_matmul", "git_commit", "git_dirty", "bench_size", "models", "dtypes",
            "backends", "datetime", "partial"]
GPU_KEYS = {"compute_capability", "sm_count", "memory_gib", "cuda", "tf32_matmul"}
TRITON_KEYS = {"triton", "triton_interpret"}  # meaningful only when a record ran fastbert's triton backend


def flops_unit(rates: list[float]) -> tuple[float, str]:
    """(scale, unit) for FLOP/s values: TFLOP/s when the largest reaches 1 TFLOP/s, GFLOP/s otherwise, so a
    CPU's 0.15 TFLOP/s reads 150 GFLOP/s."""
    return (1e12, "TFLOP/s") if max(rates, default=0.0) >= 1e12 else (1e9, "GFLOP/s")


def _ran(records: list[dict]) -> dict:
    """Per environment index: the models, dtypes and fastbert backends its records ran."""
    ran: dict = {}
    for r in records:
        seen = ran.setdefault(r["env"], {"models": set(), "dtypes": set(), "backends": set()})
        if r["params"].get("model"):
            seen["models"].add(r["params"]["model"])
        if r.get("dtype"):
            seen["dtypes"].add(r["dtype"])
        if r.get("backend"):
            seen["backends"].add(r["backend"])
    return ran


def measured_on(envs: list[dict]) -> list[str]:
    """One line per input: which machine and commit made it (from the run's own record)."""
    lines = []
    for env in envs:
        machine = ", ".join(str(env[k]) for k in ("device", "cpu") if env.get(k))
        threads = f", {env['cpu_threads']} threads" if env.get("cpu_threads") else ""
        dirty = " with uncommitted changes" if env.get("git_dirty") in (True, "True", "1") else ""
        when = env.get("datetime") or "at an unrecorded time"
        lines.append(f"`{env['file']}`: measured on {machine or 'an unrecorded machine'}{threads} at commit "
                     f"{env.get('git_commit') or 'unrecorded'}{dirty}, {when}.")
    return lines + [""] if lines else []


def environment_section(envs: list[dict], records: list[dict]) -> list[str]:
    ran = _ran(records)
    envs = [{**env, **{k: ", ".join(sorted(v)) or "-" for k, v in ran.get(i, {}).items()}}
            for i, env in enumerate(envs)]
    gpu = any(r.get("device") not in (None, "cpu") for r in records)
    triton = any(r.get("backend") == "triton" for r in records)
    keys = [k for k in ENV_KEYS if (gpu or k not in GPU_KEYS) and (triton or k not in TRITON_KEYS)]
    rows = [[k] + [str(env.get(k, "-")) for env in envs] for k in keys
            if any(env.get(k) is not None for env in envs)]
    lines = ["## Environment", ""] + _table(["", *[env["file"] for env in envs]], rows) + [""]
    # The datasheet table the % peak column used (benchmarks/flops.py), not the run's copy of it.
    peak = asdict(device_peak(envs[0].get("device"))) if envs else {}
    known = [f"{dtype} {peak[f'{dtype}_tflops']:g} TFLOP/s" for dtype in ("fp16", "bf16", "fp32")
             if peak.get(f"{dtype}_tflops") is not None]
    if peak.get("hbm_gbps") is not None:
        known.append(f"HBM {peak['hbm_gbps']:g} GB/s")
    if known:
        lines += [f"Device peak used for % of peak: {peak.get('name')} - {', '.join(known)} (dense; "
                  "benchmarks/flops.py DEVICE_PEAKS).", ""]
    elif gpu:
        lines += [f"No datasheet peak for {envs[0].get('device')} in benchmarks/flops.py DEVICE_PEAKS: "
                  "% of peak is not reported.", ""]
    if any(env.get("partial") for env in envs):
        lines += ["**Partial results**: a stage ended at its time budget; only finished cases are shown.", ""]
    return lines


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# (note, whether the records need it): a note appears only beside a column the report shows.
COLUMN_NOTES = [
    ("- **median / IQR**: seconds per call over the timed rounds (each round many back-to-back calls, the "
     "clock read only after the device is idle); IQR = spread between the 25th and 75th percentiles. "
     f"**(noisy)**: the IQR exceeds {NOISY_IQR_SHARE:.0%} of the median; such a case decides no target.",
     lambda rs: True),
    ("- **CUDA graphs**: GPU kernel cases replay a CUDA graph of 20 calls per timed call (divided back out), "
     "so they show device time; encoder cases are timed as a user calls them (host work, and fastbert's own "
     "graph replay, included).", lambda rs: any(r.get("calls_per_call") or r.get("cuda_graphs") for r in rs)),
    ("- **TFLOP/s or GFLOP/s** (the unit that fits the values): useful FLOPs / median. Matrix products only, "
     "2 FLOPs per multiply-accumulate: GEMM 2MNK; attention 4 L^2 x hidden per sequence of length L (QK^T "
     "and PV); encoder per layer 8 T H^2 + 4 T H I + 4 H sum(L_i^2) over real tokens T only (padding never "
     "counts). Excluded: softmax, GELU, biases, residual adds, LayerNorm, embeddings, pooler.",
     lambda rs: any(r.get("flops") for r in rs)),
    ("- **GB/s**: minimum bytes (each input read once, output written once) / median; embeddings count "
     "every gathered table row per token.", lambda rs: any(r.get("bytes") for r in rs)),
    ("- **% peak**: FLOP/s against the datasheet dense tensor-core peak of the dtype (compute-bound cases), "
     "GB/s against HBM bandwidth (memory-bound cases); \"-\" when the device is not in the table.",
     lambda rs: any(r.get("pct_peak") is not None for r in rs)),
    ("- **max err**: largest |fastbert - transformers in fp32| over the real tokens of the timed batch (fp64 "
     "for fp32 runs); **SDPA**: the same for transformers SDPA in fastbert's dtype on the same input. The "
     "accuracy target compares the two.", lambda rs: any(r.get("max_abs_err_vs_hf32") is not None for r in rs)),
    ("- **cuBLAS GEMMs n/m**: of the m GEMM shapes of this batch, n ran on cuBLAS because it timed faster "
     "than fastbert's Triton GEMM on first use (fastbert/engine/gemm.py); the rest ran the Triton kernel.",
     lambda rs: any(r.get("gemm_choices") for r in rs)),
    ("- **ours x / fastbert x**: this row's median / fastbert's median on the same case: > 1 means fastbert "
     "is faster. **padding**: realised fraction of the [batch, seq] grid that is padding.", lambda rs: True),
    ("- **Encoding a corpus**: texts/s and tokens/s count the corpus's texts and real tokens per pass; "
     "\"graphs cached\" is how many CUDA graphs fastbert held after the timed passes (its cache is keyed on "
     "the exact batch shape, so a corpus with more distinct batch shapes than the cache holds captures again).",
     lambda rs: any(r.get("op") == "encode_corpus" for r in rs)),
]


def column_notes(records: list[dict]) -> list[str]:
    return ["## Columns and work model", ""] + [note for note, needed in COLUMN_NOTES if needed(records)] + [""]
