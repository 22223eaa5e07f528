"""Varlen flash attention against the plain-torch reference: ragged batches, empty sequences, every
supported head_dim, q/k/v as strided views of one NaN-surrounded QKV buffer, custom scales, large scores,
argument validation, each GPU config alone (on a GPU), and a compile check of every GPU config for sm_80
and sm_90."""

import importlib
import math

import pytest
import torch
import triton

from fastbert.kernels._common import max_shared_bytes
from fastbert.kernels.attention import HEAD_DIMS, attention, attention_configs, shared_bytes_estimate
from tests.conftest import pinned_attention_config
from tests.kernels.compile_check import MAX_SHARED_BYTES, CompileCase, compile_cases, config_constexprs
from tests.kernels.references import attention_ref
from tests.tolerances import assert_matches_reference, nan_padded

# The module itself: fastbert.kernels re-exports the function under the same name `attention`.
attention_module = importlib.import_module("fastbert.kernels.attention")


def _cu_seqlens(lengths, device):
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def _packed_qkv(lengths, heads, head_dim, dtype, device, magnitude=1.0):
    """q, k, v as the views fastbert passes: slices of one [T, 3, heads, head_dim] buffer (token stride
    3*heads*head_dim), itself inside NaN padding so any read past it poisons the output."""
    tokens = sum(lengths)
    qkv = (torch.randn(tokens, 3, heads, head_dim, device=device) * magnitude).to(dtype)
    q, k, v = nan_padded(qkv).unbind(1)
    return q, k, v, _cu_seqlens(lengths, device)


def _check(q, k, v, cu_seqlens, backend, scale=None):
    out = attention(q, k, v, cu_seqlens, max(int(x) for x in cu_seqlens.diff().tolist()), scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert_matches_reference(out, attention_ref, q, k, v, cu_seqlens, scale=scale, backend=backend)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "lengths, heads, head_dim",
    [
        ([1, 17, 128, 300], 2, 64),  # length 1, a partial key tile, whole tiles, several query tiles
        ([1], 1, 32),  # a single one-token sequence
        ([7, 0, 33], 3, 32),  # an empty sequence in the middle: its programs exit at once
        ([7, 0, 33], 3, 64),
        ([7, 0, 33], 3, 80),  # head_dim padded to 128 by masking
        ([7, 0, 33], 3, 96),
        ([7, 0, 33], 3, 128),
        ([0, 65, 2], 1, 64),  # empty first sequence; 65 = one full tile plus one key
    ],
)
def test_attention_ragged(lengths, heads, head_dim, dtype, device, backend):
    q, k, v, cu_seqlens = _packed_qkv(lengths, heads, head_dim, dtype, device)
    _check(q, k, v, cu_seqlens, backend)


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_attention_custom_scale(scale, device, backend):
    # fastbert folds 1/sqrt(head_dim) into the Q weights and passes scale=1.0.
    q, k, v, cu_seqlens = _packed_qkv([19, 70], 2, 64, torch.float32, device)
    _check(q, k, v, cu_seqlens, backend, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_large_scores(dtype, device, backend):
    # Entries ~7 make scaled scores ~N(0, 50^2): exp without a running max would overflow, and the
    # masked tail tiles (lengths 45 and 71) are where -inf - -inf would produce NaN.
    q, k, v, cu_seqlens = _packed_qkv([45, 71], 2, 64, dtype, device, magnitude=math.sqrt(50.0))
    out = _check(q, k, v, cu_seqlens, backend)
    assert torch.isfinite(out.float()).all()


def test_attention_independent_strides(device, backend):
    # Each of q, k, v with its own layout: a QKV-buffer view, a contiguous tensor, a head-major view.
    lengths, heads, head_dim = [23, 40], 3, 64
    q, _, _, cu_seqlens = _packed_qkv(lengths, heads, head_dim, torch.float32, device)
    k = torch.randn(sum(lengths), heads, head_dim, device=device)
    v = nan_padded(torch.randn(heads, sum(lengths), head_dim, device=device)).transpose(0, 1)
    assert v.stride() == (head_dim, sum(lengths) * head_dim, 1)
    _check(q, k, v, cu_seqlens, backend)


@pytest.mark.parametrize("check_indices", [True, False])
def test_attention_ignores_excess_max_seqlen(check_indices, device, backend):
    # max_seqlen only bounds the sequences: unchecked it sizes the grid (the extra programs exit at once),
    # checked the longest sequence found does.
    q, k, v, cu_seqlens = _packed_qkv([9, 30], 2, 32, torch.float32, device)
    out = attention(q, k, v, cu_seqlens, 200, check_indices=check_indices)
    assert_matches_reference(out, attention_ref, q, k, v, cu_seqlens, backend=backend)


@pytest.mark.parametrize("lengths", [[], [0, 0]])
def test_attention_empty(lengths, device):
    q, k, v, cu_seqlens = _packed_qkv(lengths, 2, 64, torch.float16, device)
    out = attention(q, k, v, cu_seqlens, 0)
    assert out.shape == (0, 2, 64) and out.dtype == torch.float16


def _valid_args(device):
    q, k, v, cu_seqlens = _packed_qkv([3, 5], 2, 32, torch.float32, device)
    return {"q": q, "k": k, "v": v, "cu_seqlens": cu_seqlens, "max_seqlen": 5}


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: {"q": torch.randn(8, 2, 64, device=a["q"].device)[..., ::2]}, ValueError,
         "q must have stride 1 in its last dimension"),
        (lambda a: {"v": torch.randn(8, 2, 64, device=a["v"].device)}, ValueError, "v has shape"),
        (lambda a: {"k": a["k"][:, :1]}, ValueError, "k has shape .* but q has"),
        (lambda a: {"k": a["k"][:7]}, ValueError, "k has shape"),
        (lambda a: {"v": a["v"].half()}, TypeError, "v has dtype"),
        (lambda a: {"q": a["q"].double()}, TypeError, "q has dtype float64"),
        (lambda a: {"q": a["q"][0]}, ValueError, "q must have 3 dimensions"),
        (lambda a: {"q": a["q"].cpu().numpy()}, TypeError, "q must be a torch.Tensor"),
        (lambda a: {"k": a["k"].to("meta")}, ValueError, "k is on meta"),
        (lambda a: {"q": torch.randn(8, 2, 48, device=a["q"].device), "k": torch.randn(8, 2, 48, device=a["q"].device),
                    "v": torch.randn(8, 2, 48, device=a["q"].device)}, ValueError, "head_dim 48"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"].long()}, TypeError, "cu_seqlens has dtype int64"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"].float()}, TypeError, "cu_seqlens has dtype float32"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"][None]}, ValueError, "cu_seqlens must have 1 dimensions"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"].to("meta")}, ValueError, "cu_seqlens is on meta"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"][:0]}, ValueError, "cu_seqlens must hold at least one"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"][:1]}, ValueError, "cu_seqlens describes no sequence"),
        (lambda a: {"max_seqlen": 5.0}, TypeError, "max_seqlen must be a Python int"),
        (lambda a: {"max_seqlen": torch.tensor(5)}, TypeError, "max_seqlen must be a Python int"),
        (lambda a: {"max_seqlen": 0}, ValueError, "max_seqlen must be at least"),
        (lambda a: {"scale": -1.0}, ValueError, "scale must be a positive finite fp32"),
        (lambda a: {"scale": float("nan")}, ValueError, "scale must be a positive finite fp32"),
        (lambda a: {"scale": 1e-300}, ValueError, "scale must be a positive finite fp32"),  # flushes to 0
        (lambda a: {"scale": 10**400}, ValueError, "too large for a float"),
        (lambda a: {"scale": 3e38}, ValueError, r"scale \* log2\(e\) must be"),  # overflows once scaled
        (lambda a: {"scale": torch.tensor(1.0)}, TypeError, "scale must be a positive float"),
        (lambda a: {"max_seqlen": 2**40}, ValueError, "max_seqlen must fit"),
        (lambda a: {"check_indices": 1}, TypeError, "check_indices must be a bool"),
        (lambda a: {"cu_seqlens": torch.tensor([0, 3, 3, 8, 8], dtype=torch.int32)[::2]}, ValueError,
         "cu_seqlens must have stride 1"),
        (lambda a: {"cu_seqlens": a["cu_seqlens"].to_sparse()}, ValueError, "cu_seqlens must be a dense"),
        (lambda a: {"q": a["q"].contiguous()._neg_view()}, ValueError, "q is a lazily negated"),
    ],
)
def test_attention_validation(change, error, match, device):
    args = _valid_args(device)
    args.update(change(args))
    with pytest.raises(error, match=match):
        attention(**args)


@pytest.mark.parametrize(
    "bounds, max_seqlen, match",
    [
        ([0, 4, 20], 16, "cu_seqlens must end at the number of tokens T=8, got 20"),  # past the tokens
        ([0, 3, 5], 3, "must end at the number of tokens T=8, got 5"),  # short of them
        ([1, 3, 8], 5, "cu_seqlens must start at 0, got 1"),
        ([-2, 3, 8], 5, "cu_seqlens must start at 0, got -2"),
        ([0, 6, 3, 8], 6, r"cu_seqlens must never decrease, got cu_seqlens\[1\]=6 > cu_seqlens\[2\]=3"),
        ([0, 3, 8], 4, r"max_seqlen=4 is less than the longest sequence \(5 tokens\)"),
        ([0, 8], 7, r"max_seqlen=7 is less than the longest sequence \(8 tokens\)"),
        # A drop of more than 2**31 wraps around in int32 arithmetic and would look like a long sequence.
        ([0, 2**31 - 1, -2, 8], 2**31 - 1, r"cu_seqlens must never decrease, got cu_seqlens\[1\]=2147483647"),
    ],
)
def test_attention_rejects_inconsistent_cu_seqlens(bounds, max_seqlen, match, device):
    """Contents that would read or write outside q, k, v and out (a segfault under the interpreter, an
    illegal memory access on a GPU) or silently drop keys: checked before the launch."""
    args = _valid_args(device)
    args.update(cu_seqlens=torch.tensor(bounds, dtype=torch.int32, device=device), max_seqlen=max_seqlen)
    with pytest.raises(ValueError, match=match):
        attention(**args)


def test_attention_check_indices_false_skips_the_read_back(device, backend, monkeypatch):
    """The encoder's call: valid cu_seqlens give the same answer without the data-dependent check."""
    def fail(*args):
        raise AssertionError("check_cu_seqlens ran")

    args = _valid_args(device)
    expected = attention(**args)
    monkeypatch.setattr(attention_module, "check_cu_seqlens", fail)
    out = attention(**args, check_indices=False)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_attention_configs():
    assert len(attention_configs(False)) == 1
    configs = attention_configs(True)
    for config in configs:
        # tl.dot needs tiles of at least 16; multiples of 4 warps let sm_90 use wgmma.
        assert config.kwargs["BLOCK_M"] >= 16 and config.kwargs["BLOCK_N"] >= 16 and config.num_warps % 4 == 0
    for head_dim in HEAD_DIMS:
        for element_size in (2, 4):
            assert any(shared_bytes_estimate(c, head_dim, element_size) <= MAX_SHARED_BYTES[80] for c in configs)
            # The config GPU tests are pinned to skips pruning, so it must fit every case on an A100.
            assert shared_bytes_estimate(pinned_attention_config(), head_dim, element_size) <= MAX_SHARED_BYTES[80]


_SCALAR_ARGS = ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_ot", "stride_oh")


def _compile_case(config, head_dim, dtype, arch):
    tiles, num_warps, num_stages = config_constexprs(config)
    pointer = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    signature = {name: pointer for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}
    signature.update({"cu_seqlens_ptr": "*i32", "bias_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32",
                      "scale_log2e": "fp32", "bias_radius": "i32", "window": "i32", "SEQLEN_BUCKET": "i32",
                      "PROGRAMS_BUCKET": "i32"})
    signature.update({name: "i32" for name in _SCALAR_ARGS})
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim),
                  "INPUT_PRECISION": "ieee" if dtype == torch.float32 else "tf32", **tiles,
                  "HAS_BIAS": False, "HAS_WINDOW": False, "HAS_ROTARY": False}
    signature.update({name: "constexpr" for name in constexprs})
    label = f"sm_{arch} {dtype} head_dim={head_dim} {tiles} warps={num_warps} stages={num_stages}"
    return CompileCase(label, "fastbert.kernels.attention", "_attention", signature, constexprs,
                       num_warps, num_stages, arch)


def test_attention_compiles_for_gpus():
    element_sizes = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}
    configs = attention_configs(True)
    cases = []
    for arch in (80, 90):
        for head_dim in HEAD_DIMS:
            fitting = [c for c in configs if shared_bytes_estimate(c, head_dim, 2) <= MAX_SHARED_BYTES[arch]]
            if head_dim not in (64, 128):
                # Every config at BERT's 64 and at the largest 128; elsewhere the most demanding one that
                # fits, which keeps this test's compile time (one subprocess, serial) near a minute.
                fitting = [max(fitting, key=lambda c: shared_bytes_estimate(c, head_dim, 2))]
            cases.extend(_compile_case(config, head_dim, torch.float16, arch) for config in fitting)
        for dtype in (torch.bfloat16, torch.float32):
            cases.append(_compile_case(configs[0], 64, dtype, arch))
    # The config every GPU test is pinned to, at its widest case on the smallest shared memory.
    cases.append(_compile_case(pinned_attention_config(), max(HEAD_DIMS), torch.float32, 80))
    # The pruning rule keeps every config at BERT's head_dim 64 in half precision.
    assert sum(c.constexprs["HEAD_DIM"] == 64 and c.signature["q_ptr"] == "*fp16" for c in cases) == 2 * len(configs)
    results = compile_cases(cases)
    for case, result in zip(cases, results):
        assert result["ok"], f"{case.label}: {result.get('error')}"
        assert result["shared"] <= MAX_SHARED_BYTES[case.arch], f"{case.label}: {result['shared']} bytes"
        # The estimate behind the pruning rule must not undercount what the compiler allocates.
        element_size = element_sizes[{"*fp16": torch.float16, "*bf16": torch.bfloat16,
                                      "*fp32": torch.float32}[case.signature["q_ptr"]]]
        config = triton.Config({"BLOCK_M": case.constexprs["BLOCK_M"], "BLOCK_N": case.constexprs["BLOCK_N"]},
                               num_warps=case.num_warps, num_stages=case.num_stages)
        assert result["shared"] <= shared_bytes_estimate(config, case.constexprs["HEAD_DIM"], element_size), case.label
        if case.signature["q_ptr"] != "*fp32":
            # wgmma needs a warpgroup tile of 64 query rows; the 32-row configs for small launches use
            # mma.sync on sm_90 too (still tensor cores).
            wgmma_tile = case.arch == 90 and case.constexprs["BLOCK_M"] >= 64
            tensor_core = "wgmma" if wgmma_tile else "mma"
            assert result[tensor_core], f"{case.label}: no {tensor_core} in the PTX"


# GPU only: bf16 (the interpreter's bf16 arithmetic is wrong), each config alone, and BERT-base shapes
# through the real autotuner (every other GPU test runs the one config tests/conftest.py pins).


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_attention_bf16(head_dim, device, backend):
    q, k, v, cu_seqlens = _packed_qkv([1, 17, 0, 128, 300], 4, head_dim, torch.bfloat16, device)
    _check(q, k, v, cu_seqlens, backend)


@pytest.mark.gpu
# A power of two and a masked head_dim: the other head_dims run the pinned config in every other test,
# and each (config, head_dim) pair is a compile (~1-2 s) on the short GPU sessions this suite gets.
@pytest.mark.parametrize("head_dim", [64, 96])
@pytest.mark.parametrize("config", attention_configs(True), ids=str)
def test_every_gpu_config(config, head_dim, device, backend, monkeypatch):
    """Each config alone, in fp16: length 1, a partial key tile, whole tiles and several query tiles."""
    if shared_bytes_estimate(config, head_dim, 2) > max_shared_bytes(torch.empty(0, device=device)):
        pytest.skip("pruned on this GPU: does not fit shared memory")
    monkeypatch.setattr(attention_module._attention, "configs", [config])
    q, k, v, cu_seqlens = _packed_qkv([1, 17, 128, 300], 2, head_dim, torch.float16, device)
    _check(q, k, v, cu_seqlens, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seqlen, tokens", [(128, 4096), (512, 16384)])
def test_attention_bert_base(seqlen, tokens, dtype, device, backend, autotuned):
    q, k, v, cu_seqlens = _packed_qkv([seqlen] * (tokens // seqlen), 12, 64, dtype, device)
    _check(q, k, v, cu_seqlens, backend)


@pytest.mark.gpu
def test_attention_ragged_large_fp32(device, backend):
    lengths = torch.randint(1, 513, (40,)).tolist()
    q, k, v, cu_seqlens = _packed_qkv(lengths, 12, 64, torch.float32, device)
    _check(q, k, v, cu_seqlens, backend)


@pytest.mark.gpu
def test_attention_never_synchronises(device, autotuned):
    """The launch users repeat: the autotuner's cached choice (test_attention_bert_base tuned this key)."""
    q, k, v, cu_seqlens = _packed_qkv([128] * 8, 12, 64, torch.float16, device)
    attention(q, k, v, cu_seqlens, 128)  # a first call may autotune, which synchronises
    torch.cuda.set_sync_debug_mode("error")
    try:
        attention(q, k, v, cu_seqlens, 128)
    finally:
        torch.cuda.set_sync_debug_mode("default")
