"""The BERT family, one row per transformers `model_type`: everything that differs between BERT, RoBERTa,
XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA, MPNet and ModernBERT is data in FAMILIES, and loading (config.py,
weights.py), the encoder (model.py, reference.py) and `optimize()` (patch.py) read it from here.

What a row holds:
- config_keys: our BertConfig field -> the key in the family's config.json (DistilBERT calls hidden_size
  "dim"); fields a family does not have take `fixed` (DistilBERT: no token types, eps 1e-12 hard-coded).
- defaults: transformers' config-class defaults, for config.json files that omit a key (an older
  RoBERTa config without pad_token_id means 1, not BERT's 0).
- embedding / layer names: where each tensor lives in the family's checkpoints, keyed by our fields
  (fastbert/checkpoint/encoder_weights.py): the one place checkpoint names are written. ELECTRA's
  embeddings are narrower than the encoder (embedding_size) and a Linear, `embeddings_project`, widens
  them after the embedding LayerNorm.
- positions: "column" (BERT: position = column index) or "after_padding" (RoBERTa: positions count
  the non-pad tokens of a row, starting at pad_token_id + 1; pad tokens sit at pad_token_id), exactly
  transformers' create_position_ids_from_input_ids.
- relative_bias: MPNet's T5-style relative position bias, one embedding [buckets, heads] shared by all
  layers (None: the family has none), and the bucket function's parameters, which transformers fixes
  (MPNetEncoder.compute_position_bias passes neither the config's bucket count nor a distance).
- prefix: the attribute (and checkpoint name prefix) under which task models keep the encoder;
  base_class: the transformers class of that encoder, the one `optimize()` patches;
  output: the transformers output class that encoder's forward returns.
- layer_style: "post_norm" (BERT: LayerNorm after each residual add) or "pre_norm" (ModernBERT: LayerNorm
  before attention and FFN, layer 0 without one before attention, and a final LayerNorm `final_norm`);
  pre-norm families' FFN is a GeGLU whose ffn_in holds both halves ([2I, H]: input rows, then gate rows);
  their q/k/v come fused in the checkpoint (layer name "qkv").
- read_config: a function of the config.json dict returning our fields that are not plain renames
  (ModernBERT's layer types and rotary thetas, from the keys of any transformers version).
"""

from dataclasses import dataclass, field

import torch

from fastbert.errors import bounded

_BERT_CONFIG_KEYS = {name: name for name in (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "max_position_embeddings", "type_vocab_size", "pad_token_id", "position_embedding_type")}

# Our embedding fields (fastbert/checkpoint/encoder_weights.py EmbeddingWeights) -> the family's checkpoint
# names; "norm" names a LayerNorm module (its .weight and .bias). Families without token types leave out
# "token_type"; ELECTRA's "project" is Family.projection.
_BERT_EMBEDDINGS = {
    "word": "embeddings.word_embeddings.weight",
    "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "norm": "embeddings.LayerNorm",
}

# Our per-layer fields (LayerWeights) -> the family's module names relative to the layer, each with a .weight
# and a .bias. q/k/v are fused into LayerWeights.qkv by weights.py.
_BERT_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_MPNET_LAYER = {
    "q": "attention.attn.q",
    "k": "attention.attn.k",
    "v": "attention.attn.v",
    "attn_out": "attention.attn.o",
    "attn_norm": "attention.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_DISTILBERT_LAYER = {
    "q": "attention.q_lin",
    "k": "attention.k_lin",
    "v": "attention.v_lin",
    "attn_out": "attention.out_lin",
    "attn_norm": "sa_layer_norm",
    "ffn_in": "ffn.lin1",
    "ffn_out": "ffn.lin2",
    "ffn_norm": "output_layer_norm",
}


@dataclass(frozen=True)
class Family:
    model_type: str
    base_class: str
    prefix: str
    output: str
    config_keys: dict
    defaults: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    embeddings: dict = field(default_factory=lambda: dict(_BERT_EMBEDDINGS))
    projection: str | None = None  # checkpoint name (without .weight/.bias) of ELECTRA's embeddings_project
    layer_root: str = "encoder.layer"
    layer: dict = field(default_factory=lambda: dict(_BERT_LAYER))
    pooler: str | None = "pooler.dense"  # checkpoint name of the pooler's Linear, None: the family has none
    # Buffers transformers may have saved alongside the parameters; they carry no learned values.
    buffers: tuple[str, ...] = ("embeddings.position_ids", "embeddings.token_type_ids")
    relative_bias: str | None = None  # checkpoint name of the relative-position bias embedding
    relative_buckets: int = 32
    relative_max_distance: int = 128
    positions: str = "column"  # or "rotary": no position table, q and k rotated by the index in the sequence
    layer_style: str = "post_norm"
    final_norm: str | None = None  # checkpoint name of a LayerNorm after the last layer
    read_config: object = None  # Callable[[dict], dict] | None

    @property
    def roots(self) -> tuple[str, ...]:
        """First components of every checkpoint name the encoder owns; in a checkpoint without the prefix,
        any other name belongs to a task head."""
        names = [*self.embeddings.values(), self.layer_root, self.pooler or "", self.projection or "",
                 self.relative_bias or "", self.final_norm or ""]
        return tuple(sorted({name.split(".")[0] + "." for name in names if name}))


_MODERNBERT_LAYER = {
    "qkv": "attn.Wqkv",
    "attn_out": "attn.Wo",
    "attn_norm": "attn_norm",  # absent in layer 0 (an Identity there)
    "ffn_in": "mlp.Wi",
    "ffn_out": "mlp.Wo",
    "ffn_norm": "mlp_norm",
}
_ROTARY_THETAS = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}  # transformers' defaults
_OLD_THETA_KEYS = {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta"}


def _modernbert_config(d: dict) -> dict:
    """ModernBERT's layer types and rotary thetas from its config.json: transformers >= 5 writes layer_types
    and rope_parameters per layer type; older configs global_attn_every_n_layers (every n-th layer global,
    from layer 0) and global_rope_theta / local_rope_theta. Biases default off, as in ModernBertConfig."""
    layers = d.get("num_hidden_layers", 22)
    layer_types = d.get("layer_types")
    if layer_types is None:
        every = d.get("global_attn_every_n_layers", 3)
        if not isinstance(every, int) or isinstance(every, bool) or every <= 0:
            raise ValueError(f"global_attn_every_n_layers must be a positive integer, got {every!r}")
        layer_types = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    rope = d.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ValueError(bounded(f"rope_parameters must be an object, got {rope!r}"))
    thetas = {}
    for kind, default in _ROTARY_THETAS.items():
        params = rope.get(kind) or {}
        rope_type = params.get("rope_type", "default")
        if rope_type != "default" or d.get("rope_scaling"):
            raise ValueError(bounded(f"rope_parameters[{kind!r}] of rope_type={rope_type!r} (or rope_scaling) is "
                                     "not supported: fastbert implements the default rotary embedding"))
        thetas[kind] = params.get("rope_theta", d.get(_OLD_THETA_KEYS[kind], default))
    return {"layer_types": tuple(layer_types) if isinstance(layer_types, list) else layer_types,
            "rope_theta": thetas, "local_attention": d.get("local_attention", 128),
            "attention_bias": d.get("attention_bias", False), "mlp_bias": d.get("mlp_bias", False),
            "norm_bias": d.get("norm_bias", False)}


_ROBERTA = dict(output="BaseModelOutputWithPoolingAndCrossAttentions", prefix="roberta",
                config_keys=_BERT_CONFIG_KEYS, positions="after_padding")

FAMILIES = {
    family.model_type: family
    for family in (
        Family("bert", "BertModel", "bert", "BaseModelOutputWithPoolingAndCrossAttentions", _BERT_CONFIG_KEYS),
        Family("roberta", "RobertaModel", **_ROBERTA, defaults={"vocab_size": 50265, "pad_token_id": 1}),
        Family("xlm-roberta", "XLMRobertaModel", **_ROBERTA, defaults={"pad_token_id": 1}),
        Family("camembert", "CamembertModel", **_ROBERTA, defaults={"pad_token_id": 1}),
        Family(
            "distilbert", "DistilBertModel", "distilbert", "BaseModelOutput",
            config_keys={"vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
                         "pad_token_id": "pad_token_id", "hidden_size": "dim", "num_hidden_layers": "n_layers",
                         "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
                         "hidden_act": "activation"},
            defaults={"num_hidden_layers": 6},
            # DistilBERT's LayerNorms hard-code eps=1e-12 and it has no token-type embedding. Sinusoidal
            # position embeddings (sinusoidal_pos_embds) are a table in the checkpoint like learned ones.
            fixed={"layer_norm_eps": 1e-12, "type_vocab_size": 0},
            embeddings={k: v for k, v in _BERT_EMBEDDINGS.items() if k != "token_type"},
            layer_root="transformer.layer", layer=dict(_DISTILBERT_LAYER), pooler=None,
        ),
        Family(
            "electra", "ElectraModel", "electra", "BaseModelOutputWithPastAndCrossAttentions",
            config_keys={**_BERT_CONFIG_KEYS, "embedding_size": "embedding_size"},
            defaults={"embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
            projection="embeddings_project", pooler=None,
        ),
        Family(
            "mpnet", "MPNetModel", "mpnet", "BaseModelOutputWithPooling",
            config_keys={**_BERT_CONFIG_KEYS, "relative_attention_num_buckets": "relative_attention_num_buckets"},
            defaults={"vocab_size": 30527, "relative_attention_num_buckets": 32},
            # MPNetEmbeddings hard-codes padding_idx=1 for its positions, whatever pad_token_id says; it has
            # no token-type embedding.
            fixed={"pad_token_id": 1, "type_vocab_size": 0},
            embeddings={k: v for k, v in _BERT_EMBEDDINGS.items() if k != "token_type"},
            layer=dict(_MPNET_LAYER), buffers=("embeddings.position_ids",), positions="after_padding",
            relative_bias="encoder.relative_attention_bias.weight",
        ),
        Family(
            "modernbert", "ModernBertModel", "model", "BaseModelOutput",
            config_keys={"vocab_size": "vocab_size", "hidden_size": "hidden_size",
                         "num_hidden_layers": "num_hidden_layers", "num_attention_heads": "num_attention_heads",
                         "intermediate_size": "intermediate_size", "hidden_act": "hidden_activation",
                         "layer_norm_eps": "norm_eps", "max_position_embeddings": "max_position_embeddings",
                         "pad_token_id": "pad_token_id"},
            defaults={"vocab_size": 50368, "hidden_size": 768, "num_hidden_layers": 22, "num_attention_heads": 12,
                      "intermediate_size": 1152,
                      "hidden_act": "gelu", "layer_norm_eps": 1e-5, "max_position_embeddings": 8192,
                      "pad_token_id": 50283},
            fixed={"type_vocab_size": 0},
            embeddings={"word": "embeddings.tok_embeddings.weight", "norm": "embeddings.norm"},
            layer_root="layers", layer=dict(_MODERNBERT_LAYER), pooler=None, buffers=(),
            positions="rotary", layer_style="pre_norm", final_norm="final_norm", read_config=_modernbert_config,
        ),
    )
}


def family_of(model_type) -> Family:
    """The row for a model_type, or a ValueError naming the supported ones."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(bounded(f"model_type={model_type!r} is not supported; expected one of {list(FAMILIES)}"))
    return FAMILIES[model_type]


def position_offset(config) -> int:
    """How far the first position id lies from 0: pad_token_id + 1 for the RoBERTa family, else 0."""
    return config.pad_token_id + 1 if family_of(config.model_type).positions == "after_padding" else 0


def default_position_ids(config, input_ids: torch.Tensor) -> torch.Tensor | None:
    """transformers' position ids for a padded [B, S] batch given no position_ids, or None where they are
    each token's column (BERT, DistilBERT, ELECTRA), which the caller computes more cheaply itself.

    RoBERTa family: the n-th token of a row that is not pad_token_id gets position pad_token_id + n; pad
    tokens get pad_token_id. Like transformers, this looks at the ids, not the attention mask."""
    if family_of(config.model_type).positions != "after_padding":  # rotary families need none either
        return None
    padding_idx = config.pad_token_id
    real = input_ids.ne(padding_idx)
    return (real.cumsum(dim=1) * real + padding_idx).to(input_ids.dtype)
