"""The benchmark report from hand-made pytest-benchmark JSON: targets (as data, per device), the GEMM
picker's decisions, the exit code of --check, and plots that are readable or not written at all."""

import json

import pytest

from benchmarks import report, targets
from benchmarks.plots import _ratio_axis, write_plots

GPU, CPU = "NVIDIA H200", "CPU x86_64"


def _bench(case, impl, median, ours=False, op="encoder", device=GPU, **extra):
    return {"name": f"{case}-{impl}", "stats": {"median": median, "q1": median, "q3": median, "iqr": 0.0,
                                                 "rounds": 10, "iterations": 1},
            "extra_info": {"case": case, "impl": impl, "ours": ours, "op": op, "dtype": extra.pop("dtype", "float16"),
                           "bound": "compute", "device": "cuda" if device == GPU else "cpu", **extra}}


def _write(path, benchmarks, device=GPU):
    data = {"machine_info": {"fastbert": {"device": device}}, "datetime": "now", "benchmarks": benchmarks}
    path.write_text(json.dumps(data))
    return path


def _encoder(model, batch, padding=0.0):
    return {"model": model, "batch": batch, "seq": 128, "padding_target": padding, "padding_ratio": padding}


def _headline_rows(fastbert_32=1e-3, error_ratio=1.1):
    case32, case1 = "encoder bert-base b=32", "encoder bert-base b=1"
    picks = {"gemm_choices": {"2304x768": "cublas", "3072x768+gelu": "triton"},
             "gemm_timings_us": {"2304x768": {"cublas": 20.0, "triton": 30.0},
                                 "3072x768+gelu": {"triton": 25.0, "cublas": 33.0}}}
    return [
        _bench(case32, "fastbert", fastbert_32, ours=True, params=_encoder("bert-base", 32), tokens=4096,
               max_abs_err_vs_hf32=0.011, hf_sdpa_max_abs_err_vs_hf32=0.01, err_ratio_vs_sdpa=error_ratio, **picks),
        _bench(case32, "hf_compile", 1.5e-3, params=_encoder("bert-base", 32)),
        _bench(case32, "hf_sdpa", 3e-3, params=_encoder("bert-base", 32)),
        _bench(case1, "fastbert", 0.25e-3, ours=True, params=_encoder("bert-base", 1), tokens=128),
    ]


def _statuses(results):
    return {res["target"].name: res["status"] for res in results}


def test_targets_evaluate_every_metric(tmp_path):
    envs, records = report.load([_write(tmp_path / "h.json", _headline_rows())])
    results = _statuses(targets.evaluate(targets.TARGETS, records, targets.device_kinds(envs)))
    assert results["BERT-base 32x128 >= 1.3x torch.compile max-autotune"] == "met"  # 1.5x
    assert results["BERT-base 32x128 >= 2.5x HF SDPA"] == "met"  # 3x
    assert results["BERT-base 1x128 <= 0.30 ms"] == "met"  # 0.25 ms
    assert results["accuracy: fp16 error vs transformers fp32 <= 1.25x transformers SDPA fp16's"] == "met"
    assert results["MiniLM-L6 1x128 <= 0.15 ms"] == "not measured"
    assert not any("CPU" in name for name in results), "a GPU report lists CPU targets"

    _, records = report.load([_write(tmp_path / "h2.json", _headline_rows(fastbert_32=2e-3, error_ratio=1.3))])
    results = _statuses(targets.evaluate(targets.TARGETS, records, {"cuda"}))
    assert results["BERT-base 32x128 >= 1.3x torch.compile max-autotune"] == "NOT MET"  # 0.75x
    assert results["accuracy: fp16 error vs transformers fp32 <= 1.25x transformers SDPA fp16's"] == "NOT MET"


def test_cpu_report_lists_only_what_a_cpu_can_measure(tmp_path):
    rows = [_bench("cpu encode", "fastbert_encode", 1.0, ours=True, op="encode_cpu", device=CPU, params={}),
            _bench("cpu encode", "st_encode", 1.1, op="encode_cpu", device=CPU, params={})]
    out = tmp_path / "out"
    summary, results = report.write_report([_write(tmp_path / "cpu.json", rows, CPU)], out)
    assert [res["target"].device for res in results] == ["cpu"]
    text = (out / "REPORT.md").read_text()
    assert "torch.compile" not in text.split("## Targets")[1].split("##")[0]
    assert summary[-1].startswith("[met] CPU:")


def test_check_exits_non_zero_when_a_target_is_not_met(tmp_path, capsys):
    met = _write(tmp_path / "cpu.json", [
        _bench("cpu encode", "fastbert_encode", 1.0, ours=True, op="encode_cpu", device=CPU, params={}),
        _bench("cpu encode", "st_encode", 1.1, op="encode_cpu", device=CPU, params={})], CPU)
    assert report.main(["--input", str(met), "--out", str(tmp_path / "a"), "--check"]) == 0
    unmet = _write(tmp_path / "gpu.json", _headline_rows(fastbert_32=2e-3))
    assert report.main(["--input", str(unmet), "--out", str(tmp_path / "b"), "--check"]) == report.CHECK_FAILED
    err = capsys.readouterr().err
    assert "NOT MET: BERT-base 32x128 >= 1.3x torch.compile" in err
    assert "not measured: MiniLM-L6 1x128" in err  # a GPU target the run did not measure fails the check too
    assert report.main(["--input", str(unmet), "--out", str(tmp_path / "c")]) == 0  # without --check: a report


def test_report_shows_the_picker_decisions_and_errors(tmp_path):
    out = tmp_path / "out"
    report.write_report([_write(tmp_path / "h.json", _headline_rows())], out)
    text = (out / "REPORT.md").read_text()
    section = text.split("## GEMM picker decisions")[1].split("\n## ")[0]
    assert "| 2304x768 | cublas | cublas 20.0, triton 30.0 |" in section
    assert "| 3072x768+gelu | triton | triton 25.0, cublas 33.0 |" in section
    assert "max err 1.1e-02, SDPA 1.0e-02" in text


def test_a_case_measured_twice_keeps_the_first_measurement(tmp_path):
    first = _write(tmp_path / "headline.json", _headline_rows())
    second = _write(tmp_path / "encoder.json", _headline_rows(fastbert_32=9.0))
    _, records = report.load([first, second])
    fastbert = [r for r in records if r["impl"] == "fastbert" and r["params"]["batch"] == 32]
    assert len(fastbert) == 1 and fastbert[0]["median"] == 1e-3


def test_no_blank_figures_and_stale_ones_removed(tmp_path):
    (tmp_path / "padding.png").write_bytes(b"stale")
    rows = [_bench("cpu encode", "fastbert_encode", 1.0, ours=True, op="encode_cpu", device=CPU, params={})]
    _, records = report.load([_write(tmp_path / "cpu.json", rows, CPU)])
    assert write_plots(records, tmp_path) == []
    assert not any(tmp_path.glob("*.png"))


@pytest.mark.parametrize("values, scale", [([1.2, 0.95, 1.04], "linear"), ([1.5, 2.0, 30.0], "log scale")])
def test_speedups_with_an_outlier_get_a_log_axis(values, scale):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        assert _ratio_axis(ax, values) == scale
        low, high = ax.get_ylim()
        assert low <= min(values) and high >= max(values)
    finally:
        plt.close(fig)


def test_plots_are_saved_with_a_tight_bounding_box(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, path, **kw: (saved.append(kw.get("bbox_inches")), real(self, path, **kw))[1])
    _, records = report.load([_write(tmp_path / "h.json", _headline_rows())])
    assert [p.name for p in write_plots(records, tmp_path)] == ["speedup.png"]  # no FLOPs, no padded batches
    assert saved == ["tight"]


def test_gpu_check_runs_the_headline_first_within_its_budgets():
    """The script's contract, read from the script: the headline stages come first and their default
    budgets fit ~6 minutes; every stage's default budget together fits the 9-minute total; the corpus
    benchmark, the server's small load and then the rest of the tests share what is left of that total."""
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    budgets = {name.lower(): int(seconds) for name, seconds in re.findall(r'FASTBERT_CHECK_(\w+)_S:-(\d+)', text)}
    order = re.findall(r"^\s*(?:\S+=\S+ )?(?:stage|report) ([\w-]+)", text, flags=re.MULTILINE)
    assert order[:3] == ["headline", "profile", "report-headline"], order
    assert order.index("kernels") > order.index("report-headline") and order[-1] == "tests-rest"
    assert order[-4:] == ["report", "corpus", "serve", "tests-rest"], order
    assert "corpus_budget=$((total_s - (SECONDS - start_all)))" in text  # never past the total
    headline = budgets["headline"] + budgets["profile"] + budgets["report"]
    assert headline <= 360, budgets
    rest = budgets["kernels"] + budgets["encoder"] + budgets["tests"] + budgets["report"]
    assert headline + rest <= budgets["total"] <= 540, budgets
