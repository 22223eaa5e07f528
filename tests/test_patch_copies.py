"""fastbert.optimize under autograd and copying: gradients are never dropped, and a copy (deepcopy, pickle,
torch.save) or a cast / move of an optimized model runs on its own weights, in its own dtype."""

import copy
import io
import pickle

import pytest
import torch

import fastbert
from fastbert.patch import fastbert_encoder, is_optimized
from tests.bert_factory import random_batch, random_hf_model
from tests.tolerances import PATCHED_MODEL, assert_close

transformers = pytest.importorskip("transformers")


def _counted(model):
    """Record each call of the model's current fastbert encoder; returns the list the calls append to."""
    fast, calls = fastbert_encoder(model), []
    fast_forward = fast.forward
    fast.forward = lambda *args, **kwargs: calls.append(1) or fast_forward(*args, **kwargs)
    return calls


def _inputs(model):
    return random_batch(model.config.vocab_size, [5, 9, 2], seq_len=9)


def _logits(model, ids, mask, types):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def test_backward_gives_every_gradient_transformers_gives():
    model = random_hf_model("BertForSequenceClassification")
    reference = copy.deepcopy(model)
    ids, mask, types = _inputs(model)
    labels = torch.tensor([0, 1, 1])
    fastbert.optimize(model)
    calls = _counted(model)
    for each in (reference, model):  # eval mode, grad mode on: what a fine-tuning loop's validation-free step does
        each(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    assert calls == [], "fastbert's encoder answered where gradients were wanted"
    theirs = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.equal(parameter.grad, theirs[name].grad), name


def test_frozen_encoder_or_no_grad_still_runs_fastbert():
    model = fastbert.optimize(random_hf_model("BertForSequenceClassification"))
    ids, mask, types = _inputs(model)
    calls = _counted(model)
    _logits(model, ids, mask, types)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert calls == [1, 1]
    model.bert.requires_grad_(False)  # a trainable head on a frozen encoder: no encoder gradient is wanted
    logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert calls == [1, 1, 1] and logits.requires_grad
    logits.sum().backward()
    assert model.classifier.weight.grad is not None


def test_deepcopy_runs_on_its_own_weights_and_mode():
    model = fastbert.optimize(random_hf_model("BertForSequenceClassification"))
    ids, mask, types = _inputs(model)
    before = _logits(model, ids, mask, types)
    duplicate = copy.deepcopy(model)
    assert is_optimized(duplicate) and duplicate.bert.forward.module is duplicate.bert
    with torch.no_grad():
        duplicate.bert.embeddings.word_embeddings.weight.mul_(2)  # edited before its first call: its own weights
    edited = _logits(duplicate, ids, mask, types)
    fastbert.restore(duplicate)
    torch.testing.assert_close(edited, _logits(duplicate, ids, mask, types), **PATCHED_MODEL)
    assert not torch.allclose(edited, before)
    assert torch.equal(_logits(model, ids, mask, types), before)  # the original is untouched

    twin = copy.deepcopy(model)
    twin.train()
    original_calls, twin_calls = _counted(model), _counted(twin)
    _logits(model, ids, mask, types)
    _logits(twin, ids, mask, types)  # training mode: transformers' own forward, on the twin alone
    assert original_calls == [1] and twin_calls == [] and not model.training


@pytest.mark.parametrize("round_trip", ["torch.save", "pickle"])
def test_saved_and_loaded_model_stays_optimized(round_trip):
    model = fastbert.optimize(random_hf_model("BertForSequenceClassification"), backend="torch")
    ids, mask, types = _inputs(model)
    if round_trip == "torch.save":
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    else:
        loaded = pickle.loads(pickle.dumps(model))
    assert is_optimized(loaded) and loaded.bert.forward.backend == "torch"
    assert loaded.bert.forward.fastbert_encoder is None  # the engine is not saved: rebuilt from the weights
    calls = _counted(loaded)
    assert torch.equal(_logits(loaded, ids, mask, types), _logits(model, ids, mask, types)) and calls == [1]


def test_half_and_float_rebuild_the_encoder_in_the_new_dtype():
    model = fastbert.optimize(random_hf_model("BertForSequenceClassification"))
    ids, mask, types = _inputs(model)
    exact = copy.deepcopy(model).double()
    fastbert.restore(exact)
    model.half()
    half = _logits(model, ids, mask, types)
    assert fastbert_encoder(model).dtype == torch.float16 and half.dtype == torch.float16
    unpatched = fastbert.restore(copy.deepcopy(model))
    assert_close(half, _logits(exact, ids, mask, types), torch.float16, "interpreter",
                 torch_same_dtype=_logits(unpatched, ids, mask, types))
    model.float()
    restored_width = _logits(model, ids, mask, types)
    assert fastbert_encoder(model).dtype == torch.float32
    torch.testing.assert_close(restored_width, _logits(fastbert.restore(copy.deepcopy(model)), ids, mask, types),
                               **PATCHED_MODEL)


def test_a_dtype_fastbert_cannot_run_names_restore():
    model = fastbert.optimize(random_hf_model("BertModel"))
    ids, mask, types = _inputs(model)
    model.double()
    with torch.no_grad(), pytest.raises(TypeError, match=r"holds torch.float64 weights.*fastbert.restore\(\)"):
        model(input_ids=ids, attention_mask=mask)
    fastbert.restore(model)
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask).last_hidden_state.dtype == torch.float64


def test_an_explicit_dtype_outlives_a_cast():
    model = fastbert.optimize(random_hf_model("BertModel"), dtype=torch.float16)
    model.half()
    model.float()
    ids, mask, _ = _inputs(model)
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask).last_hidden_state.dtype == torch.float16
