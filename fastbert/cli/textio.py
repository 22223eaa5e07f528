"""What the `fastbert` commands share for text: the one-line error type, JSON strings, the stdout preview."""

import json

PREVIEW_NUMBERS = 5
PREVIEW_CHARS = 48


class CliError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 2."""


def escape_line_breaks(serialized):
    """JSON text with the characters str.splitlines breaks at escaped too, so that every reader sees one row
    per line (json.dumps leaves them raw, and only inside strings)."""
    return serialized.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def json_text(text):
    """JSON string, readable (non-ASCII kept), one line for every reader."""
    return escape_line_breaks(json.dumps(text, ensure_ascii=False))


def print_embeddings(texts, embeddings, start=0):
    """One line per text: index (from `start`), norm, the first few numbers, the dimension and the start of
    the text."""
    import numpy as np

    norms = np.linalg.norm(embeddings, axis=1)
    width = len(str(start + len(texts) - 1))
    for index, (text, row, norm) in enumerate(zip(texts, embeddings, norms, strict=True), start):
        numbers = " ".join(f"{value:+.4f}" for value in row[:PREVIEW_NUMBERS])
        more = f" ... ({row.shape[0]} dims)" if row.shape[0] > PREVIEW_NUMBERS else ""
        preview = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
        quoted = json_text(preview)
        print(f"{index:>{width}}  norm {norm:.4f}  [{numbers}{more}]  {quoted}")
