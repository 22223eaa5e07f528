"""fastbert.Classifier against transformers' AutoModelForSequenceClassification (logits, every family) and
sentence-transformers' CrossEncoder.predict (scores, activations, inputs), on random checkpoints saved by
transformers; and the errors for what it cannot take."""

import copy
import json

import numpy as np
import pytest
import torch

import fastbert
from fastbert.classify import HEADS, Classifier
from tests.bert_factory import (
    BASE_CLASSES,
    device_for,
    family_settings,
    random_batch,
    random_bert,
    random_hf_model,
    save_tokenizer,
)
from tests.st_factory import PAIRS, reranker_folder, save_pipeline, tiny_encoder
from tests.tolerances import assert_close

transformers = pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")

STEMS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
         "distilbert": "DistilBert", "electra": "Electra"}
LENGTHS = [7, 13, 1, 10]  # ragged, a one-token sequence among them
# Word-level pairs for save_tokenizer's vocabulary ("w5" ...), of uneven lengths on both sides.
WORD_PAIRS = [("w5 w6 w7", "w8 w9"), ("w10", "w11 w12 w13 w14 w15 w16 w17"), ("w20 w21 w22 w23 w24 w25", "w30"),
              ("w40 w41", "w42 w43 w44 w45")]
IDENTITY = torch.nn.Identity()


def task_folder(folder, model_type, num_labels, **overrides):
    """A random {Family}ForSequenceClassification saved by transformers, with a word-level tokenizer."""
    settings = family_settings(model_type, **overrides)
    model = random_hf_model(f"{STEMS[model_type]}ForSequenceClassification", num_labels=num_labels, **settings)
    model.save_pretrained(folder)
    save_tokenizer(folder, model_type, settings["vocab_size"])
    return model, settings


def check_against_float64(ours, model64, model32, inputs):
    """ours within the float64 rule: at most twice as far from the float64 model as transformers' fp32."""
    with torch.no_grad():
        exact = model64(**inputs).logits
        fp32 = model32(**inputs).logits
    assert_close(ours.cpu(), exact, torch.float32, "interpreter", torch_same_dtype=fp32)


def test_every_family_has_a_head():
    # ModernBERT's head (dense -> act -> LayerNorm, cls or mean pooling) is not a row yet; loading one is refused.
    assert set(HEADS) == set(BASE_CLASSES) - {"modernbert"}


@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("model_type", list(STEMS))
def test_logits_equal_transformers(tmp_path, model_type, num_labels):
    hf_model, settings = task_folder(tmp_path, model_type, num_labels)
    model64 = copy.deepcopy(hf_model).double()
    model = Classifier.from_pretrained(tmp_path, dtype=torch.float32, device="cpu", backend="torch")
    assert model.num_labels == num_labels and model.id2label == {i: f"LABEL_{i}" for i in range(num_labels)}
    assert model.default_activation.__class__ is (torch.nn.Sigmoid if num_labels == 1 else torch.nn.Identity)

    ids, mask, types = random_batch(settings["vocab_size"], LENGTHS, type_vocab_size=settings.get("type_vocab_size", 0),
                                    pad_token_id=settings.get("pad_token_id", 0))
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model_type != "distilbert":
        inputs["token_type_ids"] = types
    logits = model.forward(**inputs)
    assert logits.dtype == torch.float32 and logits.shape == (len(LENGTHS), num_labels)
    check_against_float64(logits, model64, hf_model, inputs)

    # Ragged pairs through the folder's tokenizer, exactly as CrossEncoder tokenizes and scores them.
    cross_encoder = st.CrossEncoder(str(tmp_path), device="cpu")
    expected = cross_encoder.predict(WORD_PAIRS, activation_fn=IDENTITY, convert_to_tensor=True)
    exact = copy.deepcopy(cross_encoder)
    exact.model.double()
    exact64 = exact.predict(WORD_PAIRS, activation_fn=IDENTITY, convert_to_tensor=True)
    ours = model.predict(WORD_PAIRS, activation_fn=IDENTITY, convert_to_tensor=True)
    assert_close(ours, exact64, torch.float32, "interpreter", torch_same_dtype=expected)


def test_left_padded_rows_classify_their_first_real_token(tmp_path):
    _, settings = task_folder(tmp_path, "roberta", 2)
    model = Classifier.from_pretrained(tmp_path, device="cpu", backend="torch")
    right = random_batch(settings["vocab_size"], LENGTHS, pad_token_id=1)
    left = random_batch(settings["vocab_size"], LENGTHS, pad_token_id=1, left_pad=True)
    # The same tokens in each row (random_batch draws them per column): compare rows built from the real ones.
    real = [row[mask.bool()] for row, mask in zip(right[0], right[1], strict=True)]
    for row, tokens in enumerate(real):
        left[0][row, left[1][row].bool()] = tokens
    torch.testing.assert_close(model.forward(left[0], left[1]), model.forward(right[0], right[1]),
                               atol=1e-6, rtol=1e-6)


def cross_encoder_cases(model, cross_encoder):
    """Every predict option and input shape, ours against CrossEncoder's, with CrossEncoder in float64 as the
    yardstick of both fp32 implementations."""
    exact = copy.deepcopy(cross_encoder)
    exact.model.double()
    options = [{}, {"apply_softmax": True}, {"activation_fn": IDENTITY}, {"activation_fn": torch.nn.Tanh()}]
    for kwargs in options:
        for inputs in (PAIRS, PAIRS[0], list(PAIRS[1])):
            expected = cross_encoder.predict(inputs, convert_to_tensor=True, **kwargs)
            exact64 = exact.predict(inputs, convert_to_tensor=True, **kwargs)
            ours = model.predict(inputs, convert_to_tensor=True, batch_size=2, **kwargs)
            assert ours.shape == expected.shape, (kwargs, inputs)
            assert_close(ours.cpu(), exact64, torch.float32, "interpreter", torch_same_dtype=expected)
    # NumPy by default, a list of tensors without it, as CrossEncoder returns them.
    as_numpy = model.predict(PAIRS)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    assert as_numpy.shape == cross_encoder.predict(PAIRS).shape
    as_list = model.predict(PAIRS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(PAIRS) and isinstance(as_list[0], torch.Tensor)
    np.testing.assert_allclose(np.stack([t.cpu().numpy() for t in as_list]), as_numpy)
    single = model.predict(PAIRS[0])
    assert np.shape(single) == np.shape(cross_encoder.predict(PAIRS[0]))


@pytest.mark.parametrize("backend, num_labels", [("torch", 1), ("torch", 3),
                                                pytest.param("triton", 1, marks=pytest.mark.slow)])
def test_predict_equals_cross_encoder(tmp_path, minilm_path, backend, num_labels):
    if backend == "triton":
        pytest.importorskip("triton")
    folder = reranker_folder(tmp_path, minilm_path, num_labels)
    cross_encoder = st.CrossEncoder(str(folder), device="cpu")
    model = Classifier.from_pretrained(folder, dtype=torch.float32, device=device_for(backend), backend=backend)
    assert model.max_length == cross_encoder.max_seq_length == 64 and model.path == folder
    assert type(model.default_activation) is type(cross_encoder.activation_fn)
    assert model.predict(PAIRS, activation_fn=IDENTITY, convert_to_tensor=True).std(dim=0).min() > 0.1, \
        "random scores too close together to test anything"
    cross_encoder_cases(model, cross_encoder)
    if num_labels == 1:  # single texts: a string alone, or 1-tuples in a batch
        texts = [query for query, _ in PAIRS]
        expected = np.array([cross_encoder.predict(text) for text in texts])
        np.testing.assert_allclose(model.predict([(text,) for text in texts]), expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(model.predict(texts[0]), expected[0], atol=1e-5, rtol=1e-5)


def test_folder_activation_is_the_default(tmp_path, minilm_path):
    """config.json's sentence_transformers.activation_fn (and the older key), and a folder saved by CrossEncoder
    itself (modules.json + config_sentence_transformers.json), set the default activation as in CrossEncoder."""
    folder = reranker_folder(tmp_path / "plain", minilm_path, 1)
    config = json.loads((folder / "config.json").read_text())
    for key, value in (("sentence_transformers", {"activation_fn": "torch.nn.modules.activation.Tanh"}),
                       ("sbert_ce_default_activation_function", "torch.nn.modules.activation.ReLU")):
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        model = Classifier.from_pretrained(folder, device="cpu", backend="torch")
        cross_encoder = st.CrossEncoder(str(folder), device="cpu")
        assert type(model.default_activation) is type(cross_encoder.activation_fn) is not torch.nn.Sigmoid
        np.testing.assert_allclose(model.predict(PAIRS), cross_encoder.predict(PAIRS), atol=1e-5, rtol=1e-5)

    (folder / "config.json").write_text(json.dumps(config))
    saved = tmp_path / "saved"
    st.CrossEncoder(str(folder), device="cpu", activation_fn=torch.nn.Tanh()).save(str(saved))
    model = Classifier.from_pretrained(saved, device="cpu", backend="torch")
    cross_encoder = st.CrossEncoder(str(saved), device="cpu")
    assert type(model.default_activation) is type(cross_encoder.activation_fn) is torch.nn.Tanh
    np.testing.assert_allclose(model.predict(PAIRS), cross_encoder.predict(PAIRS), atol=1e-5, rtol=1e-5)


def test_label_names_come_from_the_config(tmp_path):
    task_folder(tmp_path, "distilbert", 3, id2label={0: "negative", 1: "neutral", 2: "positive"})
    model = fastbert.Classifier.from_pretrained(tmp_path, device="cpu", backend="torch")
    assert model.id2label == {0: "negative", 1: "neutral", 2: "positive"} and model.num_labels == 3


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, minilm_path):
    folder = reranker_folder(tmp_path_factory.mktemp("reranker"), minilm_path, 1)
    return Classifier.from_pretrained(folder, device="cpu", backend="torch")


@pytest.mark.parametrize("sentences, error, match", [
    (5, TypeError, "sentences must be a string, a pair of strings or a list of pairs, got int"),
    (None, TypeError, "got NoneType"),
    ([], ValueError, "sentences is empty"),
    (["a", "b", "c"], ValueError, "a list of strings is read as one"),
    (["only one"], ValueError, "a list of strings is read as one"),
    ([("q", "d"), ("q", 1)], TypeError, r"sentences\[1\] must be a string, an \(a, b\) pair"),
    ([("q", "d", "e")], TypeError, r"sentences\[0\]"),
    ([["q", "d"], 7], TypeError, r"sentences\[1\]"),
])
def test_bad_sentences_are_named(classifier, sentences, error, match):
    with pytest.raises(error, match=match):
        classifier.predict(sentences)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(classifier, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        classifier.predict(PAIRS, batch_size=batch_size)


def test_forward_checks_its_inputs(classifier):
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        classifier.forward([[1, 2, 3]])
    with pytest.raises(ValueError, match="outside"):
        classifier.forward(torch.tensor([[2, 10**6, 3]]))
    assert classifier.forward(torch.zeros(0, 4, dtype=torch.long)).shape == (0, 1)


def test_folder_without_a_classification_head_is_refused(tmp_path, minilm_path):
    base = tmp_path / "base"
    random_bert(base, vocab_size=99)
    save_tokenizer(base, "bert", 99)
    with pytest.raises(ValueError, match=r"not a bert sequence-classification checkpoint.*missing.*classifier\.weight"):
        Classifier.from_pretrained(base, device="cpu", backend="torch")

    masked = tmp_path / "masked"
    random_bert(masked, model_class="RobertaForMaskedLM", **family_settings("roberta"))
    save_tokenizer(masked, "roberta", 99)
    with pytest.raises(ValueError, match=r"missing.*classifier\.dense\.weight.*unexpected.*lm_head"):
        Classifier.from_pretrained(masked, device="cpu", backend="torch")

    embedding = save_pipeline(tmp_path / "st", tiny_encoder(tmp_path / "encoder"))
    with pytest.raises(ValueError, match=r"modules\.json lists \['Transformer', 'Pooling'\], not a CrossEncoder"):
        Classifier.from_pretrained(embedding, device="cpu", backend="torch")

    folder = reranker_folder(tmp_path / "labels", minilm_path, 2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    with pytest.raises(ValueError, match=r"id2label names labels \[0, 1, 2\], but the classifier has 2 output"):
        Classifier.from_pretrained(folder, device="cpu", backend="torch")


def test_import_fastbert_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, fastbert; assert 'torch' not in sys.modules; assert 'Classifier' in dir(fastbert)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_max_length_truncates_as_cross_encoder(tmp_path, minilm_path):
    folder = reranker_folder(tmp_path, minilm_path, 1)
    cross_encoder = st.CrossEncoder(str(folder), device="cpu", max_length=16)
    model = Classifier.from_pretrained(folder, device="cpu", backend="torch", max_length=16)
    assert model.max_length == cross_encoder.max_seq_length == 16
    np.testing.assert_allclose(model.predict(PAIRS), cross_encoder.predict(PAIRS), atol=1e-5, rtol=1e-5)
    # Never past the position table (64 positions), where transformers would fail.
    assert Classifier.from_pretrained(folder, device="cpu", backend="torch", max_length=1000).max_length == 64


def test_bert_without_its_pooler_is_refused(tmp_path):
    random_bert(tmp_path, model_class="BertModel", add_pooling_layer=False, vocab_size=99)
    save_tokenizer(tmp_path, "bert", 99)
    with pytest.raises(ValueError, match=r"missing.*bert\.pooler\.dense\.weight/\.bias \[64, 64\] \(the pooler\)"):
        Classifier.from_pretrained(tmp_path, device="cpu", backend="torch")
