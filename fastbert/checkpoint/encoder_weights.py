"""The encoder's weights as data: built once at load by fastbert.checkpoint.weights (which maps each family's
checkpoint names onto these fields, fusing Q, K and V), read by the encoder as `layer.qkv.weight`.

Shapes, with H = hidden, E = embedding width (ELECTRA's embedding_size, else H), I = intermediate,
V = vocab, P = max positions, TV = token-type vocab. Linear weights keep torch's [out_features,
in_features] layout."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Linear:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None = None  # [out]; None: a Linear(bias=False) (ModernBERT)


@dataclass(frozen=True, eq=False)
class Norm:
    """A LayerNorm's affine parameters."""

    weight: torch.Tensor  # [width]
    bias: torch.Tensor | None = None  # [width]; None: a LayerNorm(bias=False) (ModernBERT)


@dataclass(frozen=True, eq=False)
class EmbeddingWeights:
    word: torch.Tensor  # [V, E]
    position: torch.Tensor | None  # [P, E]; None for rotary families (ModernBERT)
    token_type: torch.Tensor | None  # [TV, E]; None when type_vocab_size == 0 (DistilBERT)
    norm: Norm  # [E]
    project: Linear | None  # [H, E]: ELECTRA with E != H only, applied after the norm


@dataclass(frozen=True, eq=False)
class LayerWeights:
    qkv: Linear  # [3H, H]: rows all of Q, then all of K, then all of V (unscaled as loaded)
    attn_out: Linear  # [H, H]
    attn_norm: Norm | None  # [H]; pre-norm families: before attention, None in layer 0
    ffn_in: Linear  # [I, H]; pre-norm (GeGLU) families: [2I, H], input rows then gate rows
    ffn_out: Linear  # [H, I]
    ffn_norm: Norm  # [H]; pre-norm families: before the FFN


@dataclass(frozen=True, eq=False)
class EncoderWeights:
    embeddings: EmbeddingWeights
    layers: tuple[LayerWeights, ...]
    pooler: Linear | None  # [H, H]; None when the checkpoint (or family) has no pooler
    # MPNet: the relative-position bias embedding [buckets, heads] all layers share, as the checkpoint holds it.
    relative_bias: torch.Tensor | None = None
    # ...and the same per distance, float32 [heads, 2R+1] (fastbert/checkpoint/relative_position.py): built by
    # the engine after its cast (fastbert.engine.model.prepare_weights), so it stays float32.
    position_bias: torch.Tensor | None = None
    final_norm: Norm | None = None  # [H]; pre-norm families' LayerNorm after the last layer

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "EncoderWeights":
        """The same structure with fn applied to every tensor (a cast, a move)."""
        return _map(self, fn)


def _map(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map(item, fn) for item in value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _map(getattr(value, f.name), fn)
                                             for f in dataclasses.fields(value)})
    return value  # None: an absent optional part
