import pytest
import torch

from fastbert.kernels.embeddings import embeddings
from tests.kernels.compile_check import ARCHS, MAX_SHARED_BYTES, CompileCase, compile_cases, config_constexprs
from tests.kernels.launch_configs import embeddings_configs
from tests.kernels.references import embeddings_ref
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded

TORCH_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
              torch.int32: "i32", torch.int64: "i64"}
VOCAB, POSITIONS, TYPES = 1000, 512, 2


def _tables(H, dtype, device, types=TYPES, param_dtype=None):
    word = torch.randn(VOCAB, H, device=device).to(dtype)
    position = torch.randn(POSITIONS, H, device=device).to(dtype)
    token_type = torch.randn(types, H, device=device).to(dtype) if types else None
    weight = (1 + 0.1 * torch.randn(H, device=device)).to(param_dtype or dtype)
    bias = (0.1 * torch.randn(H, device=device)).to(param_dtype or dtype)
    return word, position, token_type, weight, bias


def _ids(T, device, index_dtype=torch.int64):
    """Random ids that include both ends of every table."""
    input_ids = torch.randint(0, VOCAB, (T,), device=device)
    input_ids[0] = VOCAB - 1
    input_ids[T // 2] = 0
    position_ids = torch.randint(0, POSITIONS, (T,), device=device)
    position_ids[-1] = POSITIONS - 1
    position_ids[0] = 0
    token_type_ids = torch.randint(0, TYPES, (T,), device=device)
    token_type_ids[-1] = TYPES - 1
    return input_ids.to(index_dtype), position_ids.to(index_dtype), token_type_ids.to(index_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("token_types", ["ids", "type0", "none"])
@pytest.mark.parametrize("T", [1, 7, 129])
@pytest.mark.parametrize("H", [100, 384, 768])
def test_embeddings_match_reference(H, T, token_types, index_dtype, dtype, device, backend):
    types = 0 if token_types == "none" else TYPES
    word, position, token_type, weight, bias = _tables(H, dtype, device, types=types)
    input_ids, position_ids, token_type_ids = _ids(T, device, index_dtype)
    token_type_ids = token_type_ids if token_types == "ids" else None
    out = embeddings(input_ids, position_ids, word, position, weight, bias, 1e-12,
                     token_type_ids=token_type_ids, token_type_embeddings=token_type)
    assert out.dtype == dtype and out.shape == (T, H) and out.is_contiguous()
    ids = (input_ids, position_ids, token_type_ids)
    tables = (word, position, token_type, weight, bias)
    assert_matches_reference(out, embeddings_ref, *ids, *tables, 1e-12, backend=backend)


def test_embeddings_nan_padded_and_strided(device, backend):
    """Tables inside NaN-filled rows and buffers, ids with stride 2 next to poisoned (-2**30) ids, fp32
    LayerNorm parameters with fp16 tables: any stray read or ignored stride shows up."""
    word, position, token_type, weight, bias = _tables(100, torch.float16, device, param_dtype=torch.float32)
    input_ids, position_ids, token_type_ids = _ids(33, device, torch.int32)
    strided = [nan_padded(torch.stack([ids, torch.full_like(ids, -(2**30))], dim=1))[:, 0]
               for ids in (input_ids, position_ids, token_type_ids)]
    assert strided[0].stride(0) == 2
    out = embeddings(strided[0], strided[1], nan_row_padded(word), nan_row_padded(position, extra_columns=3),
                     nan_padded(weight), nan_padded(bias), 1e-12,
                     token_type_ids=strided[2], token_type_embeddings=nan_padded(token_type))
    ids = (input_ids, position_ids, token_type_ids)
    assert out.dtype == torch.float16
    tables = (word, position, token_type, weight, bias)
    assert_matches_reference(out, embeddings_ref, *ids, *tables, 1e-12, backend=backend)


def test_embeddings_empty(device):
    word, position, token_type, weight, bias = _tables(384, torch.float16, device)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    out = embeddings(empty, empty, word, position, weight, bias, 1e-12, empty, token_type)
    assert out.shape == (0, 384) and out.dtype == torch.float16


@pytest.mark.parametrize("name, bad_value, limit", [
    ("input_ids", -1, None), ("input_ids", VOCAB, VOCAB), ("position_ids", POSITIONS, POSITIONS),
    ("position_ids", -3, None), ("token_type_ids", TYPES, TYPES),
])
def test_embeddings_rejects_out_of_range_ids(name, bad_value, limit, device):
    word, position, token_type, weight, bias = _tables(64, torch.float32, device)
    names = ("input_ids", "position_ids", "token_type_ids")
    ids = dict(zip(names, _ids(7, device, torch.int32), strict=True))
    ids[name][3] = bad_value
    with pytest.raises(ValueError, match=rf"{name} must lie in \[0, "):
        embeddings(ids["input_ids"], ids["position_ids"], word, position, weight, bias, 1e-12,
                   token_type_ids=ids["token_type_ids"], token_type_embeddings=token_type)


def test_embeddings_validation(device):
    word, position, token_type, weight, bias = _tables(64, torch.float16, device)
    input_ids, position_ids, token_type_ids = _ids(7, device)
    call = lambda **kw: embeddings(**{
        "input_ids": input_ids, "position_ids": position_ids, "word_embeddings": word,
        "position_embeddings": position, "ln_weight": weight, "ln_bias": bias, "eps": 1e-12,
        "token_type_ids": token_type_ids, "token_type_embeddings": token_type, **kw})
    with pytest.raises(TypeError, match="input_ids has dtype"):
        call(input_ids=input_ids.float())
    with pytest.raises(ValueError, match="input_ids must have 1 dimensions"):
        call(input_ids=input_ids[None])
    with pytest.raises(ValueError, match="position_ids must have shape"):
        call(position_ids=position_ids[:5])
    with pytest.raises(ValueError, match="token_type_ids must have shape"):
        call(token_type_ids=token_type_ids[:5])
    with pytest.raises(ValueError, match="token_type_ids given without token_type_embeddings"):
        call(token_type_embeddings=None)
    with pytest.raises(TypeError, match="position_embeddings has dtype"):
        call(position_embeddings=position.float())
    with pytest.raises(ValueError, match="token_type_embeddings must have 64 columns"):
        call(token_type_embeddings=token_type[:, :32])
    with pytest.raises(ValueError, match="word_embeddings must have stride 1"):
        call(word_embeddings=word.t())
    with pytest.raises(ValueError, match="word_embeddings must have 1..8192 columns"):
        call(word_embeddings=torch.zeros(4, 8193, dtype=torch.float16, device=device))
    with pytest.raises(TypeError, match="ln_bias has dtype"):
        call(ln_bias=bias.to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"ln_weight must have shape \(64,\)"):
        call(ln_weight=weight[:32])
    with pytest.raises(ValueError, match="eps must be a positive"):
        call(eps=0.0)


def test_embeddings_check_indices_false_skips_range_check(device, backend):
    word, position, token_type, weight, bias = _tables(64, torch.float32, device)
    input_ids, position_ids, token_type_ids = _ids(7, device)
    out = embeddings(input_ids, position_ids, word, position, weight, bias, 1e-12, token_type_ids, token_type,
                     check_indices=False)
    ids = (input_ids, position_ids, token_type_ids)
    tables = (word, position, token_type, weight, bias)
    assert_matches_reference(out, embeddings_ref, *ids, *tables, 1e-12, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T, H", [(4096, 768), (1000, 384), (129, 1024), (7, 100)])
def test_embeddings_gpu(T, H, dtype, device, backend):
    word, position, token_type, weight, bias = _tables(H, dtype, device)
    input_ids, position_ids, token_type_ids = _ids(T, device)
    out = embeddings(input_ids, position_ids, word, position, weight, bias, 1e-12, token_type_ids, token_type)
    args = (input_ids, position_ids, token_type_ids, word, position, token_type, weight, bias, 1e-12)
    assert_matches_reference(out, embeddings_ref, *args, backend=backend)


def _compile_case(config, dtype, index_dtype, arch, has_token_type_ids, has_positions=True, has_bias=True):
    ptr, index_ptr = f"*{TORCH_NAME[dtype]}", f"*{TORCH_NAME[index_dtype]}"
    signature = {
        "input_ids_ptr": index_ptr, "position_ids_ptr": index_ptr, "token_type_ids_ptr": index_ptr,
        "word_ptr": ptr, "position_ptr": ptr, "token_type_ptr": ptr, "weight_ptr": ptr, "bias_ptr": ptr,
        "out_ptr": ptr, "T": "i32", "H": "i32",
        "stride_input_ids": "i32", "stride_position_ids": "i32", "stride_token_type_ids": "i32",
        "stride_word_row": "i32", "stride_position_row": "i32", "stride_token_type_row": "i32",
        "stride_out_row": "i32", "eps": "fp32",
        "HAS_TOKEN_TYPE": "constexpr", "HAS_TOKEN_TYPE_IDS": "constexpr",
        "HAS_POSITIONS": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_N": "constexpr", "ROWS_PER_PROGRAM": "constexpr",
    }
    constexprs, num_warps, num_stages = config_constexprs(config)
    constexprs.update(HAS_TOKEN_TYPE=True, HAS_TOKEN_TYPE_IDS=has_token_type_ids,
                      HAS_POSITIONS=has_positions, HAS_BIAS=has_bias)
    label = f"{TORCH_NAME[dtype]}/{TORCH_NAME[index_dtype]} sm_{arch} {constexprs} warps={num_warps}"
    return CompileCase(label, "fastbert.kernels.embeddings", "_embeddings_kernel", signature, constexprs,
                       num_warps, num_stages, arch)


def test_embeddings_compile_for_gpus():
    """Every config the launcher can pick in fp16 with int64 ids, on sm_80/sm_90; the other id dtype, the
    type-0 path, bf16 and fp32 on the BERT-base width."""
    configs = embeddings_configs()
    cases = [_compile_case(config, torch.float16, torch.int64, arch, True)
             for config in configs for arch in ARCHS]
    base = next(config for config in configs if config.kwargs["BLOCK_N"] == 1024)
    cases += [_compile_case(base, dtype, torch.int32, arch, has_ids)
              for dtype in (torch.float16, torch.bfloat16, torch.float32)
              for arch in ARCHS for has_ids in (False, True)]
    for case, result in zip(cases, compile_cases(cases), strict=True):
        assert result["ok"], f"{case.label}: {result.get('error')}"
        assert result["shared"] <= MAX_SHARED_BYTES[case.arch], case.label
        assert not result["local_memory_spill"], f"{case.label} spills registers to local memory"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("positions, ln_bias", [(False, True), (True, False), (False, False)])
@pytest.mark.parametrize("T, H", [(1, 64), (7, 100), (33, 384)])
def test_embeddings_without_positions_or_bias(T, H, positions, ln_bias, dtype, device, backend):
    """ModernBERT's embeddings: no position table (rotary) and LayerNorm(bias=False), against plain torch;
    NaN around every input, so a read of an absent table or bias shows up."""
    word, position, _, weight, bias = _tables(H, dtype, device, types=0)
    position, bias = (position if positions else None), (bias if ln_bias else None)
    input_ids, position_ids, _ = _ids(T, device, torch.int32)
    out = embeddings(nan_padded(input_ids), nan_padded(position_ids) if positions else None, nan_row_padded(word),
                     nan_row_padded(position) if positions else None, nan_padded(weight),
                     nan_padded(bias) if ln_bias else None, 1e-5)
    assert out.dtype == dtype and out.shape == (T, H)
    args = (input_ids, position_ids, None, word, position, None, weight, bias, 1e-5)
    assert_matches_reference(out, embeddings_ref, *args, backend=backend)


def test_embeddings_without_positions_ignores_position_ids(device, backend):
    """Without a position table, position_ids is not read (not even range-checked)."""
    word, _, _, weight, _ = _tables(64, torch.float32, device, types=0)
    input_ids, _, _ = _ids(7, device)
    bad_positions = torch.full_like(input_ids, -(2**30))
    out = embeddings(input_ids, bad_positions, word, None, weight, None, 1e-5)
    args = (input_ids, None, None, word, None, None, weight, None, 1e-5)
    assert_matches_reference(out, embeddings_ref, *args, backend=backend)


def test_embeddings_position_table_needs_ids(device):
    word, position, _, weight, bias = _tables(64, torch.float32, device, types=0)
    input_ids, _, _ = _ids(7, device)
    with pytest.raises(ValueError, match="position_embeddings given without position_ids"):
        embeddings(input_ids, None, word, position, weight, bias, 1e-5)


@pytest.mark.slow
def test_embeddings_without_positions_or_bias_compile_for_gpus():
    base = next(config for config in embeddings_configs() if config.kwargs["BLOCK_N"] == 1024)
    cases = [_compile_case(base, torch.float16, torch.int64, arch, False, has_positions=False, has_bias=False)
             for arch in ARCHS]
    for case, result in zip(cases, compile_cases(cases), strict=True):
        assert result["ok"], f"{case.label}: {result.get('error')}"
        assert not result["local_memory_spill"], f"{case.label} spills registers to local memory"
