"""JSON nested too deeply for Python's parser (100k levels) in any file of a checkpoint is a ValueError
naming the file, not a bare RecursionError; the CLI reports it as the user's input (exit 2)."""

import json
import shutil

import pytest
import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.tokenizer import Tokenizer
from fastbert.checkpoint.weights import read_state_dict

DEPTH = 100_000


def _deep_object():
    return '{"nested": ' + "[" * DEPTH + "]" * DEPTH + "}"


def _with_tokenizer(folder, minilm_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)


def test_deep_config_json(tmp_path):
    (tmp_path / "config.json").write_text(_deep_object())
    with pytest.raises(ValueError, match=r"config.json is not readable JSON: nested too deeply"):
        BertConfig.from_pretrained(tmp_path)


def test_deep_weights_index(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(_deep_object())
    with pytest.raises(ValueError, match=r"model.safetensors.index.json is not readable JSON: nested too deeply"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "sentence_bert_config.json"])
def test_deep_tokenizer_configs(tmp_path, minilm_path, name):
    _with_tokenizer(tmp_path, minilm_path)
    Tokenizer.from_pretrained(tmp_path)  # the folder is sound before the deep file arrives
    (tmp_path / name).write_text(_deep_object())
    with pytest.raises(ValueError, match=rf"{name} is not readable JSON: nested too deeply"):
        Tokenizer.from_pretrained(tmp_path)


def test_a_tokenizer_config_that_is_not_an_object_is_named(tmp_path, minilm_path):
    _with_tokenizer(tmp_path, minilm_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="tokenizer_config.json must hold a JSON object, found array"):
        Tokenizer.from_pretrained(tmp_path)


def test_cli_exits_2_naming_the_deep_config(tmp_path, capsys, minilm_path):
    from fastbert.cli.main import main

    shutil.copy(minilm_path / "model.safetensors", tmp_path / "model.safetensors")
    _with_tokenizer(tmp_path, minilm_path)
    (tmp_path / "config.json").write_text(_deep_object())
    code = main(["encode", "--model", str(tmp_path), "--backend", "torch", "--device", "cpu", "some text"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "config.json is not readable JSON: nested too deeply" in err and len(err) < 1000, err
