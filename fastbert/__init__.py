"""fastbert: a Triton-kernel inference engine for BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa,
CamemBERT, DistilBERT, ELECTRA).

    import fastbert
    model = fastbert.from_pretrained("path/to/bert")      # FastBertModel (or a hub id, "org/name")
    embeddings = model.encode(["a sentence", "another"])  # NumPy [2, hidden] float32
    fastbert.optimize(hf_model)                           # transformers / sentence-transformers, in place
    reranker = fastbert.Classifier.from_pretrained("path/to/cross-encoder")
    scores = reranker.predict([("query", "passage")])     # as CrossEncoder.predict

The public names load on first use, so `import fastbert` (and the `fastbert` command's start-up) costs
no torch import until a name that needs it is read."""

import importlib

from . import _moved

__version__ = "0.1.0"

# public name -> the module that defines it (fastbert/api.py is the front door; the rest are re-exported).
_EXPORTS = {
    "from_pretrained": "fastbert.api",
    "FastBertModel": "fastbert.api",
    "BertConfig": "fastbert.checkpoint.config",
    "Classifier": "fastbert.classify",
    "EncodeStats": "fastbert.sentence.stream",
    "iter_encode": "fastbert.sentence.stream",
    "optimize": "fastbert.patch",
    "restore": "fastbert.patch",
}
__all__ = sorted(_EXPORTS)

_moved.install()


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastbert' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
