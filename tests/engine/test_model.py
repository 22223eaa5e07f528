"""FastBertModel against transformers.BertModel (eager) and the reference encoder."""

import pytest
import torch

import fastbert
from fastbert.checkpoint.tokenizer import Tokenizer
from tests.bert_factory import BERT_BASE_SHAPES, device_for, load_fastbert, random_batch, random_bert
from tests.conftest import BACKEND
from tests.tolerances import ENCODER_ATOL_FP32, ENCODER_TOLERANCES, REBATCHED_ATOL

BACKENDS = ["torch", "triton"]


@pytest.fixture(scope="module")
def hf_minilm(minilm_path):
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel.from_pretrained(minilm_path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def minilm_batch(minilm_path):
    tokenizer = Tokenizer.from_pretrained(minilm_path)
    texts = ["A man is playing a guitar.", "Ça coûte très cher — naïve café", "深度学习改变了世界", "🙂 ok",
             "The quick brown fox jumps over the lazy dog " * 3]
    return tokenizer(texts, max_length=64)


def _max_error_on_real_tokens(actual, expected, mask):
    real = mask.bool()
    return (actual.float()[real] - expected.float()[real]).abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_matches_transformers_fp32(minilm_path, hf_minilm, minilm_batch, backend):
    model = load_fastbert(minilm_path, backend, torch.float32)
    ids, mask, types = minilm_batch["input_ids"], minilm_batch["attention_mask"], minilm_batch["token_type_ids"]
    out = model(ids, mask, types, output_hidden_states=True)
    with torch.no_grad():
        expected = hf_minilm(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert _max_error_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, mask) <= ENCODER_ATOL_FP32
    assert (out.pooler_output - expected.pooler_output).abs().max().item() <= ENCODER_ATOL_FP32
    assert len(out.hidden_states) == len(expected.hidden_states) == 7
    for ours, theirs in zip(out.hidden_states, expected.hidden_states):
        assert _max_error_on_real_tokens(ours, theirs, mask) <= ENCODER_ATOL_FP32
    # Padded positions are zero, as documented.
    assert not out.last_hidden_state[~mask.bool()].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_fp16_within_table(minilm_path, hf_minilm, minilm_batch, backend):
    model = load_fastbert(minilm_path, backend, torch.float16)
    ids, mask, types = minilm_batch["input_ids"], minilm_batch["attention_mask"], minilm_batch["token_type_ids"]
    out = model(ids, mask, types)
    assert out.last_hidden_state.dtype == torch.float16
    with torch.no_grad():
        expected = hf_minilm(input_ids=ids, attention_mask=mask, token_type_ids=types)
    tolerance = ENCODER_TOLERANCES[(torch.float16, BACKEND if device_for(backend) == "cuda" else "interpreter")]
    assert _max_error_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, mask) <= tolerance
    assert (out.pooler_output.float() - expected.pooler_output).abs().max().item() <= tolerance


RANDOM_CONFIGS = {
    "bert-base-gelu": dict(**BERT_BASE_SHAPES, hidden_act="gelu"),
    "bert-base-gelu_new": dict(**BERT_BASE_SHAPES, hidden_act="gelu_new"),
    "head_dim32-type1": dict(hidden_size=128, num_attention_heads=4, intermediate_size=200, type_vocab_size=1),
    "head_dim80-relu": dict(hidden_size=160, num_attention_heads=2, intermediate_size=300, hidden_act="relu"),
    "head_dim64-tanh": dict(hidden_size=128, num_attention_heads=2, intermediate_size=256,
                            hidden_act="gelu_pytorch_tanh"),
}


@pytest.mark.parametrize("name", list(RANDOM_CONFIGS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_configs_match_transformers(tmp_path, name, backend):
    settings = RANDOM_CONFIGS[name]
    hf_model = random_bert(tmp_path, **settings)
    model = load_fastbert(tmp_path, backend, torch.float32)
    ids, mask, types = random_batch(hf_model.config.vocab_size, [1, 9, 23], seq_len=24,
                                    type_vocab_size=hf_model.config.type_vocab_size)
    out = model(ids, mask, types)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert _max_error_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, mask) <= ENCODER_ATOL_FP32
    assert (out.pooler_output - expected.pooler_output).abs().max().item() <= ENCODER_ATOL_FP32


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padding_and_holes_in_the_mask(tmp_path, backend):
    hf_model = random_bert(tmp_path)
    model = load_fastbert(tmp_path, backend, torch.float32)
    ids, mask, types = random_batch(hf_model.config.vocab_size, [5, 12, 3], seq_len=12, left_pad=True)
    mask[1, 4] = 0  # a masked token in the middle of a sequence
    out = model(ids, mask, types)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert _max_error_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, mask) <= ENCODER_ATOL_FP32
    # The pooler reads each row's first real token ([CLS]); transformers reads column 0 even when it
    # is padding, so compare with the row that is not left-padded.
    assert (out.pooler_output[1] - expected.pooler_output[1]).abs().max().item() <= ENCODER_ATOL_FP32


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_invariance(tmp_path, backend):
    hf_model = random_bert(tmp_path)
    # With one tile config (tests/conftest.py pins it on a GPU) the Triton GEMM computes a row the same
    # way whatever the token count; gemm="auto" may pick cuBLAS for one token-count bucket and Triton
    # for another, whose roundings differ.
    model = load_fastbert(tmp_path, backend, torch.float32, gemm="triton")
    ids, mask, types = random_batch(hf_model.config.vocab_size, [7, 15, 2, 11], seq_len=15)
    batched = model(ids, mask, types).last_hidden_state
    alone = model(ids[:1, :7], mask[:1, :7], types[:1, :7]).last_hidden_state
    padded_longer = torch.nn.functional.pad(ids[:1, :7], (0, 30))
    longer = model(padded_longer, torch.nn.functional.pad(mask[:1, :7], (0, 30)),
                   torch.nn.functional.pad(types[:1, :7], (0, 30))).last_hidden_state
    allowed = REBATCHED_ATOL
    if backend == "torch":
        # PyTorch's GEMMs are not batch invariant: the BLAS picks its blocking by the token count, so a
        # row's rounding depends on the CPU. Two fp32 evaluations can differ by at most the sum of their
        # errors, so allow twice this sequence's own fp32 error against transformers in float64.
        with torch.no_grad():
            exact = hf_model.double()(input_ids=ids[:1, :7], attention_mask=mask[:1, :7],
                                      token_type_ids=types[:1, :7]).last_hidden_state
        allowed = max(allowed, 2 * (alone[0].double() - exact[0]).abs().max().item())
    assert (batched[0, :7] - alone[0]).abs().max().item() <= allowed
    assert (longer[0, :7] - alone[0]).abs().max().item() <= allowed


def test_position_ids_are_used(tmp_path):
    hf_model = random_bert(tmp_path)
    model = load_fastbert(tmp_path, "torch", torch.float32)
    ids, mask, types = random_batch(hf_model.config.vocab_size, [6, 4], seq_len=6)
    positions = torch.arange(6).flip(0).expand(2, 6).contiguous() + 3
    out = model(ids, mask, types, position_ids=positions)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=positions)
    assert _max_error_on_real_tokens(out.last_hidden_state, expected.last_hidden_state, mask) <= ENCODER_ATOL_FP32


def test_defaults_on_cpu(minilm_path):
    model = fastbert.from_pretrained(minilm_path)
    if not torch.cuda.is_available():
        assert (model.device.type, model.dtype, model.backend) == ("cpu", torch.float32, "torch")
    assert "FastBertModel" in repr(model)
