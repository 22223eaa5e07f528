"""The model's shape and numerics, read from a checkpoint's config.json.

Only the fields that change the forward pass are kept; training-only keys (dropout, initializer range,
architectures, ...) are ignored. Anything that would make our encoder compute something other than
`transformers.BertModel` is rejected here, at load, with a message naming the field and its value.

Supported model types: "bert" only. Close relatives are refused on purpose, because their weights or
embeddings differ from BERT's even where the encoder layers match: RoBERTa / XLM-R / CamemBERT offset
position ids by padding_idx + 1, ELECTRA projects the embeddings, DistilBERT has no token types and other
weight names. Add a type to SUPPORTED_MODEL_TYPES only together with a test proving parity.
"""

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("bert",)

# transformers' hidden_act name -> the name our GEMM epilogue understands. "gelu" is the exact erf form;
# "gelu_new" and "gelu_pytorch_tanh" are both the tanh approximation (they differ only in rounding).
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}

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
    """BERT encoder hyper-parameters; the defaults are bert-base-uncased's."""

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

    def __post_init__(self):
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(self.type_vocab_size) or self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be a non-negative integer, got {self.type_vocab_size!r}")
        if self.pad_token_id is not None and (
            not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size
        ):
            raise ValueError(
                f"pad_token_id must be None or an integer in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_token_id!r}"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"layer_norm_eps must be a positive finite number, got {eps!r}")
        self.layer_norm_eps = float(eps)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; "
                "only 'absolute' position embeddings are implemented"
            )
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type={self.model_type!r} is not supported; "
                f"expected one of {list(SUPPORTED_MODEL_TYPES)}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def activation(self) -> str:
        """The kernel activation name for the FFN: "gelu" (exact erf), "gelu_tanh" or "relu"."""
        return ACTIVATIONS[self.hidden_act]

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Build from a transformers-style config dict; keys that do not change inference are ignored."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        # A BERT decoder uses causal self-attention (and maybe cross-attention): not an encoder we compute.
        for flag in ("is_decoder", "add_cross_attention"):
            if d.get(flag):
                raise ValueError(f"{flag}={d[flag]!r} is not supported: fastbert runs bidirectional encoders")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if kwargs.get("model_type", "bert") is None:
            kwargs.pop("model_type")
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path) -> "BertConfig":
        """Read config.json from a checkpoint folder (or the path of the JSON file itself)."""
        path = Path(path)
        file = path if path.is_file() else path / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no config.json found at {path}")
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{file} is not valid JSON: {err}") from err
        if not isinstance(d, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
