"""Defaults and choices that more than one entry point uses (the API, the CLI, the pool, Ray), defined once.

Plain values only, and no imports: the command line builds its parser from this module without importing
torch, and the modules that act on these names (fastbert.engine.runtime, fastbert.engine.gemm,
fastbert.sentence.pooling) take them from here."""

# Tokens per batch: the budget that sizes padding-free batches (encode's max_tokens, `fastbert encode
# --max-tokens`).
MAX_BATCH_TOKENS = 16384
# Texts read, tokenized and encoded per chunk by a library stream (encode's chunk_size; a pool's chunks of an
# iterable of unknown length; Ray's rows per map_batches call). A library caller holds a few chunks in
# memory at once (the reader runs ahead), so the chunk stays modest.
CHUNK_TEXTS = 1024
# Records per chunk of `fastbert encode` (--chunk-size): each chunk is one commit to the partial output (an
# fsync and a rewritten progress record), so the command takes larger chunks than the API; its first
# chunks still start small so that rows reach the disk early.
CORPUS_CHUNK_TEXTS = 4096

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
