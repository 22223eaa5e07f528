"""The benchmark suites must never rot: run them at tiny sizes (CPU: Triton's interpreter and the torch
backend), generate the report from the JSON they write, and check the work models they rely on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import flops
from benchmarks.models import sample_lengths

ROOT = Path(__file__).resolve().parents[2]


def test_encoder_flops_model_matches_hand_count():
    # BERT-base, one sequence of 128: per layer 8*T*H^2 + 4*T*H*I + 4*H*L^2.
    t, h, i, layers = 128, 768, 3072, 12
    expected = layers * (8 * t * h * h + 4 * t * h * i + 4 * h * t * t)
    assert flops.encoder_flops(flops.BERT_BASE, [128]) == expected
    # Attention is quadratic in each sequence's own length, not in the padded length.
    assert flops.attention_flops([64, 64], 12, 64) == flops.attention_flops([128], 12, 64) // 2
    assert flops.layer_norm_bytes(4096, 768, 2, residual=True) == 2 * (3 * 4096 * 768 + 2 * 768)


@pytest.mark.parametrize("name, key, hbm", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 3350.0), ("NVIDIA H100 PCIe", "H100 PCIe", 2000.0),
    ("NVIDIA H200", "H200 SXM", 4800.0), ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB", 2039.0),
    ("Some Future GPU", "unknown", None),
])
def test_device_peaks_by_name(name, key, hbm):
    assert flops.device_peak(name).name == key
    assert flops.peak_gbps(name) == hbm


def test_padded_lengths_are_seeded_and_near_target():
    lengths = sample_lengths(128, 512, 0.5)
    assert lengths == sample_lengths(128, 512, 0.5)
    assert max(lengths) == 512 and min(lengths) >= 1
    assert abs(1 - sum(lengths) / (128 * 512) - 0.5) < 0.02


def test_tiny_suites_and_report(tmp_path):
    env = {**os.environ, "FASTBERT_BENCH_SIZE": "tiny", "PYTHONUNBUFFERED": "1"}
    data = tmp_path / "bench.json"
    bench = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-enable",
         "--tb=short", "--benchmark-columns=median", f"--benchmark-json={data}",
         "benchmarks/test_bench_kernels.py", "benchmarks/test_bench_encoder.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    problems = [line for line in bench.stdout.splitlines() if line.startswith(("E ", "FAILED", "ERROR"))]
    assert bench.returncode == 0, "\n".join(problems[-60:]) + bench.stderr[-2000:]
    results = json.loads(data.read_text())
    assert "node" not in results["machine_info"]  # hostname-free
    assert results["machine_info"]["fastbert"]["torch"]
    impls = {(b["extra_info"]["op"], b["extra_info"]["impl"]) for b in results["benchmarks"]}
    for expected in [("linear", "triton"), ("linear", "torch_matmul"), ("attention", "triton"),
                     ("layer_norm", "triton"), ("embeddings", "triton"), ("encoder", "fastbert"),
                     ("encoder", "fastbert_padded"), ("encoder", "hf_eager"), ("encode_corpus", "fastbert_encode"),
                     ("encode_corpus", "st_optimized"), ("encode_corpus", "st_encode")]:
        assert expected in impls, f"missing {expected}; ran {sorted(impls)}"

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--input", str(data), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    text = (out / "REPORT.md").read_text()
    for section in ("## Environment", "## Targets", "## Kernels", "## Encoding a corpus", "## Encoder"):
        assert section in text
    for plot in ("speedup.png", "padding.png", "tflops.png"):
        assert (out / plot).stat().st_size > 1000


def test_tiny_profile(tmp_path):
    out = tmp_path / "profile"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_encoder", "--out", str(out), "--size", "tiny"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "| tiny 2x16 |" in run.stdout and (out / "PROFILE.md").read_text() in run.stdout
    result = json.loads((out / "profile.json").read_text())
    assert result["environment"]["torch"] and result["size"] == "tiny"
    assert result["categories"] == ["linear", "linear_tma", "cublas_gemm", "attention", "layer_norm", "embeddings",
                                    "other"]
    (case,) = result["cases"]
    assert "error" not in case and "skipped" not in case, case
    for key in ("wall_graph_us", "wall_graph_b2b_us", "wall_eager_us", "wall_eager_b2b_us", "device_total_us",
                "device_us", "kernels_per_forward", "pack_inputs_us", "graph_overhead_us", "host_bound"):
        assert key in case, key
    assert set(case["device_us"]) == set(result["categories"])
    assert case["wall_graph_us"] > 0 and case["pack_inputs_us"] > 0
