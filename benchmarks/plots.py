"""Plots for the report (matplotlib, Agg backend: no display needed). Each function takes the report's
flat records and writes one PNG; a plot without data says so instead of disappearing."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.flops import peak_tflops  # noqa: E402

# Whole-encoder forward passes: on the GPU suite, and on the CPU suite (torch backend).
ENCODER_OPS = ("encoder", "encoder_cpu")


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def speedup_plot(records: list[dict], path: Path) -> Path:
    """fastbert's speedup over HF eager and HF SDPA across batch x seq (unpadded grid), per model/dtype."""
    grid = [r for r in records if r.get("op") in ENCODER_OPS and r["params"].get("padding_target") == 0.0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, baseline, target in zip(axes, ("hf_eager", "hf_sdpa"), (3.0, None), strict=True):
        rows = [r for r in grid if r["impl"] == baseline and r.get("ours_x")]
        if not rows:
            _no_data(ax, f"fastbert vs {baseline} pairs")
            continue
        shapes = sorted({(r["params"]["seq"], r["params"]["batch"]) for r in rows})
        series = sorted({(r["params"]["model"], r["dtype"]) for r in rows})
        width = 0.8 / len(series)
        for i, (model, dtype) in enumerate(series):
            values = {(r["params"]["seq"], r["params"]["batch"]): r["ours_x"] for r in rows
                      if (r["params"]["model"], r["dtype"]) == (model, dtype)}
            xs = [j + i * width for j, s in enumerate(shapes) if s in values]
            ax.bar(xs, [values[s] for s in shapes if s in values], width, label=f"{model} {dtype}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], [f"{b}x{s}" for s, b in shapes],
                      rotation=45)
        ax.axhline(1.0, color="black", linewidth=0.8)
        if target and any(r["op"] == "encoder" for r in rows):  # the 3x target is the GPU suite's
            ax.axhline(target, color="red", linestyle="--", linewidth=0.8, label=f"target {target:g}x")
        ax.set_xlabel("batch x seq")
        ax.set_ylabel(f"speedup (median {baseline} / median fastbert)")
        ax.set_title(f"fastbert vs {baseline}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def padding_plot(records: list[dict], path: Path) -> Path:
    """Median time against the realised padding ratio, per (model, dtype, batch x seq) with padded runs."""
    encoder = [r for r in records if r.get("op") == "encoder"]
    groups = defaultdict(list)
    for r in encoder:
        p = r["params"]
        groups[(p["model"], r["dtype"], p["batch"], p["seq"])].append(r)
    groups = {k: v for k, v in groups.items() if any(r["params"].get("padding_target", 0) > 0 for r in v)}
    chosen = sorted(groups, key=lambda k: -len(groups[k]))[:4]
    fig, axes = plt.subplots(1, max(1, len(chosen)), figsize=(5.5 * max(1, len(chosen)), 4.5), squeeze=False)
    if not chosen:
        _no_data(axes[0][0], "padded batches")
    for ax, key in zip(axes[0], chosen, strict=False):
        by_impl = defaultdict(list)
        for r in groups[key]:
            by_impl[r["impl"]].append((r["params"]["padding_ratio"], r["median"] * 1e3))
            if r["impl"] == "fastbert" and r["params"]["padding_target"] == 0:
                # Without padding the padded and padding-free runs are the same run.
                by_impl["fastbert_padded"].append((0.0, r["median"] * 1e3))
        for impl, points in sorted(by_impl.items()):
            points.sort()
            ax.plot([p for p, _ in points], [t for _, t in points], marker="o", label=impl)
        model, dtype, batch, seq = key
        ax.set_title(f"{model} {dtype} {batch}x{seq}")
        ax.set_xlabel("padding ratio (fraction of batch x seq)")
        ax.set_ylabel("median time per forward (ms)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tflops_plot(records: list[dict], path: Path) -> Path:
    """Achieved TFLOP/s of the GEMM, attention and unpadded encoder cases, with the device's dtype peaks."""
    rows = [r for r in records if r.get("tflops") and r.get("bound") == "compute"
            and (r.get("op") in ("linear", "attention")
                 or (r.get("op") in ENCODER_OPS and r["params"].get("padding_target") == 0.0))]
    rows.sort(key=lambda r: (r["op"], r["case"], not r.get("ours"), r["impl"]))
    fig, ax = plt.subplots(figsize=(10, 0.28 * max(len(rows), 8) + 1.5))
    if not rows:
        _no_data(ax, "compute-bound cases")
    else:
        labels = [f"{r['case']} | {r['impl']}" for r in rows]
        colors = ["tab:green" if r.get("ours") else "tab:gray" for r in rows]
        ax.barh(range(len(rows)), [r["tflops"] for r in rows], color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.invert_yaxis()
        peaks = {(r["device_name"], r["dtype"]): peak_tflops(r["device_name"], r["dtype"]) for r in rows}
        for (_device, dtype), peak in sorted(peaks.items(), key=str):
            if peak:
                ax.axvline(peak, color="red", linestyle="--", linewidth=0.8)
                ax.text(peak, -0.8, f"{dtype} peak {peak:g}", color="red", fontsize=7, ha="right")
        ax.set_xlabel("achieved TFLOP/s (useful FLOPs / median time); green = fastbert")
        ax.set_title("Achieved throughput vs device peak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(records: list[dict], out: Path) -> list[Path]:
    return [speedup_plot(records, out / "speedup.png"), padding_plot(records, out / "padding.png"),
            tflops_plot(records, out / "tflops.png")]
