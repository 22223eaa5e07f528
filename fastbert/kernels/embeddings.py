"""BERT's embedding layer for packed tokens, in one launch:

    out[t] = LayerNorm(word[input_ids[t]] + position[position_ids[t]] + token_type[token_type_ids[t]])

input_ids, position_ids, token_type_ids: [T], int32 or int64 (each independently), any stride.
word [V, H], position [P, H], token_type [type_vocab, H]: the same float dtype, last stride 1, any row stride.
ln_weight, ln_bias: [H] in the tables' dtype or fp32.
position_embeddings may be None (rotary models such as ModernBERT: no position term; position_ids is then
ignored and may be None); ln_bias may be None (LayerNorm(bias=False)). out: [T, H], contiguous, the tables' dtype. 1 <= H <= 8192.
Without token_type_embeddings (models with type_vocab_size 0) there is no type term; with the table but no
token_type_ids every token uses type 0, as transformers does.

The sum and the LayerNorm are fp32 (the normalisation is layer_norm's, two-pass over registers); rows are
gathered with int64 offsets since V * H can exceed 2**31. Every id is checked against its table when
check_indices=True (the default; one device sync); the encoder, which validated the ids already, passes
check_indices=False, with which an out-of-range id reads arbitrary memory.
"""

import torch
import triton
import triton.language as tl

from ._runtime import is_interpreter
from ._validate import INDEX_DTYPES, check_flag, check_index_ranges, check_tensor
from .layer_norm import MAX_N, MIN_BLOCK_N, _config, _normalize_rows, check_eps, check_norm_params


@triton.jit
def _embeddings_kernel(
    input_ids_ptr,  # [T] word ids
    position_ids_ptr,  # [T] position ids
    token_type_ids_ptr,  # [T] token type ids; or None (every token type 0)
    word_ptr,  # [V, H] word embeddings
    position_ptr,  # [P, H] position embeddings; or None (no position term, position_ids_ptr unread)
    token_type_ptr,  # [type_vocab, H] token type embeddings; or None (no type term)
    weight_ptr,  # [H] LayerNorm scale
    bias_ptr,  # [H] LayerNorm shift; or None
    out_ptr,  # [T, H] output, contiguous
    T,  # tokens
    H,  # hidden size
    stride_input_ids,  # elements between consecutive input_ids
    stride_position_ids,  # elements between consecutive position_ids
    stride_token_type_ids,  # elements between consecutive token_type_ids (0 without them)
    stride_word_row,  # elements between rows of the word table
    stride_position_row,  # elements between rows of the position table
    stride_token_type_row,  # elements between rows of the token type table (0 without it)
    stride_out_row,  # elements between rows of out
    eps,  # fp32 added to the variance
    HAS_TOKEN_TYPE: tl.constexpr,  # token_type_ptr is not None: add a token type row (heuristic below)
    HAS_TOKEN_TYPE_IDS: tl.constexpr,  # token_type_ids_ptr is not None: gather that row by id, else row 0
    HAS_POSITIONS: tl.constexpr,  # position_ptr is not None: add a position row (rotary models have none)
    HAS_BIAS: tl.constexpr,  # bias_ptr is not None
    BLOCK_N: tl.constexpr,  # next_power_of_2(H): a whole row per tile
    ROWS_PER_PROGRAM: tl.constexpr,  # tokens per program
):
    tokens = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    token_mask = tokens < T
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < H
    mask = token_mask[:, None] & col_mask[None, :]

    # Ids widen to int64 before the multiply: id * row stride overflows int32 for large tables.
    word_ids = tl.load(input_ids_ptr + tokens * stride_input_ids, mask=token_mask, other=0).to(tl.int64)
    x = tl.load(word_ptr + word_ids[:, None] * stride_word_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_POSITIONS:
        position_ids = tl.load(position_ids_ptr + tokens * stride_position_ids, mask=token_mask, other=0)
        position_offsets = position_ids.to(tl.int64)[:, None] * stride_position_row + cols[None, :]
        x += tl.load(position_ptr + position_offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_TOKEN_TYPE:
        if HAS_TOKEN_TYPE_IDS:
            type_ids = tl.load(token_type_ids_ptr + tokens * stride_token_type_ids, mask=token_mask, other=0)
            type_offsets = type_ids.to(tl.int64)[:, None] * stride_token_type_row + cols[None, :]
            x += tl.load(token_type_ptr + type_offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            x += tl.load(token_type_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]

    y = _normalize_rows(x, mask, weight_ptr, bias_ptr, cols, col_mask, H, eps, HAS_BIAS)
    tl.store(out_ptr + tokens[:, None] * stride_out_row + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def config_for(H, gpu=True) -> triton.Config:
    """The config a launch of width H uses: layer_norm's several-rows tile for BLOCK_N = next_power_of_2(H)
    (the work per row is a LayerNorm of the gathered sum). One per width, whatever the token count."""
    return _config(max(MIN_BLOCK_N, triton.next_power_of_2(H)), gpu)


# flash-attention style: an absent table or id vector is a None pointer, and its code is compiled out.
_embeddings = triton.heuristics({"HAS_TOKEN_TYPE": lambda args: args["token_type_ptr"] is not None,
                                 "HAS_TOKEN_TYPE_IDS": lambda args: args["token_type_ids_ptr"] is not None,
                                 "HAS_POSITIONS": lambda args: args["position_ptr"] is not None,
                                 "HAS_BIAS": lambda args: args["bias_ptr"] is not None,
                                 })(_embeddings_kernel)


def _check_ids(name, ids, num_tokens):
    check_tensor(name, ids, ndim=1, dtypes=INDEX_DTYPES, unit_last_stride=False)
    if num_tokens is not None and ids.shape[0] != num_tokens:
        raise ValueError(f"{name} must have shape ({num_tokens},) like input_ids, got {tuple(ids.shape)}")


def _check_table(name, table, dtype, hidden):
    check_tensor(name, table, ndim=2)
    if dtype is not None and table.dtype != dtype:
        raise TypeError(f"{name} has dtype {table.dtype} but word_embeddings has {dtype}")
    if hidden is not None and table.shape[1] != hidden:
        raise ValueError(f"{name} must have {hidden} columns like word_embeddings, got {tuple(table.shape)}")
    if table.shape[0] == 0:
        raise ValueError(f"{name} has no rows, got shape {tuple(table.shape)}")


def embeddings(input_ids, position_ids, word_embeddings, position_embeddings, ln_weight, ln_bias, eps,
               token_type_ids=None, token_type_embeddings=None, check_indices=True) -> torch.Tensor:
    """Packed BERT embeddings, LayerNorm included (see the module docstring for shapes and dtypes)."""
    _check_ids("input_ids", input_ids, None)
    num_tokens = input_ids.shape[0]
    if position_embeddings is None:
        position_ids = None  # documented as ignored: nothing reads it
    else:
        if position_ids is None:
            raise ValueError("position_embeddings given without position_ids")
        _check_ids("position_ids", position_ids, num_tokens)
    _check_table("word_embeddings", word_embeddings, None, None)
    dtype, hidden = word_embeddings.dtype, word_embeddings.shape[1]
    if not 1 <= hidden <= MAX_N:
        raise ValueError(f"word_embeddings must have 1..{MAX_N} columns, got shape {tuple(word_embeddings.shape)}")
    if position_embeddings is not None:
        _check_table("position_embeddings", position_embeddings, dtype, hidden)
    if token_type_embeddings is not None:
        _check_table("token_type_embeddings", token_type_embeddings, dtype, hidden)
    if token_type_ids is not None:
        if token_type_embeddings is None:
            raise ValueError("token_type_ids given without token_type_embeddings")
        _check_ids("token_type_ids", token_type_ids, num_tokens)
    check_norm_params(ln_weight, ln_bias, hidden, dtype, "ln_weight", "ln_bias")
    check_eps(eps)
    check_flag("check_indices", check_indices)
    for name, tensor in (("position_ids", position_ids), ("word_embeddings", word_embeddings),
                         ("position_embeddings", position_embeddings), ("ln_weight", ln_weight),
                         ("ln_bias", ln_bias), ("token_type_ids", token_type_ids),
                         ("token_type_embeddings", token_type_embeddings)):
        if tensor is not None and tensor.device != input_ids.device:
            raise ValueError(f"{name} is on {tensor.device} but input_ids is on {input_ids.device}")

    out = torch.empty((num_tokens, hidden), dtype=dtype, device=word_embeddings.device)
    if num_tokens == 0:
        return out
    if check_indices:
        named_ids = [("input_ids", input_ids, word_embeddings.shape[0])]
        if position_embeddings is not None:
            named_ids.append(("position_ids", position_ids, position_embeddings.shape[0]))
        if token_type_ids is not None:
            named_ids.append(("token_type_ids", token_type_ids, token_type_embeddings.shape[0]))
        check_index_ranges(named_ids)

    config = config_for(hidden, gpu=not is_interpreter())
    grid = (triton.cdiv(num_tokens, config.kwargs["ROWS_PER_PROGRAM"]),)
    _embeddings[grid](
        input_ids, position_ids, token_type_ids,
        word_embeddings, position_embeddings, token_type_embeddings,
        ln_weight, ln_bias, out,
        num_tokens, hidden,
        input_ids.stride(0), position_ids.stride(0) if position_embeddings is not None else 0,
        token_type_ids.stride(0) if token_type_ids is not None else 0,
        word_embeddings.stride(0), position_embeddings.stride(0) if position_embeddings is not None else 0,
        token_type_embeddings.stride(0) if token_type_embeddings is not None else 0, out.stride(0),
        float(eps),
        **config.kwargs,
        num_warps=config.num_warps,
    )
    return out
