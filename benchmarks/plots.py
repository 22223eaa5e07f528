"""Plots for the report (matplotlib, Agg backend: no display needed). Each function takes the report's
flat records and writes one PNG, or nothing (returning None) when the records hold no data for it: no
blank figure is ever written, and a stale one from an earlier run in the same folder is removed.
Figures are saved with a tight bounding box, so long tick labels are never cut."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from benchmarks.flops import peak_tflops  # noqa: E402

# Whole-encoder forward passes: on the GPU suite, and on the CPU suite (torch backend).
ENCODER_OPS = ("encoder", "encoder_cpu")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _no_data(ax, what: str) -> None:
    """One empty panel of a figure that has data in another panel."""
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _ratio_axis(ax, values: list[float]) -> str:
    """The y axis for speedups: logarithmic when they span more than LOG_SPAN (0.5x and 2x then sit equally
    far from 1x, and one 30x outlier no longer flattens every other bar), with plain-number ticks (0.5, 1,
    2, 5); linear from 0 otherwise. Returns the scale's name for the axis label."""
    low, high = min(values + [1.0]), max(values + [1.0])
    if high / low <= LOG_SPAN:
        ax.set_ylim(0, high * 1.15)
        return "linear"
    ax.set_yscale("log")
    ax.set_ylim(low / 1.3, high * 1.3)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=()))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
    return "log scale"


LOG_SPAN = 4.0


def speedup_plot(records: list[dict], path: Path) -> Path | None:
    """fastbert's speedup over HF eager and HF SDPA across batch x seq (unpadded grid), per model/dtype, each
    bar labelled with its value (a log axis when the values span a wide range: _ratio_axis)."""
    grid = [r for r in records if r.get("op") in ENCODER_OPS and r["params"].get("padding_target") == 0.0]
    panels = [(baseline, target, [r for r in grid if r["impl"] == baseline and r.get("ours_x")])
              for baseline, target in (("hf_eager", 3.0), ("hf_sdpa", 2.5))]
    if not any(rows for _, _, rows in panels):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (baseline, target, rows) in zip(axes, panels, strict=True):
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
            bars = ax.bar(xs, [values[s] for s in shapes if s in values], width, label=f"{model} {dtype}")
            ax.bar_label(bars, fmt="%.2g", fontsize=6)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], [f"{b}x{s}" for s, b in shapes],
                      rotation=45)
        ax.axhline(1.0, color="black", linewidth=0.8)
        gpu = any(r["op"] == "encoder" for r in rows)  # the targets are the GPU suite's
        if gpu:
            ax.axhline(target, color="red", linestyle="--", linewidth=0.8, label=f"target {target:g}x")
        scale = _ratio_axis(ax, [r["ours_x"] for r in rows] + ([target] if gpu else []))
        ax.set_xlabel("batch x seq")
        ax.set_ylabel(f"speedup (median {baseline} / median fastbert), {scale}")
        ax.set_title(f"fastbert vs {baseline}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def padding_plot(records: list[dict], path: Path) -> Path | None:
    """Median time against the realised padding ratio, per (model, dtype, batch x seq) with padded runs."""
    encoder = [r for r in records if r.get("op") == "encoder"]
    groups = defaultdict(list)
    for r in encoder:
        p = r["params"]
        groups[(p["model"], r["dtype"], p["batch"], p["seq"])].append(r)
    groups = {k: v for k, v in groups.items() if any(r["params"].get("padding_target", 0) > 0 for r in v)}
    chosen = sorted(groups, key=lambda k: -len(groups[k]))[:4]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.5 * len(chosen), 4.5), squeeze=False)
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
    return _save(fig, path)


def tflops_plot(records: list[dict], path: Path) -> Path | None:
    """Achieved TFLOP/s of the GEMM, attention and unpadded encoder cases, with the device's dtype peaks."""
    rows = [r for r in records if r.get("tflops") and r.get("bound") == "compute"
            and (r.get("op") in ("linear", "attention")
                 or (r.get("op") in ENCODER_OPS and r["params"].get("padding_target") == 0.0))]
    rows.sort(key=lambda r: (r["op"], r["case"], not r.get("ours"), r["impl"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.28 * max(len(rows), 8) + 1.5))
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
    return _save(fig, path)


def write_plots(records: list[dict], out: Path) -> list[Path]:
    """Every plot that has data, written into `out`; a plot without data is not written, and an old file
    of that name (from an earlier run in the same folder) is removed so that no stale figure remains."""
    written = []
    for plot, name in ((speedup_plot, "speedup.png"), (padding_plot, "padding.png"), (tflops_plot, "tflops.png")):
        path = plot(records, out / name)
        if path is None:
            (out / name).unlink(missing_ok=True)
        else:
            written.append(path)
    return written
