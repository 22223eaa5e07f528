"""fastbert's front door: `from_pretrained` loads a checkpoint with its sentence-transformers pipeline, as a
FastBertModel whose `encode` runs on one device or spreads over a pool of worker processes.

The engine's encoder (fastbert.engine.model) knows nothing of sentences or processes; this class adds the
two conveniences on top of it, so the layers below never import upward: encode here -> fastbert.parallel
(devices=, pool=) or fastbert.sentence.stream (one device) -> the engine."""

from pathlib import Path

from fastbert.engine import model as engine
from fastbert.parallel.pool import EncodePool
from fastbert.sentence import stream
from fastbert.sentence.pipeline import load_pipeline

__all__ = ["FastBertModel", "from_pretrained"]


class FastBertModel(engine.Encoder):
    """The engine's encoder (forward, forward_tokens; see fastbert.engine.model.Encoder) with
    sentence embeddings on top: `encode` and `start_pool`."""

    def encode(self, texts, *, devices=None, pool=None, **options):
        """Sentence embeddings [N, D] float32 in input order; the options: fastbert.sentence.stream.encode.
        devices=["cuda:0", "cuda:1"] runs one worker process per device for this call; pool= uses a
        running pool (start_pool)."""
        if devices is None and pool is None:
            return stream.encode(self, texts, **options)
        if devices is not None and pool is not None:
            raise ValueError("give devices= (a pool for this call) or pool= (a running pool), not both")
        if pool is not None:
            if not isinstance(pool, EncodePool):
                raise TypeError(f"pool must be an EncodePool (model.start_pool(devices)), got {type(pool).__name__}")
            if self.path is None or pool.path.resolve() != Path(self.path).resolve():
                raise ValueError(f"pool holds the model of {pool.path}, not this model's folder {self.path}")
            return pool.encode(texts, **options)
        with EncodePool.for_model(self, devices) as temporary:
            return temporary.encode(texts, **options)

    def start_pool(self, devices, **options):
        """Worker processes, one per device (e.g. ["cuda:0", "cuda:1"]), each loading this model's folder
        with its dtype and backend; `pool.encode(texts)` or `model.encode(texts, pool=pool)` spreads
        encode over them. options: see fastbert.parallel.pool.EncodePool. Close it, or use `with`."""
        return EncodePool.for_model(self, devices, **options)


def from_pretrained(path, dtype=None, device=None, backend="auto", truncate_dim=None):
    """Load a checkpoint folder of any supported model_type, or a Hugging Face Hub id, as a FastBertModel
    (see FastBertModel.from_pretrained), with the folder's sentence-transformers pipeline (modules.json:
    pooling, Dense, Normalize, prompts, max_seq_length) behind model.encode. A module fastbert cannot
    reproduce is a ValueError naming it; FastBertModel.from_pretrained loads the encoder alone.
    truncate_dim: encode()'s default, as in SentenceTransformer(truncate_dim=...)."""
    model = FastBertModel.from_pretrained(path, dtype=dtype, device=device, backend=backend)
    model.sentence_pipeline = load_pipeline(model.path, model.config.hidden_size, truncate_dim).to(model.device)
    return model
