"""Config sizes checked against the checkpoint's own tensors before anything is built: a config asking for
ten million layers, or widths the tensors do not have, is one short error, fast and in little memory."""

import json
import time
import tracemalloc

import pytest
import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.weights import convert_state_dict
from fastbert.errors import MAX_MESSAGE_CHARS
from tests.checkpoint.helpers import TINY, hf_state_dict

# Python memory a refused conversion of the tiny checkpoint may take: the names it lists, not a table of
# every layer the config asks for (10**5 layers once built 1.6 million names, an 85-million-character error).
REFUSAL_MEMORY_BYTES = 1 << 20


def _refusal(state_dict, config):
    """The error of a conversion that must fail, with the Python memory it took at its peak."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as err:
            convert_state_dict(state_dict, config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(err.value), peak


@pytest.mark.parametrize("layers", [10**5, 10**7])
def test_more_layers_than_the_checkpoint_holds_is_one_short_error(layers):
    state_dict, _ = hf_state_dict()
    message, peak = _refusal(state_dict, BertConfig(**{**TINY, "num_hidden_layers": layers}))
    assert f"num_hidden_layers={layers}, but its layers stop at encoder.layer.1.* (2 layers)" in message
    assert len(message.splitlines()) == 2 and len(message) < 600, message
    assert peak < REFUSAL_MEMORY_BYTES, peak


def test_widths_the_tensors_do_not_have_are_named_once_each():
    state_dict, _ = hf_state_dict()
    config = BertConfig(**{**TINY, "hidden_size": 32, "intermediate_size": 40, "vocab_size": 51})
    message, _ = _refusal(state_dict, config)
    assert message.splitlines()[1:] == [
        "  contradicted by the checkpoint (4): vocab_size=51, but embeddings.word_embeddings.weight is [50, 16]; "
        "hidden_size=32, but embeddings.word_embeddings.weight is [50, 16]; hidden_size=32, but "
        "encoder.layer.0.attention.self.query.weight is [16, 16]; intermediate_size=40, but "
        "encoder.layer.0.intermediate.dense.weight is [24, 16]"]


def test_a_family_s_sizes_go_by_its_own_config_keys():
    from tests.bert_factory import family_settings, random_hf_model

    model = random_hf_model("DistilBertModel", **family_settings("distilbert"))
    config = BertConfig.from_dict({**model.config.to_dict(), "n_layers": 10**6, "dim": 48})
    message, _ = _refusal(model.state_dict(), config)
    assert ("n_layers=1000000, but its layers stop at transformer.layer.1.* (2 layers); dim=48, but "
            "embeddings.word_embeddings.weight is [99, 96]") in message


def test_long_lists_show_a_few_names_and_count_the_rest():
    state_dict, config = hf_state_dict()
    for name in [name for name in state_dict if name.startswith("encoder.layer.0.")]:
        del state_dict[name]
    state_dict.update({f"encoder.layer.1.extra_{index}": torch.zeros(1) for index in range(40)})
    message, _ = _refusal(state_dict, config)
    missing, unexpected = message.splitlines()[1:]
    assert missing.startswith("  missing (16): encoder.layer.0.") and missing.endswith(", ... (10 more)")
    assert unexpected.startswith("  unexpected (40): encoder.layer.1.extra_0") and unexpected.endswith("(34 more)")


def test_huge_names_and_values_stay_bounded():
    state_dict, config = hf_state_dict()
    state_dict["embeddings." + "x" * 10**6] = torch.zeros(1)
    message, _ = _refusal(state_dict, config)
    assert len(message) <= MAX_MESSAGE_CHARS and "more characters" in message


@pytest.mark.parametrize("command", ["encode", "verify"])
def test_cli_refuses_a_ten_million_layer_config_at_once(tmp_path, capsys, command):
    from fastbert.cli.main import main
    from tests.bert_factory import random_bert

    random_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**7}))
    started = time.perf_counter()
    code = main([command, "--model", str(tmp_path), "--backend", "torch", "--device", "cpu"]
                + (["some text"] if command == "encode" else []))
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - started < 30, err
    assert "num_hidden_layers=10000000, but its layers stop at encoder.layer.1.* (2 layers)" in err
    assert len(err) < 1000, err
