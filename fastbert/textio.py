"""Reading texts and writing embeddings for `fastbert encode`: text, JSONL, .npy, .csv."""

import json
import os
import sys
from pathlib import Path

OUTPUT_FORMATS = (".npy", ".jsonl", ".csv")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PREVIEW_NUMBERS = 5
PREVIEW_CHARS = 48


class CliError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 2."""


def decode(data, name):
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CliError(f"{name} is not UTF-8 text (invalid byte at offset {err.start})") from err


def parse_texts(content, name, jsonl):
    """One text per non-blank line, or with jsonl each non-blank line an object with a string "text"."""
    # Split on newlines only: str.splitlines would also cut at U+2028, form feeds and the like inside a text.
    rows = enumerate((line.removesuffix("\r") for line in content.split("\n")), 1)
    lines = [(number, line) for number, line in rows if line.strip()]
    if not jsonl and lines and lines[0][1].lstrip().startswith("{"):
        try:
            jsonl = isinstance(json.loads(lines[0][1]), dict)
        except ValueError:
            jsonl = False
    if not jsonl:
        return [line for _, line in lines]
    texts = []
    for number, line in lines:
        try:
            row = json.loads(line)
        except ValueError as err:
            raise CliError(f"{name} line {number}: not valid JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise CliError(f"{name} line {number}: expected a JSON object with a string \"text\" field")
        texts.append(row["text"])
    return texts


def read_texts(args):
    if args.texts and args.input is not None:
        raise CliError("give texts as arguments or with --input, not both")
    if args.texts:
        return list(args.texts)
    if args.input is not None and args.input != "-":
        path = Path(args.input).expanduser()
        try:
            data = path.read_bytes()
        except IsADirectoryError as err:
            raise CliError(f"--input {path} is a directory, not a file") from err
        except OSError as err:
            raise CliError(f"cannot read --input {path}: {err.strerror or err}") from err
        name, jsonl = str(path), path.suffix.lower() in JSONL_SUFFIXES
    else:
        if sys.stdin is None or (args.input is None and sys.stdin.isatty()):
            raise CliError("no input: pass TEXT arguments, --input FILE, or pipe text on stdin")
        data, name, jsonl = sys.stdin.buffer.read(), "stdin", False
    texts = parse_texts(decode(data, name), name, jsonl)
    if not texts:
        raise CliError(f"{name} holds no text (blank lines are skipped)")
    return texts


def output_format(option):
    if option is None:
        return None, None
    path = Path(option).expanduser()
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise CliError(f"--output {path}: unknown extension {suffix or '(none)'!r}; "
                       f"use one of {', '.join(OUTPUT_FORMATS)}")
    if path.is_dir():
        raise CliError(f"--output {path} is a directory")
    if not path.parent.is_dir():
        raise CliError(f"--output {path}: folder {path.parent} does not exist")
    return path, suffix


def json_text(text):
    """JSON string, readable (non-ASCII kept), with the characters str.splitlines breaks at escaped too,
    so that every reader sees one row per line."""
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write_output(path, suffix, texts, embeddings):
    """Write to a temporary file beside `path`, then rename: a failed run leaves no half-written file."""
    import numpy as np

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".npy":
            with open(temporary, "wb") as f:
                np.save(f, embeddings)
        elif suffix == ".jsonl":
            with open(temporary, "w", encoding="utf-8") as f:
                for text, row in zip(texts, embeddings, strict=True):
                    # %.9g round-trips float32 exactly and keeps the file half the size of repr(float64).
                    numbers = ",".join(f"{value:.9g}" for value in row.tolist())
                    f.write(f'{{"text": {json_text(text)}, "embedding": [{numbers}]}}\n')
        else:
            import csv

            with open(temporary, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text"] + [f"dim_{i}" for i in range(embeddings.shape[1])])
                for text, row in zip(texts, embeddings, strict=True):
                    writer.writerow([text] + [f"{value:.9g}" for value in row.tolist()])
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def print_embeddings(texts, embeddings):
    """One line per text: index, norm, the first few numbers, the dimension and the start of the text."""
    import numpy as np

    norms = np.linalg.norm(embeddings, axis=1)
    width = len(str(len(texts) - 1))
    for index, (text, row, norm) in enumerate(zip(texts, embeddings, norms, strict=True)):
        numbers = " ".join(f"{value:+.4f}" for value in row[:PREVIEW_NUMBERS])
        more = f" ... ({row.shape[0]} dims)" if row.shape[0] > PREVIEW_NUMBERS else ""
        preview = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
        quoted = json_text(preview)
        print(f"{index:>{width}}  norm {norm:.4f}  [{numbers}{more}]  {quoted}")
