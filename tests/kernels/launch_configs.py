"""Every config the row-wise launchers (layer_norm, embeddings) can pick on a GPU, enumerated from their
own launch policies (config_for), so the compile checks cover exactly the launches that can happen."""

from fastbert.kernels.embeddings import config_for as embeddings_config_for
from fastbert.kernels.layer_norm import MAX_N, MIN_BLOCK_N
from fastbert.kernels.layer_norm import config_for as layer_norm_config_for

# One width per BLOCK_N the launchers use: the powers of two from MIN_BLOCK_N to MAX_N.
WIDTHS = [2**k for k in range(MIN_BLOCK_N.bit_length() - 1, MAX_N.bit_length())]
# Token counts at the two ends of layer_norm's policy: enough rows to share programs, and a single row.
_MANY_ROWS, _ONE_ROW = 2**31, 1


def _distinct(configs):
    kept = []
    for config in configs:
        if all(config.kwargs != c.kwargs or config.num_warps != c.num_warps for c in kept):
            kept.append(config)
    return kept


def layer_norm_configs():
    """Per width the several-rows config, then, where it differs, the one-row config of small launches."""
    return _distinct([layer_norm_config_for(M, N) for M in (_MANY_ROWS, _ONE_ROW) for N in WIDTHS])


def embeddings_configs():
    """One config per width (embeddings uses layer_norm's several-rows tile whatever the token count)."""
    return [embeddings_config_for(H) for H in WIDTHS]
