import pytest
import torch

from fastbert.kernels.layer_norm import MAX_N, layer_norm
from tests.kernels.compile_check import ARCHS, MAX_SHARED_BYTES, CompileCase, compile_cases, config_constexprs
from tests.kernels.launch_configs import layer_norm_configs
from tests.kernels.references import layer_norm_ref
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded

TORCH_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _inputs(M, N, dtype, device, offset=0.0, param_dtype=None):
    param_dtype = param_dtype or dtype
    x = (torch.randn(M, N, device=device) + offset).to(dtype)
    residual = torch.randn(M, N, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(N, device=device)).to(param_dtype)
    bias = (0.1 * torch.randn(N, device=device)).to(param_dtype)
    return x, residual, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("M", [1, 7, 129])
@pytest.mark.parametrize("N", [64, 384, 768, 1000, 1024, 4099, 8192])
def test_layer_norm_matches_reference(N, M, with_residual, dtype, device, backend):
    if M == 129 and N > 1024:
        M = 33  # keep wide rows cheap under the interpreter
    x, residual, weight, bias = _inputs(M, N, dtype, device)
    residual = residual if with_residual else None
    out = layer_norm(x, weight, bias, 1e-12, residual=residual)
    assert out.dtype == dtype and out.shape == (M, N) and out.is_contiguous()
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 1])
def test_layer_norm_eps(eps, device, backend):
    x, residual, weight, bias = _inputs(7, 384, torch.float32, device)
    x = x * 1e-3  # variance ~1e-6: eps 1e-5 and 1 visibly change the result
    assert_matches_reference(layer_norm(x, weight, bias, eps), layer_norm_ref, x, weight, bias, eps, backend=backend)


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_layer_norm_fp16_large_mean(offset, device, backend):
    """|mean| >> std: E[x^2] - E[x]^2 would cancel; fp32 two-pass statistics stay exact."""
    x, residual, weight, bias = _inputs(33, 768, torch.float16, device, offset=offset)
    out = layer_norm(x, weight, bias, 1e-12, residual=residual)
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)


def test_layer_norm_constant_rows_give_bias(device):
    """Zero variance with eps 1e-12: rstd is 1e6 times an exact zero, so the output is the bias, not NaN."""
    x = torch.full((5, 768), 3.0, dtype=torch.float16, device=device)
    _, _, weight, bias = _inputs(5, 768, torch.float16, device)
    out = layer_norm(x, weight, bias, 1e-12)
    torch.testing.assert_close(out, bias.expand(5, -1), atol=0, rtol=0)


def test_layer_norm_fp32_params_with_fp16_input(device, backend):
    x, residual, weight, bias = _inputs(7, 768, torch.float16, device, param_dtype=torch.float32)
    out = layer_norm(x, weight, bias, 1e-12, residual=residual)
    assert out.dtype == torch.float16
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)


@pytest.mark.parametrize("N", [384, 1000])
def test_layer_norm_nan_padded_and_row_strided(N, device, backend):
    """Reads outside x, residual, weight or bias would bring NaN in; strided rows must be honoured."""
    x, residual, weight, bias = _inputs(7, N, torch.float16, device)
    x_p, residual_p = nan_row_padded(x, extra_columns=5), nan_row_padded(residual, extra_columns=11)
    weight_p, bias_p = nan_padded(weight), nan_padded(bias)
    out = layer_norm(x_p, weight_p, bias_p, 1e-12, residual=residual_p)
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)
    out = layer_norm(nan_padded(x), weight_p, bias_p, 1e-12, residual=nan_padded(residual))
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)


@pytest.mark.parametrize("N", [1, 7])
def test_layer_norm_narrow_rows(N, device, backend):
    """Widths below the smallest tile (64): masked; a single column normalises to the bias."""
    x, residual, weight, bias = _inputs(7, N, torch.float32, device)
    out = layer_norm(x, weight, bias, 1e-5, residual=residual)
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-5, residual, backend=backend)


def test_layer_norm_empty(device):
    x, _, weight, bias = _inputs(0, 768, torch.float16, device)
    out = layer_norm(x, weight, bias, 1e-12)
    assert out.shape == (0, 768) and out.dtype == torch.float16


def test_layer_norm_validation(device):
    x, residual, weight, bias = _inputs(4, 64, torch.float16, device)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        layer_norm(x[0], weight, bias, 1e-12)
    with pytest.raises(ValueError, match="x must have 1..8192 columns"):
        wide = torch.zeros(2, MAX_N + 1, dtype=torch.float16, device=device)
        layer_norm(wide, torch.ones(MAX_N + 1, device=device), torch.zeros(MAX_N + 1, device=device), 1e-12)
    with pytest.raises(ValueError, match="x must have stride 1"):
        layer_norm(x.t(), weight[:4], bias[:4], 1e-12)
    with pytest.raises(TypeError, match="x has dtype"):
        layer_norm(x.to(torch.int32), weight, bias, 1e-12)
    with pytest.raises(ValueError, match="residual has shape"):
        layer_norm(x, weight, bias, 1e-12, residual=residual[:3])
    with pytest.raises(TypeError, match="residual has dtype"):
        layer_norm(x, weight, bias, 1e-12, residual=residual.float())
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\)"):
        layer_norm(x, weight[:32], bias, 1e-12)
    with pytest.raises(TypeError, match="bias has dtype"):
        layer_norm(x, weight, bias.to(torch.bfloat16), 1e-12)
    with pytest.raises(ValueError, match="weight must have stride 1"):
        layer_norm(x, torch.ones(128, dtype=torch.float16, device=device)[::2], bias, 1e-12)
    # 1e-50 flushes to 0 in fp32 and 10**400 does not fit a float: both would otherwise reach the kernel.
    for bad_eps in (0.0, -1e-5, float("nan"), float("inf"), 1e-50, 10**400):
        with pytest.raises(ValueError, match="eps must be a positive"):
            layer_norm(x, weight, bias, bad_eps)
    for bad_eps in (None, True, "1e-12", torch.tensor(1e-12)):
        with pytest.raises(TypeError, match="eps must be a positive"):
            layer_norm(x, weight, bias, bad_eps)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, N", [(4096, 768), (1000, 384), (257, 1024), (33, 4099), (65, 8192), (3, 64)])
def test_layer_norm_gpu(M, N, dtype, device, backend):
    x, residual, weight, bias = _inputs(M, N, dtype, device, offset=10.0)
    out = layer_norm(x, weight, bias, 1e-12, residual=residual)
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)


def _compile_case(config, dtype, arch, has_residual, n_is_one=False, has_bias=True):
    """n_is_one: Triton turns an int argument equal to 1 into a constexpr; compile that path too."""
    ptr = f"*{TORCH_NAME[dtype]}"
    signature = {
        "x_ptr": ptr, "residual_ptr": ptr, "weight_ptr": ptr, "bias_ptr": ptr, "out_ptr": ptr,
        "M": "i32", "N": "constexpr" if n_is_one else "i32",
        "stride_x_row": "i32", "stride_residual_row": "i32", "stride_out_row": "i32",
        "eps": "fp32", "HAS_RESIDUAL": "constexpr", "HAS_BIAS": "constexpr",
        "BLOCK_N": "constexpr", "ROWS_PER_PROGRAM": "constexpr",
    }
    constexprs, num_warps, num_stages = config_constexprs(config)
    constexprs["HAS_RESIDUAL"] = has_residual
    constexprs["HAS_BIAS"] = has_bias
    if n_is_one:
        constexprs["N"] = 1
    label = f"{TORCH_NAME[dtype]} sm_{arch} {constexprs} warps={num_warps}"
    return CompileCase(label, "fastbert.kernels.layer_norm", "_layer_norm_kernel", signature, constexprs,
                       num_warps, num_stages, arch)


def test_layer_norm_compiles_for_gpus():
    """Every config the launcher can pick, with and without residual, fp16 on sm_80/sm_90; bf16 and fp32 on
    the widest and narrowest; N specialised to 1."""
    configs = layer_norm_configs()
    cases = [_compile_case(config, torch.float16, arch, has_residual)
             for config in configs for arch in ARCHS for has_residual in (False, True)]
    cases += [_compile_case(config, dtype, arch, True)
              for config in (configs[0], configs[-1])
              for dtype in (torch.bfloat16, torch.float32) for arch in ARCHS]
    cases += [_compile_case(configs[0], torch.float16, arch, False, n_is_one=True) for arch in ARCHS]
    for case, result in zip(cases, compile_cases(cases), strict=True):
        assert result["ok"], f"{case.label}: {result.get('error')}"
        assert result["shared"] <= MAX_SHARED_BYTES[case.arch], case.label
        assert not result["local_memory_spill"], f"{case.label} spills registers to local memory"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("M, N", [(1, 64), (7, 1000), (33, 768)])
def test_layer_norm_without_bias(M, N, with_residual, dtype, device, backend):
    """LayerNorm(bias=False) (ModernBERT): bias None against F.layer_norm(..., bias=None); NaN around every
    input, so a read of the absent bias or past a row shows up."""
    x, residual, weight, _ = _inputs(M, N, dtype, device)
    residual = residual if with_residual else None
    out = layer_norm(nan_padded(x), nan_padded(weight), None, 1e-5,
                     residual=nan_padded(residual) if residual is not None else None)
    assert out.dtype == dtype and out.shape == (M, N)
    assert_matches_reference(out, layer_norm_ref, x, weight, None, 1e-5, residual, backend=backend)


@pytest.mark.slow
def test_layer_norm_without_bias_compiles_for_gpus():
    configs = layer_norm_configs()
    cases = [_compile_case(config, torch.float16, arch, True, has_bias=False)
             for config in (configs[0], configs[-1]) for arch in ARCHS]
    for case, result in zip(cases, compile_cases(cases), strict=True):
        assert result["ok"], f"{case.label}: {result.get('error')}"
        assert not result["local_memory_spill"], f"{case.label} spills registers to local memory"
