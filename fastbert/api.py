"""fastbert's front door: `from_pretrained` loads a checkpoint with its sentence-transformers pipeline."""

from fastbert.engine.model import FastBertModel
from fastbert.sentence.pipeline import load_pipeline

__all__ = ["FastBertModel", "from_pretrained"]


def from_pretrained(path, dtype=None, device=None, backend="auto", truncate_dim=None):
    """Load a checkpoint folder of any supported model_type, or a Hugging Face Hub id, as a FastBertModel
    (see FastBertModel.from_pretrained), with the folder's sentence-transformers pipeline (modules.json:
    pooling, Dense, Normalize, prompts, max_seq_length) behind model.encode. A module fastbert cannot
    reproduce is a ValueError naming it; FastBertModel.from_pretrained loads the encoder alone.
    truncate_dim: encode()'s default, as in SentenceTransformer(truncate_dim=...)."""
    model = FastBertModel.from_pretrained(path, dtype=dtype, device=device, backend=backend)
    model.sentence_pipeline = load_pipeline(model.path, model.config.hidden_size, truncate_dim).to(model.device)
    return model
