"""encode()'s options: what shapes the computation (EncodeOptions, plain values that worker processes
receive), checked once and resolved against the model's sentence-transformers pipeline; and EncodeStats,
where an encode's time went."""

import logging
from dataclasses import dataclass

from fastbert.defaults import CHUNK_TEXTS, MAX_BATCH_TOKENS

from .modules import int_option
from .output import check_output_value
from .pipeline import load_pipeline
from .pooling import check_modes


@dataclass
class EncodeStats:
    """Where an encode's time went; pass one as `stats=` and read it afterwards (calls accumulate).

    tokenize_seconds: the background thread's time tokenizing (overlapped with the model's work);
    stall_seconds: the time the model sat waiting for tokens, i.e. tokenization that was not hidden;
    wall_seconds: the whole call, from the first text read to the last embedding returned."""

    texts: int = 0
    tokens: int = 0
    batches: int = 0
    chunks: int = 0
    tokenize_seconds: float = 0.0
    stall_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def tokenize_share(self):
        """Tokenizing time as a share of wall time (it runs alongside the model, so it can be hidden)."""
        return self.tokenize_seconds / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def stall_share(self):
        """The share of wall time lost waiting for the tokenizer: above ~0 it is the bottleneck."""
        return self.stall_seconds / self.wall_seconds if self.wall_seconds else 0.0


@dataclass(frozen=True)
class EncodeOptions:
    """encode()'s keyword arguments, checked once and resolved against the model's pipeline (plain values:
    they can be sent to worker processes)."""

    prompt: str | None = None
    batch_size: int | None = None
    max_tokens: int = MAX_BATCH_TOKENS
    chunk_size: int = CHUNK_TEXTS
    pooling: tuple | None = None
    normalize: bool | None = None
    truncate_dim: int | None = None
    max_length: int | None = None
    show_progress_bar: bool = False
    output_value: str | None = "sentence_embedding"

    @classmethod
    def resolve(cls, model, *, prompt_name=None, prompt=None, batch_size=None, max_tokens=MAX_BATCH_TOKENS,
                chunk_size=CHUNK_TEXTS, pooling=None, normalize=None, normalize_embeddings=False,
                truncate_dim=None, max_length=None, show_progress_bar=None, output_value="sentence_embedding"):
        """Check encode()'s keyword arguments that shape the computation and resolve them against `model`'s
        pipeline (the ones that shape the result: fastbert.sentence.output.ReturnOptions)."""
        pipeline = sentence_pipeline(model)
        if pooling is not None:
            pooling = check_modes(pooling, "pooling")
        if normalize not in (None, True, False):
            raise TypeError(f"normalize must be None, True or False, got {normalize!r}")
        output_value = check_output_value(output_value)
        # sentence-transformers' normalize_embeddings applies to the returned sentence embeddings only.
        if normalize_embeddings and output_value == "sentence_embedding":
            if normalize is False:
                raise ValueError("normalize=False (leave out the folder's Normalize) contradicts "
                                 "normalize_embeddings=True")
            normalize = True
        if show_progress_bar is None:  # sentence-transformers' rule, on fastbert's logger
            show_progress_bar = logging.getLogger("fastbert").getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        truncate_dim = int_option(truncate_dim, "truncate_dim")
        truncate_dim = pipeline.truncate_dim if truncate_dim is None else truncate_dim
        dim = pipeline.output_dim(pooling)
        if truncate_dim is not None and truncate_dim > dim:
            raise ValueError(f"truncate_dim={truncate_dim} exceeds the embedding size {dim}")
        max_length = int_option(max_length, "max_length", minimum=2)
        return cls(
            # "" is no prompt, as in sentence-transformers
            prompt=pipeline.resolve_prompt(prompt, prompt_name) or None,
            batch_size=int_option(batch_size, "batch_size"), max_tokens=_required("max_tokens", max_tokens),
            chunk_size=_required("chunk_size", chunk_size), pooling=pooling, normalize=normalize,
            truncate_dim=truncate_dim, max_length=pipeline.max_seq_length if max_length is None else max_length,
            show_progress_bar=bool(show_progress_bar), output_value=output_value)


def _required(name, value):
    """A count that has no 'unset' value: int_option's check, None included."""
    if value is None:
        raise ValueError(f"{name} must be an integer >= 1, got None")
    return int_option(value, name)


def sentence_pipeline(model):
    """The model's SentencePipeline on its device: set by fastbert.from_pretrained, else read from the
    model's folder on first use (a model without a folder: mean pooling, nothing after it)."""
    pipeline = getattr(model, "sentence_pipeline", None)
    if pipeline is None:
        pipeline = load_pipeline(model.path, model.config.hidden_size).to(model.device)
        model.sentence_pipeline = pipeline
    return pipeline
