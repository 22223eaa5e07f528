"""fastbert.optimize on a sentence-transformers CrossEncoder (a reranker around BertForSequenceClassification):
predict and rank give the unpatched model's scores, and restore gives the original model back."""

import copy

import pytest
import torch

import fastbert
from fastbert.patch import fastbert_encoder, is_optimized
from tests.st_factory import PAIRS, reranker_folder
from tests.tolerances import ENCODER_TOLERANCES, assert_close

st = pytest.importorskip("sentence_transformers")

@pytest.mark.parametrize("backend, num_labels", [("torch", 1), ("triton", 1), ("torch", 3)])
def test_cross_encoder_scores_equal_the_unpatched_model(tmp_path, minilm_path, backend, num_labels):
    folder = reranker_folder(tmp_path, minilm_path, num_labels)
    model = st.CrossEncoder(str(folder), device="cpu", max_length=64)
    logits = model.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    scores = model.predict(PAIRS, convert_to_tensor=True)
    exact = copy.deepcopy(model)  # the same model in float64: the yardstick of both fp32 implementations
    exact.model.double()
    logits64 = exact.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    scores64 = exact.predict(PAIRS, convert_to_tensor=True)
    assert logits.std(dim=0).min() > 0.1, "random scores too close together to test anything"
    bert, original_forward = model.model.bert, model.model.bert.forward

    assert fastbert.optimize(model, backend=backend) is model and is_optimized(model)
    fast, calls = fastbert_encoder(model), []
    fast_forward = fast.forward
    fast.forward = lambda *args, **kwargs: calls.append(1) or fast_forward(*args, **kwargs)
    patched_logits = model.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    assert calls, "CrossEncoder.predict did not reach fastbert's encoder"
    # fp32 against fp32 differs by both sides' rounding, which depends on the CPU: fastbert may be at most
    # twice as far from the float64 model as PyTorch's fp32 is (the rule of tests/tolerances.py).
    assert_close(patched_logits, logits64, torch.float32, "interpreter", torch_same_dtype=logits)
    assert_close(model.predict(PAIRS, convert_to_tensor=True), scores64, torch.float32, "interpreter",
                 torch_same_dtype=scores)
    tolerance = ENCODER_TOLERANCES[(torch.float32, "interpreter")]
    if num_labels == 1:
        query, documents = PAIRS[0][0], [document for _, document in PAIRS]
        fast.forward = fast_forward
        patched_ranking = model.rank(query, documents, return_documents=True)
        fastbert.restore(model)
        ranking = model.rank(query, documents, return_documents=True)
        assert [hit["corpus_id"] for hit in patched_ranking] == [hit["corpus_id"] for hit in ranking]
        torch.testing.assert_close(torch.tensor([hit["score"] for hit in patched_ranking]),
                                   torch.tensor([hit["score"] for hit in ranking]), atol=tolerance, rtol=tolerance)
    else:
        fastbert.restore(model)

    assert not is_optimized(model) and "forward" not in vars(bert) and bert.forward == original_forward
    assert torch.equal(model.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True), logits)


def test_cross_encoder_around_another_model_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, num_labels=1)
    inner = transformers.GPT2ForSequenceClassification(config)

    class CrossEncoder(torch.nn.Module):  # the attribute sentence-transformers' CrossEncoder exposes
        model = inner

    with pytest.raises(TypeError, match="CrossEncoder wraps a GPT2ForSequenceClassification"):
        fastbert.optimize(CrossEncoder())
