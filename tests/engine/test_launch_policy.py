"""Launch policies chosen for speed: attention tuned per launch size, LayerNorm several rows per program.
(Kernel numerics are tests/kernels/*; here: which config a launch gets, and that every GPU config's
multi-row path is right, run through the interpreter.)"""

import importlib

import pytest
import torch

from tests.kernels.launch_configs import layer_norm_configs
from tests.kernels.references import layer_norm_ref
from tests.tolerances import assert_matches_reference, nan_padded, nan_row_padded

# The modules (fastbert.kernels re-exports functions of the same names).
attention_module = importlib.import_module("fastbert.kernels.attention")
layer_norm_module = importlib.import_module("fastbert.kernels.layer_norm")


def test_attention_key_separates_batch_one_from_batch_32():
    """1x128 and 32x128 of BERT-base (12 heads) share the length bucket but not the program bucket, so
    each gets its own autotuned config."""
    bucket = attention_module.program_count_bucket
    assert bucket(1, 12, 128) != bucket(32, 12, 128)
    assert bucket(1, 12, 128) <= 128 < bucket(32, 12, 128)
    # Monotone in every factor, and bounded: the key space stays small (each key is a tuning sweep).
    sizes = [bucket(b, h, s) for b, h, s in [(1, 1, 1), (1, 12, 128), (8, 12, 128), (32, 12, 128), (128, 16, 512)]]
    assert sizes == sorted(sizes) and len({bucket(b, 12, s) for b in range(1, 257) for s in (16, 128, 512)}) <= 4


def test_attention_launch_passes_the_program_bucket(monkeypatch):
    seen = []

    class FakeLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(args[12])  # PROGRAMS_BUCKET, after SEQLEN_BUCKET

    monkeypatch.setattr(attention_module, "_attention", FakeLaunch())
    for batch in (1, 32):
        q = torch.zeros(batch * 128, 12, 64)
        cu_seqlens = torch.arange(0, batch * 128 + 1, 128, dtype=torch.int32)
        attention_module.attention(q, q, q, cu_seqlens, 128)
    bucket = attention_module.program_count_bucket
    assert seen == [bucket(1, 12, 128), bucket(32, 12, 128)]


def test_attention_autotune_key_includes_the_program_bucket():
    assert {"PROGRAMS_BUCKET", "SEQLEN_BUCKET"} <= set(attention_module._attention.keys)


@pytest.mark.parametrize("M, N, rows", [(4096, 768, 2), (4096, 384, 4), (128, 768, 1), (200, 384, 1),
                                        (4096, 4096, 1), (100000, 64, 32)])
def test_layer_norm_rows_per_program_by_width_and_launch_size(M, N, rows):
    config = layer_norm_module.config_for(M, N, gpu=True)
    assert config.kwargs["ROWS_PER_PROGRAM"] == rows
    assert config.kwargs["BLOCK_N"] == max(64, 1 << (N - 1).bit_length())
    assert config.num_warps >= 1
    assert any(config.kwargs == c.kwargs and config.num_warps == c.num_warps
               for c in layer_norm_configs()), "a launch config the compile check misses"


def _gpu_multi_row_configs():
    configs = layer_norm_configs()
    return sorted({(c.kwargs["BLOCK_N"], c.kwargs["ROWS_PER_PROGRAM"]) for c in configs
                   if c.kwargs["ROWS_PER_PROGRAM"] > 1 and c.kwargs["BLOCK_N"] <= 1024})


@pytest.mark.parametrize("block_n, rows", _gpu_multi_row_configs())
def test_every_gpu_multi_row_config_under_the_interpreter(block_n, rows, monkeypatch, device, backend):
    """Each GPU several-rows config, run by the interpreter on a row count that leaves the last program
    partly empty, with row-strided inputs inside NaN: a row read or written out of place shows."""
    if device.type != "cpu":
        pytest.skip("the interpreter runs the GPU configs here; on a GPU the launcher's own choice runs")
    config = layer_norm_module._config(block_n, True)
    assert config.kwargs["ROWS_PER_PROGRAM"] == rows
    monkeypatch.setattr(layer_norm_module, "config_for", lambda M, N, gpu=True: config)
    n = block_n - block_n // 4 + 1  # a masked tail in every row
    m = 3 * rows + 1  # odd: the last program has one real row
    generator = torch.Generator().manual_seed(block_n + rows)
    x, residual = (torch.randn(m, n, generator=generator).half() for _ in range(2))
    weight, bias = 1 + 0.1 * torch.randn(n, generator=generator), 0.1 * torch.randn(n, generator=generator)
    out = layer_norm_module.layer_norm(nan_row_padded(x, extra_columns=7), nan_padded(weight), nan_padded(bias),
                                       1e-12, residual=nan_row_padded(residual, extra_columns=3))
    assert out.shape == (m, n) and torch.isfinite(out).all()
    assert_matches_reference(out, layer_norm_ref, x, weight, bias, 1e-12, residual, backend=backend)
