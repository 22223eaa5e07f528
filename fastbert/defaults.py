"""Defaults that more than one entry point uses (the API, the CLI, the pool, Ray), defined once."""

# Tokens per batch: the budget that sizes padding-free batches (encode's max_tokens).
MAX_BATCH_TOKENS = 16384
# Texts read, tokenized and encoded per chunk by a stream (encode's chunk_size, `fastbert encode --chunk-size`).
CHUNK_TEXTS = 1024
