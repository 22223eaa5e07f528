"""Every tolerance of the test suite, and the one rule kernel outputs are checked by.

The rule (flash-attention's): compare the kernel's output with a float64 reference computed from the same,
already rounded, inputs, and allow at most TORCH_ERROR_MULTIPLE times PyTorch's own largest error on those
inputs in the kernel's dtype, plus a small floor:

    max|out - ref64| <= TORCH_ERROR_MULTIPLE * max|torch_same_dtype - ref64| + FLOOR[dtype] * max(1, max|ref64|)

PyTorch's error is measured on the same machine, threads and instruction set as the kernel's, so the bound
moves with the rounding the hardware actually does (BLAS summation order, FMA, vector width) instead of
encoding one CPU's rounding as a constant. The floor, in units of the output's scale, only matters where
PyTorch happens to be exact (a representable answer, an identity weight) and the kernel is a few ulps off.

16-bit dtypes must in addition stay within the element-wise rounding budget of ROUNDING_BUDGET, as before:
their error is dominated by the rounding of the output, orders of magnitude above any difference in fp32
accumulation order, so that budget is not machine-dependent. fp32 has no such fixed budget: a fixed fp32
budget is exactly what failed on AMD EPYC (attention with large scores: PyTorch's own fp32 error is 2-3e-4).

On a GPU the same rule holds: fp32 kernels follow torch.backends.cuda.matmul.allow_tf32 as torch.matmul
does, so a test that switches TF32 on gets PyTorch's TF32 error as its yardstick.
"""

import torch

# flash-attention's multiple: the kernel may be twice as far from the exact answer as PyTorch is.
TORCH_ERROR_MULTIPLE = 2.0
# The floor, per unit of output scale: ~80 fp32 ulps; about one fp16 ulp; about one bf16 ulp.
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# 16-bit (atol, rtol), element-wise against the float64 reference: rounding of the inputs' products and of
# the single output cast. Keyed on backend so a backend-specific budget has its place; today they agree.
ROUNDING_BUDGET = {
    (torch.float16, "interpreter"): (1e-2, 1e-2),
    (torch.float16, "cuda"): (1e-2, 1e-2),
    (torch.bfloat16, "interpreter"): (6e-2, 6e-2),
    (torch.bfloat16, "cuda"): (6e-2, 6e-2),
}


def assert_close(actual, expected, dtype, backend, *, torch_same_dtype):
    """Check a kernel output by the rule above.

    expected: the float64 reference from the same (already rounded) inputs.
    torch_same_dtype: PyTorch's own result in `dtype` (for fp32 inputs: PyTorch in fp32).
    """
    if expected.dtype != torch.float64:
        raise TypeError(f"compare against a float64 reference, got {expected.dtype}")
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch_same_dtype.shape == expected.shape, (torch_same_dtype.shape, expected.shape)
    actual64 = actual.double()
    assert not torch.isnan(actual64).any(), "output has NaN"
    if actual.numel() == 0:
        return
    kernel_error = (actual64 - expected).abs().max().item()
    torch_error = (torch_same_dtype.double() - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    allowed = TORCH_ERROR_MULTIPLE * torch_error + FLOOR[dtype] * scale
    assert kernel_error <= allowed, (
        f"kernel error {kernel_error:.3e} > {TORCH_ERROR_MULTIPLE:g} x PyTorch's own {dtype} error "
        f"{torch_error:.3e} + floor {FLOOR[dtype]:.0e} x scale {scale:.3g}"
    )
    if dtype != torch.float32:
        atol, rtol = ROUNDING_BUDGET[(dtype, backend)]
        torch.testing.assert_close(actual64, expected, atol=atol, rtol=rtol)


def assert_matches_reference(actual, reference, *args, backend, **kwargs):
    """assert_close against `reference` (a function of tests/kernels/references.py) on `args`: the float64
    reference is reference(*args, upcast=True), PyTorch's own result reference(*args, upcast=False)."""
    expected = reference(*args, upcast=True, **kwargs)
    torch_same = reference(*args, upcast=False, **kwargs)
    assert_close(actual, expected, actual.dtype, backend, torch_same_dtype=torch_same)


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


# Whole-encoder tolerances: max abs error of hidden states on real tokens vs transformers in fp32, after
# every layer's rounding has compounded (BERT hidden states after LayerNorm are O(1) to O(10)).
# fp32 is the product's contract (1e-4), not a guess at rounding: the errors measured with different
# BLAS kernels, instruction sets (ATEN_CPU_CAPABILITY) and thread counts sit over an order of magnitude
# below it, so unlike the kernel budgets above it does not depend on the machine. Low precision allows a
# few units of the last place at O(10).
ENCODER_ATOL_FP32 = 1e-4
ENCODER_TOLERANCES = {
    (torch.float32, "interpreter"): ENCODER_ATOL_FP32,
    (torch.float32, "cuda"): ENCODER_ATOL_FP32,
    (torch.float16, "interpreter"): 6e-2,
    (torch.float16, "cuda"): 6e-2,
    (torch.bfloat16, "interpreter"): 3e-1,
    (torch.bfloat16, "cuda"): 3e-1,
}

# fastbert.optimize(model) against the same transformers model unpatched, fp32 (tests/test_patch.py): the
# encoder contract above, as both an atol and an rtol (tests/test_cross_encoder.py does the same for scores).
PATCHED_MODEL = {"atol": ENCODER_ATOL_FP32, "rtol": ENCODER_ATOL_FP32}

# The plain-PyTorch oracle (fastbert/verify/reference.py) against transformers.BertModel with eager
# attention, fp32 (tests/verify/test_reference.py): the same operations on the same weights, only some fused
# (QKV) or reordered, so a few ulps per layer on O(1) hidden states; the 1e-5, as for FAMILY_ATOL.
REFERENCE_ATOL = 1e-5
# The oracle in bfloat16 against itself in fp32 (pooler output, cosine): bf16 keeps 8 significant bits
# (a rounding of up to 2**-9 relative per operation), so this checks that bf16 runs and computes the same
# thing, not its precision.
REFERENCE_COSINE_BF16 = 0.99

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

# The same texts embedded in different batches, processes or thread counts: only the order of fp32 sums
# changes (GEMM blocking, reduction splits). Each run is then within its own fp32 error of the exact answer,
# which on all-MiniLM-L6-v2 is ~1.1 fp32 epsilons of the embedding's norm (measured against
# sentence-transformers in float64), so two runs differ by at most about twice that; 8 epsilons allowed,
# *relative to each row's norm*: an unnormalized embedding (CLS, no Normalize) has a norm of ~10.
BATCHING_ATOL = 8 * torch.finfo(torch.float32).eps
# The same, as an absolute bound, where the compared values are O(1) (unit-norm sentence embeddings,
# hidden states of the small random models): the same model on the same texts batched, chunked or
# streamed differently, or called through the CLI instead of the API. 1e-6 is ~8 fp32 epsilons (1.2e-7).
REBATCHED_ATOL = 1e-6

# CUDA-graph replay (emulated on CPU by tests/engine/helpers.py's EagerReplay) against the eager forward,
# fp32: a replay runs its bucket's shape, the batch plus filler tokens and sequences, so the kernels see
# another token count and may sum in another order; a few ulps on hidden states of O(1..10).
GRAPH_REPLAY = {"atol": 1e-5, "rtol": 1e-5}
# A real replay on a GPU, fp16: the pooler is one cuBLAS GEMM over the bucket's sequences, whose algorithm
# may change with the batch size; its tanh output lies in (-1, 1), where an fp16 ulp is at most 2**-10
# (~1e-3): two ulps.
GRAPH_POOLER_ATOL_HALF = 2e-3

# Packed pooling (fastbert/sentence/pooling.py) against sentence-transformers' Pooling in float64: fp32 sums
# of at most 63 terms of O(1), so a mean's worst-case rounding is about 63 fp32 epsilons (63 x 1.2e-7 < 1e-5).
POOLING_FP32 = {"atol": 1e-5, "rtol": 1e-5}
# fp16 hidden states pooled in fp32 against the float64 pooling of the same fp16 values: fp32 rounding of
# the sums, three orders of magnitude below fp16's own rounding (~1e-3), which a pooling in fp16 would show.
POOLING_HALF_INPUT = {"atol": 1e-6, "rtol": 1e-6}

# The GEMM epilogue's activations (tests/engine/test_activations.py), where the products are IEEE fp32 as in
# PyTorch's CPU GEMM: on top of TORCH_ERROR_MULTIPLE x transformers' own fp32 error, a floor of one fp32 ulp
# at O(10) (2**3 x 1.2e-7 ~ 1e-6): rounding, not a wrong formula.
ACTIVATION_FLOOR_FP32 = 1e-6
# silu at large |x| through the kernel (identity weight, so the GEMM is exact) against F.silu: a few fp32
# ulps of relative error (1e-6 ~ 8 epsilons), and an atol for the outputs that underflow towards 0.
SILU_SATURATION = {"atol": 1e-6, "rtol": 1e-6}


def batching_error(actual, expected):
    """Largest difference between two runs' embeddings [N, D], per unit of each row's norm (at least 1)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    scale = expected.norm(dim=-1, keepdim=True).clamp(min=1.0)
    return ((actual - expected).abs() / scale).max().item() if expected.numel() else 0.0
