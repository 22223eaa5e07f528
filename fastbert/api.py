"""fastbert's front door: `from_pretrained` loads a checkpoint with its sentence-transformers pipeline, as a
FastBertModel whose `encode` runs on one device or spreads over a pool of worker processes.

The engine's encoder (fastbert.engine.model) knows nothing of sentences or processes; this class adds the
two conveniences on top of it, so the layers below never import upward: encode here -> fastbert.parallel
(devices=, pool=) or fastbert.sentence.stream (one device) -> the engine."""

import inspect
from pathlib import Path

from fastbert.defaults import CHUNK_TEXTS, MAX_BATCH_TOKENS
from fastbert.engine import model as engine
from fastbert.parallel.pool import EncodePool
from fastbert.sentence import stream
from fastbert.sentence.pipeline import load_pipeline

__all__ = ["FastBertModel", "from_pretrained"]


class FastBertModel(engine.Encoder):
    """The engine's encoder (forward, forward_tokens; see fastbert.engine.model.Encoder) with
    sentence embeddings on top: `encode` and `start_pool`."""

    def encode(self, texts, *, prompt_name=None, prompt=None, batch_size=None, show_progress_bar=None,
               output_value="sentence_embedding", precision="float32", convert_to_numpy=True,
               convert_to_tensor=False, device=None, normalize_embeddings=False, truncate_dim=None,
               max_tokens=MAX_BATCH_TOKENS, chunk_size=CHUNK_TEXTS, pooling=None, normalize=None, max_length=None,
               stats=None, devices=None, pool=None):
        """Sentence embeddings in input order, returned as SentenceTransformer.encode returns them: by
        default a float32 NumPy array [N, D] ([D] for a single string). The options:
        fastbert.sentence.stream.encode. devices=["cuda:0", "cuda:1"] (or sentence-transformers' device=
        with a list) runs one worker process per device for this call; pool= uses a running pool
        (start_pool). Over workers, stats= and device= are refused (a ValueError)."""
        options = dict(prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
                       show_progress_bar=show_progress_bar, output_value=output_value, precision=precision,
                       convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor, device=device,
                       normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim, max_tokens=max_tokens,
                       chunk_size=chunk_size, pooling=pooling, normalize=normalize, max_length=max_length,
                       stats=stats)
        if isinstance(device, (list, tuple)):  # sentence-transformers: a list of devices means processes
            if devices is not None or pool is not None:
                raise ValueError("device= lists devices for worker processes: give it, devices= or pool=, "
                                 "not two of them")
            devices, options["device"] = device, None
        if devices is None and pool is None:
            return stream.encode(self, texts, **options)
        if devices is not None and pool is not None:
            raise ValueError("give devices= (a pool for this call) or pool= (a running pool), not both")
        # Options left at their defaults are not sent, so a pool's own encode_defaults apply.
        options = {name: value for name, value in options.items() if value is not _ENCODE_DEFAULTS[name]}
        if pool is not None:
            if not isinstance(pool, EncodePool):
                raise TypeError(f"pool must be an EncodePool (model.start_pool(devices)), got {type(pool).__name__}")
            if self.path is None or pool.path.resolve() != Path(self.path).resolve():
                raise ValueError(f"pool holds the model of {pool.path}, not this model's folder {self.path}")
            return pool.encode(texts, **options)
        with EncodePool.for_model(self, devices) as temporary:
            return temporary.encode(texts, **options)

    def encode_query(self, texts, *, prompt_name=None, prompt=None, **options):
        """encode() for search queries, as sentence-transformers 5's encode_query: without prompt or
        prompt_name, the model's "query" prompt (empty unless the folder sets one, and then no prompt:
        never the default_prompt_name's)."""
        if prompt_name is None and prompt is None and "query" in stream.sentence_pipeline(self).prompts:
            prompt_name = "query"
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **options)

    def encode_document(self, texts, *, prompt_name=None, prompt=None, **options):
        """encode() for documents, as sentence-transformers 5's encode_document: without prompt or
        prompt_name, the first of the prompts "document", "passage", "corpus" the model has."""
        if prompt_name is None and prompt is None:
            prompts = stream.sentence_pipeline(self).prompts
            prompt_name = next((name for name in ("document", "passage", "corpus") if name in prompts), None)
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **options)

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


_ENCODE_DEFAULTS = {name: parameter.default for name, parameter in
                    inspect.signature(stream.encode).parameters.items() if parameter.default is not parameter.empty}
