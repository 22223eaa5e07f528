"""kernels/linear.py with glu=True (ModernBERT's gated FFN-in, #17): out = act(x @ W[:N].T + b[:N]) *
(x @ W[N:].T + b[N:]) against transformers' chunk-and-multiply in plain torch, odd shapes, NaN-padded
inputs, the unsplit path taken where split-K would be, argument validation, and GPU compilation."""

import importlib

import pytest
import torch

from fastbert.kernels.linear import fits_glu, linear, linear_configs, shared_bytes_estimate, split_k_configs
from tests.kernels.compile_check import MAX_SHARED_BYTES, compile_cases
from tests.kernels.linear_cases import make_inputs
from tests.kernels.references import linear_glu_ref
from tests.kernels.test_linear import _compile_case, spill_failures
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded


def _check(out, x, weight, bias, activation, backend):
    assert out.dtype == x.dtype and out.is_contiguous() and out.shape == (x.shape[0], weight.shape[0] // 2)
    assert_matches_reference(out, linear_glu_ref, x, weight, bias, activation, backend=backend)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("N, K", [(33, 45), (70, 96)])
@pytest.mark.parametrize("M", [1, 7, 130])
def test_linear_glu_fp32(M, N, K, has_bias, activation, device, backend):
    x, weight, bias = make_inputs(M, 2 * N, K, torch.float32, device, bias=has_bias)
    _check(linear(x, weight, bias, activation, glu=True), x, weight, bias, activation, backend)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_linear_glu_fp16(activation, device, backend):
    x, weight, bias = make_inputs(67, 2 * 65, 129, torch.float16, device)
    _check(linear(x, weight, bias, activation, glu=True), x, weight, bias, activation, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pad", [nan_padded, nan_row_padded])
def test_linear_glu_nan_padded_inputs(pad, dtype, device, backend):
    """A read past either half of the weight, past a row of x or past the bias brings NaN in."""
    x, weight, bias = make_inputs(67, 2 * 33, 45, dtype, device)
    out = linear(pad(x), pad(weight), nan_padded(bias), "gelu", glu=True)
    _check(out, x, weight, bias, "gelu", backend)


def test_linear_glu_without_activation(device, backend):
    """activation None: the bilinear product value * gate."""
    x, weight, bias = make_inputs(7, 2 * 33, 45, torch.float32, device)
    _check(linear(x, weight, bias, None, glu=True), x, weight, bias, None, backend)


@pytest.mark.parametrize("num_sms", [8, 132])
def test_linear_glu_where_split_k_would_be_chosen(num_sms, device, backend):
    """Few tokens on many SMs: a plain linear would split K; GLU runs the plan's tile unsplit."""
    x, weight, bias = make_inputs(3, 2 * 33, 300, torch.float32, device)
    plain = linear(x, weight, bias, "gelu", num_sms=num_sms)
    assert plain.shape == (3, 66)
    _check(linear(x, weight, bias, "gelu", glu=True, num_sms=num_sms), x, weight, bias, "gelu", backend)


def test_linear_glu_empty(device):
    x, weight, bias = make_inputs(0, 2 * 33, 45, torch.float16, device)
    assert linear(x, weight, bias, "gelu", glu=True).shape == (0, 33)


def test_linear_glu_validation(device):
    x, weight, bias = make_inputs(7, 2 * 33, 45, torch.float32, device)
    residual = torch.zeros(7, 33, device=device)
    with pytest.raises(ValueError, match="residual must be None with glu=True"):
        linear(x, weight, bias, "gelu", residual=residual, glu=True)
    with pytest.raises(ValueError, match="glu=True needs an even number of weight rows"):
        linear(x, weight[:65], bias[:65], "gelu", glu=True)
    with pytest.raises(ValueError, match=r"bias has shape \(33,\); expected \(66,\)"):
        linear(x, weight, bias[:33], "gelu", glu=True)
    with pytest.raises(TypeError, match="glu must be a bool"):
        linear(x, weight, bias, "gelu", glu=1)
    with pytest.raises(ValueError, match="activation must be one of"):
        linear(x, weight, bias, "swish", glu=True)


@pytest.mark.slow
def test_linear_glu_compiles_for_gpus():
    """GLU=True (with bias and GELU, as ModernBERT's FFN-in) compiles for sm_80 and sm_90 in fp16 within the
    shared-memory limit, without spills on sm_90, for every autotuned and split-K tile the GLU pruning rule
    (two weight tiles of shared memory, fits_glu's outputs per thread) lets the launcher use."""
    usable = [config for config in linear_configs(True) + split_k_configs() if fits_glu(config)]
    plan = [(config, arch) for config in usable for arch in (80, 90)
            if shared_bytes_estimate(config, 2, glu=True) <= MAX_SHARED_BYTES[arch]]
    assert any(arch == 80 for _, arch in plan) and any(arch == 90 for _, arch in plan)
    cases = [_compile_case(config, "fp16", "gelu", arch, glu=True) for config, arch in plan]
    failures = []
    for case, result in zip(cases, compile_cases(cases), strict=True):
        if not result["ok"]:
            failures.append(f"{case.label}: {result['error']}")
            continue
        if result["shared"] > MAX_SHARED_BYTES[case.arch]:
            failures.append(f"{case.label}: shared {result['shared']} > {MAX_SHARED_BYTES[case.arch]}")
        if not result["mma"]:
            failures.append(f"{case.label}: no mma")
        if case.arch == 90:
            failures.append(spill_failures(case, result))
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)



@pytest.mark.parametrize("num_sms", [4, 10**6])
def test_linear_glu_plans_an_unsplit_tile(num_sms, monkeypatch, device, backend):
    """Where a plain linear splits K (K=300 gives 5 K blocks), GLU's plan keeps splits == 1: the largest
    split-K tile that fills num_sms unsplit, else the one with the most programs; and the result is right."""
    linear_module = importlib.import_module("fastbert.kernels.linear")
    plans = []
    real = linear_module.plan_launch
    monkeypatch.setattr(linear_module, "plan_launch", lambda *a, **kw: plans.append(real(*a, **kw)) or plans[-1])
    x, weight, bias = make_inputs(7, 2 * 33, 300, torch.float32, device)
    linear(x, weight, bias, "gelu", num_sms=num_sms)
    assert plans[-1].split.splits > 1
    out = linear(x, weight, bias, "gelu", glu=True, num_sms=num_sms)
    assert plans[-1].filling == 0 and plans[-1].split.splits == 1
    _check(out, x, weight, bias, "gelu", backend)
