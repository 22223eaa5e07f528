"""Pre-Ampere GPUs (a T4, sm_75: the most common inference GPU in clouds): every kernel compiles for sm_75
in fp16 and fp32 within its 64 KB of shared memory per block, with the configs the pruning rule leaves
there; bfloat16 and the TMA GEMM are refused with clear errors. Proved without a GPU (triton.compile with
a GPUTarget; tests/kernels/compile_check.py)."""

import importlib

import pytest
import torch

from tests.kernels.compile_check import compile_cases

SM75, SM75_SHARED = 75, 65536
ELEMENT_SIZES = {torch.float16: 2, torch.float32: 4}

attention = importlib.import_module("fastbert.kernels.attention")
linear = importlib.import_module("fastbert.kernels.linear")
common = importlib.import_module("fastbert.kernels._common")
layer_norm = importlib.import_module("fastbert.kernels.layer_norm")
embeddings = importlib.import_module("fastbert.kernels.embeddings")


def _t4_pruning_rule(dtype, precision, shared_bytes):
    """The launchers' own pruning rule (_common.pruning_rule) on a pretend T4."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "max_shared_bytes", lambda tensor: SM75_SHARED)
        patch.setattr(common, "is_interpreter", lambda: False)
        return common.pruning_rule(torch.empty(0, dtype=dtype), precision, shared_bytes)


def _attention_kept(dtype, head_dim):
    """What attention's pruning keeps on a T4, with the products' precision a launch uses (IEEE for fp32)."""
    size = ELEMENT_SIZES[dtype]
    fits = _t4_pruning_rule(dtype, common.dot_precision(dtype),
                            lambda config: attention.shared_bytes_estimate(config, head_dim, size))
    return attention.fitting_configs(attention.attention_configs(True), fits)


def _linear_kept(dtype):
    """The pruning rule on a T4 over every config linear may launch (the autotuned ones and the split-K
    tiles; fp32 with TF32 products, as the compile check builds it)."""
    fits = _t4_pruning_rule(dtype, "tf32", lambda config: linear.shared_bytes_estimate(config, ELEMENT_SIZES[dtype]))
    return [config for config in linear.linear_configs(True) + linear.split_k_configs() if fits(config)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_pruning_rule_leaves_configs_that_fit_a_t4(dtype):
    for head_dim in attention.HEAD_DIMS:
        kept = _attention_kept(dtype, head_dim)
        assert kept and all(attention.shared_bytes_estimate(c, head_dim, ELEMENT_SIZES[dtype]) <= SM75_SHARED
                            for c in kept), (head_dim, kept)
    kept = _linear_kept(dtype)
    assert kept and all(linear.shared_bytes_estimate(c, ELEMENT_SIZES[dtype]) <= SM75_SHARED for c in kept)


def test_every_kernel_compiles_for_sm75_in_fp16_and_fp32():
    """One subprocess, ten compiles (sm_75 builds are the slowest part of the compile checks): per kernel
    and dtype the most demanding config the launcher can use on a T4 (the largest by the estimate among
    those the pruning rule keeps; BERT's LayerNorm/embeddings width), and the fp32 GEMM with TF32 allowed.
    Each fits 64 KB as compiled, and the estimate behind the pruning never undercounts it."""
    from tests.kernels import test_attention, test_embeddings, test_layer_norm, test_linear

    cases, estimates = [], []
    for dtype in (torch.float16, torch.float32):
        size = ELEMENT_SIZES[dtype]
        head_dim = 128 if dtype == torch.float32 else 64
        config = max(_attention_kept(dtype, head_dim), key=lambda c: attention.shared_bytes_estimate(c, head_dim, size))
        cases.append(test_attention._compile_case(config, head_dim, dtype, SM75))
        estimates.append(attention.shared_bytes_estimate(config, head_dim, size))
        config = max(_linear_kept(dtype), key=lambda c: linear.shared_bytes_estimate(c, size))
        name = {torch.float16: "fp16", torch.float32: "fp32-tf32"}[dtype]
        cases.append(test_linear._compile_case(config, name, "gelu", SM75))
        estimates.append(linear.shared_bytes_estimate(config, size))
        cases.append(test_linear._reduce_case("gelu", "fp16" if dtype == torch.float16 else "fp32", SM75))
        estimates.append(None)
        cases.append(test_layer_norm._compile_case(layer_norm.config_for(4096, 768), dtype, SM75, True))
        estimates.append(None)
        cases.append(test_embeddings._compile_case(embeddings.config_for(768), dtype, torch.int64, SM75, True))
        estimates.append(None)
    failures = []
    for case, estimate, result in zip(cases, estimates, compile_cases(cases), strict=True):
        if not result["ok"]:
            failures.append(f"{case.label}: {result['error']}")
        elif result["shared"] > SM75_SHARED:
            failures.append(f"{case.label}: {result['shared']} bytes of shared memory > 64 KB")
        elif estimate is not None and result["shared"] > estimate:
            failures.append(f"{case.label}: {result['shared']} bytes > the pruning estimate {estimate}")
        elif result["local_memory_spill"]:
            failures.append(f"{case.label}: spills registers to local memory")
    assert not failures, "\n".join(failures)


def test_bfloat16_is_refused_below_ampere(monkeypatch):
    """At model construction and in every launcher's argument check, with a message naming the fix."""
    from fastbert.engine.runtime import resolve_device_dtype_backend
    from fastbert.kernels import _validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match=r"bfloat16 needs a GPU of compute capability 8.0.*Tesla T4 is sm_75.*float16"):
        resolve_device_dtype_backend("cuda:0", "bfloat16", "triton")
    assert resolve_device_dtype_backend("cuda:0", "float16", "triton")[1] == torch.float16

    monkeypatch.setattr(_validate, "_capability", lambda index: (7, 5))
    with pytest.raises(TypeError, match="x is bfloat16, which needs a GPU of compute capability 8.0.*sm_75"):
        _validate.check_bf16_supported("x", torch.device("cuda", 0))
    monkeypatch.setattr(_validate, "_capability", lambda index: (8, 0))
    _validate.check_bf16_supported("x", torch.device("cuda", 0))  # an A100: fine


def test_the_tma_gemm_is_refused_below_hopper(monkeypatch):
    persistent = importlib.import_module("fastbert.kernels.linear_persistent")
    if persistent.is_interpreter():
        # Under the interpreter only CPU tensors run; a CUDA device is never available there.
        assert not persistent.is_available(torch.device("cuda", 0))
    monkeypatch.setattr(persistent, "is_interpreter", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    if persistent.TensorDescriptor is not None:
        assert not persistent.is_available(torch.device("cuda", 0))
