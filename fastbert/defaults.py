"""Defaults that more than one entry point uses (the API, the CLI, the pool, Ray), defined once."""

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
