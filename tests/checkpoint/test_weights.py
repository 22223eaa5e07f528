"""Mapping each family's checkpoint names onto EncoderWeights (convert_state_dict): names, prefixes, heads set
aside, fused QKV, and one error listing what does not fit the config."""

import dataclasses

import pytest
import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.weights import convert_state_dict, load_weights, read_state_dict
from tests.checkpoint.helpers import TINY, hf_state_dict

transformers = pytest.importorskip("transformers")


def our_names(num_layers, pooler=True, token_type=True):
    names = ["embeddings.word", "embeddings.position", "embeddings.norm.weight", "embeddings.norm.bias"]
    if token_type:
        names.append("embeddings.token_type")
    for i in range(num_layers):
        for part in ("qkv", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm"):
            names += [f"layers.{i}.{part}.weight", f"layers.{i}.{part}.bias"]
    if pooler:
        names += ["pooler.weight", "pooler.bias"]
    return set(names)


def by_name(weights, path=""):
    """{dotted field path: tensor} of an EncoderWeights, in field order: "embeddings.word", ...,
    "layers.0.qkv.weight", ..., "pooler.bias" (absent optional parts leave no entry)."""
    if isinstance(weights, torch.Tensor):
        return {path: weights}
    if isinstance(weights, tuple):
        parts = {f"{path}.{index}": item for index, item in enumerate(weights)}
    elif dataclasses.is_dataclass(weights):
        parts = {f"{path}.{f.name}" if path else f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)}
    else:
        return {}  # None: an absent optional part
    return {name: tensor for part_path, part in parts.items() for name, tensor in by_name(part, part_path).items()}


def test_minilm_names_shapes_and_fused_qkv(minilm_path):
    cfg = BertConfig.from_pretrained(minilm_path)
    raw = read_state_dict(minilm_path)
    weights, head = load_weights(minilm_path, cfg)
    assert head == {}
    named = by_name(weights)
    assert set(named) == our_names(6)
    H, I = 384, 1536
    expected = {
        "embeddings.word": (30522, H),
        "embeddings.position": (512, H),
        "embeddings.token_type": (2, H),
        "pooler.weight": (H, H),
        "pooler.bias": (H,),
    }
    for i in range(6):
        expected.update(
            {
                f"layers.{i}.qkv.weight": (3 * H, H),
                f"layers.{i}.qkv.bias": (3 * H,),
                f"layers.{i}.ffn_in.weight": (I, H),
                f"layers.{i}.ffn_out.weight": (H, I),
            }
        )
    for name, shape in expected.items():
        assert tuple(named[name].shape) == shape, name
    for i, layer in enumerate(weights.layers):
        a = f"encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            fused = getattr(layer.qkv, kind)
            assert fused.is_contiguous()
            q, k, v = fused.split(H, dim=0)  # rows: all Q, then all K, then all V, unscaled
            assert torch.equal(q, raw[a + f"query.{kind}"])
            assert torch.equal(k, raw[a + f"key.{kind}"])
            assert torch.equal(v, raw[a + f"value.{kind}"])
        assert torch.equal(layer.ffn_out.weight, raw[f"encoder.layer.{i}.output.dense.weight"])
    assert torch.equal(weights.pooler.weight, raw["pooler.dense.weight"])
    assert list(named)[:5] == [  # reading order: embeddings, then the layers in order, then the pooler
        "embeddings.word",
        "embeddings.position",
        "embeddings.token_type",
        "embeddings.norm.weight",
        "embeddings.norm.bias",
    ]
    assert list(named)[-2:] == ["pooler.weight", "pooler.bias"]


def test_dtype_cast(minilm_path):
    cfg = BertConfig.from_pretrained(minilm_path)
    weights, _ = load_weights(minilm_path, cfg, dtype=torch.float16)
    assert {w.dtype for w in by_name(weights).values()} == {torch.float16}
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        load_weights(minilm_path, cfg, dtype=torch.int32)


def test_no_pooler():
    sd, cfg = hf_state_dict(add_pooling_layer=False)
    weights, head = convert_state_dict(sd, cfg)
    assert set(by_name(weights)) == our_names(2, pooler=False) and head == {}
    assert weights.pooler is None


def test_half_a_pooler_is_missing():
    sd, cfg = hf_state_dict()
    del sd["pooler.dense.bias"]
    with pytest.raises(ValueError, match=r"missing \(1\): pooler.dense.bias \[16\]"):
        convert_state_dict(sd, cfg)


def test_bert_prefix_keeps_heads_aside():
    sd, cfg = hf_state_dict(model_cls=transformers.BertForSequenceClassification)
    assert any(k.startswith("bert.") for k in sd)
    sd["cls.predictions.bias"] = torch.zeros(50)
    sd["qa_outputs.weight"] = torch.zeros(2, 16)
    weights, head = convert_state_dict(sd, cfg)
    assert set(by_name(weights)) == our_names(2)
    assert set(head) == {"classifier.weight", "classifier.bias", "cls.predictions.bias", "qa_outputs.weight"}
    assert torch.equal(weights.embeddings.word, sd["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(head["classifier.weight"], sd["classifier.weight"])


def test_prefixed_errors_name_prefixed_keys():
    sd, cfg = hf_state_dict(model_cls=transformers.BertForSequenceClassification)
    del sd["bert.encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.1\.output\.dense\.bias") as err:
        convert_state_dict(sd, cfg)
    assert "tensor(s) outside the encoder were set aside: classifier" in str(err.value)


def test_legacy_gamma_beta_and_buffers():
    sd, cfg = hf_state_dict()
    reference = by_name(convert_state_dict(dict(sd), cfg)[0])
    legacy = {}
    for k, v in sd.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[k] = v
    legacy["embeddings.position_ids"] = torch.arange(20)[None]
    legacy["embeddings.token_type_ids"] = torch.zeros(1, 20, dtype=torch.long)
    assert sum("gamma" in k for k in legacy) == 5
    weights, head = convert_state_dict(legacy, cfg)
    weights = by_name(weights)
    assert head == {} and set(weights) == set(reference)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_duplicate_names_rejected():
    sd, cfg = hf_state_dict()
    sd["embeddings.LayerNorm.gamma"] = sd["embeddings.LayerNorm.weight"]
    with pytest.raises(ValueError, match="embeddings.LayerNorm.gamma.*name the same tensor"):
        convert_state_dict(sd, cfg)


def test_type_vocab_size_zero():
    sd, cfg = hf_state_dict(type_vocab_size=1)
    cfg0 = BertConfig(**{**TINY, "type_vocab_size": 0})
    empty = sd.pop("embeddings.token_type_embeddings.weight")
    weights, _ = convert_state_dict(dict(sd), cfg0)
    assert set(by_name(weights)) == our_names(2, token_type=False)
    sd["embeddings.token_type_embeddings.weight"] = empty[:0]  # what BertModel(type_vocab_size=0) saves
    weights, _ = convert_state_dict(dict(sd), cfg0)
    assert weights.embeddings.token_type is None
    sd["embeddings.token_type_embeddings.weight"] = empty
    with pytest.raises(ValueError, match=r"unexpected \(1\): embeddings.token_type_embeddings.weight"):
        convert_state_dict(sd, cfg0)


def test_one_error_lists_every_problem():
    sd, cfg = hf_state_dict()
    del sd["encoder.layer.0.attention.self.key.weight"]
    del sd["embeddings.LayerNorm.bias"]
    sd["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(25, 16)
    sd["encoder.layer.2.output.dense.weight"] = torch.zeros(16, 24)
    sd["embeddings.extra"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        convert_state_dict(sd, cfg)
    msg = str(err.value)
    assert "missing (2): " in msg
    assert (
        "embeddings.LayerNorm.bias [16]" in msg
        and "encoder.layer.0.attention.self.key.weight [16, 16]" in msg
    )
    assert "mis-shaped (1): encoder.layer.1.intermediate.dense.weight: expected [24, 16], got [25, 16]" in msg
    assert "unexpected (2): " in msg
    assert "encoder.layer.2.output.dense.weight" in msg and "embeddings.extra" in msg
    assert "num_hidden_layers=2" in msg


def test_wrong_config_for_checkpoint(minilm_path):
    # bert-base's sizes against MiniLM's tensors: one line per size the tensors contradict, nothing more.
    with pytest.raises(ValueError) as err:
        load_weights(minilm_path, BertConfig())
    contradictions = str(err.value).splitlines()[1]
    assert contradictions == (
        "  contradicted by the checkpoint (4): num_hidden_layers=12, but its layers stop at encoder.layer.5.* "
        "(6 layers); hidden_size=768, but embeddings.word_embeddings.weight is [30522, 384]; hidden_size=768, "
        "but encoder.layer.0.attention.self.query.weight is [384, 384]; intermediate_size=3072, but "
        "encoder.layer.0.intermediate.dense.weight is [1536, 384]")


def test_unrelated_checkpoint_names_what_it_lacks():
    with pytest.raises(
        ValueError,
        match=r"(?s)num_hidden_layers=2, but it holds no encoder.layer.0.\* tensors.*1 tensor\(s\) outside the "
              r"encoder were set aside: transformer.wte.weight",
    ):
        convert_state_dict({"transformer.wte.weight": torch.zeros(3, 3)}, BertConfig(**TINY))


MASKED_LM = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "xlm-roberta": "XLMRobertaForMaskedLM",
             "camembert": "CamembertForMaskedLM", "distilbert": "DistilBertForMaskedLM",
             "electra": "ElectraForMaskedLM"}


@pytest.mark.parametrize("model_type", list(MASKED_LM))
def test_family_names_with_and_without_prefix(model_type):
    from tests.bert_factory import BASE_CLASSES, family_settings, random_hf_model

    settings = family_settings(model_type)
    base = random_hf_model(BASE_CLASSES[model_type], **settings)
    config = BertConfig.from_dict(base.config.to_dict())
    weights, head = convert_state_dict(base.state_dict(), config)
    named = by_name(weights)
    expected = our_names(2, pooler=model_type not in ("distilbert", "electra"), token_type=model_type != "distilbert")
    if model_type == "electra":  # embedding_size 20 != hidden 96: the projection, and narrower tables
        expected |= {"embeddings.project.weight", "embeddings.project.bias"}
        assert weights.embeddings.word.shape == (99, 20) and weights.embeddings.project.weight.shape == (96, 20)
    assert set(named) == expected and head == {}

    task = random_hf_model(MASKED_LM[model_type], **settings)
    task_state = task.state_dict()
    prefix = task.base_model_prefix + "."
    weights, head = convert_state_dict(task_state, config)
    assert set(by_name(weights)) == expected - {"pooler.weight", "pooler.bias"}  # masked-LM models have no pooler
    assert head and not any(name.startswith(prefix) for name in head)
    assert torch.equal(weights.layers[1].ffn_out.bias, task.base_model.state_dict()[
        {"distilbert": "transformer.layer.1.ffn.lin2.bias"}.get(model_type, "encoder.layer.1.output.dense.bias")])

    # A missing tensor is named as the checkpoint names it, prefix included.
    missing = {"distilbert": "distilbert.transformer.layer.1.attention.k_lin.weight"}.get(
        model_type, prefix + "encoder.layer.1.attention.self.key.weight")
    del task_state[missing]
    with pytest.raises(ValueError, match=rf"model_type={model_type}.*\n  missing \(1\): {missing} \[96, 96\]"):
        convert_state_dict(task_state, config)


def test_family_of_the_config_decides_the_names():
    """A DistilBERT checkpoint read as BERT: BERT's layer names are missing, DistilBERT's set aside."""
    from tests.bert_factory import family_settings, random_hf_model

    model = random_hf_model("DistilBertModel", **family_settings("distilbert"))
    config = BertConfig.from_dict({**model.config.to_dict(), "model_type": "bert", "hidden_size": 96,
                                   "num_attention_heads": 3, "num_hidden_layers": 2, "intermediate_size": 37,
                                   "type_vocab_size": 0})
    with pytest.raises(ValueError, match=r"(?s)no encoder\.layer\.0\.\* tensors.*set aside: transformer\.layer\.0"):
        convert_state_dict(model.state_dict(), config)
