import json
from pathlib import Path

import pytest

from fastbert.checkpoint.config import ACTIVATIONS, SUPPORTED_MODEL_TYPES, BertConfig


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
    [("gelu", "gelu"), ("gelu_python", "gelu"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh"),
     ("gelu_python_tanh", "gelu_tanh"), ("gelu_fast", "gelu_tanh"), ("relu", "relu"), ("silu", "silu"),
     ("swish", "silu")],
)
def test_activation_names(hidden_act, kernel):
    assert BertConfig(hidden_act=hidden_act).activation == kernel
    assert {activation.epilogue for activation in ACTIVATIONS.values()} == {"gelu", "gelu_tanh", "relu", "silu"}


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
        ({"hidden_act": "quick_gelu"}, "hidden_act='quick_gelu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "hidden_size=100 .* num_attention_heads=12"),
        ({"model_type": "albert"}, "model_type='albert'"),
        ({"model_type": ["bert"]}, r"model_type=\['bert'\] is not supported"),
        ({"model_type": "roberta", "pad_token_id": None}, "model_type='roberta' needs a pad_token_id"),
        ({"model_type": "roberta", "max_position_embeddings": 1}, "max_position_embeddings=1 leaves no position"),
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
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported; expected one of .*'distilbert'"):
        BertConfig.from_pretrained(tmp_path)


def test_from_dict_type():
    with pytest.raises(TypeError, match="config must be a dict"):
        BertConfig.from_dict([("hidden_size", 8)])


def test_family_config_keys_and_defaults():
    """Each family's config.json names and transformers' defaults for the keys a file may omit."""
    distil = BertConfig.from_dict({"model_type": "distilbert", "dim": 96, "n_heads": 3, "n_layers": 2,
                                   "hidden_dim": 37, "activation": "relu", "sinusoidal_pos_embds": True,
                                   "hidden_size": 12345, "type_vocab_size": 2, "layer_norm_eps": 1e-5})
    assert (distil.hidden_size, distil.num_attention_heads, distil.num_hidden_layers) == (96, 3, 2)
    assert (distil.intermediate_size, distil.hidden_act, distil.activation) == (37, "relu", "relu")
    # DistilBERT has no token types and hard-codes eps 1e-12, whatever stray keys a file holds.
    assert (distil.type_vocab_size, distil.layer_norm_eps) == (0, 1e-12)
    assert BertConfig.from_dict({"model_type": "distilbert"}).num_hidden_layers == 6
    roberta = BertConfig.from_dict({"model_type": "roberta", "max_position_embeddings": 514})
    assert (roberta.pad_token_id, roberta.vocab_size, roberta.max_sequence_length) == (1, 50265, 512)
    assert BertConfig.from_dict({"model_type": "xlm-roberta"}).pad_token_id == 1
    electra = BertConfig.from_dict({"model_type": "electra"})
    assert (electra.embedding_size, electra.embedding_dim, electra.hidden_size) == (128, 128, 256)
    # BERT has no embedding_size: transformers ignores the key, and so do we.
    bert = BertConfig.from_dict({"model_type": "bert", "embedding_size": 32})
    assert (bert.embedding_dim, bert.max_sequence_length) == (768, 512)


def test_embedding_size_only_where_projected():
    with pytest.raises(ValueError, match="embedding_size=32 differs from hidden_size=768, but model_type='bert'"):
        BertConfig(embedding_size=32)
    with pytest.raises(ValueError, match="embedding_size must be None or a positive integer, got 0"):
        BertConfig(model_type="electra", embedding_size=0)
    assert BertConfig(embedding_size=768).embedding_dim == 768


def test_every_family_matches_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    for model_type in SUPPORTED_MODEL_TYPES:
        hf = transformers.AutoConfig.for_model(model_type)
        ours = BertConfig.from_dict({"model_type": model_type})
        assert (ours.vocab_size, ours.hidden_size, ours.num_hidden_layers) == (
            hf.vocab_size, hf.hidden_size, hf.num_hidden_layers), model_type
        assert (ours.num_attention_heads, ours.pad_token_id, ours.max_position_embeddings) == (
            hf.num_attention_heads, hf.pad_token_id, hf.max_position_embeddings), model_type
        assert ours.embedding_dim == getattr(hf, "embedding_size", hf.hidden_size), model_type


@pytest.mark.parametrize("field", ["hidden_act", "model_type", "position_embedding_type", "vocab_size"])
def test_huge_values_give_bounded_messages(field):
    from fastbert.errors import MAX_MESSAGE_CHARS

    with pytest.raises(ValueError) as err:
        BertConfig.from_dict({field: "x" * 10**6})
    assert len(str(err.value)) <= MAX_MESSAGE_CHARS and "more characters" in str(err.value)
