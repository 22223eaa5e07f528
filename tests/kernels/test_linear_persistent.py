"""kernels/linear_persistent.py: the TMA + persistent GEMM against the fp32 reference, on odd shapes whose
tiles are partial in M, N and K, NaN-padded and row-strided inputs, the operands TMA cannot address
(is_supported False, launcher ValueError), and compilation of every GPU config for sm_90."""

import importlib
import math

import pytest
import torch

from fastbert.kernels._common import max_shared_bytes
from fastbert.kernels.linear_persistent import (
    is_available,
    is_supported,
    linear_persistent,
    linear_persistent_configs,
    shared_bytes_estimate,
)
from tests.conftest import pinned_linear_persistent_config
from tests.kernels.compile_check import MAX_SHARED_BYTES, CompileCase, compile_cases, config_constexprs
from tests.kernels.linear_cases import ACTIVATIONS, BERT_SHAPES, check, make_inputs
from tests.kernels.references import linear_ref
from tests.kernels.test_linear import EPILOGUES, _optional_pointers, spill_failures
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded

persistent_module = importlib.import_module("fastbert.kernels.linear_persistent")
# Multiples of no tile (the interpreter's are 64 wide) but of 8 elements, so fp16 and fp32 rows are
# 16-byte multiples as TMA requires; 40 and 136 leave a partial K step.
ODD_SHAPES = [(72, 40), (200, 136), (136, 264)]
# The config GPU tests run unless they request `autotuned` (tests/conftest.py pins it).
SMALL_CONFIG = pinned_linear_persistent_config()


@pytest.fixture(autouse=True)
def _needs_sm90(device):
    """On a GPU older than sm_90 the kernel cannot run: skip rather than fail."""
    if device.type == "cuda" and not is_available(device):
        pytest.skip("linear_persistent needs compute capability 9.0+")


def run_checked(x, weight, bias, activation, backend):
    assert is_supported(x, weight)
    check(linear_persistent(x, weight, bias, activation), x, weight, bias, activation, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N, K", ODD_SHAPES)
@pytest.mark.parametrize("M", [1, 7, 129, 300])
def test_shapes(M, N, K, dtype, device, backend):
    run_checked(*make_inputs(M, N, K, dtype, device), "gelu", backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_epilogue(activation, has_bias, dtype, device, backend):
    x, weight, bias = make_inputs(65, 136, 96, dtype, device, bias=has_bias)
    run_checked(x, weight, bias, activation, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pad", [nan_padded, lambda t: nan_row_padded(t, extra_columns=8)], ids=["flat", "rows"])
def test_nan_padded_inputs(pad, dtype, device, backend):
    """NaN around x and weight (and inside wider rows): TMA must read only inside the descriptor's bounds."""
    x, weight, bias = make_inputs(67, 136, 40, dtype, device)
    out = linear_persistent(pad(x), pad(weight), nan_padded(bias), "gelu")
    check(out, x, weight, bias, "gelu", backend)


def test_row_strided_x(device, backend):
    """x as a column slice of a fused QKV-like output: row stride 3*K, data pointer mid-row (aligned)."""
    M, N, K = 129, 72, 96
    buffer = torch.randn(M, 3 * K, device=device)
    weight = torch.randn(N, K, device=device) / math.sqrt(K)
    for x in (buffer[:, :K], buffer[:, K : 2 * K], buffer[:, 2 * K :]):
        assert x.stride(0) == 3 * K
        run_checked(x, weight, None, "relu", backend)


def test_fp16_accumulates_in_fp32(device):
    """2056 ones: an fp16 running sum sticks at 2048 (its spacing there is 2); fp32 gives 2056 exactly."""
    x = torch.ones(1, 2056, dtype=torch.float16, device=device)
    weight = torch.ones(8, 2056, dtype=torch.float16, device=device)
    assert (linear_persistent(x, weight) == 2056.0).all()


def test_empty_m_returns_without_launch(device, monkeypatch):
    monkeypatch.setattr(persistent_module, "_linear_persistent", None)  # a launch would fail on None[grid]
    x, weight, bias = make_inputs(0, 72, 40, torch.float16, device)
    out = linear_persistent(x, weight, bias, "gelu")
    assert out.shape == (0, 72) and out.dtype == torch.float16


@pytest.mark.parametrize(
    "operands, match",
    [
        (lambda x, w: (x[:, :-1], w[:, :-1].contiguous()), "row stride"),  # K=39: rows of 78 bytes
        (lambda x, w: (nan_row_padded(x), w), "x must start on a 16-byte boundary"),  # row stride 45
        (lambda x, w: (torch.cat([x, x], 1)[:, 1:41], w), "x must start on a 16-byte boundary"),  # mid-row
        (lambda x, w: (x, nan_padded(w, pad=3)), "weight must start on a 16-byte boundary"),
        (lambda x, w: (x, w[:-1]), "N=71"),  # output rows of 142 bytes
        (lambda x, w: (x[:, :0], w[:, :0]), "K=0"),
        (lambda x, w: (x[:1].expand(7, -1), w), "x has row stride 0 < K=40"),  # one row broadcast
        (lambda x, w: (x, w.new_zeros(8 * w.shape[0] + w.shape[1]).as_strided(w.shape, (8, 1))),
         "weight has row stride 8 < K=40"),  # rows that overlap
    ],
    ids=["odd-K", "x-row-stride", "x-base", "weight-base", "odd-N", "empty-K", "x-broadcast", "weight-overlap"],
)
def test_unaligned_operands_are_unsupported(operands, match, device):
    """What TMA cannot address: is_supported says False (the GEMM picker then skips this kernel) and a
    call raises a ValueError naming the argument, instead of a launch failure or a wrong answer."""
    x, weight = operands(*make_inputs(7, 72, 40, torch.float16, device)[:2])
    assert not is_supported(x, weight)
    with pytest.raises(ValueError, match=match):
        linear_persistent(x, weight)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda x, w, b: (x[None], w, b, None), ValueError, "x must have 2 dimensions"),
        (lambda x, w, b: (x, w[:, :-8].contiguous(), b, None), ValueError, "x's K=40"),
        (lambda x, w, b: (x, w, b[:-1], None), ValueError, r"bias has shape \(71,\)"),
        (lambda x, w, b: (x.t().contiguous().t(), w, b, None), ValueError, "x must have stride 1"),
        (lambda x, w, b: (x, w.half(), b, None), TypeError, "weight has dtype"),
        (lambda x, w, b: (x, w, b, "swish"), ValueError, "activation"),
    ],
)
def test_validation(change, error, match, device):
    with pytest.raises(error, match=match):
        linear_persistent(*change(*make_inputs(7, 72, 40, torch.float32, device)))


def test_availability(device):
    assert is_available(device)
    assert not is_available("meta")
    if device.type == "cpu":  # under the interpreter the kernels run on CPU tensors only
        assert not is_available("cuda")


# ---- GPU only ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("N, K", ODD_SHAPES + [(1152, 384), (768, 768)])
@pytest.mark.parametrize("M", [1, 7, 129, 300])
def test_bf16(M, N, K, activation, device, backend):
    run_checked(*make_inputs(M, N, K, torch.bfloat16, device), activation, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_fp32_precision(allow_tf32, device, backend, monkeypatch):
    """fp32 follows allow_tf32 as cuBLAS does: within twice PyTorch's own error under the same flag (without
    it, IEEE: TF32's 10 mantissa bits would be ~1000x further off)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    x, weight, bias = make_inputs(129, 200, 136, torch.float32, device)
    out = linear_persistent(x, weight, bias, "gelu")
    assert_matches_reference(out, linear_ref, x, weight, bias, "gelu", backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", linear_persistent_configs(True), ids=str)
def test_every_gpu_config(config, dtype, device, backend, monkeypatch):
    """Each config alone, on a shape with partial tiles in M, N and K and several tiles per program."""
    if shared_bytes_estimate(config, dtype.itemsize) > max_shared_bytes(torch.empty(0, device=device)):
        pytest.skip("pruned on this GPU: does not fit shared memory")
    monkeypatch.setattr(persistent_module._linear_persistent, "configs", [config])
    run_checked(*make_inputs(4099, 2312, 776, dtype, device), "gelu", backend)


@pytest.mark.gpu
# fp16 only: each (dtype, shape, token bucket) is a full autotuning sweep; bf16 runs hidden sizes in test_bf16.
@pytest.mark.parametrize("dtype", [torch.float16])
@pytest.mark.parametrize("N, K, activation", BERT_SHAPES)
@pytest.mark.parametrize("M", [4096, 4099])  # 4099 leaves a partial row tile
def test_bert_shapes(M, N, K, activation, dtype, device, backend, autotuned):
    run_checked(*make_inputs(M, N, K, dtype, device), activation, backend)


# ---- compilation for sm_90, without a GPU ---------------------------------------------------------------

def _compile_case(config, dtype, epilogue):
    tiles, num_warps, num_stages = config_constexprs(config)
    element = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp32-tf32": "fp32"}[dtype]
    block_m, block_n, block_k = tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["BLOCK_K"]
    has_bias, activation, has_residual = EPILOGUES[epilogue]
    signature = {
        "x_desc": f"tensordesc<{element}[{block_m}, {block_k}]>",
        "w_desc": f"tensordesc<{element}[{block_n}, {block_k}]>",
        "out_desc": f"tensordesc<{element}[{block_m}, {block_n // tiles['EPILOGUE_SUBTILES']}]>",
        "b_ptr": None, "r_ptr": None, "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32", "FILLING": "i32",
        "stride_rm": "i32", "DTYPE": "constexpr", "HAS_BIAS": "constexpr", "HAS_RESIDUAL": "constexpr",
        "ACTIVATION": "constexpr", "INPUT_PRECISION": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "EPILOGUE_SUBTILES": "constexpr",
    }
    constexprs = {"DTYPE": f"torch.{element}", "ACTIVATION": activation or "none",
                  "INPUT_PRECISION": "ieee" if dtype == "fp32" else "tf32", **tiles}
    _optional_pointers(signature, constexprs, f"*{element}", has_bias, has_residual)
    aligned = [name for name in ("b_ptr", "r_ptr", "N", "K", "stride_rm") if signature[name] != "constexpr"]
    return CompileCase(label=f"{tiles} w{num_warps} s{num_stages} {dtype} {epilogue}",
                       module="fastbert.kernels.linear_persistent", kernel="_linear_persistent_kernel",
                       signature=signature, constexprs=constexprs, num_warps=num_warps, num_stages=num_stages,
                       arch=90, divisible_by_16=aligned)


def test_gpu_configs_compile_without_spills():
    """Every GPU config compiles for sm_90 in fp16 with the GELU and with the residual epilogue, and in
    bf16 with bias alone, within the shared-memory limit and the estimate the pruning rule uses, with wgmma
    and TMA (cp.async.bulk.tensor) in the PTX and no register spilled; fp32 (TF32) on the smallest config
    compiles too."""
    configs = linear_persistent_configs(True)
    plan = [(config, "fp16", epilogue) for config in configs for epilogue in ("gelu", "residual")]
    plan += [(config, "bf16", "bias") for config in configs]
    # fp32 with IEEE products never runs here on a GPU (the launcher hands it to kernels/linear.py).
    plan += [(SMALL_CONFIG, "fp32-tf32", "gelu"), (SMALL_CONFIG, "fp32-tf32", "bias")]
    element_size = {"fp16": 2, "bf16": 2, "fp32-tf32": 4}
    estimate = lambda config, dtype, epilogue: shared_bytes_estimate(config, element_size[dtype],
                                                                     residual=epilogue == "residual")
    # The pruning rule keeps every planned case on an H100: none is silently dropped.
    assert all(estimate(*entry) <= MAX_SHARED_BYTES[90] for entry in plan)
    cases = [_compile_case(*entry) for entry in plan]
    failures = []
    for entry, case, result in zip(plan, cases, compile_cases(cases)):
        dtype = entry[1]
        if not result["ok"]:
            failures.append(f"{case.label}: {result['error']}")
            continue
        if result["shared"] > estimate(*entry):
            failures.append(f"{case.label}: shared {result['shared']} exceeds the estimate {estimate(*entry)}")
        if not result["tma"]:
            failures.append(f"{case.label}: no TMA instruction")
        if dtype in ("fp16", "bf16") and not result["wgmma"]:
            failures.append(f"{case.label}: no wgmma")
        failures.append(spill_failures(case, result))
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)
