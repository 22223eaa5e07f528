import json
from pathlib import Path

import pytest

from fastbert.config import ACTIVATIONS, BertConfig


def test_defaults_are_bert_base():
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig()
    cfg = BertConfig()
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "max_position_embeddings",
        "type_vocab_size",
        "pad_token_id",
    ):
        assert getattr(cfg, name) == getattr(hf, name), name
    assert cfg.head_dim == 64
    assert cfg.activation == "gelu"


def test_from_pretrained_minilm(minilm_path):
    cfg = BertConfig.from_pretrained(minilm_path)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.head_dim) == (1536, 30522, 32)
    assert cfg.layer_norm_eps == 1e-12 and cfg.activation == "gelu"
    # the JSON file itself is accepted too
    assert BertConfig.from_pretrained(Path(minilm_path) / "config.json") == cfg


def test_from_dict_ignores_unknown_keys():
    cfg = BertConfig.from_dict(
        {
            "architectures": ["BertForMaskedLM"],
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02,
            "transformers_version": "4.8.2",
            "use_cache": True,
            "is_decoder": False,
            "hidden_size": 64,
            "num_attention_heads": 2,
            "model_type": "bert",
        }
    )
    assert cfg.hidden_size == 64 and cfg.head_dim == 32 and cfg.num_hidden_layers == 12


@pytest.mark.parametrize(
    "hidden_act, kernel",
    [("gelu", "gelu"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh"), ("relu", "relu")],
)
def test_activation_names(hidden_act, kernel):
    assert BertConfig(hidden_act=hidden_act).activation == kernel
    assert set(ACTIVATIONS.values()) == {"gelu", "gelu_tanh", "relu"}


def test_type_vocab_size_zero_and_null_pad_are_valid():
    assert BertConfig(type_vocab_size=0, pad_token_id=None).type_vocab_size == 0


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json found at .*nowhere"):
        BertConfig.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertConfig.from_pretrained(tmp_path)


def test_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        BertConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_act": "silu"}, "hidden_act='silu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "hidden_size=100 .* num_attention_heads=12"),
        ({"model_type": "roberta"}, "model_type='roberta'"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"num_hidden_layers": -1}, "num_hidden_layers must be a positive integer, got -1"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
        ({"vocab_size": 3.5}, "vocab_size must be a positive integer, got 3.5"),
        ({"intermediate_size": True}, "intermediate_size must be a positive integer, got True"),
        ({"max_position_embeddings": 0}, "max_position_embeddings must be a positive integer, got 0"),
        ({"type_vocab_size": -2}, "type_vocab_size must be a non-negative integer, got -2"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a positive finite number, got 0.0"),
        (
            {"pad_token_id": 30522},
            r"pad_token_id must be None or an integer in \[0, vocab_size=30522\), got 30522",
        ),
    ],
)
def test_invalid_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict(kwargs)


def test_decoder_configs_rejected():
    with pytest.raises(ValueError, match="is_decoder=True"):
        BertConfig.from_dict({"is_decoder": True})
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        BertConfig.from_dict({"add_cross_attention": True})


def test_from_pretrained_reports_invalid_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "distilbert"}))
    with pytest.raises(ValueError, match="model_type='distilbert'"):
        BertConfig.from_pretrained(tmp_path)


def test_from_dict_type():
    with pytest.raises(TypeError, match="config must be a dict"):
        BertConfig.from_dict([("hidden_size", 8)])
