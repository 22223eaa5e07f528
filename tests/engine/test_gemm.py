"""The GEMM picker: fastbert's Triton GEMM or cuBLAS, chosen per shape by timing both once."""

import functools
import types

import pytest
import torch

from fastbert.engine.gemm import GemmPicker, torch_glu_linear, torch_linear
from tests.tolerances import ENCODER_ATOL_FP32, assert_matches_reference


def _fake_cuda(tokens, dtype=torch.float16):
    """A stand-in for a CUDA tensor: the picker reads only device, shape and dtype before dispatching."""
    return types.SimpleNamespace(device=torch.device("cuda"), shape=(tokens, 8), dtype=dtype)


class Recorder:
    def __init__(self, name):
        self.name, self.calls = name, 0

    def __call__(self, x, weight, bias, activation=None, residual=None, glu=False):
        self.calls += 1
        return self.name + ("+glu" if glu else "")


@pytest.fixture
def picker(monkeypatch):
    """A picker on a pretend GPU where cuBLAS wins plain GEMMs and Triton wins GEMMs with an activation."""
    triton = Recorder("triton")
    picker = GemmPicker(triton)
    timed = []

    def fake_time(name, x, weight, bias, activation, residual=None, glu=False):
        timed.append((name, x.shape[0], weight.shape, activation) + (("glu",) if glu else ()))
        return {"triton": 2.0, "cublas": 1.0}[name] if activation is None else {"triton": 1.0, "cublas": 3.0}[name]

    monkeypatch.setattr(picker, "_time", fake_time)
    monkeypatch.setattr(picker, "_agrees", lambda name, *args: True)
    monkeypatch.setattr(picker, "operand_at_bucket", lambda x, bucket: _fake_cuda(bucket, x.dtype))
    picker.candidates["cublas"].fn = Recorder("cublas")
    picker.glu_candidates["cublas"].fn = functools.partial(Recorder("cublas"), glu=True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    picker.timed = timed
    return picker


def test_auto_keeps_the_faster_implementation_per_shape(picker):
    weight = torch.empty(16, 8)
    assert picker(_fake_cuda(100), weight, None) == "cublas"
    assert picker(_fake_cuda(100), weight, None, "gelu") == "triton"
    assert len(picker.timed) == 4  # both implementations, for each of the two shapes
    assert picker.choices_for(100) == {"16x8": "cublas", "16x8+gelu": "triton"}


def test_the_residual_variant_is_its_own_shape(picker):
    """With a residual the cuBLAS candidate pays one more kernel (the add) and the Triton one none (fused in
    its epilogue): timed and chosen separately from the plain projection, and the residual reaches the
    implementation that serves the call."""
    weight, residual = torch.empty(16, 8), torch.empty(100, 16)
    picker(_fake_cuda(100), weight, None)
    picker(_fake_cuda(100), weight, None, residual=residual)
    assert len(picker.timed) == 4
    assert set(picker.choices_for(100)) == {"16x8", "16x8+residual"}
    served = []
    picker.candidates["cublas"].fn = lambda *args, residual=None: served.append(residual)
    picker(_fake_cuda(100), weight, None, residual=residual)
    assert served == [residual]


def test_auto_times_each_token_bucket_once(picker):
    weight = torch.empty(16, 8)
    for tokens in (100, 120, 128):  # one power-of-two bucket: timed once
        picker(_fake_cuda(tokens), weight, None)
    assert len(picker.timed) == 2
    picker(_fake_cuda(129), weight, None)  # the next bucket is measured anew
    assert len(picker.timed) == 4
    picker(_fake_cuda(100, torch.bfloat16), weight, None)  # and so is another dtype
    assert len(picker.timed) == 6


def test_a_candidate_that_disagrees_with_cublas_is_never_chosen(picker, monkeypatch):
    monkeypatch.setattr(picker, "_agrees", lambda name, *args: name != "triton")
    with pytest.warns(UserWarning, match="triton: its output disagreed with cuBLAS"):
        assert picker(_fake_cuda(100), torch.empty(16, 8), None, "gelu") == "cublas"  # Triton would be faster
    assert all(name != "triton" for name, _, _, _ in picker.timed)
    assert list(picker.rejected.values()) == [["triton"]]


def test_a_candidate_that_fails_to_run_is_never_chosen(picker, monkeypatch):
    def agrees(name, *args):
        if name == "triton":
            raise RuntimeError("out of resources: shared memory")
        return True

    monkeypatch.setattr(picker, "_agrees", agrees)
    with pytest.warns(UserWarning, match="triton: it failed: RuntimeError"):
        assert picker(_fake_cuda(100), torch.empty(16, 8), None, "gelu") == "cublas"


def test_extra_candidates_compete_where_they_are_supported(picker, monkeypatch):
    from fastbert.engine.gemm import Candidate

    picker.candidates["hopper"] = Candidate(Recorder("hopper"), supports=lambda x, weight: x.shape[0] > 64)
    real_time = picker._time
    monkeypatch.setattr(picker, "_time", lambda name, *args: 0.5 if name == "hopper" else real_time(name, *args))
    assert picker(_fake_cuda(100), torch.empty(16, 8), None) == "hopper"
    assert picker(_fake_cuda(10), torch.empty(16, 8), None) == "cublas"  # not offered at this size


def test_a_shape_won_by_an_extra_candidate_falls_back_where_it_cannot_address_the_operands(picker, monkeypatch):
    from fastbert.engine.gemm import Candidate

    aligned = {"ok": True}
    picker.candidates["hopper"] = Candidate(Recorder("hopper"), supports=lambda x, weight: aligned["ok"])
    monkeypatch.setattr(picker, "_time", lambda name, *args: 0.5 if name == "hopper" else 1.0)
    assert picker(_fake_cuda(100), torch.empty(16, 8), None) == "hopper"
    aligned["ok"] = False  # same shape key, operands TMA cannot address (e.g. a misaligned row view)
    assert picker(_fake_cuda(100), torch.empty(16, 8), None) == "triton"


def test_a_fixed_mode_falls_back_to_triton_where_unsupported(picker):
    from fastbert.engine.gemm import Candidate

    picker.candidates["hopper"] = Candidate(Recorder("hopper"), supports=lambda x, weight: False)
    picker.mode = "hopper"
    assert picker(_fake_cuda(100), torch.empty(16, 8), None) == "triton"


def test_a_shape_first_met_during_capture_is_refused_never_run_untimed(picker, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="first met while a CUDA graph was being captured"):
        picker(_fake_cuda(64), torch.empty(16, 8), None)
    assert picker.timed == [] and picker.choices == {}


def test_a_shape_decided_before_capture_replays_its_choice_inside(picker, monkeypatch):
    weight = torch.empty(16, 8)
    assert picker(_fake_cuda(100), weight, None) == "cublas"  # the eager warm-up decides
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert picker(_fake_cuda(120), weight, None) == "cublas"  # same bucket, inside the capture: no timing
    assert len(picker.timed) == 2


def test_a_shape_is_timed_at_the_token_count_of_its_bucket(picker):
    """A decision serves every M of its power-of-two bucket: timed at the bucket's full M."""
    weight = torch.empty(16, 8)
    picker(_fake_cuda(100), weight, None)
    picker(_fake_cuda(513), weight, None, "gelu")
    assert {m for _, m, _, _ in picker.timed} == {128, 1024}
    assert picker.timings_for(100) == {"16x8": {"triton": 2e6, "cublas": 1e6}}


def test_operand_at_bucket_repeats_real_rows():
    x = torch.arange(12.0).view(3, 4)
    grown = GemmPicker.operand_at_bucket(x, 8)
    assert grown.shape == (8, 4) and torch.equal(grown[:3], x) and torch.equal(grown[3:6], x)
    assert GemmPicker.operand_at_bucket(x, 3) is x


def test_timing_replays_enough_calls_to_be_stable(monkeypatch):
    """One sizing replay of `repeats` calls, then a graph of enough calls for MIN_REPLAY_S, median of SAMPLES."""
    picker = GemmPicker(Recorder("triton"))
    replays = []

    def fake_replays(fn, args, calls, samples):
        replays.append((calls, samples))
        return 2e-6  # a 2 us GEMM

    monkeypatch.setattr(picker, "_replays", fake_replays)
    monkeypatch.setattr(torch.cuda, "device", lambda device: __import__("contextlib").nullcontext())
    assert picker._time("triton", _fake_cuda(128), torch.empty(16, 8), None, None) == 2e-6
    assert replays == [(picker.repeats, 1), (100, picker.SAMPLES)]


@pytest.mark.parametrize("mode", ["triton", "cublas"])
def test_fixed_modes_never_time(picker, mode):
    picker.mode = mode
    assert picker(_fake_cuda(64), torch.empty(16, 8), None) == mode
    assert picker.timed == []


def test_cpu_runs_the_triton_kernel_never_cublas(monkeypatch):
    triton = Recorder("triton")
    for mode in ("auto", "cublas"):
        assert GemmPicker(triton, mode)(torch.zeros(4, 8), torch.zeros(16, 8), None) == "triton"
    assert triton.calls == 2


def test_the_tma_gemm_serves_the_whole_encoder(tmp_path, device):
    """gemm='triton_persistent' routes every projection through kernels/linear_persistent.py (on CPU,
    through the interpreter; on a GPU, sm_90+): the encoder must still match transformers."""
    from fastbert.kernels.linear_persistent import is_available
    from tests.bert_factory import load_fastbert, random_batch, random_bert

    if not is_available(device):
        pytest.skip("linear_persistent needs sm_90+ (or Triton's interpreter)")
    hf_model = random_bert(tmp_path, hidden_size=64, num_attention_heads=2, intermediate_size=96,
                           num_hidden_layers=2)
    model = load_fastbert(tmp_path, "triton", torch.float32, gemm="triton_persistent", cuda_graphs=False)
    picker = model.model.ops.gemm
    persistent = Recorder("unused")
    real = picker.candidates["triton_persistent"].fn
    picker.candidates["triton_persistent"].fn = lambda *args, **kw: (persistent(*args, **kw), real(*args, **kw))[1]
    ids, mask, types = random_batch(hf_model.config.vocab_size, [1, 9, 23], seq_len=24)
    out = model(ids, mask, types)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert persistent.calls == 4 * 2  # QKV, attention output, FFN in and out, in both layers
    real_tokens = mask.bool()
    error = (out.last_hidden_state.float().cpu()[real_tokens] - expected.last_hidden_state[real_tokens]).abs().max()
    assert error.item() <= ENCODER_ATOL_FP32


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="gemm must be one of"):
        GemmPicker(Recorder("triton"), "cutlass")


@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh", "relu"])
def test_cublas_path_computes_the_same_projection(activation, has_residual):
    from tests.kernels.references import linear_ref

    x, weight, bias = torch.randn(7, 24), torch.randn(40, 24) / 5, torch.randn(40)
    residual = torch.randn(7, 40) if has_residual else None
    kept = residual.clone() if has_residual else None
    assert_matches_reference(torch_linear(x, weight, bias, activation, residual), linear_ref, x, weight, bias,
                             activation, residual=residual, backend="interpreter")
    if has_residual:
        assert torch.equal(residual, kept)  # the residual is not overwritten


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_on_a_gpu_matches_the_reference(dtype, backend):
    from fastbert.kernels.linear import linear
    from tests.kernels.references import linear_ref

    picker = GemmPicker(linear)
    for n, k, activation, has_residual in [(2304, 768, None, False), (3072, 768, "gelu", False),
                                           (768, 3072, None, True)]:
        x = torch.randn(1000, k, device="cuda", dtype=dtype)
        weight = (torch.randn(n, k, device="cuda") / k**0.5).to(dtype)
        bias = torch.randn(n, device="cuda", dtype=dtype)
        residual = torch.randn(1000, n, device="cuda", dtype=dtype) if has_residual else None
        assert_matches_reference(picker(x, weight, bias, activation, residual), linear_ref, x, weight, bias,
                                 activation, residual=residual, backend=backend)
    assert set(picker.choices_for(1000).values()) <= {"triton", "cublas"} and len(picker.choices) == 3
    assert all(t["triton"] > 0 and t["cublas"] > 0 for t in picker.timings.values())


def test_glu_is_its_own_shape_with_its_own_candidates(picker):
    """A glu=True call is keyed apart from the plain GEMM on the same weight, and only fastbert's GLU kernel
    and cuBLAS-then-chunk compete: an extra candidate (the persistent kernel) has no GLU epilogue (the fake
    timer has no entry for it, so timing it would fail)."""
    picker.candidates["hopper"] = types.SimpleNamespace(fn=Recorder("hopper"), supports=lambda x, w: True)
    weight = torch.empty(64, 8)
    assert picker(_fake_cuda(100), weight, None, "gelu", glu=True) == "triton+glu"
    assert picker(_fake_cuda(100), weight, None, None, glu=True) == "cublas+glu"
    assert {entry[0] for entry in picker.timed} == {"triton", "cublas"}
    assert all(entry[-1] == "glu" for entry in picker.timed)
    assert picker.choices_for(100) == {"64x8+glu+gelu": "triton", "64x8+glu": "cublas"}


def test_a_fixed_mode_without_a_glu_version_runs_the_triton_glu_kernel():
    picker = GemmPicker(Recorder("triton"), mode="hopper",
                        extra={"hopper": types.SimpleNamespace(fn=Recorder("hopper"), supports=lambda x, w: True)})
    assert picker(_fake_cuda(8), torch.empty(16, 8), None, "silu", glu=True) == "triton+glu"
    assert picker(_fake_cuda(8), torch.empty(16, 8), None, "silu") == "hopper"


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_cublas_glu_path_is_transformers_chunk_and_multiply(activation):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(5, 12), torch.randn(2 * 7, 12), torch.randn(2 * 7)
    value, gate = torch.nn.functional.linear(x, weight, bias).chunk(2, dim=-1)
    expected = getattr(torch.nn.functional, activation)(value) * gate
    torch.testing.assert_close(torch_glu_linear(x, weight, bias, activation), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="residual must be None with glu=True"):
        torch_glu_linear(x, weight, bias, activation, residual=torch.zeros(5, 7))
