"""ModernBERT (pre-norm, GeGLU, rotary, alternating global / sliding-window attention) against transformers:
fastbert.from_pretrained, optimize() on the base model and its heads, the plain-torch oracle, and config.json
of both transformers generations. fp32, by the float64 rule of tests/tolerances.py."""

import copy

import pytest
import torch

import fastbert
from fastbert.checkpoint.config import BertConfig
from fastbert.patch import is_optimized
from fastbert.verify.reference import ReferenceBertModel
from tests.bert_factory import load_fastbert
from tests.modernbert_factory import modernbert_batch, random_modernbert
from tests.tolerances import REFERENCE_ATOL, assert_close

transformers = pytest.importorskip("transformers")

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.slow)]
HEADS = ["ForSequenceClassification", "ForTokenClassification", "ForMaskedLM"]


def assert_float64_rule(ours, fp32, exact, mask, what):
    """ours within twice transformers' own fp32 error of transformers in float64 (+ the fp32 floor)."""
    if ours.dim() >= 2 and tuple(ours.shape[:2]) == tuple(mask.shape):
        ours, fp32, exact = ours[mask.bool()], fp32[mask.bool()], exact[mask.bool()]
    try:
        assert_close(ours.float().cpu(), exact, torch.float32, "interpreter", torch_same_dtype=fp32)
    except AssertionError as err:
        raise AssertionError(f"{what}: {err}") from None


def run_both(model, inputs):
    """transformers' outputs in fp32 (the padded batch) and in float64 (a copy, each sequence alone and
    unpadded: in float64 transformers' masks turn the padded rows of a sliding layer into NaN, which its
    attention then spreads to real tokens; alone, a sequence has no padding), hidden states included."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        fp32 = model(**inputs, output_hidden_states=True)
        rows = [double(ids[row, mask[row].bool()][None], output_hidden_states=True) for row in range(len(ids))]
    exact = {key: _stack([r[key] for r in rows], mask) for key in fp32.keys()}
    return fp32, exact


def _stack(values, mask):
    """Per-sequence outputs [1, length, ...] (or [1, ...]) -> the padded batch [B, S, ...] (zeros at padding)."""
    if isinstance(values[0], tuple):
        return tuple(_stack(list(parts), mask) for parts in zip(*values))
    if values[0].dim() >= 2 and all(v.shape[1] == int(m.sum()) for v, m in zip(values, mask)) and mask.shape[1] > 1:
        out = values[0].new_zeros(len(values), mask.shape[1], *values[0].shape[2:])
        for row, value in enumerate(values):
            out[row, mask[row].bool()] = value[0]
        return out
    return torch.cat(values)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("biases", [False, True])
def test_from_pretrained_matches_transformers(tmp_path, backend, biases):
    hf_model = random_modernbert(biases=biases, attn="sdpa" if biases else "eager")
    hf_model.save_pretrained(tmp_path)
    model = load_fastbert(tmp_path, backend)
    assert model.config.model_type == "modernbert" and model.config.attention_bias is biases
    for left_pad in (False, True):
        ids, mask = modernbert_batch(left_pad=left_pad)
        fp32, exact = run_both(hf_model, {"input_ids": ids, "attention_mask": mask})
        out = model(ids, mask, output_hidden_states=True)
        assert out.pooler_output is None
        assert len(out.hidden_states) == len(fp32.hidden_states) == 5
        for index, (ours, a, b) in enumerate(zip(out.hidden_states, fp32.hidden_states, exact["hidden_states"])):
            assert_float64_rule(ours, a, b, mask, f"hidden_states[{index}]")
        assert_float64_rule(out.last_hidden_state, fp32.last_hidden_state, exact["last_hidden_state"], mask,
                            "last_hidden_state")
        assert not out.last_hidden_state[~mask.bool()].any(), "padded positions must be zero"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", ["Model", *HEADS])
def test_optimize_matches_transformers(backend, task):
    model = random_modernbert("ModernBert" + task, seed=1)
    ids, mask = modernbert_batch(seed=1)
    inputs = {"input_ids": ids, "attention_mask": mask}
    fp32, exact = run_both(model, inputs)
    fastbert.optimize(model, backend=backend)
    assert is_optimized(model)
    with torch.no_grad():
        patched = model(**inputs, output_hidden_states=True)
    assert type(patched) is type(fp32)
    for key, expected in fp32.items():
        if isinstance(expected, tuple):
            for index, (a, b, c) in enumerate(zip(patched[key], expected, exact[key], strict=True)):
                assert_float64_rule(a, b, c, mask, f"{key}[{index}]")
        else:
            assert_float64_rule(patched[key], expected, exact[key], mask, key)
    fastbert.restore(model)


def test_position_ids_run_through_transformers():
    model = random_modernbert()
    ids, mask = modernbert_batch()
    positions = torch.arange(ids.shape[1]).flip(0)[None].expand_as(ids)
    with torch.no_grad():
        expected = model(ids, mask, position_ids=positions).last_hidden_state
        fastbert.optimize(model, backend="torch")
        assert torch.equal(model(ids, mask, position_ids=positions).last_hidden_state, expected)
    with pytest.raises(ValueError, match="position_ids"):
        fastbert.patch.fastbert_encoder(model)(ids, mask, position_ids=positions)


def test_reference_matches_transformers(tmp_path):
    hf_model = random_modernbert(biases=False)
    hf_model.save_pretrained(tmp_path)
    reference = ReferenceBertModel.from_pretrained(tmp_path)
    ids, mask = modernbert_batch()
    with torch.no_grad():
        expected = hf_model(ids, mask, output_hidden_states=True)
    out = reference(ids, mask, output_hidden_states=True)
    real = mask.bool()
    for ours, theirs in zip(out.hidden_states, expected.hidden_states, strict=True):
        assert (ours[real] - theirs[real]).abs().max() <= REFERENCE_ATOL
    assert (out.last_hidden_state[real] - expected.last_hidden_state[real]).abs().max() <= REFERENCE_ATOL


def test_config_keys_of_both_transformers_generations():
    new = BertConfig.from_dict(random_modernbert().config.to_dict())
    assert new.layer_types == ("full_attention", "sliding_attention", "sliding_attention", "full_attention")
    assert new.rope_theta == {"full_attention": 160_000.0, "sliding_attention": 10_000.0}
    assert [new.attention_window(i) for i in range(4)] == [None, 4, 4, None]
    old = BertConfig.from_dict({"model_type": "modernbert", "num_hidden_layers": 4, "global_attn_every_n_layers": 2,
                                "global_rope_theta": 80_000.0, "local_rope_theta": 5_000.0, "local_attention": 16})
    assert old.layer_types == ("full_attention", "sliding_attention") * 2
    assert old.rope_theta == {"full_attention": 80_000.0, "sliding_attention": 5_000.0}
    assert old.attention_window(1) == 8 and not old.norm_bias and old.hidden_size == 768


@pytest.mark.parametrize("bad, message", [
    ({"layer_types": ["full_attention", "causal"]}, "layer_types"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}, "rope_type"),
    ({"local_attention": -2}, "local_attention"),
    ({"attention_bias": "yes"}, "attention_bias"),
])
def test_bad_config_values_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        BertConfig.from_dict({"model_type": "modernbert", "num_hidden_layers": 2, **bad})


def test_checkpoint_mismatches_are_named():
    from fastbert.checkpoint.weights import convert_state_dict

    model = random_modernbert(biases=False)
    state = model.state_dict()
    config = BertConfig.from_dict(model.config.to_dict())
    with pytest.raises(ValueError, match="intermediate_size=41, but layers.0.mlp.Wo.weight is"):
        convert_state_dict(state, BertConfig.from_dict({**model.config.to_dict(), "intermediate_size": 41}))
    with pytest.raises(ValueError, match=r"unexpected \(1\): layers.0.attn_norm.weight"):
        convert_state_dict({**state, "layers.0.attn_norm.weight": torch.ones(64)}, config)
    biased = random_modernbert(biases=True)
    without_one = {k: v for k, v in biased.state_dict().items() if k != "layers.2.attn.Wqkv.bias"}
    with pytest.raises(ValueError, match=r"missing \(1\): layers.2.attn.Wqkv.bias"):
        convert_state_dict(without_one, BertConfig.from_dict(biased.config.to_dict()))
