"""Whole sentence-transformers pipelines: fastbert's encode against SentenceTransformer.encode (fp32) on
folders that sentence-transformers builds and saves, and clear errors for what fastbert cannot run."""

import json
import shutil

import numpy as np
import pytest
import torch

import fastbert
from tests.st_factory import TEXTS, edit_json, save_pipeline, tiny_encoder
from tests.tolerances import SENTENCE_COSINE, SENTENCE_RELATIVE_ERROR

st = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("encoder"))


def assert_same_embeddings(ours, reference):
    ours, reference = torch.from_numpy(ours), torch.as_tensor(reference).float()  # encode returns NumPy
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    cosine = torch.nn.functional.cosine_similarity(ours, reference, dim=-1)
    assert cosine.min().item() >= SENTENCE_COSINE, cosine
    relative = (ours - reference).norm(dim=-1) / reference.norm(dim=-1).clamp(min=1e-12)
    assert relative.max().item() <= SENTENCE_RELATIVE_ERROR, relative


def both(folder, **load):
    reference = st.SentenceTransformer(str(folder), device="cpu", **load)
    ours = fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch", **load)
    return ours, reference


@pytest.mark.parametrize("pooling", ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken",
                                     ("cls", "max", "mean"), ("lasttoken", "mean", "weightedmean", "cls")])
def test_every_pooling_mode_and_their_concatenation(tmp_path, encoder, pooling):
    ours, reference = both(save_pipeline(tmp_path, encoder, pooling=pooling))
    assert_same_embeddings(ours.encode(TEXTS, max_tokens=64), reference.encode(TEXTS))


@pytest.mark.parametrize("pooling", ["cls", "max", "mean", "weightedmean", "lasttoken"])
def test_pooling_that_excludes_the_prompt(tmp_path, encoder, pooling):
    folder = save_pipeline(tmp_path, encoder, pooling=pooling, include_prompt=False,
                           prompts={"query": "search for the: "}, default_prompt_name="query")
    ours, reference = both(folder)
    assert_same_embeddings(ours.encode(TEXTS), reference.encode(TEXTS))
    # A prompt that ends mid-word merges with the text: whatever is left pools as sentence-transformers does.
    assert_same_embeddings(ours.encode(TEXTS, prompt="gui"), reference.encode(TEXTS, prompt="gui"))


@pytest.mark.parametrize("dense", [
    [dict(out_features=24)],  # sentence-transformers' default activation: Tanh
    [dict(out_features=24, activation_function=torch.nn.GELU(), bias=False)],
    [dict(out_features=40, activation_function=torch.nn.Identity()),
     dict(out_features=16, activation_function=torch.nn.ReLU())],
    [dict(out_features=64, activation_function=torch.nn.SiLU(), use_residual=True),
     dict(out_features=24, activation_function=torch.nn.Sigmoid(), use_residual=True)],
])
def test_dense_modules_with_their_activations(tmp_path, encoder, dense):
    ours, reference = both(save_pipeline(tmp_path, encoder, dense=dense, normalize=True))
    embeddings = ours.encode(TEXTS)
    assert embeddings.shape == (len(TEXTS), dense[-1]["out_features"])
    assert_same_embeddings(embeddings, reference.encode(TEXTS))


def test_layer_norm_and_torch_weights_file(tmp_path, encoder):
    folder = save_pipeline(tmp_path, encoder, pooling="max", dense=[dict(out_features=32)], layer_norm=True)
    # Older sentence-transformers saved modules' weights as pytorch_model.bin.
    from safetensors.torch import load_file

    dense_folder = folder / "2_Dense"
    torch.save(load_file(dense_folder / "model.safetensors"), dense_folder / "pytorch_model.bin")
    (dense_folder / "model.safetensors").unlink()
    ours, reference = both(folder)
    assert_same_embeddings(ours.encode(TEXTS), reference.encode(TEXTS))


def test_normalize_follows_the_folder_unless_overridden(tmp_path, encoder):
    plain, reference = both(save_pipeline(tmp_path / "plain", encoder))
    raw = plain.encode(TEXTS)
    assert_same_embeddings(raw, reference.encode(TEXTS))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)  # no Normalize module: not normalized
    assert_same_embeddings(plain.encode(TEXTS, normalize=True), reference.encode(TEXTS, normalize_embeddings=True))

    normalized, reference = both(save_pipeline(tmp_path / "normalized", encoder, normalize=True))
    unit = normalized.encode(TEXTS)
    assert_same_embeddings(unit, reference.encode(TEXTS))
    torch.testing.assert_close(torch.from_numpy(unit).norm(dim=1), torch.ones(len(TEXTS)))
    assert_same_embeddings(normalized.encode(TEXTS, normalize=False), raw)


def test_max_seq_length_truncates(tmp_path, encoder):
    ours, reference = both(save_pipeline(tmp_path, encoder, max_seq_length=9))
    assert ours.sentence_pipeline.max_seq_length is None  # saved in tokenizer_config.json's model_max_length
    assert_same_embeddings(ours.encode(TEXTS), reference.encode(TEXTS))
    assert not np.allclose(ours.encode(TEXTS[4]), ours.encode(TEXTS[4], max_length=5))


def test_legacy_folder_layout(tmp_path):
    """Folders saved by sentence-transformers 2.x: models.* class paths, pooling_mode_* flags, and
    max_seq_length / do_lower_case in sentence_bert_config.json (here over a cased tokenizer)."""
    encoder = tiny_encoder(tmp_path / "encoder", lowercase=False)
    folder = save_pipeline(tmp_path / "st", encoder, pooling=("cls", "mean"), dense=[dict(out_features=16)],
                           normalize=True)
    legacy_names = {"Transformer": "Transformer", "Pooling": "Pooling", "Dense": "Dense", "Normalize": "Normalize"}
    edit_json(folder / "modules.json", lambda modules: [
        {**m, "type": "sentence_transformers.models." + legacy_names[m["type"].rsplit(".", 1)[-1]]} for m in modules])
    edit_json(folder / "1_Pooling" / "config.json", lambda _: {
        "word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": True}))
    ours, reference = both(folder)
    assert ours.sentence_pipeline.max_seq_length == 12 and ours.sentence_pipeline.do_lower_case
    texts = [text.upper() for text in TEXTS]
    assert_same_embeddings(ours.encode(texts), reference.encode(texts))


def test_prompts(tmp_path, encoder):
    folder = save_pipeline(tmp_path, encoder, pooling="mean", prompts={"query": "query: ", "passage": "passage: "},
                           default_prompt_name="query")
    ours, reference = both(folder)
    for kwargs in ({}, dict(prompt_name="passage"), dict(prompt="search for "), dict(prompt=""),
                   dict(prompt_name="document")):
        assert_same_embeddings(ours.encode(TEXTS, **kwargs), reference.encode(TEXTS, **kwargs))
    # The default prompt makes a difference, and an explicit one replaces it.
    assert not np.allclose(ours.encode(TEXTS), ours.encode(TEXTS, prompt=""))
    with pytest.raises(ValueError, match="prompt_name 'nope' is not one of this model's prompts"):
        ours.encode(TEXTS, prompt_name="nope")


def test_truncate_dim(tmp_path, encoder):
    folder = save_pipeline(tmp_path, encoder, dense=[dict(out_features=24)], normalize=True)
    ours, reference = both(folder, truncate_dim=10)
    assert_same_embeddings(ours.encode(TEXTS), reference.encode(TEXTS))
    assert_same_embeddings(ours.encode(TEXTS, truncate_dim=5, normalize=True),
                           reference.encode(TEXTS, truncate_dim=5, normalize_embeddings=True))
    assert ours.encode([]).shape == (0, 10)
    with pytest.raises(ValueError, match="truncate_dim=25 exceeds the embedding size 24"):
        ours.encode(TEXTS, truncate_dim=25)
    with pytest.raises(ValueError, match="truncate_dim=30 exceeds"):
        fastbert.from_pretrained(folder, device="cpu", truncate_dim=30)


def test_pooling_override(tmp_path, encoder):
    ours = fastbert.from_pretrained(save_pipeline(tmp_path / "mean", encoder, pooling="mean"), device="cpu")
    cls_folder = save_pipeline(tmp_path / "cls", encoder, pooling=("cls", "max"))
    reference = st.SentenceTransformer(str(cls_folder), device="cpu")
    assert_same_embeddings(ours.encode(TEXTS, pooling=["cls", "max"]), reference.encode(TEXTS))
    with pytest.raises(ValueError, match=r"unknown pooling mode\(s\) \['median'\]"):
        ours.encode(TEXTS, pooling="median")
    dense = fastbert.from_pretrained(save_pipeline(tmp_path / "dense", encoder, dense=[dict(out_features=8)]))
    assert dense.encode(TEXTS, pooling="cls").shape == (len(TEXTS), 8)
    with pytest.raises(ValueError, match=r"Dense\) expects 64 features but the modules before it give 128"):
        dense.encode(TEXTS, pooling=["cls", "max"])


# ---------------------------------------------------------------------------------------------------
# What fastbert cannot reproduce is refused by name, never skipped


@pytest.fixture(scope="module")
def saved(tmp_path_factory, encoder):
    return save_pipeline(tmp_path_factory.mktemp("st"), encoder, pooling="max", dense=[dict(out_features=24)],
                         normalize=True, prompts={"query": "query: "})


def _broken(tmp_path, saved, edit):
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    edit(folder)
    return folder


def _set_module(index, **changes):
    return lambda folder: edit_json(folder / "modules.json", lambda modules: [
        {**m, **changes} if m["idx"] == index else m for m in modules])


@pytest.mark.parametrize("edit, match", [
    (_set_module(2, type="sentence_transformers.sentence_transformer.modules.weighted_layer_pooling"
                         ".WeightedLayerPooling"), r"module 2 \(.*WeightedLayerPooling\): fastbert cannot reproduce"),
    (_set_module(3, type="my_package.CustomNormalize"), r"module 3 \(my_package.CustomNormalize\)"),
    (lambda f: edit_json(f / "2_Dense" / "config.json", lambda c: {**c, "in_features": 32}),
     "in_features=32 but the modules before it give 64"),
    (_set_module(2, path="../elsewhere"), "must be a folder inside"),
    (lambda f: edit_json(f / "modules.json", lambda m: [m[0], m[2], m[1], m[3]]), "a sentence module here"),
    (lambda f: edit_json(f / "modules.json", lambda m: m[:1]), "has no Pooling module"),
    (lambda f: (f / "modules.json").write_text("{not json"), "modules.json is not valid JSON"),
    (lambda f: (f / "1_Pooling" / "config.json").write_text("[true]"), "config.json must hold a JSON object"),
    (lambda f: (f / "1_Pooling" / "config.json").write_text("\x00\xff"), "config.json is not valid JSON"),
    (lambda f: (f / "1_Pooling" / "config.json").unlink(), "config.json is missing"),
    (lambda f: edit_json(f / "1_Pooling" / "config.json", lambda c: {**c, "pooling_mode": ["max", "median"]}),
     r"unknown pooling mode\(s\) \['median'\]"),
    (lambda f: edit_json(f / "1_Pooling" / "config.json", lambda c: {**c, "embedding_dimension": 32}),
     "embedding_dimension=32 but the encoder's hidden size is 64"),
    (lambda f: edit_json(f / "2_Dense" / "config.json", lambda c: {**c, "activation_function": "os.system"}),
     "activation_function 'os.system' is not supported"),
    (lambda f: edit_json(f / "2_Dense" / "config.json", lambda c: {**c, "out_features": 12}),
     r"linear.weight has shape \(24, 64\), config needs \(12, 64\)"),
    (lambda f: (f / "2_Dense" / "model.safetensors").unlink(), "no model.safetensors or pytorch_model.bin"),
    (lambda f: edit_json(f / "3_Normalize" / "config.json",
                         lambda c: {**c, "module_input_name": "token_embeddings"}), "module_input_name"),
    (lambda f: edit_json(f / "config_sentence_transformers.json", lambda c: {**c, "default_prompt_name": "x"}),
     "default_prompt_name 'x' is not one of the prompts"),
    (lambda f: edit_json(f / "config_sentence_transformers.json", lambda c: {**c, "model_type": "SparseEncoder"}),
     "model_type 'SparseEncoder' is not a SentenceTransformer"),
    (lambda f: edit_json(f / "sentence_bert_config.json", lambda c: {**c, "transformer_task": "fill-mask"}),
     "transformer_task='fill-mask' is not supported"),
    (lambda f: edit_json(f / "sentence_bert_config.json", lambda c: {**c, "modality_config": {
        "message": {"method": "forward", "method_output_name": "last_hidden_state"}}}), "only text inputs"),
])
def test_unsupported_folders_are_refused_by_name(tmp_path, saved, edit, match):
    folder = _broken(tmp_path, saved, edit)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        fastbert.from_pretrained(folder, device="cpu")
    # The bare encoder still loads; its encode() refuses the same way rather than guess.
    model = fastbert.FastBertModel.from_pretrained(folder, device="cpu")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        model.encode(["a text"])
