"""Where one encoder forward spends its time: host wall time against device time, per kernel family.

For each model (random weights, benchmarks/models.py shapes) and case, times `model(ids, attention_mask=mask)`
as a user calls it, with CUDA graphs (the default) and without; profiles a few graph-free forwards with
torch.profiler and sums device time per kernel family; and times the input validation and packing
(`fastbert.engine.packing.pack_inputs`) alone. Wall >> device means the host, not the GPU, sets the pace.

  python -m benchmarks.profile_encoder --out DIR [--size tiny|quick] [--models bert-base,minilm]
      [--cases 32x128,1x128,32x128p50] [--budget S]

Writes DIR/profile.json (every number, with the environment record) and DIR/PROFILE.md (the table, also
printed). quick: fp16 at 32x128, 1x128 and 32x128 with 50% padding on CUDA; tiny: the 'tiny' model, fp32,
2x16, the CPU smoke test (Triton's interpreter; no device events there, so device columns stay empty).
A case that raises is recorded as an error and the rest still run; both files are rewritten after every
case, so a run cut short by its budget keeps what it measured.
"""

import os

import torch

# Before any fastbert import: triton.jit reads TRITON_INTERPRET when a kernel is decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.models import MODELS, load_fastbert, padded_batch, random_checkpoint, sample_lengths  # noqa: E402
from benchmarks.timing import environment, synchronize  # noqa: E402

# (batch, seq, target padding), the headline shape first so that a short budget still measures it.
CASES = {"tiny": [(2, 16, 0.0)], "quick": [(32, 128, 0.0), (1, 128, 0.0), (32, 128, 0.5)]}
DTYPES = {"tiny": torch.float32, "quick": torch.float16}
# warm-up calls (graphs are captured on the second call of a shape), seconds each timing aims for,
# calls per timing (bounds), rounds of back-to-back calls, forwards under the profiler
SETTINGS = {"tiny": dict(warmup=1, target_s=0.0, min_calls=2, max_calls=2, rounds=1, forwards=1),
            "quick": dict(warmup=3, target_s=0.1, min_calls=10, max_calls=200, rounds=3, forwards=5)}
# Kernel family by a substring of the device kernel's name (Triton names kernels after the jit function);
# every other device event (PyTorch's packing, copies, pooler, memcpy/memset) is "other".
# cuBLAS GEMMs (picked per shape by fastbert/gemm.py where they time faster) go by several names.
CATEGORIES = {"linear": ("_linear_kernel", "_linear_split_reduce_kernel"), "linear_tma": ("_linear_persistent_kernel",),
              "cublas_gemm": ("gemm", "nvjet", "cutlass"),
              "attention": ("_attention_kernel",), "layer_norm": ("_layer_norm_kernel",),
              "embeddings": ("_embeddings_kernel",)}
HOST_BOUND = 1.5  # wall / device ratio above which a case is called host-bound


def per_call_s(fn, device, calls):
    """Median seconds of single calls, each drained with a synchronize: what one user call costs."""
    samples = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def back_to_back_s(fn, device, calls, rounds):
    """Median over rounds of seconds per call, `calls` calls queued back to back and one synchronize."""
    samples = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def plan_calls(fn, device, s):
    """Warm up (autotuning, graph capture), then pick a call count that makes one timing ~target_s."""
    for _ in range(s["warmup"]):
        fn()
    once = max(per_call_s(fn, device, 1), 1e-7)
    return max(s["min_calls"], min(s["max_calls"], math.ceil(s["target_s"] / once)))


def device_profile(fn, device, forwards):
    """Per-forward device microseconds by kernel family, total, and kernel count, from torch.profiler.
    None for the times when no device events were recorded (CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(forwards):
            fn()
        synchronize(device)
    by_category, other_names, events = dict.fromkeys([*CATEGORIES, "other"], 0.0), Counter(), 0
    for event in prof.events():
        if event.device_type != DeviceType.CUDA or getattr(event, "is_user_annotation", False):
            continue
        events += 1
        us = event.time_range.elapsed_us() / forwards
        category = next((c for c, keys in CATEGORIES.items() if any(k in event.name for k in keys)), "other")
        by_category[category] += us
        if category == "other":
            other_names[event.name[:80]] += us
    if events == 0:
        return {"device_total_us": None, "device_us": dict.fromkeys(by_category), "kernels_per_forward": 0,
                "other_top_us": []}
    return {"device_total_us": sum(by_category.values()), "device_us": by_category,
            "kernels_per_forward": events / forwards,
            "other_top_us": [[name, us] for name, us in other_names.most_common(6)]}


def profile_case(record, models, device, s):
    """Fill one case's record, in microseconds: wall times (graph and eager), device time by kernel family,
    host pieces. Filled as it goes, so an interrupted case keeps what it measured."""
    from fastbert.engine.packing import pack_inputs

    graph_model, eager_model = models
    batch, seq = record["batch"], record["seq"]
    lengths = sample_lengths(batch, seq, record["padding_target"])
    ids, mask = padded_batch(lengths, seq, MODELS[record["model"]][1], device)
    record.update(padding=1 - sum(lengths) / (batch * seq), tokens=sum(lengths),
                  cuda_graphs=getattr(graph_model, "_graphs", None) is not None)
    graph = lambda: graph_model(ids, attention_mask=mask)
    eager = lambda: eager_model(ids, attention_mask=mask)
    calls = plan_calls(graph, device, s)
    record.update(calls=calls, wall_graph_us=1e6 * per_call_s(graph, device, calls),
                  wall_graph_b2b_us=1e6 * back_to_back_s(graph, device, calls, s["rounds"]))
    # A failed capture makes GraphCache fall back to eager forwards for good: say whether graphs replayed.
    cache = getattr(graph_model, "_graphs", None)
    record["graphs_replayed"] = cache is not None and not cache.disabled
    eager_calls = plan_calls(eager, device, s)
    record.update(eager_calls=eager_calls, wall_eager_us=1e6 * per_call_s(eager, device, eager_calls),
                  wall_eager_b2b_us=1e6 * back_to_back_s(eager, device, eager_calls, s["rounds"]))
    record.update(device_profile(eager, device, s["forwards"]))
    pack = lambda: pack_inputs(eager_model.config, eager_model.device, ids, mask)
    record["pack_inputs_us"] = 1e6 * per_call_s(pack, device, plan_calls(pack, device, s))
    total = record["device_total_us"]
    # Everything in a graph call that is not device work: validation, packing, input copies, replay, clones.
    record["graph_overhead_us"] = record["wall_graph_us"] - total if total else None
    record["eager_overhead_us"] = record["wall_eager_us"] - total if total else None
    record["host_bound"] = record["wall_graph_us"] > HOST_BOUND * total if total else None


def _us(value):
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def markdown(result):
    env = result["environment"]
    lines = [f"# Encoder profile ({env['device']}, torch {env['torch']}, triton {env['triton']})", "",
             "Microseconds per forward. wall: median of synchronised single calls (b2b: back-to-back calls, one "
             "sync); graph: the default (CUDA graphs), eager: cuda_graphs=False. device: kernel time summed from "
             "torch.profiler over eager forwards. pack: pack_inputs alone. overhead: wall graph - device. "
             f"host-bound: wall graph > {HOST_BOUND} x device.", "",
             "| case | wall graph | graph b2b | wall eager | eager b2b | device | "
             + " | ".join(CATEGORIES) + " | other | kernels | pack | overhead | verdict |",
             "|---" * (11 + len(CATEGORIES)) + "|"]
    errors = []
    for case in result["cases"]:
        if case.get("error") or case.get("skipped"):
            errors.append(f"- {case['case']}: {case.get('error') or case['skipped']}")
            continue
        verdict = {True: "host-bound", False: "device-bound", None: "-"}[case["host_bound"]]
        cells = [case["wall_graph_us"], case["wall_graph_b2b_us"], case["wall_eager_us"],
                 case["wall_eager_b2b_us"], case["device_total_us"], *case["device_us"].values()]
        lines.append(f"| {case['case']} | " + " | ".join(_us(c) for c in cells)
                     + f" | {case['kernels_per_forward']:.0f} | {_us(case['pack_inputs_us'])}"
                     + f" | {_us(case['graph_overhead_us'])} | {verdict} |")
    others = [f"- {c['case']}: " + ", ".join(f"{name} {_us(us)}" for name, us in c["other_top_us"])
              for c in result["cases"] if c.get("other_top_us") and not (c.get("error") or c.get("skipped"))]
    if others:
        lines += ["", "Largest \"other\" device events per forward:", *others]
    if errors:
        lines += ["", "Not measured (partial numbers, if any, are in profile.json):", *errors]
    return "\n".join(lines) + "\n"


def write(out, result):
    for name, text in (("profile.json", json.dumps(result, indent=1)), ("PROFILE.md", markdown(result))):
        (out / (name + ".tmp")).write_text(text)
        os.replace(out / (name + ".tmp"), out / name)


def parse_cases(text):
    """"32x128,1x128,32x128p50" -> [(32, 128, 0.0), (1, 128, 0.0), (32, 128, 0.5)]."""
    cases = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        shape, _, padding = item.partition("p")
        try:
            batch, seq = (int(n) for n in shape.split("x"))
            cases.append((batch, seq, int(padding) / 100 if padding else 0.0))
        except ValueError:
            raise SystemExit(f"profile_encoder: --cases entry {item!r} is not BxS or BxSpP (e.g. 32x128p50)") from None
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(CASES), default="quick")
    parser.add_argument("--models", help="comma list (default: bert-base,minilm; tiny: tiny)")
    parser.add_argument("--cases", help="comma list of BxS (or BxSpP: P percent padding) to run, in order "
                        "(default: the size's own list)")
    parser.add_argument("--budget", type=float, help="seconds; cases that would start later are skipped")
    args = parser.parse_args(argv)
    begin, s = time.time(), SETTINGS[args.size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.size]
    names = [m.strip() for m in (args.models or ("tiny" if args.size == "tiny" else "bert-base,minilm")).split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment(device), "size": args.size, "dtype": str(dtype).replace("torch.", ""),
              "backend": "triton", "categories": [*CATEGORIES, "other"], "host_bound_ratio": HOST_BOUND, "cases": []}
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="fastbert-profile-") as root:
        for batch, seq, padding in parse_cases(args.cases) if args.cases else CASES[args.size]:
            for name in names:
                case = {"case": f"{name} {batch}x{seq}" + (f" pad{padding:.0%}" if padding else ""), "model": name,
                        "dtype": result["dtype"], "batch": batch, "seq": seq, "padding_target": padding}
                result["cases"].append(case)
                if args.budget is not None and time.time() - begin > args.budget:
                    case["skipped"] = f"budget of {args.budget:.0f}s reached"
                    continue
                print(f"profile_encoder: {case['case']} ...", file=sys.stderr, flush=True)
                try:
                    if name not in loaded:
                        import fastbert

                        path = random_checkpoint(name, Path(root))
                        graphs = load_fastbert(path, dtype, device, "triton")
                        eager = graphs if getattr(graphs, "_graphs", None) is None else \
                            fastbert.FastBertModel.from_pretrained(path, dtype, device, "triton", cuda_graphs=False)
                        loaded[name] = (graphs, eager)
                    profile_case(case, loaded[name], device, s)
                except KeyboardInterrupt:  # the stage's timeout: keep what was measured
                    case["skipped"] = "interrupted (stage budget)"
                    write(args.out, result)
                    raise
                except Exception as error:  # noqa: BLE001 - one failing case must not lose the others
                    case["error"] = f"{type(error).__name__}: {error}"[:500]
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                write(args.out, result)
    result["elapsed_s"] = time.time() - begin
    write(args.out, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
