"""Grid coverage of the GEMMs (kernels/linear.py, kernels/linear_persistent.py): every BERT projection at
128..512 tokens launches at least one program per SM on an H100/H200 (132 SMs) and an A100 (108), through the
autotuned tiles where one fills the GPU and split K otherwise; and the split-K path (fp32 partials, then a
reduction that applies bias, activation and residual once) against a float64 reference under the interpreter."""

import importlib

import pytest
import torch

from fastbert.kernels._common import fits_registers
from fastbert.kernels._gemm_grid import plan_launch, plan_split_k, tiles_of
from fastbert.kernels.linear import linear, linear_configs, shared_bytes_estimate, split_k_configs
from fastbert.kernels.linear_persistent import is_available, linear_persistent, linear_persistent_configs
from tests.kernels.compile_check import MAX_SHARED_BYTES
from tests.kernels.linear_cases import ACTIVATIONS, BERT_SHAPES, make_inputs
from tests.kernels.references import linear_ref
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded

linear_module = importlib.import_module("fastbert.kernels.linear")
persistent_module = importlib.import_module("fastbert.kernels.linear_persistent")
persistent_shared = persistent_module.shared_bytes_estimate
# SM counts and shared-memory limits of the GPUs the grid is sized for.
GPUS = {"H100/H200": (132, MAX_SHARED_BYTES[90]), "A100": (108, MAX_SHARED_BYTES[80])}
TOKENS = [128, 256, 384, 512]


@pytest.fixture
def needs_sm90(device):
    """linear_persistent runs on sm_90+ (or the interpreter): skip on older GPUs."""
    if not is_available(device):
        pytest.skip("linear_persistent needs compute capability 9.0+")


def _fits(limit, element_size=2, precision="tf32"):
    return lambda config: fits_registers(config, precision) and shared_bytes_estimate(config, element_size) <= limit


def _fewest_programs(plan, M, N, configs):
    """The fewest programs a launch plan can launch (configs: the autotuner's list its mask refers to)."""
    if plan.split is not None:
        return plan.split.programs(M, N)
    return min(tiles_of(config, M, N) for i, config in enumerate(configs) if plan.filling >> i & 1)


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("N, K, activation", BERT_SHAPES)
def test_every_projection_fills_the_gpu(N, K, activation, gpu):
    """The launcher's decision, as it is made on the GPU (fp16, that GPU's shared memory): every config
    it may launch gives at least one program per SM, and a split never leaves a slice without K blocks."""
    num_sms, limit = GPUS[gpu]
    configs = linear_configs(True)
    for M in TOKENS:
        plan = plan_launch(M, N, K, num_sms, configs, split_k_configs(), _fits(limit))
        assert _fewest_programs(plan, M, N, configs) >= num_sms, (M, N, K, plan)
        if plan.split is not None:
            assert plan.split.splits <= K // plan.split.config.kwargs["BLOCK_K"]


class _Recorder:
    """Stands in for a kernel launch: records the grid function and arguments, runs nothing."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("N, K, activation", [shape for shape in BERT_SHAPES if shape[0] % 8 == 0])
def test_persistent_fills_the_gpu_or_hands_over(N, K, activation, gpu, device, monkeypatch, needs_sm90):
    """linear_persistent's launcher with the GPU config list: it launches its persistent grid only where every
    config the autotuner may pick has a tile for each SM (one program per SM), and hands the call to
    kernels/linear.py (whose plan fills the GPU, tested above) otherwise."""
    num_sms, _ = GPUS[gpu]
    configs = linear_persistent_configs(True)
    monkeypatch.setattr(persistent_module._linear_persistent, "configs", configs)
    launches, handed_over = _Recorder(), []
    monkeypatch.setattr(persistent_module, "_linear_persistent_launch", launches)
    monkeypatch.setattr(persistent_module, "linear", lambda *args, **kwargs: handed_over.append(kwargs))
    for M in TOKENS:
        x, weight, bias = make_inputs(M, N, K, torch.float16, device)
        for residual in (None, torch.zeros(M, N, device=device, dtype=torch.float16)):
            launches.launches.clear()
            handed_over.clear()
            linear_persistent(x, weight, bias, activation, residual, num_sms=num_sms)
            if handed_over:
                assert handed_over == [{"num_sms": num_sms}] and not launches.launches
                continue
            ((grid, args, _),) = launches.launches
            filling = args[9]
            chosen = [c for i, c in enumerate(configs) if filling >> i & 1]
            assert chosen and all(grid(c.kwargs)[0] == num_sms for c in chosen), (M, N, K)


def test_plan_prefers_large_tiles_and_even_splits():
    """FFN-out of BERT-base at 128 tokens: 128x128 tiles give 6 programs; 22 splits of 48 K blocks (2 or 3
    each) give 132. MiniLM's 384x384 attention output needs 16-row tiles to reach 132 programs with two K
    blocks per split."""
    plan = plan_split_k(128, 768, 3072, 132, split_k_configs())
    assert (plan.config.kwargs["BLOCK_M"], plan.config.kwargs["BLOCK_N"], plan.splits) == (128, 128, 22)
    plan = plan_split_k(128, 384, 384, 132, split_k_configs())
    assert (plan.config.kwargs["BLOCK_M"], plan.config.kwargs["BLOCK_N"], plan.splits) == (16, 64, 3)
    # Few rows: row tiles shrink to M's power of two (at least 16), so a batch-1 query wastes no rows.
    assert plan_split_k(7, 768, 768, 132, split_k_configs()).config.kwargs["BLOCK_M"] == 16
    # Nothing fills 1000 SMs at this shape: the plan with the most programs (one K block per split, here
    # the 32-deep blocks of the last-resort config).
    plan = plan_split_k(16, 64, 128, 1000, split_k_configs())
    assert plan.splits == 4 and plan.programs(16, 64) == 4 and plan.config.kwargs["BLOCK_K"] == 32


def test_ieee_fp32_uses_only_tiles_within_the_register_rule():
    configs = linear_configs(True)
    for N, K, _ in BERT_SHAPES:
        for M in TOKENS:
            plan = plan_launch(M, N, K, 132, configs, split_k_configs(), _fits(MAX_SHARED_BYTES[90], 4, "ieee"))
            used = [plan.split.config] if plan.split else [c for i, c in enumerate(configs) if plan.filling >> i & 1]
            assert all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 32 * c.num_warps for c in used)


def _check(out, x, weight, bias, activation, residual, backend):
    assert out.dtype == x.dtype and out.is_contiguous()
    # float64 oracle; fp16 rounds once at the store (fp32 accumulation throughout).
    assert_matches_reference(out, linear_ref, x, weight, bias, activation, residual=residual, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M, N, K", [(1, 72, 1000), (7, 130, 200), (129, 67, 450), (129, 384, 384)])
def test_split_k_shapes(M, N, K, dtype, device, backend):
    """Odd shapes (K a multiple of no block, partial row and column tiles) on 132 SMs, where each splits K."""
    x, weight, bias = make_inputs(M, N, K, dtype, device)
    residual = torch.randn(M, N, device=device).to(dtype)
    assert plan_split_k(M, N, K, 132, split_k_configs()).splits > 1
    out = linear(x, weight, bias, "gelu", residual, num_sms=132)
    _check(out, x, weight, bias, "gelu", residual, backend)


@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_split_k_epilogue(activation, has_bias, has_residual, device, backend):
    """Bias, activation and residual applied once, after the partial sums (GELU of partial sums would differ
    at O(1))."""
    M, N, K = 33, 96, 260
    x, weight, bias = make_inputs(M, N, K, torch.float32, device, bias=has_bias)
    residual = torch.randn(M, N, device=device) if has_residual else None
    out = linear(x, weight, bias, activation, residual, num_sms=64)
    _check(out, x, weight, bias, activation, residual, backend)


@pytest.mark.parametrize("num_sms", [1, 132], ids=["tiles", "split-k"])
def test_deterministic_and_reads_nothing_outside(num_sms, device, backend):
    """NaN around every input (the residual a row view of a wider buffer) catches an out-of-bounds read;
    two runs give the same bits."""
    M, N, K = 65, 130, 300
    x, weight, bias = make_inputs(M, N, K, torch.float16, device)
    residual = torch.randn(M, N, device=device).half()
    args = (nan_row_padded(x), nan_padded(weight), nan_padded(bias), "gelu", nan_row_padded(residual))
    first = linear(*args, num_sms=num_sms)
    _check(first, x, weight, bias, "gelu", residual, backend)
    assert torch.equal(first, linear(*args, num_sms=num_sms))


@pytest.mark.parametrize("kernel", [linear, linear_persistent])
def test_subtiled_epilogue(kernel, device, backend, monkeypatch):
    if kernel is linear_persistent and not is_available(device):
        pytest.skip("linear_persistent needs compute capability 9.0+")
    """EPILOGUE_SUBTILES=2 (the epilogue in column halves, as the widest GPU tiles run it) gives the same
    result, the second half's columns and the partial last column tile included."""
    module = linear_module if kernel is linear else persistent_module
    autotuner = module._linear if kernel is linear else module._linear_persistent
    halves = [module._config(64, 64, 64, 4, 1, subtiles=2)]
    monkeypatch.setattr(autotuner, "configs", halves)
    x, weight, bias = make_inputs(72, 136, 40, torch.float32, device)
    residual = torch.randn(72, 136, device=device)
    for activation in ("gelu", None):
        out = kernel(x, weight, bias, activation, residual, num_sms=2)
        _check(out, x, weight, bias, activation, residual, backend)


def test_persistent_hands_small_products_to_split_k(device, backend, monkeypatch, needs_sm90):
    """Too few tiles for every SM: linear_persistent runs kernels/linear.py's split-K launch, same result."""
    calls = []
    monkeypatch.setattr(persistent_module, "linear", lambda *a, **k: calls.append(k) or linear(*a, **k))
    x, weight, bias = make_inputs(7, 72, 200, torch.float32, device)
    residual = torch.randn(7, 72, device=device)
    out = linear_persistent(x, weight, bias, "relu", residual, num_sms=132)
    assert calls == [{"num_sms": 132}]
    _check(out, x, weight, bias, "relu", residual, backend)


@pytest.mark.parametrize("num_sms", [0, -1, 1.5, True, "132"])
def test_num_sms_must_be_a_positive_int(num_sms, device):
    x, weight, bias = make_inputs(7, 72, 40, torch.float32, device)
    with pytest.raises(ValueError, match="num_sms"):
        linear(x, weight, bias, num_sms=num_sms)


@pytest.mark.parametrize(
    "residual, error, match",
    [
        (lambda r: r[:-1], ValueError, r"residual has shape \(6, 72\); expected \(7, 72\)"),
        (lambda r: r.double(), TypeError, "residual has dtype"),
        (lambda r: r.t().contiguous().t(), ValueError, "residual must have stride 1"),
        (lambda r: r[None], ValueError, "residual must have 2 dimensions"),
    ],
)
def test_residual_validation(residual, error, match, device):
    x, weight, bias = make_inputs(7, 72, 40, torch.float32, device)
    with pytest.raises(error, match=match):
        linear(x, weight, bias, residual=residual(torch.randn(7, 72, device=device)))


@pytest.mark.gpu
@pytest.mark.parametrize("N, K, activation", BERT_SHAPES)
@pytest.mark.parametrize("M", [128, 384])
def test_bert_shapes_at_few_tokens(M, N, K, activation, device, backend, autotuned):
    """The real launcher on the real GPU (its own SM count, the autotuner free): split K or small tiles, with
    the residual where BERT adds one (the projections without an activation)."""
    x, weight, bias = make_inputs(M, N, K, torch.float16, device)
    residual = torch.randn(M, N, device=device).half() if activation is None else None
    _check(linear(x, weight, bias, activation, residual), x, weight, bias, activation, residual, backend)
