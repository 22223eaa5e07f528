"""Every bad input is rejected with a ValueError/TypeError naming the argument, before any kernel runs."""

import pytest
import torch

from fastbert import FastBertModel
from tests.bert_factory import device_for, load_fastbert, random_batch, random_bert


@pytest.fixture(scope="module", params=["torch", "triton"])
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    random_bert(folder, type_vocab_size=2, max_position_embeddings=16)
    return load_fastbert(folder, request.param)


def _batch():
    return random_batch(211, [4, 6], seq_len=6)


def test_ids_out_of_range(model):
    ids, mask, types = _batch()
    ids[0, 0] = 211
    with pytest.raises(ValueError, match=r"input_ids holds token ids in \[.*211\] outside \[0, vocab_size=211\)"):
        model(ids, mask, types)
    ids[0, 0] = -1
    with pytest.raises(ValueError, match="input_ids"):
        model(ids, mask, types)


def test_token_types_out_of_range(model):
    ids, mask, types = _batch()
    types[1, 1] = 2
    with pytest.raises(ValueError, match="token_type_ids .* type_vocab_size=2"):
        model(ids, mask, types)


def test_too_long(model):
    ids = torch.ones(1, 17, dtype=torch.long)
    with pytest.raises(ValueError, match="sequence length 17, longer than max_position_embeddings=16"):
        model(ids)


def test_mask_shape_values_and_empty_rows(model):
    ids, mask, types = _batch()
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, mask[:, :3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(ids, mask.float() * 0.5)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"all zero in row\(s\) \[1\]"):
        model(ids, mask)
    float_mask = _batch()[1].float()  # 0./1. floats are a valid mask
    assert model(ids, float_mask).last_hidden_state.shape == (2, 6, 64)


def test_types_and_devices(model):
    ids, mask, types = _batch()
    with pytest.raises(TypeError, match="input_ids must hold integers"):
        model(ids.float())
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        model([[1, 2]])
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq_len\]"):
        model(ids[0])
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(ids, mask, types[:1])
    with pytest.raises(ValueError, match="input_ids is on meta"):
        model.model(ids.to("meta"))


def test_empty_batch_returns_empty(model):
    out = model(torch.zeros(0, 5, dtype=torch.long))
    assert out.last_hidden_state.shape == (0, 5, 64) and out.pooler_output.shape == (0, 64)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(backend="jax"), ValueError, "backend must be one of"),
    (dict(dtype="float64"), ValueError, "dtype must be one of"),
    (dict(dtype=torch.int8), TypeError, "dtype must be float32"),
    (dict(device="mps"), ValueError, "device must be cpu, cuda or cuda:N"),
    (dict(gemm="cutlass"), ValueError, "gemm must be one of"),
])
def test_bad_model_options(tmp_path, kwargs, error, match):
    random_bert(tmp_path)
    with pytest.raises(error, match=match):
        FastBertModel.from_pretrained(tmp_path, **kwargs)


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="model folder not found: /nonexistent"):
        FastBertModel.from_pretrained("/nonexistent")


def test_no_cuda_and_no_interpreted_bf16(tmp_path):
    random_bert(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device is cuda but no CUDA GPU is available"):
            FastBertModel.from_pretrained(tmp_path, device="cuda")
    with pytest.raises(ValueError, match="cannot run bfloat16"):
        FastBertModel.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16, backend="triton")


def test_unsupported_head_dim_names_the_fix(tmp_path):
    random_bert(tmp_path, hidden_size=64, num_attention_heads=4)  # head_dim 16
    with pytest.raises(ValueError, match="head_dim=16 .* use backend='torch'"):
        FastBertModel.from_pretrained(tmp_path, device=device_for("triton"), backend="triton")
    assert FastBertModel.from_pretrained(tmp_path, device="cpu", backend="torch").config.head_dim == 16


def test_validation_and_packing_stay_a_handful_of_ops():
    """On a GPU each op of pack_inputs costs the host more than its GPU work (MiniLM-sized forwards are
    host-bound on an H200): validation is one reduction per input, read back in one transfer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastbert.checkpoint.config import BertConfig
    from fastbert.engine.packing import pack_inputs

    class Counter(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in ("view", "squeeze", "_unsafe_view", "detach", "alias"):
                self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    config = BertConfig(vocab_size=211, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128)
    ids, mask, types = random_batch(211, [4, 6, 1], seq_len=6)
    counter = Counter()
    with counter:
        pack_inputs(config, "cpu", ids, mask.long(), types)
    # mask != 0, lengths, 3 x aminmax (ids, types, mask range), one cat to read back, nonzero_static
    # and the ids, positions and types of the packed tokens (cu_seqlens is uploaded when first used).
    assert len(counter.ops) <= 11, counter.ops


INTEGER_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32,
                  torch.uint64]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_every_integer_dtype_gives_the_int64_result(model, dtype):
    # Small vocabulary so the ids fit int8: the same values in every dtype give the same output.
    ids, mask, types = random_batch(100, [4, 6], seq_len=6)
    expected = model(ids, mask, types)
    out = model(ids.to(dtype), mask.to(dtype), types.to(dtype), position_ids=torch.arange(6).repeat(2, 1).to(dtype))
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(out.pooler_output, expected.pooler_output, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.uint64], ids=str)
def test_out_of_range_ids_in_narrow_dtypes(model, dtype):
    ids, mask, _ = random_batch(100, [4, 6], seq_len=6)
    ids[1, 2] = 300 if dtype == torch.uint64 else -1 if dtype == torch.int8 else 250
    with pytest.raises(ValueError, match=r"input_ids holds token ids in \[.*\] outside \[0, vocab_size=211\)"):
        model(ids.to(dtype), mask)
    if dtype == torch.uint64:  # a value past 2**63 wraps negative once widened: still out of range
        huge = torch.full((1, 2), 2**63 + 5, dtype=torch.uint64)
        with pytest.raises(ValueError, match="input_ids holds token ids"):
            model(huge)


def test_non_integer_dtypes_are_one_type_error(model):
    ids, mask, types = _batch()
    for bad in (ids.bool(), ids.double(), ids.to(torch.complex64), ids.half()):
        with pytest.raises(TypeError, match="input_ids must hold integers"):
            model(bad)
        with pytest.raises(TypeError, match="token_type_ids must hold integers"):
            model(ids, mask, bad)
    with pytest.raises(TypeError, match="input_ids must be a dense tensor"):
        model(ids.to_sparse())


@pytest.mark.parametrize("mask_dtype", [torch.bool, *INTEGER_DTYPES, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_batch_with_any_mask_dtype(model, mask_dtype, shape):
    ids = torch.zeros(shape, dtype=torch.long)
    out = model(ids, torch.ones(shape, dtype=mask_dtype), torch.zeros(shape, dtype=torch.int8))
    assert out.last_hidden_state.shape == (*shape, 64)
    assert out.pooler_output.shape == (shape[0], 64)
