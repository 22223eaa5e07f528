"""fastbert: a Triton-kernel inference engine for BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa,
CamemBERT, DistilBERT, ELECTRA).

    import fastbert
    model = fastbert.from_pretrained("path/to/bert")      # FastBertModel (or a hub id, "org/name")
    embeddings = model.encode(["a sentence", "another"])  # [2, hidden] float32
    fastbert.optimize(hf_model)                           # transformers / sentence-transformers, in place
"""

from pathlib import Path as _Path

# In a source checkout run with PYTHONPATH=. (no install), `fastbert.kernels` lives in the
# repository's top-level kernels/ folder: put the checkout on this package's search path so the
# import resolves exactly as it does after `pip install`, where the folder is mapped by pyproject.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "kernels").is_dir() and (_checkout / "kernels" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - __path__ is defined for packages

from .config import BertConfig  # noqa: E402
from .model import FastBertModel  # noqa: E402
from .patch import optimize, restore  # noqa: E402
from .sentences import EncodeStats, iter_encode  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BertConfig", "EncodeStats", "FastBertModel", "from_pretrained", "iter_encode", "optimize", "restore"]


def from_pretrained(path, dtype=None, device=None, backend="auto", truncate_dim=None):
    """Load a checkpoint folder of any supported model_type, or a Hugging Face Hub id, as a FastBertModel
    (see FastBertModel.from_pretrained), with the folder's sentence-transformers pipeline (modules.json:
    pooling, Dense, Normalize, prompts, max_seq_length) behind model.encode. A module fastbert cannot
    reproduce is a ValueError naming it; FastBertModel.from_pretrained loads the encoder alone.
    truncate_dim: encode()'s default, as in SentenceTransformer(truncate_dim=...)."""
    from .pipeline import load_pipeline

    model = FastBertModel.from_pretrained(path, dtype=dtype, device=device, backend=backend)
    model.sentence_pipeline = load_pipeline(model.path, model.config.hidden_size, truncate_dim).to(model.device)
    return model
