"""The tiny random BERT checkpoint the checkpoint tests convert and save."""

import pytest

from fastbert.checkpoint.config import BertConfig

TINY = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=20,
    type_vocab_size=2,
)


def hf_state_dict(model_cls=None, add_pooling_layer=True, **overrides):
    """A random transformers checkpoint's state dict under its own names, and our config for it."""
    kwargs = {**TINY, **overrides}
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(**kwargs)
    if model_cls is None:
        model = transformers.BertModel(hf_cfg, add_pooling_layer=add_pooling_layer)
    else:
        model = model_cls(hf_cfg)
    return {k: v.clone() for k, v in model.state_dict().items()}, BertConfig(**kwargs)
