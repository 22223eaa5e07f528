import dataclasses
import json

import pytest
import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.weights import convert_state_dict, load_weights, read_state_dict

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=20,
    type_vocab_size=2,
)


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


def hf_state_dict(model_cls=None, add_pooling_layer=True, **overrides):
    """A random transformers checkpoint's state dict under its own names, and our config for it."""
    kwargs = {**TINY, **overrides}
    hf_cfg = transformers.BertConfig(**kwargs)
    if model_cls is None:
        model = transformers.BertModel(hf_cfg, add_pooling_layer=add_pooling_layer)
    else:
        model = model_cls(hf_cfg)
    return {k: v.clone() for k, v in model.state_dict().items()}, BertConfig(**kwargs)


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
    with pytest.raises(ValueError, match=r"embeddings.word_embeddings.weight: expected \[30522, 768\], got"):
        load_weights(minilm_path, BertConfig())


def test_unrelated_checkpoint_lists_missing():
    with pytest.raises(
        ValueError,
        match=r"(?s)missing \(37\).*1 tensor\(s\) outside the encoder were set aside: transformer.wte.weight",
    ):
        convert_state_dict({"transformer.wte.weight": torch.zeros(3, 3)}, BertConfig(**TINY))


def test_reads_safetensors_first_then_bin(tmp_path):
    from safetensors.torch import save_file

    sd, _ = hf_state_dict()
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(read_state_dict(tmp_path)["a"], torch.ones(2))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    assert set(read_state_dict(tmp_path)) == {"b"}
    assert set(read_state_dict(tmp_path / "pytorch_model.bin")) == {"a"}


def test_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(read_state_dict(tmp_path)) == {"a", "b"}
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        read_state_dict(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*nowhere does not exist"):
        read_state_dict(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin in"):
        read_state_dict(tmp_path)


def test_corrupt_and_truncated_files(tmp_path, minilm_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        read_state_dict(tmp_path)
    whole = (minilm_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    sd, _ = hf_state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="pytorch_model.bin is not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="pytorch_model.bin is not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path)
    torch.save([torch.ones(1)], tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin does not hold a state dict"):
        read_state_dict(tmp_path)


def test_junk_bin_files_are_a_clear_error(tmp_path):
    # Each of these once escaped as struct.error, KeyError or IndexError from the legacy unpickler.
    for junk in (b"\x80\x02junkjunkjunk" * 5, b"\x80", bytes(range(256)) * 4, b"PK\x03\x04garbage", b""):
        (tmp_path / "pytorch_model.bin").write_bytes(junk)
        with pytest.raises(ValueError, match="pytorch_model.bin is not a readable PyTorch checkpoint"):
            read_state_dict(tmp_path)


def test_pickles_that_run_code_stay_refused(tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"a": Exploit()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path)


def _write_shards(folder, shards, index_name="model.safetensors.index.json"):
    """Each shard {file name: {tensor name: tensor}} saved (.safetensors or .bin by suffix) with its index."""
    from safetensors.torch import save_file

    weight_map = {}
    for name, tensors in shards.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target)) if name.endswith(".safetensors") else torch.save(tensors, target)
        weight_map.update({tensor: name for tensor in tensors})
    (folder / index_name).write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_bin_checkpoint(tmp_path):
    _write_shards(tmp_path, {"pytorch_model-00001-of-00002.bin": {"a": torch.ones(2)},
                             "pytorch_model-00002-of-00002.bin": {"b": torch.zeros(3)}},
                  "pytorch_model.bin.index.json")
    assert set(read_state_dict(tmp_path)) == {"a", "b"}


@pytest.mark.parametrize("index_name", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors",
                                   "/tmp/outside.safetensors", "..\\outside.safetensors", "C:\\outside.safetensors"])
def test_shards_must_stay_inside_the_folder(tmp_path, index_name, shard):
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    save_file({"secret": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    (folder / index_name).write_text(json.dumps({"weight_map": {"secret": shard}}))
    with pytest.raises(ValueError, match="outside the checkpoint folder"):
        read_state_dict(folder)


def test_shards_in_a_subfolder_and_bad_indexes(tmp_path):
    _write_shards(tmp_path, {"shards/one.safetensors": {"a": torch.ones(2)}})
    assert set(read_state_dict(tmp_path)) == {"a"}
    index = tmp_path / "model.safetensors.index.json"
    for weight_map, match in (({"a": "model.safetensors.index.json"}, "not a .safetensors or .bin file"),
                              ({"a": 3}, "not a file name"), ({"a": ""}, "not a file name")):
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=match):
            read_state_dict(tmp_path)
    for text in ('{"weight_map": ["a"]}', "[]", "{", '{"metadata": {}}'):
        index.write_text(text)
        with pytest.raises(ValueError, match="not a valid checkpoint index"):
            read_state_dict(tmp_path)


def test_a_tensor_in_two_shards_is_an_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "one.safetensors"))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "two.safetensors"))
    index = {"weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'a' is in both one.safetensors and two.safetensors"):
        read_state_dict(tmp_path)


def test_hf_cache_links_to_blobs_outside_the_snapshot_are_followed(tmp_path):
    # The Hugging Face cache's layout: snapshot files are symlinks into ../../blobs.
    from safetensors.torch import save_file

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    save_file({"a": torch.ones(2)}, str(blobs / "1234"))
    (snapshot / "model-00001-of-00001.safetensors").symlink_to("../../blobs/1234")
    index = {"weight_map": {"a": "model-00001-of-00001.safetensors"}}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(read_state_dict(snapshot)) == {"a"}


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_an_error_naming_the_tensors(tmp_path, bad_value):
    from safetensors.torch import save_file

    sd, config = hf_state_dict()
    sd["encoder.layer.1.output.dense.weight"][3, :2] = bad_value
    sd["pooler.dense.bias"][0] = float("nan")
    save_file(sd, str(tmp_path / "model.safetensors"))
    kind = "NaN" if bad_value != bad_value else "inf"
    expected = rf"encoder.layer.1.output.dense.weight \(2 {kind}\), pooler.dense.bias \(1 NaN\)"
    with pytest.raises(ValueError, match=r"non-finite values in 2 tensor\(s\): " + expected):
        load_weights(tmp_path, config)


def test_non_finite_check_covers_every_slice(monkeypatch):
    from fastbert.checkpoint import weights

    monkeypatch.setattr(weights, "_FINITE_CHECK_SLICE", 7)
    tensor = torch.zeros(5, 9, dtype=torch.float16)
    tensor[4, 8] = float("inf")
    with pytest.raises(ValueError, match=r"t \(1 inf\)"):
        weights.check_finite({"t": tensor, "ids": torch.arange(3)}, "x")
    weights.check_finite({"t": torch.zeros(5, 9), "empty": torch.zeros(0, 3)}, "x")


@pytest.mark.parametrize("command", ["verify", "encode"])
def test_cli_names_the_non_finite_tensor(tmp_path, capsys, command):
    from fastbert.cli.main import main
    from tests.bert_factory import random_bert

    model = random_bert(tmp_path)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.key.weight[1, 1] = float("nan")
    model.save_pretrained(tmp_path)
    args = [command, "--model", str(tmp_path), "--backend", "torch", "--device", "cpu"]
    code = main(args + (["some text"] if command == "encode" else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "holds non-finite values in 1 tensor(s): encoder.layer.0.attention.self.key.weight (1 NaN)" in err, err


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
    with pytest.raises(ValueError, match=r"(?s)missing.*encoder\.layer\.0.*set aside: transformer\.layer\.0"):
        convert_state_dict(model.state_dict(), config)
