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
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from benchmarks.flops import peak_tflops  # noqa: E402
from benchmarks.report_context import flops_unit  # noqa: E402
from benchmarks.targets import TARGETS  # noqa: E402

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


ENCODE_OPS = ("encode_cpu", "encode_corpus")  # whole encode() calls, texts in, against sentence-transformers
BASELINES = ("hf_eager", "hf_sdpa", "st_encode")


def _label(r: dict) -> str:
    """A short tick label for a record's case, on two lines where it is long."""
    p = r["params"]
    if r.get("op") == "encode_cpu":
        return f"{p.get('batch')} texts\n{p.get('words')} words"
    if r.get("op") == "encode_corpus":
        return f"corpus\n{p.get('texts')} texts"
    if r.get("op") in ENCODER_OPS:
        pad = p.get("padding_target") or 0
        return f"{p.get('batch')}x{p.get('seq')}" + (f"\n{pad:.0%} padding" if pad else "")
    return r["case"]


def _case_label(r: dict) -> str:
    """_label with the model and dtype in front, for plots whose cases span models."""
    if r.get("op") in ENCODER_OPS + ENCODE_OPS:
        kind = "encode" if r.get("op") in ENCODE_OPS else "forward"
        return f"{r['params'].get('model', '-')} {r.get('dtype', '-')}\n{kind} " + _label(r).replace("\n", ", ")
    return r["case"]


def _targets_for(baseline: str, rows: list[dict]) -> list[float]:
    """The thresholds of the speedup targets against `baseline` that some of these rows are judged by."""
    return sorted({t.threshold for t in TARGETS if t.metric == "speedup" and t.baseline == baseline
                   and any(t.matches(r) for r in rows)})


def _speedup_rows(records: list[dict], baseline: str) -> list[dict]:
    return [r for r in records if r["impl"] == baseline and r.get("ours_x")
            and ((r.get("op") in ENCODER_OPS and r["params"].get("padding_target") == 0.0)
                 or r.get("op") in ENCODE_OPS)]


def _legend_unhatched(ax, **kw) -> None:
    """A legend whose bar entries show each series' colour without the hatch of whichever bar came first
    (hatching marks a noisy case, not a series)."""
    handles, labels = ax.get_legend_handles_labels()
    plain = [Patch(facecolor=h.patches[0].get_facecolor(), edgecolor="black", linewidth=0.5)
             if isinstance(h, BarContainer) else h for h in handles]
    ax.legend(plain, labels, fontsize=7, **kw)


def speedup_plot(records: list[dict], path: Path) -> Path | None:
    """fastbert's speedup over each baseline (HF eager, HF SDPA forwards; sentence-transformers' encode), one
    panel per baseline with data, one bar per case and model/dtype with its IQR as an error bar (the
    baseline's quartiles over fastbert's opposite ones), noisy cases hatched, the targets as dashed lines."""
    panels = [(baseline, rows) for baseline in BASELINES if (rows := _speedup_rows(records, baseline))]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    for ax, (baseline, rows) in zip(axes[0], panels, strict=True):
        rows.sort(key=lambda r: (r.get("op", ""), r["params"].get("seq") or 0, r["params"].get("batch") or 0,
                                 r["params"].get("words") or 0))
        labels = list(dict.fromkeys(_label(r) for r in rows))
        series = sorted({(r["params"].get("model", "-"), r.get("dtype", "-")) for r in rows})
        width = 0.8 / len(series)
        for i, (model, dtype) in enumerate(series):
            mine = [r for r in rows if (r["params"].get("model", "-"), r.get("dtype", "-")) == (model, dtype)]
            xs = [labels.index(_label(r)) + (i - (len(series) - 1) / 2) * width for r in mine]
            values = [r["ours_x"] for r in mine]
            spread = [[v - (r.get("ours_x_low") or v) for v, r in zip(values, mine, strict=True)],
                      [(r.get("ours_x_high") or v) - v for v, r in zip(values, mine, strict=True)]]
            noisy = [r["noisy"] or r["ours_noisy"] for r in mine]
            bars = ax.bar(xs, values, width, yerr=spread, capsize=3, label=f"{model} {dtype}",
                          hatch=["//" if n else None for n in noisy], edgecolor="black", linewidth=0.5)
            ax.bar_label(bars, [f"{v:.2f}x" + ("\nnoisy" if n else "") for v, n in zip(values, noisy, strict=True)],
                         fontsize=7, padding=2)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        thresholds = _targets_for(baseline, rows)
        for threshold in thresholds:
            ax.axhline(threshold, color="red", linestyle="--", linewidth=0.8, label=f"target {threshold:g}x")
        ends = [r.get("ours_x_high") or r["ours_x"] for r in rows] + [r.get("ours_x_low") or r["ours_x"] for r in rows]
        scale = _ratio_axis(ax, [v for v in ends if v > 0] + thresholds)
        ax.set_xlabel("case (batch x seq, or texts x words per text)")
        ax.set_ylabel(f"median {baseline} / median fastbert, {scale}")
        ax.set_title(f"fastbert vs {baseline} (bars: IQR; hatched: noisy)", fontsize=10)
        _legend_unhatched(ax)
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
    """Achieved FLOP/s of the GEMM, attention, unpadded encoder and encode cases: one group of bars per case
    (labelled once), one bar per implementation with its IQR as an error bar, in GFLOP/s or TFLOP/s as the
    values need, with the device's dtype peaks only where the device has them."""
    rows = [r for r in records if r.get("tflops") and r.get("bound") == "compute"
            and (r.get("op") in ("linear", "attention") or r.get("op") in ENCODE_OPS
                 or (r.get("op") in ENCODER_OPS and r["params"].get("padding_target") == 0.0))]
    if not rows:
        return None
    rows.sort(key=lambda r: (r["op"], r["case"], not r.get("ours"), r["impl"]))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in sorted(rows, key=lambda r: (not r.get("ours"), r["impl"]))))
    scale, unit = flops_unit([r["tflops"] * 1e12 for r in rows])
    # Each case's bars share its 0.8-wide slot among the implementations it has, in the legend's order.
    present = {c: [i for i in impls if any(r["case"] == c and r["impl"] == i for r in rows)] for c in cases}
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(rows) + 0.4 * len(cases) + 1.5))
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl]
        heights = [0.8 / len(present[r["case"]]) for r in mine]
        ys = [cases.index(r["case"]) + (present[r["case"]].index(impl) - (len(present[r["case"]]) - 1) / 2) * h
              for r, h in zip(mine, heights, strict=True)]
        rates = [r["tflops"] * 1e12 / scale for r in mine]
        spread = [[v - r["flops"] / r["q3"] / scale if r["q3"] > 0 else 0 for v, r in zip(rates, mine, strict=True)],
                  [r["flops"] / r["q1"] / scale - v if r["q1"] > 0 else 0 for v, r in zip(rates, mine, strict=True)]]
        ax.barh(ys, rates, heights, xerr=spread, capsize=2, label=impl,
                hatch=["//" if r["noisy"] else None for r in mine], edgecolor="black", linewidth=0.4)
    ax.set_yticks(range(len(cases)), [_case_label(next(r for r in rows if r["case"] == c)) for c in cases],
                  fontsize=8)
    ax.invert_yaxis()
    peaks = {r["dtype"]: peak_tflops(r["device_name"], r["dtype"]) for r in rows}
    drawn = False
    for dtype, peak in sorted(peaks.items()):
        if peak:
            drawn = True
            ax.axvline(peak * 1e12 / scale, color="red", linestyle="--", linewidth=0.8, label=f"{dtype} peak")
    ax.set_xlabel(f"achieved {unit} (useful FLOPs / median time); bars: IQR; hatched: noisy")
    ax.set_title("Achieved throughput vs device peak" if drawn else "Achieved throughput")
    _legend_unhatched(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
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
