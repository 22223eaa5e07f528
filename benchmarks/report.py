"""Turn pytest-benchmark JSON into REPORT.md and plots. Generated from data; never edit the output.

    python -m benchmarks.report --input kernels.json --input encoder.json \
        --out benchmarks/results/<device-slug>/

Every number is derived here from the recorded median time and the work model stored with each result
(benchmarks/flops.py): TFLOP/s = flops / median, GB/s = bytes / median, % of peak against the device's
datasheet peak, and "ours x" = this implementation's median / fastbert's median on the same case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.flops import peak_gbps, peak_tflops
from benchmarks.report_context import column_notes, environment_section, flops_unit, measured_on
from benchmarks.targets import (
    NOISY_IQR_SHARE,
    TARGETS,
    device_kinds,
    evaluate,
    failures,
    fmt_threshold,
    fmt_value,
    noisy,
    worst,
)


def load(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """(environments, records): one environment per input file, one flat record per benchmark."""
    envs, records, seen = [], [], set()
    for index, path in enumerate(paths):
        data = json.loads(Path(path).read_text())
        env = dict(data.get("machine_info", {}).get("fastbert", {}))
        env.update(file=Path(path).name, datetime=data.get("datetime"), partial=bool(data.get("partial")),
                   cpu=data.get("machine_info", {}).get("cpu", {}).get("brand_raw"))
        envs.append(env)
        for bench in data.get("benchmarks", []):
            info, stats = bench.get("extra_info", {}), bench["stats"]
            if "case" not in info:
                continue
            key = (env.get("device"), info["case"], info.get("impl"))
            if key in seen:
                # The same case measured by two inputs (gpu_check.sh's headline stage and its encoder grid):
                # the first input's measurement stands, so the report agrees with the early headline one.
                continue
            seen.add(key)
            rec = {**info, "name": bench["name"], "env": index, "device_name": env.get("device")}
            rec.update({k: stats[k] for k in ("median", "q1", "q3", "iqr", "rounds", "iterations")})
            calls = info.get("calls_per_call", 1)  # a timed call replaying a graph of `calls` calls
            rec.update({k: rec[k] / calls for k in ("median", "q1", "q3", "iqr")})
            rec.setdefault("params", {})
            rec["noisy"] = noisy(rec)
            _derive(rec)
            records.append(rec)
    _speedups(records)
    return envs, records


def _derive(rec: dict) -> None:
    median = rec["median"]
    rec["tflops"] = rec["flops"] / median / 1e12 if rec.get("flops") else None
    rec["gbps"] = rec["bytes"] / median / 1e9 if rec.get("bytes") else None
    if rec.get("bound") == "memory":
        peak = peak_gbps(rec["device_name"])
        rec["pct_peak"] = rec["gbps"] / peak if peak and rec["gbps"] else None
    else:
        peak = peak_tflops(rec["device_name"], rec.get("dtype", ""))
        rec["pct_peak"] = rec["tflops"] / peak if peak and rec["tflops"] else None
    rec["tokens_s"] = rec["tokens"] / median if rec.get("tokens") else None
    rec["seqs_s"] = rec["sequences"] / median if rec.get("sequences") else None


def _speedups(records: list[dict]) -> None:
    """rec["ours_x"]: how many times faster fastbert is than this record's implementation, same case, with
    its spread (ours_x_low, ours_x_high: this record's quartiles over fastbert's opposite ones) and whether
    fastbert's timing is noisy (ours_noisy). Where fastbert has several implementations of a case (the
    GEMM's two kernels), its fastest counts: that is the one its GEMM picker runs."""
    ours = {}
    for r in records:
        key = (r["device_name"], r["case"])
        if r.get("ours") and r["median"] < ours.get(key, {"median": float("inf")})["median"]:
            ours[key] = r
    for r in records:
        mine = ours.get((r["device_name"], r["case"]))
        r["ours_x"] = r["median"] / mine["median"] if mine else None
        r["ours_x_low"] = r["q1"] / mine["q3"] if mine and mine["q3"] > 0 else None
        r["ours_x_high"] = r["q3"] / mine["q1"] if mine and mine["q1"] > 0 else None
        r["ours_noisy"] = bool(mine and mine["noisy"])


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def fmt_num(value: float | None) -> str:
    """3 significant figures without exponents for the usual ranges (0.00123, 4.56, 789)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.1f}"


def fmt_iqr(rec: dict) -> str:
    """The IQR, marked when it makes the case noisy (benchmarks/targets.py NOISY_IQR_SHARE)."""
    return fmt_time(rec["iqr"]) + (" (noisy)" if rec.get("noisy") else "")


def fmt_ratio(rec: dict) -> str:
    if rec.get("ours"):
        return "(ours)"
    return fmt(rec.get("ours_x"), ".2f", "x")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _ordered(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["case"], not r.get("ours"), r["median"]))


def targets_section(results: list[dict]) -> list[str]:
    rows = []
    for res in results:
        target, values = res["target"], res["values"]
        detail = "; ".join(f"{case}: {fmt_value(target, v)}" + (" (noisy, not deciding)" if is_noisy else "")
                           for case, v, is_noisy in values)
        rows.append([target.name, fmt_threshold(target), fmt_value(target, worst(target, values)), res["status"],
                     detail or "-"])
    return ["## Targets", "", "Worst case over every matching case that is not noisy; all must pass. A case "
            f"whose IQR exceeds {NOISY_IQR_SHARE:.0%} of its median (either side of a speedup) is noisy: it "
            "is listed but decides nothing, and a target whose every case is noisy is undecided. Only the "
            "targets the devices of these results can measure are listed.", ""] + \
        _table(["target", "threshold", "measured (worst)", "status", "cases"], rows) + [""]


def kernels_section(records: list[dict]) -> list[str]:
    kernels = [r for r in records if r.get("op") in ("linear", "attention", "layer_norm", "embeddings")]
    if not kernels:
        return []
    rows = [[r["case"], r["impl"], fmt_time(r["median"]), fmt_iqr(r), fmt_num(r["tflops"]),
             fmt_num(r["gbps"]), fmt(r["pct_peak"] and r["pct_peak"] * 100, ".0f", "%"), fmt_ratio(r)]
            for r in _ordered(kernels)]
    return ["## Kernels", ""] + _table(
        ["case", "impl", "median", "IQR", "TFLOP/s", "GB/s", "% peak", "ours x"], rows) + [""]


def encoder_section(records: list[dict], title: str, ops: tuple[str, ...]) -> list[str]:
    """One row per forward (or encode) case and implementation. FLOP rates in the unit that fits the
    section's values (report_context.flops_unit); the % peak column only where some device has a peak."""
    enc = [r for r in records if r.get("op") in ops]
    if not enc:
        return []
    enc.sort(key=lambda r: (r["params"].get("model", ""), r.get("dtype", ""),
                            r["params"].get("padding_target") or 0, r["params"].get("seq", 0),
                            r["params"].get("batch", 0), not r.get("ours"), r["median"]))
    scale, unit = flops_unit([r["tflops"] * 1e12 for r in enc if r.get("tflops")])
    with_peak = any(r.get("pct_peak") is not None for r in enc)
    rows = []
    for r in enc:
        p = r["params"]
        pad = "-" if p.get("padding_ratio") is None else f"{p['padding_ratio'] * 100:.0f}%"
        rate = fmt_num(r["tflops"] and r["tflops"] * 1e12 / scale)
        peak = [fmt(r["pct_peak"] and r["pct_peak"] * 100, ".0f", "%")] if with_peak else []
        rows.append([p.get("model", "-"), r.get("dtype", "-"), f"{p.get('batch')}x{p.get('seq')}", pad,
                     r["impl"] + _encoder_notes(r), fmt_time(r["median"]), fmt_iqr(r), fmt_rate(r["tokens_s"]),
                     fmt_rate(r["seqs_s"]), rate, *peak, fmt_ratio(r)])
    return [f"## {title}", ""] + _table(
        ["model", "dtype", "batch x seq", "padding", "impl", "median", "IQR", "tokens/s", "seq/s", unit,
         *(["% peak"] if with_peak else []), "fastbert x"], rows) + [""]


def _encoder_notes(r: dict) -> str:
    """What the impl column says beside the name: compile time, CUDA graphs, errors, GEMM picks."""
    extra = f" (compile {r['compile_s']:.0f} s)" if r.get("compile_s") is not None else ""
    extra += " (CUDA graphs)" if r.get("cuda_graphs") else ""
    if r.get("max_abs_err_vs_hf32") is not None:
        sdpa = r.get("hf_sdpa_max_abs_err_vs_hf32")
        extra += f" (max err {r['max_abs_err_vs_hf32']:.1e}" + (f", SDPA {sdpa:.1e}" if sdpa is not None else "")
        extra += ")"
    elif r.get("max_abs_err_vs_hf") is not None:  # results written before errors were taken against fp32
        extra += f" (max err vs SDPA {r['max_abs_err_vs_hf']:.1e})"
    if r.get("gemm_choices"):
        picks = list(r["gemm_choices"].values())
        extra += f" (cuBLAS GEMMs {picks.count('cublas')}/{len(picks)})"
    return extra


CORPUS_ORDER = ("fastbert_encode", "fastbert_encode_nographs", "st_optimized", "st_encode")


def corpus_section(records: list[dict]) -> list[str]:
    """Whole-corpus encodes (test_encode_corpus): one row per implementation, one timed call per pass."""
    rows, notes, cases = [], [], {}
    corpus = [r for r in records if r.get("op") == "encode_corpus"]
    for r in corpus:
        cases.setdefault((r["device_name"], r["case"]), []).append(r)
    for (_, case), recs in sorted(cases.items(), key=lambda item: item[0][1]):
        baseline = next((r["median"] for r in recs if r["impl"] == "st_encode"), None)
        recs.sort(key=lambda r: (CORPUS_ORDER.index(r["impl"]) if r["impl"] in CORPUS_ORDER else 99, r["impl"]))
        for r in recs:
            p = r["params"]
            extra = " (CUDA graphs)" if r.get("cuda_graphs") else ""
            if r.get("graphs_cached") is not None:
                extra += f" ({r['graphs_cached']} graphs cached)"
            cosine = r.get("min_cosine_vs_st")
            rows.append([p.get("model", "-"), r.get("dtype", "-"), r["impl"] + extra, fmt_time(r["median"]),
                         fmt_iqr(r), fmt_rate(r["seqs_s"]), fmt_rate(r["tokens_s"]),
                         fmt(baseline and baseline / r["median"], ".2f", "x"), fmt_time(r.get("first_pass_s")),
                         "-" if cosine is None else f"{cosine:.6f}"])
        p = recs[0]["params"]
        cache = next((r["graph_cache_size"] for r in recs if r.get("graph_cache_size") is not None), None)
        notes.append(f"- {case}: {p.get('texts')} texts, {recs[0].get('tokens')} tokens "
                     f"({p.get('tokens_per_text')} per text, longest {p.get('longest')}, truncation at "
                     f"{p.get('max_length')}); {p.get('batches')} batches of {p.get('batch_size')} with "
                     f"{p.get('distinct_batch_shapes')} distinct shapes"
                     + (f"; fastbert keeps at most {cache} CUDA graphs" if cache else ""))
    if not rows:
        return []
    dist = corpus[0]["params"].get("lengths_dist", "-")
    return ["## Encoding a corpus", "",
            "One timed call = one pass over the corpus, tokenisation included; every implementation batches "
            "32 texts. x st_encode = sentence-transformers' time / this row's time (> 1: faster). First pass "
            "= the first pass alone (autotuning, GEMM picks), never in the median. Min cosine = the lowest "
            "cosine, over the texts, between this row's embeddings and sentence-transformers'. "
            f"Lengths: {dist}.", ""] + \
        _table(["model", "dtype", "impl", "per pass", "IQR", "texts/s", "tokens/s", "x st_encode",
                "first pass", "min cosine vs ST"], rows) + [""] + notes + [""]


def headline(envs: list[dict], records: list[dict], results: list[dict]) -> list[str]:
    """A few lines for the terminal and the top of the report: the unpadded fp16 encoder rows at 1x128 and
    32x128 (issue 13's headline shapes), the corpus encodes, and every target's status."""
    lines = [f"device: {envs[0].get('device') if envs else 'unknown'}"]
    shapes = [(1, 128), (32, 128)]
    heads = [r for r in records if r.get("op") == "encoder" and r.get("ours") and r.get("dtype") == "float16"
             and r["params"].get("padding_target") == 0.0
             and (r["params"].get("batch"), r["params"].get("seq")) in shapes]
    heads.sort(key=lambda r: (r["params"]["model"], r["params"]["batch"]))
    for r in heads + [r for r in records if r.get("op") == "encode_corpus" and r.get("ours")]:
        others = sorted((o for o in records if o["case"] == r["case"] and not o.get("ours")), key=lambda o: o["impl"])
        vs = ", ".join(f"{o['impl']} {o['ours_x']:.2f}x" for o in others if o.get("ours_x"))
        if r.get("op") == "encoder":
            p = r["params"]
            error = ""
            if r.get("err_ratio_vs_sdpa") is not None:
                error = f"; error vs fp32 {r['err_ratio_vs_sdpa']:.2f}x SDPA fp16's"
            lines.append(f"{p['model']} {p['batch']}x{p['seq']} fp16: {fmt_time(r['median'])}, "
                         f"{fmt_rate(r['tokens_s'])} tokens/s, {fmt_num(r['tflops'])} TFLOP/s; fastbert vs "
                         f"{vs or 'no baselines'}{error}")
        else:
            lines.append(f"{r['case']}: fastbert_encode {fmt_time(r['median'])} per pass, {fmt_rate(r['seqs_s'])} "
                         f"texts/s (first pass {fmt_time(r.get('first_pass_s'))}); fastbert vs {vs or 'no baselines'}")
    for res in results:
        value = worst(res["target"], res["values"])
        lines.append(f"[{res['status']}] {res['target'].name}: {fmt_value(res['target'], value)}")
    return lines


def picker_section(records: list[dict]) -> list[str]:
    """The GEMM picker's decision for every projection shape of the timed encoder batches, with the
    timings it was made on (fastbert/gemm.py: each candidate timed at the token bucket it serves)."""
    rows = []
    for r in records:
        if r.get("op") != "encoder" or not r.get("gemm_choices"):
            continue
        p, timings = r["params"], r.get("gemm_timings_us") or {}
        tokens = r.get("tokens") if r["impl"] == "fastbert" else p.get("batch", 0) * p.get("seq", 0)
        for shape, choice in sorted(r["gemm_choices"].items()):
            times = timings.get(shape, {})
            shown = ", ".join(f"{name} {us:.1f}" if us != float("inf") else f"{name} failed"
                              for name, us in sorted(times.items(), key=lambda item: item[1]))
            rows.append([p.get("model", "-"), r.get("dtype", "-"), f"{p.get('batch')}x{p.get('seq')}", r["impl"],
                         str(tokens), shape, choice, shown or "-"])
    if not rows:
        return []
    return ["## GEMM picker decisions", "",
            "Per projection shape (N x K, + the fused activation) of each timed batch: the implementation "
            "fastbert's GEMM picker chose and the device microseconds per call of every candidate it timed, "
            "fastest first (timed at the power-of-two token bucket the decision serves).", ""] + \
        _table(["model", "dtype", "batch x seq", "run", "tokens", "shape", "chosen", "us per call"], rows) + [""]


def profile_section(profile_path: Path | None) -> list[str]:
    """The encoder profile (benchmarks/profile_encoder.py): device time by kernel family, host overhead."""
    if profile_path is None or not profile_path.is_file():
        return []
    from benchmarks.profile_encoder import markdown

    table = markdown(json.loads(profile_path.read_text())).splitlines()
    return ["## Where the time goes (encoder profile)", "", *table[2:], ""]


def write_report(paths: list[Path], out: Path, profile: Path | None = None) -> tuple[list[str], list[dict]]:
    """Write REPORT.md and the plots into `out`; returns (headline lines, target results)."""
    from benchmarks.plots import write_plots

    envs, records = load(paths)
    results = evaluate(TARGETS, records, device_kinds(envs))
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(records, out)
    summary = headline(envs, records, results)
    sources = ", ".join(f"`{Path(p).name}`" for p in [*paths, *([profile] if profile and profile.is_file() else [])])
    lines = ["# fastbert benchmark report", "",
             f"Generated by `python -m benchmarks.report` from {sources}; do not edit by hand.", "",
             *measured_on(envs),
             "```", *summary, "```", ""]
    lines += environment_section(envs, records) + targets_section(results)
    lines += encoder_section(records, "Encoder", ("encoder",))
    lines += picker_section(records) + profile_section(profile) + kernels_section(records)
    lines += corpus_section(records)
    lines += encoder_section(records, "CPU (real all-MiniLM-L6-v2, fp32)", ("encoder_cpu", "encode_cpu"))
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += column_notes(records)
    (out / "REPORT.md").write_text("\n".join(lines))
    return summary, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", action="append", required=True, type=Path, help="pytest-benchmark JSON")
    parser.add_argument("--out", required=True, type=Path, help="folder for REPORT.md and the plots")
    parser.add_argument("--profile", type=Path, help="profile.json of benchmarks/profile_encoder.py (optional)")
    parser.add_argument("--check", action="store_true",
                        help="exit 3 unless every target these results' devices can measure is met")
    args = parser.parse_args(argv)
    present = [p for p in args.input if p.is_file() and p.stat().st_size > 0]
    for missing in sorted(set(args.input) - set(present)):
        print(f"report: skipping missing input {missing}", file=sys.stderr)
    if not present:
        print("report: no input files", file=sys.stderr)
        return 1
    summary, results = write_report(present, args.out, args.profile)
    for line in summary:
        print(line)
    print(f"report: wrote {args.out / 'REPORT.md'}")
    if args.check:
        failed = failures(results)
        for line in failed:
            print(f"report --check: {line}", file=sys.stderr)
        if failed:
            return CHECK_FAILED
        print(f"report --check: all {len(results)} targets met", file=sys.stderr)
    return 0


CHECK_FAILED = 3  # distinct from 1 (no report could be written)


if __name__ == "__main__":
    raise SystemExit(main())
