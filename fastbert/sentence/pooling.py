"""sentence-transformers' Pooling module: its config (1_Pooling/config.json), its load and its modes,
computed on packed tokens.

The encoder's last hidden state stays packed, [T, H] with sequence b at rows offsets[b]:offsets[b + 1]
(FastBertModel.forward_tokens): each mode reduces a sequence's rows directly, with segment sums
(index_add) and gathers, never scattering back to a padded [B, S, H] batch first.

Each mode gives what sentence_transformers' Pooling gives on the padded batch, including its
`include_prompt=False` rule: the first `skip` tokens of every sequence ([CLS] and the prompt) take no
part, while weightedmean keeps each remaining token's original position weight. All arithmetic is in
fp32, whatever the model's dtype (sentence-transformers accumulates half-precision sums in fp32 too)."""

import functools
from dataclasses import dataclass

import torch

from fastbert.defaults import POOLING_MODE_NAMES
from fastbert.jsonio import read_json


class PackedTokens:
    """The packed last hidden state of one batch, with the per-token bookkeeping the modes share.

    hidden [T, H] (cast to fp32 here); cu_seqlens [B + 1] int tensor on hidden's device; skip: leading
    tokens of each sequence that pooling excludes (0 when the prompt is included). A sequence no longer
    than `skip` (a prompt that ends mid-word can merge with the text) pools as in sentence-transformers:
    cls takes its first token, lasttoken and the means give zeros, max gives -inf."""

    def __init__(self, hidden, cu_seqlens, skip=0):
        self.hidden = hidden.float()
        self.starts = cu_seqlens[:-1].long()
        self.ends = cu_seqlens[1:].long()
        self.skip = skip
        self.batch_size = self.starts.shape[0]
        self.has_tokens = (self.ends - self.starts > skip).unsqueeze(1)  # [B, 1]: something left to pool

    @functools.cached_property
    def segments(self):
        """[T] the sequence each token belongs to; output_size keeps it free of a host synchronisation."""
        lengths = self.ends - self.starts
        batch = torch.arange(self.batch_size, device=self.hidden.device)
        return torch.repeat_interleave(batch, lengths, output_size=self.hidden.shape[0])

    @functools.cached_property
    def positions(self):
        """[T] each token's position within its sequence (0 = [CLS])."""
        return torch.arange(self.hidden.shape[0], device=self.hidden.device) - self.starts[self.segments]

    @functools.cached_property
    def keep(self):
        """[T, 1] bool: the tokens that take part in pooling (a mask, not a selection: selecting would
        cost a GPU synchronisation to size the result)."""
        return (self.positions >= self.skip).unsqueeze(1)

    def segment_sum(self, values):
        """Per-sequence sums of `values` [T, K] -> [B, K]."""
        out = values.new_zeros(self.batch_size, values.shape[1])
        return out.index_add_(0, self.segments, values)

    @functools.cached_property
    def token_sum(self):
        return self.segment_sum(self.hidden * self.keep if self.skip else self.hidden)

    @functools.cached_property
    def token_count(self):
        count = (self.ends - self.starts - self.skip).to(self.hidden.dtype)
        # sentence-transformers' clamp: a sequence with nothing to pool gives zeros, not NaN.
        return count.clamp(min=1e-9).unsqueeze(1)


def _cls(tokens):
    return tokens.hidden[tokens.starts + tokens.skip * tokens.has_tokens.squeeze(1)]


def _max(tokens):
    hidden = tokens.hidden.masked_fill(~tokens.keep, float("-inf")) if tokens.skip else tokens.hidden
    out = hidden.new_full((tokens.batch_size, hidden.shape[1]), float("-inf"))
    index = tokens.segments.unsqueeze(1).expand_as(hidden)
    return out.scatter_reduce_(0, index, hidden, reduce="amax", include_self=True)


def _mean(tokens):
    return tokens.token_sum / tokens.token_count


def _mean_sqrt_len(tokens):
    return tokens.token_sum / tokens.token_count.sqrt()


def _weighted_mean(tokens):
    # Weights 1, 2, ... from each sequence's first token; excluded prompt tokens keep their place.
    weights = (tokens.positions + 1).to(tokens.hidden.dtype).unsqueeze(1) * tokens.keep
    return tokens.segment_sum(tokens.hidden * weights) / tokens.segment_sum(weights).clamp(min=1e-9)


def _last_token(tokens):
    return tokens.hidden[tokens.ends - 1] * tokens.has_tokens


# Mode name -> its function, for the names of fastbert.defaults.POOLING_MODE_NAMES (sentence-transformers'
# names, in the order its legacy `pooling_mode_*` flags concatenate), paired in that order.
POOLING_MODES = dict(zip(POOLING_MODE_NAMES, (_cls, _max, _mean, _mean_sqrt_len, _weighted_mean, _last_token),
                         strict=True))


def check_modes(modes, source):
    """Modes as a non-empty tuple of known names; `source` names where they came from in errors."""
    if isinstance(modes, str):
        modes = (modes,)
    if not isinstance(modes, (list, tuple)) or not modes:
        raise ValueError(f"{source}: pooling mode must be a mode name or a non-empty list of them, got {modes!r}")
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown:
        raise ValueError(f"{source}: unknown pooling mode(s) {unknown}; known: {list(POOLING_MODES)}")
    return tuple(modes)


def pool(hidden, cu_seqlens, modes, skip=0):
    """Packed hidden [T, H] -> [B, H * len(modes)] float32: each mode's vector, concatenated in `modes` order."""
    tokens = PackedTokens(hidden, cu_seqlens, skip)
    return torch.cat([POOLING_MODES[mode](tokens) for mode in modes], dim=1)


# ---------------------------------------------------------------------------------------------------
# The module: what a folder's Pooling config says, loaded and run

# Legacy Pooling flags, in the order sentence-transformers concatenates their modes.
LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass
class Pooling:
    """A folder's Pooling: its modes, and whether the prompt's tokens take part (include_prompt)."""

    modes: tuple = ("mean",)
    include_prompt: bool = True

    def __call__(self, hidden, cu_seqlens, modes=None, prompt_tokens=0):
        """Packed hidden [T, H] -> [B, H * len(modes)] float32. modes: replaces the folder's; prompt_tokens:
        the leading tokens of every sequence a prompt took, left out when the Pooling excludes the prompt."""
        skip = 0 if self.include_prompt else prompt_tokens
        return pool(hidden, cu_seqlens, modes or self.modes, skip)


def load_pooling(folder, hidden_size, source):
    config = read_json(folder / "config.json")
    if "pooling_mode" in config:
        modes = check_modes(config["pooling_mode"], source)
    else:
        modes = tuple(mode for flag, mode in LEGACY_POOLING_FLAGS.items() if config.get(flag)) or ("mean",)
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if dim is not None and dim != hidden_size:
        raise ValueError(f"{source}: embedding_dimension={dim!r} but the encoder's hidden size is {hidden_size}")
    include_prompt = config.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise ValueError(f"{source}: include_prompt must be true or false, got {include_prompt!r}")
    return Pooling(modes, include_prompt)
