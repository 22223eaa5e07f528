"""fastbert.optimize / restore on transformers and sentence-transformers models."""

import pytest
import torch

import fastbert
from fastbert.patch import WRAPPERS, fastbert_encoder, is_optimized
from tests.bert_factory import random_batch, random_bert
from tests.tolerances import PATCHED_MODEL, SENTENCE_COSINE

transformers = pytest.importorskip("transformers")

HEAD_CLASSES = ["BertModel", "BertForSequenceClassification", "BertForTokenClassification",
                "BertForQuestionAnswering", "BertForMaskedLM"]


def _real(tensor, mask):
    return tensor[mask.bool()] if tensor.dim() >= 2 and tensor.shape[:2] == mask.shape else tensor


@pytest.mark.parametrize("model_class", HEAD_CLASSES)
def test_optimize_matches_unpatched_model(tmp_path, model_class):
    model = random_bert(tmp_path, model_class=model_class)
    ids, mask, types = random_batch(model.config.vocab_size, [3, 10, 7], seq_len=10)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        original_forward = _bert(model).forward
        assert fastbert.optimize(model) is model and is_optimized(model)
        patched = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    for key, value in expected.items():
        if isinstance(value, tuple):
            assert len(patched[key]) == len(value)
            for ours, theirs in zip(patched[key], value):
                torch.testing.assert_close(_real(ours, mask), _real(theirs, mask), **PATCHED_MODEL)
        else:
            torch.testing.assert_close(_real(patched[key], mask), _real(value, mask), **PATCHED_MODEL)

    fastbert.restore(model)
    assert not is_optimized(model)
    assert _bert(model).forward == original_forward and "forward" not in vars(_bert(model))
    with torch.no_grad():
        restored = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    first_key = next(iter(restored.keys()))
    assert torch.equal(restored[first_key], expected[first_key])


def _bert(model):
    return model if type(model).__name__ == "BertModel" else model.bert


def test_tuple_outputs_and_fallbacks(tmp_path):
    model = random_bert(tmp_path)
    ids, mask, types = random_batch(model.config.vocab_size, [4, 6], seq_len=6)
    fastbert.optimize(model)
    fast, calls = fastbert_encoder(model), []
    fast_forward = fast.forward
    fast.forward = lambda *args, **kwargs: calls.append(1) or fast_forward(*args, **kwargs)
    with torch.no_grad():
        as_tuple = model(ids, attention_mask=mask, return_dict=False, use_cache=False)
        assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (2, 6, model.config.hidden_size)
        assert calls == [1]  # use_cache=False is the encoder's default: still fastbert's path
        # output_attentions is not something fastbert computes: transformers' own path answers.
        with_attentions = model(ids, attention_mask=mask, output_attentions=True)
        assert with_attentions.attentions is not None and calls == [1]
    model.train()  # training mode (dropout) runs transformers' own forward
    assert model(ids, attention_mask=mask).last_hidden_state.requires_grad


def test_unsupported_models_are_rejected():
    with pytest.raises(TypeError, match="does not support Linear"):
        fastbert.optimize(torch.nn.Linear(2, 2))
    assert "SentenceTransformer" in WRAPPERS


def test_restore_without_optimize_is_an_error(tmp_path):
    model = random_bert(tmp_path)
    with pytest.raises(ValueError, match="was not optimized"):
        fastbert.restore(model)


def test_sentence_transformer_encode_matches(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_path), device="cpu")
    texts = ["A man is playing a guitar.", "深度学习", "", "word " * 300]
    expected = model.encode(texts, convert_to_tensor=True)
    fastbert.optimize(model)
    fast, calls = fastbert_encoder(model), []
    fast_forward = fast.forward
    fast.forward = lambda *args, **kwargs: calls.append(1) or fast_forward(*args, **kwargs)
    patched = model.encode(texts, convert_to_tensor=True)
    assert calls, "sentence-transformers' encode did not reach fastbert's encoder"
    cosine = torch.nn.functional.cosine_similarity(patched, expected)
    assert cosine.min().item() >= SENTENCE_COSINE
    fastbert.restore(model)
    assert torch.equal(model.encode(texts, convert_to_tensor=True), expected)
