"""The model's shape and numerics, read from a checkpoint's config.json.

Only the fields that change the forward pass are kept; training-only keys (dropout, initializer range,
architectures, ...) are ignored. Anything that would make our encoder compute something other than
transformers' model is rejected here, at load, with a message naming the field and its value.

Supported model types: the rows of fastbert.checkpoint.families.FAMILIES (bert, roberta, xlm-roberta, camembert,
distilbert, electra, mpnet, modernbert). Each family's config.json keys and defaults are mapped onto the one BertConfig
here (DistilBERT's "dim" is our hidden_size); a new family is a row there plus a parity test.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from fastbert.errors import bounded
from fastbert.jsonio import read_json

from .activations import ACTIVATIONS
from .families import FAMILIES, family_of, position_offset

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
_LAYER_TYPES = ("full_attention", "sliding_attention")

_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


@dataclass
class BertConfig:
    """BERT-family encoder hyper-parameters; the defaults are bert-base-uncased's."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: the checkpoint has no token-type embedding
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    model_type: str = "bert"
    embedding_size: int | None = None  # ELECTRA: width of the embeddings before embeddings_project; None = hidden
    relative_attention_num_buckets: int | None = None  # MPNet: rows of the relative-position bias; None: no bias
    # Rotary (ModernBERT) families: each layer's type, "full_attention" or "sliding_attention" (which sees
    # keys within local_attention // 2 either side), and the rotary theta of each type. None elsewhere.
    layer_types: tuple[str, ...] | None = None
    local_attention: int | None = None
    rope_theta: dict | None = None
    # Whether the QKV/attention-output, FFN and LayerNorm modules carry biases (ModernBERT's may not).
    attention_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True

    def __post_init__(self):
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise _invalid(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(self.type_vocab_size) or self.type_vocab_size < 0:
            raise _invalid(f"type_vocab_size must be a non-negative integer, got {self.type_vocab_size!r}")
        if self.pad_token_id is not None and (
            not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size
        ):
            raise _invalid(
                f"pad_token_id must be None or an integer in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_token_id!r}"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise _invalid(f"layer_norm_eps must be a positive finite number, got {eps!r}")
        self.layer_norm_eps = float(eps)
        if self.hidden_act not in ACTIVATIONS:
            raise _invalid(
                f"hidden_act={self.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}"
            )
        if self.position_embedding_type != "absolute":
            raise _invalid(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; "
                "only 'absolute' position embeddings are implemented"
            )
        family = family_of(self.model_type)
        if self.embedding_size is not None:
            if not _is_int(self.embedding_size) or self.embedding_size <= 0:
                raise _invalid(f"embedding_size must be None or a positive integer, got {self.embedding_size!r}")
            if family.projection is None and self.embedding_size != self.hidden_size:
                raise _invalid(f"embedding_size={self.embedding_size} differs from hidden_size={self.hidden_size}, "
                                 f"but model_type={self.model_type!r} has no embedding projection")
        buckets = self.relative_attention_num_buckets
        if family.relative_bias is None and buckets is not None:
            raise _invalid(f"relative_attention_num_buckets={buckets!r} is set, but model_type={self.model_type!r} "
                           "has no relative position bias")
        # transformers buckets distances into family.relative_buckets buckets whatever the config says, so a
        # smaller embedding would be indexed past its end (an IndexError in transformers).
        if family.relative_bias is not None and (not _is_int(buckets) or buckets < family.relative_buckets):
            raise _invalid(f"relative_attention_num_buckets must be an integer >= {family.relative_buckets} for "
                           f"model_type={self.model_type!r} (its bucket function uses {family.relative_buckets}), "
                           f"got {buckets!r}")
        if family.positions == "after_padding":
            if self.pad_token_id is None:
                raise _invalid(f"model_type={self.model_type!r} needs a pad_token_id: its position ids count "
                                 "from pad_token_id + 1")
            if self.max_position_embeddings <= position_offset(self):
                raise _invalid(f"max_position_embeddings={self.max_position_embeddings} leaves no position for a "
                                 f"token: model_type={self.model_type!r} positions start at pad_token_id + 1 = "
                                 f"{position_offset(self)}")
        for name in ("attention_bias", "mlp_bias", "norm_bias"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(f"{name} must be true or false, got {getattr(self, name)!r}")
        if family.positions == "rotary":
            self._check_rotary()
        if self.hidden_size % self.num_attention_heads != 0:
            raise _invalid(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )

    def _check_rotary(self):
        types = self.layer_types
        if not isinstance(types, (tuple, list)) or len(types) != self.num_hidden_layers or any(
                t not in _LAYER_TYPES for t in types):
            raise _invalid(f"layer_types must list {_LAYER_TYPES} once per layer "
                           f"(num_hidden_layers={self.num_hidden_layers}), got {types!r}")
        self.layer_types = tuple(types)
        if not _is_int(self.local_attention) or self.local_attention < 0:
            raise _invalid(f"local_attention must be a non-negative integer, got {self.local_attention!r}")
        thetas = self.rope_theta
        if not isinstance(thetas, dict) or any(
                isinstance(thetas.get(t), bool) or not isinstance(thetas.get(t), (int, float))
                or not math.isfinite(thetas[t]) or thetas[t] <= 0 for t in _LAYER_TYPES):
            raise _invalid(f"rope_theta must give a positive theta for each of {_LAYER_TYPES}, got {thetas!r}")
        if self.head_dim % 2:
            raise _invalid(f"head_dim={self.head_dim} must be even for rotary position embeddings")

    def attention_window(self, layer: int) -> int | None:
        """How far (in tokens, either side) layer `layer`'s queries see: None for global attention."""
        if self.layer_types is None or self.layer_types[layer] == "full_attention":
            return None
        return self.local_attention // 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def activation(self) -> str:
        """The kernel activation name for the FFN: "gelu" (exact erf), "gelu_tanh", "relu" or "silu"."""
        return ACTIVATIONS[self.hidden_act].epilogue

    @property
    def embedding_dim(self) -> int:
        """Width of the embedding tables (and their LayerNorm): embedding_size, else hidden_size."""
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def max_sequence_length(self) -> int:
        """The longest sequence the position table serves: max_position_embeddings, less the RoBERTa
        family's offset of pad_token_id + 1 (514 positions -> 512 tokens)."""
        return self.max_position_embeddings - position_offset(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Build from a transformers-style config.json dict of any supported model_type (missing:
        "bert"), through its family's key names and defaults; keys that do not change inference are
        ignored."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        # A BERT decoder uses causal self-attention (and maybe cross-attention): not an encoder we compute.
        for flag in ("is_decoder", "add_cross_attention"):
            if d.get(flag):
                raise _invalid(f"{flag}={d[flag]!r} is not supported: fastbert runs bidirectional encoders")
        model_type = d.get("model_type") or "bert"
        family = family_of(model_type)
        kwargs = {"model_type": model_type}
        for name, key in family.config_keys.items():
            if key in d:
                kwargs[name] = d[key]
            elif name in family.defaults:
                kwargs[name] = family.defaults[name]
        kwargs.update(family.fixed)
        if family.read_config is not None:
            try:
                kwargs.update(family.read_config(d))
            except (TypeError, AttributeError) as err:  # a malformed value where an object or list belongs
                raise _invalid(f"config.json of model_type={model_type!r} is malformed: {err}") from err
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path) -> "BertConfig":
        """Read config.json from a checkpoint folder (or the path of the JSON file itself)."""
        path = Path(path)
        file = path if path.is_file() else path / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no config.json found at {path}")
        return cls.from_dict(read_json(file))


def _invalid(message) -> ValueError:
    # Bounded: a config.json value may be a string of megabytes or an integer of thousands of digits.
    return ValueError(bounded(message))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
