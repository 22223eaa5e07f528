"""The oracle against transformers.BertModel (eager attention), fp32, within 1e-5 max abs."""

import pytest
import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.encoder_weights import EmbeddingWeights, EncoderWeights, LayerWeights, Linear, Norm
from fastbert.checkpoint.weights import load_weights
from fastbert.engine.outputs import EncoderOutput
from fastbert.verify.reference import ReferenceBertModel
from tests.bert_factory import random_batch as padded_batch
from tests.bert_factory import random_hf_model
from tests.tolerances import REFERENCE_ATOL, REFERENCE_COSINE_BF16

transformers = pytest.importorskip("transformers")

ATOL = REFERENCE_ATOL


def random_batch(vocab_size, type_vocab_size, lengths, seq_len=None):
    """Right-padded ids of varied lengths as forward() keyword arguments."""
    ids, mask, types = padded_batch(vocab_size, lengths, seq_len=seq_len, type_vocab_size=type_vocab_size)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def assert_matches(ours: EncoderOutput, theirs, hidden_states=True):
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=ATOL, rtol=0)
    if theirs.pooler_output is None:
        assert ours.pooler_output is None
    else:
        torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=ATOL, rtol=0)
    if hidden_states:
        assert len(ours.hidden_states) == len(theirs.hidden_states)
        for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def minilm_pair(minilm_path):
    hf = transformers.BertModel.from_pretrained(
        minilm_path, attn_implementation="eager", local_files_only=True
    )
    return ReferenceBertModel.from_pretrained(minilm_path), hf.eval()


def test_minilm_padded_batch_with_token_types(minilm_pair):
    ours, hf = minilm_pair
    batch = random_batch(30522, 2, lengths=[1, 7, 33, 64, 20])
    batch["input_ids"][:, 0] = 101
    with torch.no_grad():
        theirs = hf(**batch, output_hidden_states=True)
    out = ours(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 7
    assert_matches(out, theirs)


def test_minilm_defaults_and_explicit_positions(minilm_pair):
    ours, hf = minilm_pair
    ids = torch.randint(1000, 30000, (2, 19))
    with torch.no_grad():
        theirs = hf(input_ids=ids)
    out = ours(ids)
    assert out.hidden_states is None
    assert_matches(out, theirs, hidden_states=False)
    # Left padding with positions counted from each row's first token.
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions)
    assert_matches(ours(ids, attention_mask=mask, position_ids=positions), theirs, hidden_states=False)


def test_minilm_bfloat16_runs(minilm_path, minilm_pair):
    ours32, _ = minilm_pair
    ours16 = ReferenceBertModel.from_pretrained(minilm_path, dtype=torch.bfloat16)
    batch = random_batch(30522, 2, lengths=[9, 16])
    a = ours32(**batch).pooler_output
    b = ours16(**batch).pooler_output
    assert b.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(a, b.float()).min() > REFERENCE_COSINE_BF16


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072), id="bert-base-2-layers"
        ),
        pytest.param(dict(hidden_act="gelu_new"), id="gelu_new"),
        pytest.param(dict(hidden_act="gelu_pytorch_tanh"), id="gelu_pytorch_tanh"),
        pytest.param(dict(hidden_act="relu"), id="relu"),
        pytest.param(dict(hidden_size=96, num_attention_heads=3), id="head_dim_32"),
        pytest.param(dict(hidden_size=160, num_attention_heads=2, intermediate_size=200), id="head_dim_80"),
        pytest.param(dict(type_vocab_size=1, num_hidden_layers=3), id="type_vocab_1"),
    ],
)
def test_random_configs_via_safetensors(tmp_path, overrides):
    model = random_hf_model(**overrides)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = ReferenceBertModel.from_pretrained(tmp_path)
    assert ours.config.hidden_act == model.config.hidden_act
    batch = random_batch(model.config.vocab_size, model.config.type_vocab_size, lengths=[13, 1, 40, 29])
    with torch.no_grad():
        theirs = model(**batch, output_hidden_states=True)
    assert_matches(ours(**batch, output_hidden_states=True), theirs)


def test_pytorch_model_bin_without_pooler(tmp_path):
    model = random_hf_model(add_pooling_layer=False)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    ours = ReferenceBertModel.from_pretrained(tmp_path)
    batch = random_batch(model.config.vocab_size, 2, lengths=[5, 17])
    with torch.no_grad():
        theirs = model(**batch, output_hidden_states=True)
    out = ours(**batch, output_hidden_states=True)
    assert out.pooler_output is None
    assert out[1] is out.hidden_states
    assert_matches(out, theirs)


def test_sequence_classification_checkpoint(tmp_path):
    model = random_hf_model("BertForSequenceClassification")
    model.save_pretrained(tmp_path)
    config = BertConfig.from_pretrained(tmp_path)
    weights, head = load_weights(tmp_path, config)
    assert set(head) == {"classifier.weight", "classifier.bias"}
    batch = random_batch(model.config.vocab_size, 2, lengths=[8, 31, 2])
    with torch.no_grad():
        theirs = model.bert(**batch, output_hidden_states=True)
    assert_matches(ReferenceBertModel(config, weights)(**batch, output_hidden_states=True), theirs)


def test_legacy_gamma_beta_checkpoint(tmp_path):
    from safetensors.torch import save_file

    model = random_hf_model()
    model.config.save_pretrained(tmp_path)
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v.contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(legacy, str(tmp_path / "model.safetensors"))
    batch = random_batch(model.config.vocab_size, 2, lengths=[11, 6])
    with torch.no_grad():
        theirs = model(**batch, output_hidden_states=True)
    assert_matches(ReferenceBertModel.from_pretrained(tmp_path)(**batch, output_hidden_states=True), theirs)


def test_output_access():
    h, p = torch.zeros(2, 3, 4), torch.ones(2, 4)
    states = (h, h)
    out = EncoderOutput(last_hidden_state=h, pooler_output=p, hidden_states=states)
    assert out[0] is h and out[1] is p and out[2] is states
    assert out["last_hidden_state"] is h and out["pooler_output"] is p
    assert out.to_tuple() == (h, p, states) and out[:2] == (h, p)
    assert list(out) == ["last_hidden_state", "pooler_output", "hidden_states"] and len(out) == 3
    bare = EncoderOutput(h)
    assert bare.to_tuple() == (h,) and "pooler_output" not in bare
    with pytest.raises(KeyError, match="pooler_output"):
        bare["pooler_output"]
    with pytest.raises(IndexError):
        bare[1]
    with pytest.raises(TypeError, match="indices must be str, int or slice"):
        bare[1.0]


@pytest.fixture(scope="module")
def tiny_ref():
    model = random_hf_model(vocab_size=300, type_vocab_size=2, max_position_embeddings=16)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    from fastbert.checkpoint.weights import convert_state_dict

    config = BertConfig.from_dict(model.config.to_dict())
    return ReferenceBertModel(config, convert_state_dict(state, config)[0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_ids=[[1, 2]]), TypeError, "input_ids must be a torch.Tensor, got list"),
        (dict(input_ids=torch.ones(1, 3)), TypeError, "input_ids must hold integers"),
        (
            dict(input_ids=torch.ones(3, dtype=torch.long)),
            ValueError,
            r"input_ids must be \[batch, seq_len\]",
        ),
        (dict(input_ids=torch.ones(2, 0, dtype=torch.long)), ValueError, "sequence length 0"),
        (dict(input_ids=torch.full((1, 3), 300)), ValueError, r"input_ids must lie in \[0, vocab_size=300\)"),
        (dict(input_ids=torch.full((1, 3), -1)), ValueError, r"input_ids must lie in \[0, vocab_size=300\)"),
        (
            dict(input_ids=torch.ones(1, 17, dtype=torch.long)),
            ValueError,
            "sequence length 17 exceeds max_position_embeddings=16",
        ),
        (
            dict(
                input_ids=torch.ones(2, 3, dtype=torch.long),
                attention_mask=torch.ones(2, 4, dtype=torch.long),
            ),
            ValueError,
            r"attention_mask must have the shape of input_ids \[2, 3\], got \[2, 4\]",
        ),
        (
            dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3)),
            TypeError,
            "attention_mask must hold integers",
        ),
        (
            dict(input_ids=torch.ones(2, 3, dtype=torch.long), token_type_ids=torch.full((2, 3), 2)),
            ValueError,
            r"token_type_ids must lie in \[0, type_vocab_size=2\)",
        ),
        (
            dict(
                input_ids=torch.ones(2, 3, dtype=torch.long),
                token_type_ids=torch.zeros(3, 2, dtype=torch.long),
            ),
            ValueError,
            "token_type_ids must have the shape of input_ids",
        ),
        (
            dict(input_ids=torch.ones(2, 3, dtype=torch.long), position_ids=torch.arange(4)),
            ValueError,
            r"position_ids must be \[3\], \[1, 3\] or \[2, 3\], got shape \(4,\)",
        ),
        (
            dict(input_ids=torch.ones(2, 3, dtype=torch.long), position_ids=torch.arange(3) + 14),
            ValueError,
            r"position_ids must lie in \[0, max_position_embeddings=16\)",
        ),
    ],
)
def test_bad_inputs(tiny_ref, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_ref(**kwargs)


def test_bool_mask_and_1d_positions(tiny_ref):
    ids = torch.randint(1, 300, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    a = tiny_ref(ids, attention_mask=mask)
    b = tiny_ref(ids, attention_mask=mask.bool(), position_ids=torch.arange(5))
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=0, rtol=0)
    assert not a.last_hidden_state.requires_grad


def test_model_without_token_types_rejects_nonzero_types():
    config = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=8,
        type_vocab_size=0,
    )
    def linear(out_features, in_features):
        return Linear(torch.randn(out_features, in_features), torch.randn(out_features))

    def norm():
        return Norm(torch.ones(8), torch.zeros(8))

    layer = LayerWeights(qkv=linear(24, 8), attn_out=linear(8, 8), attn_norm=norm(), ffn_in=linear(8, 8),
                         ffn_out=linear(8, 8), ffn_norm=norm())
    embeddings = EmbeddingWeights(word=torch.randn(30, 8), position=torch.randn(8, 8), token_type=None,
                                  norm=norm(), project=None)
    weights = EncoderWeights(embeddings, (layer,), pooler=None)
    model = ReferenceBertModel(config, weights)
    ids = torch.randint(0, 30, (1, 4))
    assert model(ids).last_hidden_state.shape == (1, 4, 8)
    with pytest.raises(ValueError, match="token_type_ids must be all zero"):
        model(ids, token_type_ids=torch.ones_like(ids))


@pytest.mark.parametrize(
    "model_type, overrides",
    [("bert", {"hidden_act": "gelu_fast"}), ("bert", {"hidden_act": "silu"}), ("roberta", {}),
     ("xlm-roberta", {}), ("camembert", {}), ("distilbert", {}), ("electra", {})],
)
def test_families_match_transformers(tmp_path, model_type, overrides):
    from tests.bert_factory import BASE_CLASSES, family_settings

    settings = family_settings(model_type, **overrides)
    hf = random_hf_model(BASE_CLASSES[model_type], **settings)
    hf.save_pretrained(tmp_path)
    ours = ReferenceBertModel.from_pretrained(tmp_path)
    ids, mask, types = padded_batch(settings["vocab_size"], [7, 13, 10], left_pad=True,
                                    type_vocab_size=settings.get("type_vocab_size", 1),
                                    pad_token_id=settings.get("pad_token_id", 0))
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model_type != "distilbert":
        inputs["token_type_ids"] = types
    with torch.no_grad():
        theirs = hf(**inputs, output_hidden_states=True)
    out = ours(**inputs, output_hidden_states=True)
    # Left-padded rows: compare real tokens only (padded rows differ where the pooler reads column 0).
    real = mask.bool()
    for a, b in zip(out.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=0)
    assert (out.pooler_output is None) == (getattr(theirs, "pooler_output", None) is None)
