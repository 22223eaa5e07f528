"""The one tolerance table: (dtype, backend) -> (atol, rtol).

backend "interpreter": Triton's CPU interpreter, whose tl.dot is IEEE fp32 whatever input_precision says.
backend "cuda": a real GPU, where fp32 tl.dot defaults to TF32 (10-bit mantissa), hence the looser fp32 row.
Low-precision rows cover rounding of the inputs and the single output cast; on GPU, kernels must also be
within twice PyTorch's own same-dtype error (see assert_close)."""

import torch

TOLERANCES = {
    (torch.float32, "interpreter"): (1e-4, 1e-4),
    (torch.float32, "cuda"): (2e-2, 2e-2),
    (torch.float16, "interpreter"): (1e-2, 1e-2),
    (torch.float16, "cuda"): (1e-2, 1e-2),
    (torch.bfloat16, "interpreter"): (6e-2, 6e-2),
    (torch.bfloat16, "cuda"): (6e-2, 6e-2),
}


def tolerance(dtype, backend):
    return TOLERANCES[(dtype, backend)]


def assert_close(actual, expected_fp32, dtype, backend, *, torch_same_dtype=None, scale=1.0):
    """Compare a kernel output with an fp32 reference.

    expected_fp32: the reference computed in fp32 from the same (already rounded) inputs.
    torch_same_dtype: optionally, PyTorch's own result in `dtype`; the kernel's max error may then be
    at most twice PyTorch's error plus atol (flash-attention's rule), which keys the check on what the
    dtype can deliver rather than on a guess.
    scale: multiplies both tolerances, for outputs whose magnitude grows with the problem (long sums).
    """
    atol, rtol = tolerance(dtype, backend)
    atol, rtol = atol * scale, rtol * scale
    actual32 = actual.float()
    expected32 = expected_fp32.float()
    assert actual32.shape == expected32.shape, (actual32.shape, expected32.shape)
    assert not torch.isnan(actual32).any(), "output has NaN"
    torch.testing.assert_close(actual32, expected32, atol=atol, rtol=rtol)
    if torch_same_dtype is not None:
        own_error = (torch_same_dtype.float() - expected32).abs().max().item()
        kernel_error = (actual32 - expected32).abs().max().item()
        assert kernel_error <= 2 * own_error + atol, (
            f"kernel error {kernel_error:.3e} > 2 x torch's own {dtype} error {own_error:.3e} + atol {atol:.1e}"
        )


def nan_padded(tensor, pad=64):
    """Return a copy of `tensor` living inside a larger NaN-filled buffer, with the same shape and
    strides-by-row, so that any read outside the logical tensor poisons the result with NaN."""
    fill = float("nan") if tensor.dtype.is_floating_point else -(2**30)  # ints: an id no table has
    flat = torch.full((tensor.numel() + 2 * pad,), fill, dtype=tensor.dtype, device=tensor.device)
    view = flat[pad : pad + tensor.numel()].view(tensor.shape)
    view.copy_(tensor)
    return view


def nan_row_padded(matrix, extra_columns=5):
    """Return a view of a 2-D `matrix` whose rows sit inside wider NaN-filled rows (row stride larger
    than the width, last stride 1): catches kernels that read past a row or assume contiguity."""
    rows, cols = matrix.shape
    buffer = torch.full((rows + 2, cols + extra_columns), float("nan"), dtype=matrix.dtype, device=matrix.device)
    view = buffer[1 : rows + 1, :cols]
    view.copy_(matrix)
    return view


# Whole-encoder tolerances: max abs error of hidden states on real tokens vs an fp32 oracle, after
# every layer's rounding has compounded (BERT hidden states after LayerNorm are O(1) to O(10)).
# fp32 is the contract (1e-4); low precision allows a few units of the last place at O(10).
ENCODER_TOLERANCES = {
    (torch.float32, "interpreter"): 1e-4,
    (torch.float32, "cuda"): 1e-4,
    (torch.float16, "interpreter"): 6e-2,
    (torch.float16, "cuda"): 6e-2,
    (torch.bfloat16, "interpreter"): 3e-1,
    (torch.bfloat16, "cuda"): 3e-1,
}

# fp32 parity of whole BERT-family models with transformers (tests/test_families.py): the tiny random models
# there keep hidden states O(1), and the same fp32 sums in another order differ by a few ulps per layer
# (observed ~1e-6), so the 1e-5 holds with margin. On a GPU the attention kernel's fp32 tl.dot may
# use TF32, hence the encoder-level bound there.
FAMILY_ATOL = {"interpreter": 1e-5, "cuda": ENCODER_TOLERANCES[(torch.float32, "cuda")]}

# Sentence embeddings (fastbert encode vs SentenceTransformer.encode, both fp32): the contract is
# a cosine of at least 0.99999 per text. Cosine is blind to scale (mean vs mean_sqrt_len_tokens pooling
# differ only in norm), so each vector's relative error is bounded too: the same ENCODER_TOLERANCES
# fp32 bound (1e-4) on hidden states of norm O(1..10) carries through pooling and Dense as a relative error.
SENTENCE_COSINE = 0.99999
SENTENCE_RELATIVE_ERROR = 1e-4
# fp16 on a GPU against the fp32 pipeline: the benchmarks' per-text rule (benchmarks/test_bench_encoder.py).
SENTENCE_COSINE_HALF = 0.999

# The same texts embedded in different batches, processes or thread counts (unit-length fp32 vectors):
# only the order of fp32 sums changes (GEMM blocking, reduction splits), which moves a component of
# magnitude <= 1 by a few units of fp32's epsilon (1.2e-7) after the encoder; 8 units allowed.
BATCHING_ATOL = 8 * torch.finfo(torch.float32).eps
