"""What an encoder forward returns, readable the way transformers' outputs are read."""

from dataclasses import dataclass, fields

import torch


@dataclass
class EncoderOutput:
    """Like transformers' BaseModelOutputWithPooling.

    last_hidden_state: [B, S, H]
    pooler_output:     [B, H], tanh(dense(CLS)); None when the checkpoint has no pooler
    hidden_states:     tuple of num_hidden_layers + 1 tensors [B, S, H] (embeddings output, then each
                       layer's output) when output_hidden_states was asked for, else None

    Access by attribute, by key (out["last_hidden_state"]) or by position (out[0], out[1]); as in
    transformers, positions and keys count only the fields that are not None, so without a pooler
    out[1] is hidden_states. Iterating yields the keys, as a transformers ModelOutput does.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        if isinstance(key, (int, slice)) and not isinstance(key, bool):
            return self.to_tuple()[key]
        raise TypeError(f"EncoderOutput indices must be str, int or slice, not {type(key).__name__}")

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())
