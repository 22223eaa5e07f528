"""Every supported model_type against transformers in fp32: fastbert.from_pretrained on a random checkpoint
saved by transformers, and fastbert.optimize on the base model and its task models, on both backends."""

import numpy as np
import pytest
import torch

import fastbert
from fastbert.patch import is_optimized
from tests.bert_factory import BASE_CLASSES, device_for, family_settings, load_fastbert, random_batch, random_hf_model
from tests.tolerances import FAMILY_ATOL, SENTENCE_COSINE

transformers = pytest.importorskip("transformers")

BACKENDS = ["torch", "triton"]
MODEL_TYPES = list(BASE_CLASSES)
# The transformers class-name stem of each family: {stem}ForSequenceClassification, ...
STEMS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
         "distilbert": "DistilBert", "electra": "Electra", "mpnet": "MPNet"}
TASKS = ["ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM"]
LENGTHS = [7, 13, 10]  # ragged, the longest fills the batch


def atol(backend):
    return FAMILY_ATOL["cuda" if device_for(backend) == "cuda" else "interpreter"]


def batch_for(config_settings, model_type, left_pad=False, seed=0):
    ids, mask, types = random_batch(config_settings["vocab_size"], LENGTHS, left_pad=left_pad, seed=seed,
                                    type_vocab_size=config_settings.get("type_vocab_size", 0),
                                    pad_token_id=config_settings.get("pad_token_id", 0))
    if model_type == "distilbert":  # no token types: its forward takes none
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def assert_close_on_real_tokens(ours, theirs, mask, tolerance, what):
    if ours.dim() >= 2 and tuple(ours.shape[:2]) == tuple(mask.shape):
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    error = (ours.float() - theirs.float()).abs().max().item()
    assert error <= tolerance, f"{what}: max abs error {error:.2e} > {tolerance:.0e}"


def assert_outputs_match(ours, theirs, mask, tolerance):
    """Every tensor transformers returned (logits, hidden states, pooler output, ...) against ours."""
    assert list(ours.keys()) == list(theirs.keys())
    for key, expected in theirs.items():
        actual = ours[key]
        if isinstance(expected, tuple):
            assert len(actual) == len(expected), key
            for index, (a, b) in enumerate(zip(actual, expected, strict=True)):
                assert_close_on_real_tokens(a, b, mask, tolerance, f"{key}[{index}]")
        else:
            assert_close_on_real_tokens(actual, expected, mask, tolerance, key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_from_pretrained_matches_transformers(tmp_path, model_type, backend):
    settings = family_settings(model_type)
    hf_model = random_hf_model(BASE_CLASSES[model_type], **settings)
    hf_model.save_pretrained(tmp_path)
    model = load_fastbert(tmp_path, backend)
    assert model.config.model_type == model_type
    for left_pad in (False, True):
        inputs = batch_for(settings, model_type, left_pad=left_pad)
        with torch.no_grad():
            expected = hf_model(**inputs, output_hidden_states=True)
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"),
                    output_hidden_states=True)
        mask = inputs["attention_mask"]
        assert len(out.hidden_states) == len(expected.hidden_states) == settings["num_hidden_layers"] + 1
        for index, (ours, theirs) in enumerate(zip(out.hidden_states, expected.hidden_states, strict=True)):
            assert_close_on_real_tokens(ours, theirs, mask, atol(backend), f"hidden_states[{index}]")
        assert_close_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, mask, atol(backend),
                                    "last_hidden_state")
        pooled = getattr(expected, "pooler_output", None)
        if pooled is None:
            assert out.pooler_output is None
        elif not left_pad:  # transformers pools column 0 even where it is padding; we pool the first real token
            assert_close_on_real_tokens(out.pooler_output, pooled, mask, atol(backend), "pooler_output")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", ["Model", *TASKS])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_optimize_matches_transformers(model_type, task, backend):
    settings = family_settings(model_type)
    model = random_hf_model(STEMS[model_type] + task, **settings)
    inputs = batch_for(settings, model_type, seed=1)
    expected, patched = outputs_before_and_after_optimize(model, inputs, backend)
    assert is_optimized(model)
    assert_outputs_match(patched, expected, inputs["attention_mask"], atol(backend))
    fastbert.restore(model)
    with torch.no_grad():
        restored = model(**inputs)
    key = next(iter(restored.keys()))
    assert torch.equal(restored[key], expected[key])


def outputs_before_and_after_optimize(model, inputs, backend):
    """The model's outputs (all hidden states included) from transformers, then through fastbert.optimize,
    checking that the patched call reached fastbert's encoder exactly once."""
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True)
    fastbert.optimize(model, backend=backend)
    calls = _count_fast_calls(model)
    with torch.no_grad():
        patched = model(**inputs, output_hidden_states=True)
    assert calls == [1], "the model's forward did not reach fastbert's encoder"
    return expected, patched


def _count_fast_calls(model):
    """Record each call of the model's fastbert encoder; returns the list calls append to."""
    encoder = model if type(model).__name__.endswith("Model") else model.base_model
    fast, calls = encoder.forward.fastbert_encoder, []
    fast_forward = fast.forward
    fast.forward = lambda *args, **kwargs: calls.append(1) or fast_forward(*args, **kwargs)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_class, outputs", [
    ("BertForPreTraining", {"prediction_logits", "seq_relationship_logits"}),  # masked LM + next sentence
    ("BertForNextSentencePrediction", {"logits"}),
    ("ElectraForPreTraining", {"logits"}),  # the replaced-token discriminator
])
def test_pretraining_heads(model_class, outputs, backend):
    model_type = getattr(transformers, model_class).config_class.model_type
    settings = family_settings(model_type)
    model = random_hf_model(model_class, **settings)
    inputs = batch_for(settings, model_type, seed=2)
    expected, patched = outputs_before_and_after_optimize(model, inputs, backend)
    assert outputs <= set(patched.keys())
    assert_outputs_match(patched, expected, inputs["attention_mask"], atol(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_multiple_choice(backend):
    """[B, C, S] inputs: transformers flattens them to [B * C, S] before the encoder."""
    settings = family_settings("bert")
    model = random_hf_model("BertForMultipleChoice", **settings)
    ids, mask, types = random_batch(settings["vocab_size"], [7, 13, 9, 11], seed=3,
                                    type_vocab_size=settings["type_vocab_size"])  # 2 questions x 2 choices
    inputs = {"input_ids": ids.view(2, 2, -1), "attention_mask": mask.view(2, 2, -1),
              "token_type_ids": types.view(2, 2, -1)}
    expected, patched = outputs_before_and_after_optimize(model, inputs, backend)
    assert patched.logits.shape == (2, 2)
    assert_outputs_match(patched, expected, mask, atol(backend))


# hidden_act values a BERT config.json may hold, each through the GEMM epilogue of both backends.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hidden_act", ["silu", "swish", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu",
                                        "gelu_python"])
def test_bert_activations(tmp_path, hidden_act, backend):
    settings = family_settings("bert", hidden_act=hidden_act)
    hf_model = random_hf_model("BertModel", **settings)
    hf_model.save_pretrained(tmp_path)
    model = load_fastbert(tmp_path, backend)
    inputs = batch_for(settings, "bert", seed=4)
    with torch.no_grad():
        expected = hf_model(**inputs)
    out = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    assert_close_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"],
                                atol(backend), "last_hidden_state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_distilbert_sinusoidal_and_electra_without_projection(tmp_path, backend):
    """DistilBERT's fixed sinusoidal table is a checkpoint tensor like a learned one; an ELECTRA whose
    embedding_size equals hidden_size has no embeddings_project."""
    cases = {"distilbert": family_settings("distilbert", sinusoidal_pos_embds=True),
             "electra": family_settings("electra", embedding_size=96)}
    for model_type, settings in cases.items():
        folder = tmp_path / model_type
        hf_model = random_hf_model(BASE_CLASSES[model_type], **settings)
        hf_model.save_pretrained(folder)
        model = load_fastbert(folder, backend)
        inputs = batch_for(settings, model_type, seed=5)
        with torch.no_grad():
            expected = hf_model(**inputs)
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        assert_close_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"],
                                    atol(backend), model_type)
    assert model.weights.embeddings.project is None


def test_roberta_positions_follow_pad_ids_not_the_mask(tmp_path):
    """transformers counts RoBERTa positions over the ids that are not pad_token_id: a real token that
    happens to be the pad id sits at position pad_token_id and does not advance the count."""
    settings = family_settings("roberta")
    hf_model = random_hf_model("RobertaModel", **settings)
    inputs = batch_for(settings, "roberta", seed=6)
    inputs["input_ids"][0, 3] = settings["pad_token_id"]  # attended to, but a pad id
    with torch.no_grad():
        expected = hf_model(**inputs)
    fastbert.optimize(hf_model, backend="torch")
    with torch.no_grad():
        patched = hf_model(**inputs)
    assert_close_on_real_tokens(patched.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"],
                                atol("torch"), "last_hidden_state")


def test_roberta_longest_sequence_leaves_room_for_the_offset(tmp_path):
    settings = family_settings("roberta")  # 40 positions, pad id 1: 38 tokens at most
    random_hf_model("RobertaModel", **settings).save_pretrained(tmp_path)
    model = fastbert.from_pretrained(tmp_path, backend="torch", device="cpu")
    assert model.config.max_sequence_length == 38
    assert model(torch.full((1, 38), 5)).last_hidden_state.shape == (1, 38, 96)
    with pytest.raises(ValueError, match="sequence length 39, longer than max_position_embeddings=40 - 2"):
        model(torch.full((1, 39), 5))


def test_positional_arguments_keep_their_meaning():
    """DistilBertModel.forward's third parameter is inputs_embeds, BertModel's token_type_ids: a patched
    forward binds positional arguments by the encoder's own signature."""
    settings = family_settings("distilbert")
    model = random_hf_model("DistilBertModel", **settings)
    inputs = batch_for(settings, "distilbert", seed=7)
    with torch.no_grad():
        expected = model(inputs["input_ids"], inputs["attention_mask"])
    fastbert.optimize(model, backend="torch")
    calls = _count_fast_calls(model)
    with torch.no_grad():
        patched = model(inputs["input_ids"], inputs["attention_mask"])
        as_tuple = model(inputs["input_ids"], inputs["attention_mask"], None, None, return_dict=False)
    assert calls == [1, 1] and isinstance(as_tuple, tuple)
    for output in (patched.last_hidden_state, as_tuple[0]):
        assert_close_on_real_tokens(output, expected.last_hidden_state, inputs["attention_mask"], atol("torch"),
                                    "last_hidden_state")
    with pytest.raises(TypeError):  # what transformers itself says about a surplus argument
        model(inputs["input_ids"], inputs["attention_mask"], None, None, "surplus")
    # DistilBERT has no token types: given anyway (as a BERT tokenizer's output), they are ignored as
    # transformers ignores them.
    with torch.no_grad():
        with_types = model(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"]))
    assert calls == [1, 1, 1]
    assert torch.equal(with_types.last_hidden_state, patched.last_hidden_state)


def test_unsupported_model_types_are_named():
    config = transformers.AlbertConfig(vocab_size=20, hidden_size=32, num_attention_heads=2, intermediate_size=8,
                                       num_hidden_layers=1, embedding_size=16)
    with pytest.raises(TypeError, match="AlbertModel \\(model_type='albert'\\).*bert, roberta, xlm-roberta"):
        fastbert.optimize(transformers.AlbertModel(config))


def test_checkpoints_of_task_models_load(tmp_path):
    """A folder saved from a task model (prefixed names, heads beside the encoder) loads its encoder."""
    for model_type in MODEL_TYPES:
        settings = family_settings(model_type)
        hf_model = random_hf_model(STEMS[model_type] + "ForSequenceClassification", **settings)
        hf_model.save_pretrained(tmp_path / model_type)
        model = fastbert.from_pretrained(tmp_path / model_type, backend="torch", device="cpu")
        inputs = batch_for(settings, model_type, seed=8)
        with torch.no_grad():
            expected = hf_model.base_model(**inputs)
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        assert_close_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"],
                                    atol("torch"), model_type)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_cli_encode_accepts_a_folder_of_each_family(tmp_path, model_type, monkeypatch, capsys):
    """`fastbert encode --model FOLDER` on a checkpoint + tokenizer of each family, against transformers
    (mean pooling over the same tokens). The tokenizer has no model_max_length: the RoBERTa family's
    limit is then its position table less the offset, and a long text is truncated to it."""
    from fastbert.checkpoint.tokenizer import Tokenizer
    from fastbert.cli import main as cli
    from tests.bert_factory import save_tokenizer

    settings = family_settings(model_type)
    hf_model = random_hf_model(BASE_CLASSES[model_type], **settings)
    hf_model.save_pretrained(tmp_path)
    save_tokenizer(tmp_path, model_type, settings["vocab_size"])
    texts = ["w5 w17 w98", "w42 unknown w7 w7 w8", " ".join(f"w{5 + i}" for i in range(60))]
    monkeypatch.chdir(tmp_path)
    code = cli.main(["encode", *texts, "--model", str(tmp_path), "--backend", "torch", "--device", "cpu",
                     "--pooling", "mean", "--no-normalize", "--output", "out.npy"])
    assert code == 0, capsys.readouterr().err
    embeddings = torch.from_numpy(np.load(tmp_path / "out.npy"))

    offset = settings["pad_token_id"] + 1 if model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0
    limit = settings["max_position_embeddings"] - offset
    tokens = Tokenizer.from_pretrained(tmp_path)(texts, max_length=limit)
    assert tokens["attention_mask"].sum(dim=1).max() == limit
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    with torch.no_grad():
        hidden = hf_model(**inputs).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    assert embeddings.shape == (3, settings["hidden_size"])
    torch.testing.assert_close(embeddings, expected, atol=FAMILY_ATOL["interpreter"], rtol=0)


@pytest.mark.parametrize("model_type", ["xlm-roberta", "distilbert", "electra"])
def test_sentence_transformer_of_each_kind(tmp_path, model_type):
    """optimize() finds the encoder of a SentenceTransformer by its config's model_type (multilingual-e5
    is an XLM-R, all-distilroberta a RoBERTa, msmarco-distilbert a DistilBERT)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved the modules; 3 to 5 have them here only
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    from tests.bert_factory import save_tokenizer

    settings = family_settings(model_type)
    random_hf_model(BASE_CLASSES[model_type], **settings).save_pretrained(tmp_path)
    save_tokenizer(tmp_path, model_type, settings["vocab_size"])
    transformer = Transformer(str(tmp_path))
    model = SentenceTransformer(modules=[transformer, Pooling(settings["hidden_size"], "mean")], device="cpu")
    texts = ["w5 w6 w7", "w9 w10 w11 w12 w13 w40 w41 w42 w43", "w50"]
    expected = model.encode(texts, convert_to_tensor=True)
    fastbert.optimize(model)
    calls = _count_fast_calls(transformer.auto_model)
    patched = model.encode(texts, convert_to_tensor=True)
    assert calls == [1]
    assert torch.nn.functional.cosine_similarity(patched, expected).min().item() >= SENTENCE_COSINE
    torch.testing.assert_close(patched, expected, atol=FAMILY_ATOL["interpreter"], rtol=0)
