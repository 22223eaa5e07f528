"""Input validation and padding removal, done once per forward pass.

Every check a user's input can fail happens here, before any kernel runs, with one host
synchronisation for all of them together: a bad token id becomes a ValueError naming the argument,
not a device-side assert."""

import functools
from dataclasses import dataclass

import torch

from fastbert.checkpoint.families import default_position_ids

from . import staging


@dataclass
class Packing:
    """Where the real tokens of a padded [B, S] batch live once packed into [T, ...].

    token_indices [T] int64: flat positions (row * S + column) of the real tokens, row-major.
    offsets: packed offsets of each sequence, a host list [B+1]; max_seqlen: the longest sequence.
    cu_seqlens: the offsets as an int32 tensor on `device`, uploaded by upload_offsets (or on first use;
    a CUDA-graph replay uploads its own bucket's offsets and never needs it), or given."""

    batch_size: int
    seq_len: int
    token_indices: torch.Tensor | None
    offsets: list
    max_seqlen: int
    device: torch.device
    _cu_seqlens: torch.Tensor | None = None

    @property
    def cu_seqlens(self):
        return self.upload_offsets()

    def upload_offsets(self):
        """cu_seqlens, copied to the device on the first call only: the encoder calls it before its first
        launch, so the copy is queued ahead of the kernels that read it."""
        if self._cu_seqlens is None:
            if self.device.type == "cuda":
                self._cu_seqlens = staging.upload(self.offsets, self.device, torch.int32)
            else:
                self._cu_seqlens = torch.tensor(self.offsets, dtype=torch.int32, device=self.device)
        return self._cu_seqlens

    @property
    def num_tokens(self):
        return self.offsets[-1]

    def unpack(self, packed, copy=False):
        """[T, H] -> [B, S, H], zeros at padded positions, in one scatter (without padding a free view, or
        a copy when `packed` is a buffer that will be overwritten)."""
        if self.num_tokens == self.batch_size * self.seq_len:
            return (packed.clone() if copy else packed).view(self.batch_size, self.seq_len, -1)
        out = packed.new_zeros(self.batch_size * self.seq_len, packed.shape[-1])
        out.index_copy_(0, self.token_indices, packed)
        return out.view(self.batch_size, self.seq_len, -1)

    @functools.cached_property
    def padded_layout(self):
        """(flat positions of the packed tokens in a [B, max_seqlen] grid, key mask [B, 1, 1, max_seqlen]):
        lets the torch backend run attention for the whole batch in one call."""
        device = self.device
        lengths = torch.tensor([end - start for start, end in zip(self.offsets[:-1], self.offsets[1:])])
        columns = torch.arange(self.max_seqlen)
        key_mask = columns[None, :] < lengths[:, None]
        positions = torch.nonzero(key_mask.flatten()).squeeze(1)
        return positions.to(device), key_mask[:, None, None, :].to(device)

    def first_tokens(self, packed):
        """The first real token of every sequence (BERT's [CLS]) from packed [T, H] -> [B, H]. Empty
        sequences (the unused slots of a CUDA graph's bucket) start at T: clamped, their row is junk."""
        return packed[self.cu_seqlens[:-1].long().clamp_(max=packed.shape[0] - 1)]


# Index dtypes the kernels and torch indexing take as they are; every other integer dtype is widened to
# int64 (int8 ids would otherwise index wrongly in torch, and uint8 would be read as a boolean mask).
_INDEX_DTYPES = (torch.int32, torch.int64)
# Integer dtypes whose reductions (aminmax) PyTorch lacks on the CPU.
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, *_WIDE_UNSIGNED)


def _check_index_tensor(name, tensor, shape, device):
    """`tensor` checked as an integer [B, S] tensor on `device`, in an index dtype (int32 kept, any other
    integer dtype converted to int64; values are range-checked later)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {tensor.layout}")
    if tensor.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name} must hold integers, got dtype {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but input_ids has shape {tuple(shape)}")
    if tensor.device != device:
        raise ValueError(
            f"{name} is on {tensor.device} but the model is on {device}: move it with .to({str(device)!r})"
        )
    return tensor if tensor.dtype in _INDEX_DTYPES else tensor.long()


def _mask_stats(attention_mask, nonzero):
    """(tensors, names) that tell on the host whether a mask holds only 0 and 1: nothing for a bool mask,
    the range (one aminmax) for an integer mask, the count of other values for a floating one."""
    if attention_mask.dtype == torch.bool:
        return [], []
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        return [(nonzero & (attention_mask != 1)).sum()], ["not_binary"]
    if attention_mask.dtype in _WIDE_UNSIGNED:
        attention_mask = attention_mask.long()  # values past 2**63 wrap negative: still reported as not 0/1
    return list(attention_mask.aminmax()), ["mask_min", "mask_max"]


def pack_inputs(config, device, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                to_device=None):
    """Validate a padded batch on `device` and return (Packing, packed input_ids, position_ids,
    token_type_ids), moved to `to_device` (default: `device`).

    Validating and packing CPU inputs on the CPU and moving only the packed result (what encode does)
    needs no GPU synchronisation at all, so the host prepares the next batch while the GPU computes.
    Positions default to transformers' rule for the family: the column index for BERT (so left-padded
    rows start at the position of their first column), pad_token_id + 1 onwards over non-pad ids for
    the RoBERTa family (fastbert/checkpoint/families.py); pass position_ids to choose otherwise."""
    device = torch.device(device)
    to_device = torch.device(to_device) if to_device is not None else device
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    input_ids = _check_index_tensor("input_ids", input_ids, input_ids.shape, device)
    batch, seq_len = input_ids.shape
    if seq_len > config.max_sequence_length:
        offset = config.max_position_embeddings - config.max_sequence_length
        raise ValueError(
            f"input_ids has sequence length {seq_len}, longer than max_position_embeddings="
            f"{config.max_position_embeddings}" + (f" - {offset} (its positions start at {offset})" if offset else "")
            + ": truncate the input"
        )

    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask_checks = [], []
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} "
                f"but input_ids has shape {tuple(input_ids.shape)}"
            )
        if attention_mask.layout != torch.strided:
            raise TypeError(f"attention_mask must be a dense tensor, got layout {attention_mask.layout}")
        dtype = attention_mask.dtype
        if not (dtype == torch.bool or dtype in _INTEGER_DTYPES or dtype.is_floating_point or dtype.is_complex):
            raise TypeError(f"attention_mask must hold 0 and 1 as bool, integer or float, got dtype {dtype}")
        if attention_mask.device != device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but the model is on {device}")
    if token_type_ids is not None:
        token_type_ids = _check_index_tensor("token_type_ids", token_type_ids, input_ids.shape, device)
    if position_ids is not None:
        position_ids = _check_index_tensor("position_ids", position_ids, input_ids.shape, device)
    else:
        position_ids = default_position_ids(config, input_ids)  # None: each token's column, computed below

    if batch == 0 or seq_len == 0:
        # Nothing to check or pack (and reductions such as aminmax refuse empty tensors).
        empty = torch.zeros(0, dtype=torch.long, device=to_device)
        packing = Packing(batch, seq_len, empty, [0] * (batch + 1), 0, to_device)
        return packing, empty, empty, empty
    if attention_mask is not None:
        mask = attention_mask != 0
        mask_checks = _mask_stats(attention_mask, mask)

    # All statistics in one tensor, read back with a single host synchronisation. On a GPU every small
    # op here costs the host more than the GPU work, so each statistic is one reduction (aminmax).
    stats = [mask.sum(dim=1), *input_ids.aminmax()]
    names = ["ids_min", "ids_max"]
    for name, extra in (("type", token_type_ids), ("pos", position_ids)):
        if extra is not None:
            stats += extra.aminmax()
            names += [f"{name}_min", f"{name}_max"]
    stats += mask_checks[0]
    names += mask_checks[1]
    host = torch.cat([s.long().reshape(-1) for s in stats]).tolist()
    lengths_host = host[:batch]
    found = dict(zip(names, host[batch:]))
    ids_min, ids_max = found["ids_min"], found["ids_max"]
    not_binary = found.get("not_binary", 0) or found.get("mask_min", 0) < 0 or found.get("mask_max", 0) > 1
    type_min, type_max = found.get("type_min", 0), found.get("type_max", 0)
    pos_min, pos_max = found.get("pos_min", 0), found.get("pos_max", 0)

    if ids_min < 0 or ids_max >= config.vocab_size:
        raise ValueError(
            f"input_ids holds token ids in [{ids_min}, {ids_max}] outside [0, vocab_size={config.vocab_size})"
        )
    if not_binary:
        raise ValueError("attention_mask must hold only 0 and 1 (padding and real tokens)")
    empty_rows = [row for row, length in enumerate(lengths_host) if length == 0]
    if empty_rows:
        raise ValueError(f"attention_mask is all zero in row(s) {empty_rows[:8]}: every sequence needs a real token")
    if token_type_ids is not None and (type_min < 0 or type_max >= max(config.type_vocab_size, 1)):
        raise ValueError(
            f"token_type_ids holds values in [{type_min}, {type_max}] "
            f"outside [0, type_vocab_size={config.type_vocab_size})"
        )
    if position_ids is not None and (pos_min < 0 or pos_max >= config.max_position_embeddings):
        raise ValueError(
            f"position_ids holds values in [{pos_min}, {pos_max}] outside [0, max_position_embeddings="
            f"{config.max_position_embeddings})"
        )

    offsets = [0]
    for length in lengths_host:
        offsets.append(offsets[-1] + length)
    num_tokens = offsets[-1]
    # nonzero_static knows the result size already, so it needs no second synchronisation.
    token_indices = torch.nonzero_static(mask.flatten(), size=num_tokens).squeeze(1)

    def packed(tensor):
        # Without padding the flat tensor is already packed: skip the gather.
        flat = tensor.reshape(-1)
        return flat if num_tokens == batch * seq_len else flat[token_indices]

    packed_ids = packed(input_ids)
    packed_positions = token_indices % seq_len if position_ids is None else packed(position_ids)
    packed_types = torch.zeros_like(packed_ids) if token_type_ids is None else packed(token_type_ids)
    token_indices, packed_ids, packed_positions, packed_types = (
        _move(t, to_device) for t in (token_indices, packed_ids, packed_positions, packed_types))
    packing = Packing(batch, seq_len, token_indices, offsets, max(lengths_host), to_device)
    return packing, packed_ids, packed_positions, packed_types


def _move(tensor, device):
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        # Through a reused pinned buffer: the copy is queued, the host does not wait for the GPU, and no
        # pinned memory is allocated per call.
        return staging.upload(tensor, device)
    return tensor.to(device)
