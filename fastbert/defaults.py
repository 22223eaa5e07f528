"""Defaults and choices that more than one entry point uses (the API, the CLI, the pool, Ray), defined once.

Plain values only, and no imports: the command line builds its parser from this module without importing
torch, and the modules that act on these names (fastbert.engine.runtime, fastbert.engine.gemm,
fastbert.sentence.pooling) take them from here."""

# Tokens per batch: the budget that sizes padding-free batches (encode's max_tokens, a pool's and Ray's
# encode options, `fastbert encode --max-tokens`).
MAX_BATCH_TOKENS = 16384
# Texts read, tokenized and encoded per chunk, by every entry point: encode / iter_encode's chunk_size (what
# iter_encode yields at a time), a pool's chunks of an iterable of unknown length, Ray's rows per
# map_batches call, `fastbert encode --chunk-size`. Large enough that a chunk batches well under the token
# budget and that `fastbert encode`'s commit per chunk (an fsync and a rewritten progress record) costs
# little beside it; small enough that the few chunks a reader runs ahead stay modest in memory.
# `fastbert encode` starts its first chunks smaller (fastbert.corpus.run.FIRST_CHUNK) so that rows reach
# the disk early.
CHUNK_TEXTS = 4096

# Backends: "triton" (fastbert's kernels), "torch" (the same packed algorithm in PyTorch), "auto" (triton
# on a GPU, torch on CPU).
BACKENDS = ("auto", "triton", "torch")
# Which GEMM the triton backend runs per projection; triton_persistent is sm_90+ only (TMA).
GEMMS = ("auto", "triton", "triton_persistent", "cublas")
# The dtype names the API and the CLI accept, each naming a torch dtype by its attribute name (torch.float16).
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
# sentence-transformers' pooling modes, in the order its legacy `pooling_mode_*` flags concatenate.
POOLING_MODE_NAMES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
