"""Reading checkpoint files (read_state_dict, load_weights): safetensors before pickles, shards and their
index, corrupt and junk files, pickles that would run code, and weights that are not finite."""

import json

import pytest
import torch

from fastbert.checkpoint.weights import load_weights, read_state_dict
from tests.checkpoint.helpers import hf_state_dict


def test_reads_safetensors_first_then_bin(tmp_path):
    from safetensors.torch import save_file

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
    for text, match in (('{"weight_map": ["a"]}', "not a valid checkpoint index"),
                        ('{"metadata": {}}', "not a valid checkpoint index"),
                        ("[]", "index.json must hold a JSON object, found array"),
                        ("{", r"index.json is not valid JSON \(column 2\)")):
        index.write_text(text)
        with pytest.raises(ValueError, match=match):
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
