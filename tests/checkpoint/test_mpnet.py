"""MPNet (all-mpnet-base-v2's architecture) against transformers: its relative-position bias, bucket for
bucket, and the whole model and its heads held to the float64 rule of tests/tolerances.py, on sequences
both inside and past the bias's 128-token reach."""

import pytest
import torch

import fastbert
from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.families import FAMILIES
from fastbert.checkpoint.relative_position import position_bias_table, relative_position_bucket
from fastbert.verify.reference import ReferenceBertModel
from tests.bert_factory import load_fastbert, random_batch, random_hf_model, save_tokenizer
from tests.checkpoint.test_families import outputs_before_and_after_optimize
from tests.tolerances import SENTENCE_COSINE, assert_close

transformers = pytest.importorskip("transformers")

# Odd sizes: hidden 48 over 3 heads (head_dim 16, torch backend only), an intermediate of 37; 300 positions
# so a row can run past the bias's max distance of 128.
SMALL = dict(vocab_size=99, hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=37,
             max_position_embeddings=300, pad_token_id=1)
# head_dim 32: the smallest the Triton attention kernel serves.
TRITON = dict(SMALL, hidden_size=96, num_hidden_layers=2)
LENGTHS = [7, 13, 10]
LONG = [200, 131, 5]  # past the reach of 128 on both sides of many tokens


def float64_rule(ours, model, inputs, key="last_hidden_state", backend="interpreter"):
    """ours against the same model in float64, allowed twice transformers' own fp32 error (+ floor), on
    real tokens."""
    with torch.no_grad():
        theirs32 = getattr(model(**inputs), key)
        exact = getattr(_double(model)(**inputs), key)
    mask = inputs["attention_mask"].bool()
    if ours.dim() >= 2 and tuple(ours.shape[:2]) == tuple(mask.shape):
        ours, theirs32, exact = ours[mask], theirs32[mask], exact[mask]
    assert_close(ours.float(), exact, torch.float32, backend, torch_same_dtype=theirs32)


def _double(model):
    import copy

    return copy.deepcopy(model).double()


def test_buckets_and_table_equal_transformers():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    distance = torch.arange(-400, 401)
    expected = MPNetEncoder.relative_position_bucket(distance)
    assert torch.equal(relative_position_bucket(distance, 32, 128), expected)
    embedding = torch.randn(40, 5)
    table = position_bias_table(embedding, 32, 128)
    assert table.dtype == torch.float32 and table.shape == (5, 257) and table.is_contiguous()
    clamped = distance.clamp(-128, 128) + 128  # beyond the reach every distance shares the edge bucket
    assert torch.equal(table[:, clamped], embedding[expected].t())


def test_family_row_and_config():
    family = FAMILIES["mpnet"]
    assert (family.relative_buckets, family.relative_max_distance) == (32, 128)
    config = BertConfig.from_dict({"model_type": "mpnet", "pad_token_id": 7, "type_vocab_size": 2})
    # transformers' MPNetEmbeddings counts positions from padding_idx 1 whatever pad_token_id says.
    assert (config.pad_token_id, config.type_vocab_size, config.relative_attention_num_buckets) == (1, 0, 32)
    assert config.vocab_size == 30527 and config.max_sequence_length == 510
    with pytest.raises(ValueError, match="relative_attention_num_buckets must be an integer >= 32"):
        BertConfig.from_dict({"model_type": "mpnet", "relative_attention_num_buckets": 16})
    with pytest.raises(ValueError, match="has no relative position bias"):
        BertConfig(relative_attention_num_buckets=32)


@pytest.mark.parametrize("lengths, left_pad", [(LENGTHS, False), (LENGTHS, True), (LONG, False)])
def test_from_pretrained_and_reference_follow_the_float64_rule(tmp_path, lengths, left_pad):
    model = random_hf_model("MPNetModel", **SMALL, relative_attention_num_buckets=40)  # 8 rows unused
    model.save_pretrained(tmp_path)
    ours = fastbert.from_pretrained(tmp_path, backend="torch", device="cpu", dtype=torch.float32)
    assert ours.weights.position_bias.shape == (3, 257) and ours.weights.position_bias.dtype == torch.float32
    ids, mask, _ = random_batch(99, lengths, left_pad=left_pad, pad_token_id=1)
    inputs = {"input_ids": ids, "attention_mask": mask}
    out = ours(ids, mask, output_hidden_states=True)
    float64_rule(out.last_hidden_state, model, inputs)
    if not left_pad:  # transformers pools column 0 even where it is padding; we pool the first real token
        float64_rule(out.pooler_output, model, inputs, "pooler_output")
    reference = ReferenceBertModel.from_pretrained(tmp_path)
    float64_rule(reference(ids, mask).last_hidden_state, model, inputs)


@pytest.mark.parametrize("task, key", [("MPNetForSequenceClassification", "logits"),
                                       ("MPNetForTokenClassification", "logits"),
                                       ("MPNetForQuestionAnswering", "start_logits"),
                                       ("MPNetForMaskedLM", "logits")])
def test_heads_follow_the_float64_rule(task, key):
    model = random_hf_model(task, **SMALL)
    ids, mask, _ = random_batch(99, LONG[1:], pad_token_id=1, seed=1)
    inputs = {"input_ids": ids, "attention_mask": mask}
    _, patched = outputs_before_and_after_optimize(model, inputs, "torch")  # fastbert answered, once
    fastbert.restore(model)
    float64_rule(patched[key], model, inputs, key)


def test_multiple_choice():
    """[B, C, S] inputs, pooled: MPNetForMultipleChoice keeps the pooler its siblings drop."""
    model = random_hf_model("MPNetForMultipleChoice", **SMALL)
    ids, mask, _ = random_batch(99, [7, 13, 9, 11], pad_token_id=1, seed=3)
    inputs = {"input_ids": ids.view(2, 2, -1), "attention_mask": mask.view(2, 2, -1)}
    _, patched = outputs_before_and_after_optimize(model, inputs, "torch")
    fastbert.restore(model)
    assert patched.logits.shape == (2, 2)
    float64_rule(patched.logits, model, inputs, "logits")


def test_sentence_transformers_folder_matches_encode(tmp_path):
    """A sentence-transformers folder around a random MPNet (the layout of all-mpnet-base-v2: mean pooling,
    normalised) through fastbert.from_pretrained(...).encode."""
    st = pytest.importorskip("sentence_transformers")
    from tests.st_factory import save_pipeline

    encoder = tmp_path / "encoder"
    random_hf_model("MPNetModel", **SMALL).save_pretrained(encoder)
    save_tokenizer(encoder, "mpnet", SMALL["vocab_size"])
    folder = save_pipeline(tmp_path / "st", encoder, normalize=True)
    texts = ["w5 w17 w98", "w42 unknown w7 w7 w8", " ".join(f"w{5 + i % 90}" for i in range(170)), "w50"]
    expected = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    ours = fastbert.from_pretrained(folder, backend="torch", device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours, expected).min().item() >= SENTENCE_COSINE


def test_cross_encoder_on_pairs(tmp_path):
    """A CrossEncoder of MPNet scores pairs laid out <s> A </s></s> B </s> (no token types)."""
    st = pytest.importorskip("sentence_transformers")
    random_hf_model("MPNetForSequenceClassification", **SMALL, num_labels=1).save_pretrained(tmp_path)
    save_tokenizer(tmp_path, "mpnet", SMALL["vocab_size"])
    (tmp_path / "tokenizer_config.json").write_text(
        '{"pad_token": "<pad>", "tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": '
        '["input_ids", "attention_mask"]}')
    model = st.CrossEncoder(str(tmp_path), device="cpu")
    pairs = [("w5 w6", "w7 w8 w9"), ("w10", " ".join(f"w{5 + i % 90}" for i in range(150)))]
    expected = model.predict(pairs, convert_to_tensor=True)
    fastbert.optimize(model, backend="torch")
    ours = model.predict(pairs, convert_to_tensor=True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [LENGTHS, LONG])
def test_triton_backend_follows_the_float64_rule(tmp_path, lengths):
    """Needs the kernels' position_bias (fastbert/kernels/attention.py, issue #17): the engine passes it
    to TritonOps.attention."""
    model = random_hf_model("MPNetModel", **TRITON)
    model.save_pretrained(tmp_path)
    ours = load_fastbert(tmp_path, "triton")
    ids, mask, _ = random_batch(99, lengths, pad_token_id=1, seed=2)
    backend = "cuda" if ours.model.device.type == "cuda" else "interpreter"
    float64_rule(ours(ids, mask).last_hidden_state, model, {"input_ids": ids, "attention_mask": mask},
                 backend=backend)


def test_tokenizer_json_of_transformers_mpnet_tokenizer(tmp_path):
    """MPNetTokenizerFast's own tokenizer.json (WordPiece, BERT normalizer, <s> A </s></s> B </s>): the same
    ids and mask as transformers, truncation (and so pre-truncation) included."""
    from fastbert.checkpoint.tokenizer import Tokenizer
    from tests.st_factory import CHARACTERS, WORDS

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = [*specials, *WORDS, *CHARACTERS, *(f"##{c}" for c in CHARACTERS), "<mask>"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.MPNetTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    texts = ["The man is playing guitar!", "hello", "search for the guitar " * 20]
    pairs = ["a query", "world " * 30, "x"]
    for args in ((texts,), (texts, pairs)):
        expected = theirs(*args, truncation=True, max_length=24, padding=True, return_tensors="pt")
        got = ours(*args, max_length=24)
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(got[key], expected[key]), (key, len(args))
