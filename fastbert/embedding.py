"""Sentence embeddings: tokenize, sort by length, batch under a token budget, encode, pool.

Sorting by length and cutting batches by padded-token count keeps one long text from padding a
batch of short ones; results come back in input order."""

import json
from pathlib import Path

import torch

from .packing import pack_inputs

POOLINGS = ("mean", "cls")


def default_pooling(path):
    """The pooling a sentence-transformers folder declares in 1_Pooling/config.json, else mean."""
    if path is None:
        return "mean"
    pooling_config = Path(path) / "1_Pooling" / "config.json"
    try:
        modes = json.loads(pooling_config.read_text())
    except (OSError, ValueError):
        return "mean"
    return "cls" if modes.get("pooling_mode_cls_token") and not modes.get("pooling_mode_mean_tokens") else "mean"


def length_sorted_batches(lengths, batch_size, max_tokens):
    """Split indices sorted by decreasing length into batches of at most `batch_size` sequences whose
    padded size (count x longest) stays within `max_tokens` (a single longer sequence still forms a batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) == batch_size or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pool(last_hidden_state, attention_mask, pooling):
    hidden = last_hidden_state.float()
    if pooling == "cls":
        # The first real token: right-padded rows start at column 0.
        first = attention_mask.int().argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _start_copy_to_host(tensor):
    """Queue a GPU result's copy into pinned host memory without waiting for it (valid after a
    synchronize), so GPU memory holds one batch of embeddings, not the whole corpus."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def _check_texts(texts):
    if isinstance(texts, str):
        return [texts], True
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] must be a string, got {type(text).__name__}")
    return list(texts), False


def encode(model, texts, batch_size=32, max_tokens=16384, pooling=None, normalize=True, max_length=None,
           show_progress_bar=False):
    """Embed `texts` with `model` (a FastBertModel with a tokenizer) -> float32 [N, H] on CPU, input order.

    pooling: "mean" (mask-weighted) or "cls"; None takes the folder's sentence-transformers setting.
    max_length: truncation; None follows the folder's sentence-transformers max_seq_length when it has
    one (as sentence-transformers does), else the model's maximum. A single string gives [H]."""
    texts, single = _check_texts(texts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    pooling = default_pooling(model.path) if pooling is None else pooling
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    hidden_size = model.config.hidden_size
    if not texts:
        return torch.zeros(0, hidden_size, dtype=torch.float32)
    tokenizer = model.get_tokenizer()
    if max_length is None:
        max_length = tokenizer.max_seq_length  # None: the tokenizer's own maximum

    batch = tokenizer(texts, max_length=max_length)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    batches = length_sorted_batches(lengths, batch_size, max_tokens)
    pooled_batches = []
    progress = None
    if show_progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(texts), desc="encode", unit="text")
    for indices in batches:
        longest = max(lengths[i] for i in indices)
        rows = torch.tensor(indices)
        ids, mask, types = (batch[name][rows, :longest] for name in ("input_ids", "attention_mask", "token_type_ids"))
        # Validated and packed on the CPU, where the tokens are: no GPU synchronisation per batch, so the
        # host prepares the next batch while the GPU computes this one.
        packed = pack_inputs(model.config, "cpu", ids, mask, types, to_device=model.device)
        output = model.forward_packed(*packed)
        pooled = pool(output.last_hidden_state, mask.to(model.device, non_blocking=True), pooling)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        pooled_batches.append(_start_copy_to_host(pooled))
        if progress is not None:
            progress.update(len(indices))
    if progress is not None:
        progress.close()
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)  # the one wait: every batch's copy to the host has landed
    order = torch.tensor([i for indices in batches for i in indices])
    embeddings = torch.empty(len(texts), hidden_size, dtype=torch.float32)
    embeddings[order] = torch.cat(pooled_batches)
    return embeddings[0] if single else embeddings
