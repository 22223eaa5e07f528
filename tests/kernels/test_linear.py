"""kernels/linear.py: GEMM + bias + activation against the fp32 reference, edge shapes, strided and
NaN-padded inputs, argument validation, and compilation of every GPU config for sm_80 and sm_90."""

import importlib
import math

import pytest
import torch

from fastbert.kernels._common import fits_registers, max_shared_bytes
from fastbert.kernels.linear import linear, linear_configs, shared_bytes_estimate, split_k_configs
from tests.conftest import pinned_linear_config
from tests.kernels.compile_check import MAX_SHARED_BYTES, CompileCase, compile_cases, config_constexprs
from tests.kernels.linear_cases import ACTIVATIONS, BERT_SHAPES, check, make_inputs
from tests.kernels.references import linear_ref
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded

# The module itself: fastbert.kernels re-exports the function under the same name `linear`.
linear_module = importlib.import_module("fastbert.kernels.linear")
# Odd sizes that are multiples of no tile (K=45 and 129 also exercise the masked K loop), then hidden
# sizes of MiniLM (384) and BERT-base (768) kept small enough for the interpreter.
ODD_SHAPES = [(67, 45), (130, 96), (384, 129)]
HIDDEN_SHAPES = [(1152, 384), (384, 1536), (768, 768)]
# The config every GPU test runs unless it requests `autotuned` (tests/conftest.py pins it): the smallest
# tile, which fits every dtype's shared memory on A100 and H100.
SMALL_CONFIG = pinned_linear_config()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N, K", ODD_SHAPES + HIDDEN_SHAPES)
@pytest.mark.parametrize("M", [1, 7, 129])
def test_linear_shapes(M, N, K, dtype, device, backend):
    x, weight, bias = make_inputs(M, N, K, dtype, device)
    check(linear(x, weight, bias, "gelu"), x, weight, bias, "gelu", backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_epilogue(activation, has_bias, dtype, device, backend):
    x, weight, bias = make_inputs(65, 130, 96, dtype, device, bias=has_bias)
    check(linear(x, weight, bias, activation), x, weight, bias, activation, backend)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's numpy exp; 1/(1+inf) = 0
def test_gelu_tanh_saturates(device, backend):
    """Large |x| must give x (or 0), not NaN from an overflowing exp."""
    x = torch.tensor([[-200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0]], device=device)
    weight = torch.eye(7, device=device)
    out = linear(x, weight, activation="gelu_tanh")
    assert_matches_reference(out, linear_ref, x, weight, None, "gelu_tanh", backend=backend)


def test_fp16_accumulates_in_fp32(device):
    """2050 ones: an fp16 running sum sticks at 2048 (its spacing there is 2); fp32 gives 2050 exactly."""
    x = torch.ones(1, 2050, dtype=torch.float16, device=device)
    weight = torch.ones(1, 2050, dtype=torch.float16, device=device)
    assert linear(x, weight).item() == 2050.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pad", [nan_padded, nan_row_padded])
def test_nan_padded_inputs(pad, dtype, device, backend):
    x, weight, bias = make_inputs(67, 130, 45, dtype, device)
    out = linear(pad(x), pad(weight), nan_padded(bias), "gelu")
    check(out, x, weight, bias, "gelu", backend)


def test_row_strided_x(device, backend):
    """x as a column slice of a wider buffer (as Q, K or V sit inside a fused QKV output): row stride
    3*K, and a data pointer that starts mid-row."""
    M, N, K = 129, 67, 96
    buffer = torch.randn(M, 3 * K, device=device)
    weight = torch.randn(N, K, device=device) / math.sqrt(K)
    for x in (buffer[:, :K], buffer[:, K : 2 * K], buffer[:, 2 * K + 1 :][:, : K - 1]):
        assert x.stride(0) > x.shape[1]
        out = linear(x, weight[:, : x.shape[1]].contiguous(), None, "relu")
        assert_matches_reference(out, linear_ref, x, weight[:, : x.shape[1]], None, "relu", backend=backend)


def test_empty_m_returns_without_launch(device, monkeypatch):
    monkeypatch.setattr(linear_module, "_linear", None)  # a launch would fail on None[grid]
    x, weight, bias = make_inputs(0, 67, 45, torch.float16, device)
    out = linear(x, weight, bias, "gelu")
    assert out.shape == (0, 67) and out.dtype == torch.float16 and out.device == x.device


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda x, w, b: (x[None], w, b), ValueError, "x must have 2 dimensions"),
        (lambda x, w, b: (x, w[0], b), ValueError, "weight must have 2 dimensions"),
        (lambda x, w, b: (x, w, b[None]), ValueError, "bias must have 1 dimensions"),
        (lambda x, w, b: (x, w[:, :-1].contiguous(), b), ValueError, r"weight has shape \(67, 44\).*x's K=45"),
        (lambda x, w, b: (x, w, b[:-1]), ValueError, r"bias has shape \(66,\)"),
        (lambda x, w, b: (x.t().contiguous().t(), w, b), ValueError, "x must have stride 1"),
        (lambda x, w, b: (x, w.t().contiguous().t(), b), ValueError, "weight must have stride 1"),
        (lambda x, w, b: (x, w.half(), b), TypeError, "weight has dtype"),
        (lambda x, w, b: (x, w, b.half()), TypeError, "bias has dtype"),
        (lambda x, w, b: (x.int(), w, b), TypeError, "x has dtype int32"),
        (lambda x, w, b: (x.tolist(), w, b), TypeError, "x must be a torch.Tensor"),
        (lambda x, w, b: (x, w.to("meta"), b), ValueError, "weight is on meta"),
        (lambda x, w, b: (x, w, b.to("meta")), ValueError, "bias is on meta"),
    ],
)
def test_validation(change, error, match, device):
    x, weight, bias = make_inputs(7, 67, 45, torch.float32, device)
    with pytest.raises(error, match=match):
        linear(*change(x, weight, bias))


@pytest.mark.parametrize("activation", ["swish", "GELU", ""])  # config names are mapped in fastbert, not here
def test_unknown_activation(activation, device):
    x, weight, bias = make_inputs(7, 67, 45, torch.float32, device)
    with pytest.raises(ValueError, match="activation"):
        linear(x, weight, bias, activation)


# ---- GPU only ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("N, K", ODD_SHAPES + HIDDEN_SHAPES)
@pytest.mark.parametrize("M", [1, 7, 129])
def test_linear_bf16(M, N, K, activation, device, backend):
    x, weight, bias = make_inputs(M, N, K, torch.bfloat16, device)
    check(linear(x, weight, bias, activation), x, weight, bias, activation, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("allow_tf32", [False, True])
@pytest.mark.parametrize("N, K", ODD_SHAPES + HIDDEN_SHAPES)
def test_linear_fp32_precision(N, K, allow_tf32, device, backend, monkeypatch):
    """fp32 follows torch.backends.cuda.matmul.allow_tf32: without it the products are IEEE fp32 and must
    be within twice cuBLAS's IEEE error (TF32 would be ~1000x further off); with it, within twice cuBLAS's
    TF32 error (the flag is still set while PyTorch's own result is computed)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    x, weight, bias = make_inputs(129, N, K, torch.float32, device)
    out = linear(x, weight, bias, "gelu")
    assert_matches_reference(out, linear_ref, x, weight, bias, "gelu", backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", linear_configs(True), ids=str)
def test_every_gpu_config(config, dtype, device, backend, monkeypatch):
    """Each config alone, on a shape that leaves partial tiles in M, N and K."""
    if shared_bytes_estimate(config, dtype.itemsize) > max_shared_bytes(torch.empty(0, device=device)):
        pytest.skip("pruned on this GPU: does not fit shared memory")
    monkeypatch.setattr(linear_module._linear, "configs", [config])
    x, weight, bias = make_inputs(300, 270, 200, dtype, device)
    check(linear(x, weight, bias, "gelu"), x, weight, bias, "gelu", backend)


@pytest.mark.gpu
# fp16 only: each (dtype, shape, token bucket) is a full autotuning sweep, and bf16 runs the same shapes
# in test_linear_bf16 with the pinned config.
@pytest.mark.parametrize("dtype", [torch.float16])
@pytest.mark.parametrize("N, K, activation", BERT_SHAPES)
@pytest.mark.parametrize("M", [4096, 4099])  # 4099 leaves a partial row tile
def test_linear_bert_shapes(M, N, K, activation, dtype, device, backend, autotuned):
    x, weight, bias = make_inputs(M, N, K, dtype, device)
    check(linear(x, weight, bias, activation), x, weight, bias, activation, backend)


# ---- compilation for real GPUs, without one ------------------------------------------------------------

# What a BERT launch specialises as multiples of 16: fresh tensors (16-byte aligned) and hidden sizes.
ALIGNED_ARGS = ["x_ptr", "w_ptr", "b_ptr", "r_ptr", "out_ptr", "N", "K", "stride_xm", "stride_wn", "stride_rm",
                "stride_om"]
POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32", "fp32-tf32": "*fp32"}
# The epilogues BERT runs: QKV (bias), FFN-in (bias + GELU), attention-out and FFN-out (bias + residual), and
# the split-K partial products (no epilogue, fp32 partials: the reduce kernel applies it).
EPILOGUES = {"bias": (True, None, False), "gelu": (True, "gelu", False), "residual": (True, None, True),
             "partial": (False, None, False)}


def _optional_pointers(signature, constexprs, pointer, has_bias, has_residual):
    """b_ptr / r_ptr: a pointer of the operands' type, or None (compiled out), as the heuristics decide."""
    for name, present, flag in (("b_ptr", has_bias, "HAS_BIAS"), ("r_ptr", has_residual, "HAS_RESIDUAL")):
        signature[name] = pointer if present else "constexpr"
        constexprs[flag] = present
        if not present:
            constexprs[name] = None


def _compile_case(config, dtype, epilogue, arch, glu=False):
    tiles, num_warps, num_stages = config_constexprs(config)
    pointer = POINTER[dtype]
    has_bias, activation, has_residual = EPILOGUES[epilogue]
    signature = {
        "x_ptr": pointer, "w_ptr": pointer, "b_ptr": None, "r_ptr": None,
        "out_ptr": "*fp32" if epilogue == "partial" else pointer,
        "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32", "FILLING": "i32",
        "stride_xm": "i32", "stride_wn": "i32", "stride_rm": "i32", "stride_om": "i32",
        "HAS_BIAS": "constexpr", "HAS_RESIDUAL": "constexpr", "ACTIVATION": "constexpr", "GLU": "constexpr",
        "INPUT_PRECISION": "constexpr", "EVEN_K": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "EPILOGUE_SUBTILES": "constexpr",
    }
    constexprs = {"ACTIVATION": activation or "none", "INPUT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
                  "EVEN_K": True, "GLU": glu, **tiles}
    _optional_pointers(signature, constexprs, pointer, has_bias, has_residual)
    return CompileCase(label=f"{tiles} w{num_warps} s{num_stages} {dtype} {epilogue} glu={glu} sm_{arch}",
                       module="fastbert.kernels.linear", kernel="_linear_kernel", signature=signature,
                       constexprs=constexprs, num_warps=num_warps, num_stages=num_stages, arch=arch,
                       divisible_by_16=[a for a in ALIGNED_ARGS if signature[a] != "constexpr"])


def _reduce_case(epilogue, dtype="fp16", arch=90):
    """The split-K reduction with the tile the launcher uses (up to 16 rows by 128 columns, 4 warps)."""
    pointer = POINTER[dtype]
    has_bias, activation, has_residual = EPILOGUES[epilogue]
    signature = {"partials_ptr": "*fp32", "b_ptr": None, "r_ptr": None, "out_ptr": pointer,
                 "M": "i32", "N": "i32", "SPLITS": "i32", "stride_rm": "i32", "stride_om": "i32",
                 "HAS_BIAS": "constexpr", "HAS_RESIDUAL": "constexpr", "ACTIVATION": "constexpr",
                 "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
    constexprs = {"ACTIVATION": activation or "none", "BLOCK_M": 16, "BLOCK_N": 128}
    _optional_pointers(signature, constexprs, pointer, has_bias, has_residual)
    aligned = ["partials_ptr", "b_ptr", "r_ptr", "out_ptr", "N", "stride_rm", "stride_om"]
    return CompileCase(label=f"split-K reduce {dtype} {epilogue} sm_{arch}", module="fastbert.kernels.linear",
                       kernel="_linear_split_reduce_kernel", signature=signature, constexprs=constexprs,
                       num_warps=4, num_stages=1, arch=arch,
                       divisible_by_16=[a for a in aligned if signature[a] != "constexpr"])


def spill_failures(case, result):
    """Why a compiled case spills registers (ptxas stack frame, STL/LDL instructions), or None."""
    if result["stack_bytes"] or result["spill_instructions"]:
        return (f"{case.label}: spills ({result['registers']} registers, {result['stack_bytes']} bytes of stack, "
                f"{result['spill_instructions']} local loads/stores)")
    return None


def test_gpu_configs_compile_without_spills():
    """Every config the launcher can use compiles for sm_80 and sm_90 within the shared-memory limit, with
    tensor-core instructions (wgmma on sm_90) for fp16 and bf16, and on sm_90 with no register spilled in
    any epilogue BERT runs: every autotuned config with GELU and with the residual add, every split-K tile
    with GELU (the tiles alone may fill the GPU) and as a partial product, and the split-K reduction. One
    subprocess compiles all cases in sequence, so the cross product is sampled: sm_80 gets every autotuned
    config with the residual epilogue, then the other dtypes, activations and fp32 precisions run on the
    smallest and largest tiles."""
    configs = linear_configs(True)
    largest = max(configs, key=lambda c: shared_bytes_estimate(c, 2))
    fitting_fp32 = [c for c in configs if shared_bytes_estimate(c, 4) <= MAX_SHARED_BYTES[90]]
    largest_fp32 = max(fitting_fp32, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] // c.num_warps)
    plan = [(config, "fp16", epilogue, 90) for config in configs for epilogue in ("gelu", "residual")]
    plan += [(config, "fp16", epilogue, 90) for config in split_k_configs() for epilogue in ("gelu", "partial")]
    plan += [(config, "fp16", "residual", 80) for config in configs]
    # IEEE fp32 products (CUDA-core FMA): only the configs the register rule lets the launcher use.
    plan += [(config, "fp32", "gelu", 90) for config in configs + split_k_configs() if fits_registers(config, "ieee")]
    plan += [
        (largest, "bf16", "gelu", 90), (largest, "bf16", "bias", 80),
        (SMALL_CONFIG, "fp32", "gelu", 80), (largest_fp32, "fp32-tf32", "gelu", 90),
    ]
    element_size = {"fp16": 2, "bf16": 2, "fp32": 4, "fp32-tf32": 4}
    # The pruning rule keeps every planned case: none is silently dropped.
    assert all(shared_bytes_estimate(c, element_size[d]) <= MAX_SHARED_BYTES[arch] for c, d, _, arch in plan)
    cases = [_compile_case(*entry) for entry in plan] + [_reduce_case("gelu"), _reduce_case("residual")]
    failures = []
    for case, result in zip(cases, compile_cases(cases)):
        if not result["ok"]:
            failures.append(f"{case.label}: {result['error']}")
            continue
        if result["shared"] > MAX_SHARED_BYTES[case.arch]:
            failures.append(f"{case.label}: shared {result['shared']} > {MAX_SHARED_BYTES[case.arch]}")
        if case.arch == 90:
            failures.append(spill_failures(case, result))
        if case.kernel == "_linear_split_reduce_kernel":
            continue
        x_type = case.signature["x_ptr"]
        tensor_cores = x_type != "*fp32" or case.constexprs["INPUT_PRECISION"] == "tf32"
        if tensor_cores and not result["mma"]:
            failures.append(f"{case.label}: no mma")
        wgmma_tile = case.constexprs["BLOCK_M"] >= 64
        if x_type != "*fp32" and case.arch == 90 and wgmma_tile and not result["wgmma"]:
            failures.append(f"{case.label}: no wgmma")
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)
