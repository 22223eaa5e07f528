"""The stdout preview of `fastbert encode` without --output: one line per text."""

from fastbert.jsonio import json_text

PREVIEW_NUMBERS = 5
PREVIEW_CHARS = 48


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
