"""Sentence embeddings at corpus scale: the folder's sentence-transformers pipeline on packed tokens.

The texts (any iterable) are read in chunks of `chunk_size`. A background thread tokenizes the next
chunk while the model encodes the current one (the `tokenizers` library releases the GIL). Within a
chunk, texts are sorted by length and cut into batches under a token budget, so one long text never
pads a batch of short ones; the encoder's packed output is pooled directly (fastbert.sentence.pooling), and the
results come back in input order. Memory is bounded by a chunk, never by the corpus: `iter_encode` yields
each chunk's embeddings as soon as they are ready, `encode` gathers them into one result. Both return what
sentence-transformers' SentenceTransformer.encode returns (fastbert.sentence.output: NumPy by default)."""

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from fastbert.checkpoint.tokenizer import UntokenizableTextError
from fastbert.defaults import CHUNK_TEXTS, MAX_BATCH_TOKENS
from fastbert.engine.packing import pack_inputs
from fastbert.engine.runtime import check_device

from .options import EncodeOptions, EncodeStats, sentence_pipeline
from .output import ReturnOptions


def encode(model, texts, *, prompt_name=None, prompt=None, batch_size=None, show_progress_bar=None,
           output_value="sentence_embedding", precision="float32", convert_to_numpy=True, convert_to_tensor=False,
           device=None, normalize_embeddings=False, truncate_dim=None, max_tokens=MAX_BATCH_TOKENS,
           chunk_size=CHUNK_TEXTS, pooling=None, normalize=None, max_length=None, stats=None):
    """Embed `texts` with `model` (a FastBertModel with a tokenizer), in input order, returned as
    sentence-transformers' SentenceTransformer.encode returns them (fastbert.sentence.output): by default a
    float32 NumPy array [N, D], [D] for a single string.

    texts: a string, or any iterable of strings (a list, a generator, a file's lines...).
    sentence-transformers' options, with its meaning:
    prompt / prompt_name: `prompt` is prepended to every text; else prompts[prompt_name] from
      config_sentence_transformers.json; else its default_prompt_name's prompt.
    batch_size: an upper bound on sequences per batch; None, the default, lets the token budget alone decide.
    show_progress_bar: None shows one when the `fastbert` logger's level is INFO or DEBUG.
    output_value: "sentence_embedding"; "token_embeddings" (a list of [len_i, H] tensors of each text's real
      tokens, in the model's dtype); None (a list of dicts of every output).
    precision: "float32", "int8", "uint8", "binary", "ubinary" (fastbert.sentence.quantize; int8 / uint8
      ranges from this call's embeddings, so a single text cannot be quantized to them).
    convert_to_numpy / convert_to_tensor: a NumPy array, a tensor (on the model's device), or with both
      False a list of 1-D tensors.
    device: the model's device or None (a loaded model stays where it is: load it elsewhere with
      from_pretrained(device=...), or spread the work with FastBertModel.encode(devices=...)).
    normalize_embeddings: L2-normalize the returned sentence embeddings (after truncate_dim).
    truncate_dim: keep the first D dimensions (Matryoshka), after the pipeline; default: the model's.
    fastbert's own options:
    max_tokens: the token budget of a batch (sequences x longest sequence), default
      fastbert.defaults.MAX_BATCH_TOKENS.
    chunk_size: texts read and tokenized at a time (memory is bounded by a chunk), default
      fastbert.defaults.CHUNK_TEXTS.
    pooling: a mode or list of modes replacing the folder's Pooling (fastbert.sentence.pooling.POOLING_MODES).
    normalize: None follows the folder (its Normalize module); True L2-normalizes the final vectors; False
      leaves out the folder's final Normalize.
    max_length: truncation in tokens; None follows the folder's max_seq_length, else the model's maximum.
    stats: an EncodeStats to fill with the time spent tokenizing and waiting for tokens.
    A model encodes from one thread at a time (its tokenizer is shared with the background thread)."""
    single = isinstance(texts, str)
    opts, returned = _resolve_options(
        model, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size, max_tokens=max_tokens,
        chunk_size=chunk_size, pooling=pooling, normalize=normalize, normalize_embeddings=normalize_embeddings,
        truncate_dim=truncate_dim, max_length=max_length, show_progress_bar=show_progress_bar,
        output_value=output_value, precision=precision, convert_to_numpy=convert_to_numpy,
        convert_to_tensor=convert_to_tensor)
    _check_device(model, device)
    texts = [texts] if single else texts
    chunks = encode_stream(model, texts, opts, stats)
    if opts.output_value != "sentence_embedding":  # one item per text
        return returned.finish([item for chunk in chunks for item in chunk], single, model.device)
    dim = opts.truncate_dim or sentence_pipeline(model).output_dim(opts.pooling)
    if isinstance(texts, (list, tuple)):
        # The size is known: fill one tensor rather than hold every chunk and a concatenated copy. A list
        # subclass whose iteration disagrees with its len() would leave rows unfilled: an error instead.
        embeddings, filled = torch.empty(len(texts), dim), 0
        for chunk in chunks:
            if filled + len(chunk) > len(embeddings):
                _wrong_length(texts, f"more than {len(embeddings)}")
            embeddings[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != len(embeddings):
            _wrong_length(texts, filled)
    else:
        embeddings = torch.cat([torch.zeros(0, dim), *chunks])
    return returned.finish(embeddings, single, model.device)


def _resolve_options(model, *, output_value, precision, convert_to_numpy, convert_to_tensor, **encode_options):
    """encode()'s and iter_encode()'s keywords checked -> (EncodeOptions, ReturnOptions)."""
    opts = EncodeOptions.resolve(model, output_value=output_value, **encode_options)
    return opts, ReturnOptions.resolve(output_value, precision, convert_to_numpy, convert_to_tensor)


def _wrong_length(texts, given):
    raise ValueError(f"texts has len() {len(texts)} but its iteration gave {given} texts: a sized input must "
                     "give as many texts as its len() says")


def _check_device(model, device):
    if device is None:
        return
    if isinstance(device, (list, tuple)):
        raise ValueError("device= with a list of devices runs worker processes: call FastBertModel.encode "
                         "(model.encode(texts, devices=[...]))")
    if check_device(device, "device") != model.device:
        raise ValueError(f"device={str(device)!r}, but this model is loaded on {model.device} and fastbert does "
                         "not move a loaded model: load it there (from_pretrained(..., device=...)), or encode "
                         "with devices=[...] (worker processes)")


def iter_encode(model, texts, *, prompt_name=None, prompt=None, batch_size=None, show_progress_bar=None,
                output_value="sentence_embedding", precision="float32", convert_to_numpy=True,
                convert_to_tensor=False, device=None, normalize_embeddings=False, truncate_dim=None,
                max_tokens=MAX_BATCH_TOKENS, chunk_size=CHUNK_TEXTS, pooling=None, normalize=None,
                max_length=None, stats=None):
    """encode() as a generator: yields what encode() returns for each chunk of `chunk_size` texts (the last
    may be shorter), in input order: by default float32 NumPy arrays [n, D]. Reads `texts` lazily, so a
    stream of any length is encoded in bounded memory; the options are encode()'s, checked before the first
    text is read, except precision "int8" / "uint8", refused: their ranges would differ from chunk to chunk
    (quantize the float chunks with fastbert.sentence.quantize.quantize_embeddings and fixed ranges=).
    The reader runs a few chunks ahead of what has been yielded (at most four): a stream closed early may
    have read that much more."""
    if isinstance(texts, str):
        raise TypeError("iter_encode needs an iterable of strings, got a single string: use encode(text)")
    opts, returned = _resolve_options(
        model, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size, max_tokens=max_tokens,
        chunk_size=chunk_size, pooling=pooling, normalize=normalize, normalize_embeddings=normalize_embeddings,
        truncate_dim=truncate_dim, max_length=max_length, show_progress_bar=show_progress_bar,
        output_value=output_value, precision=precision, convert_to_numpy=convert_to_numpy,
        convert_to_tensor=convert_to_tensor)
    if returned.per_call_ranges:
        raise ValueError(f"iter_encode cannot quantize to precision={precision!r}: its ranges would come from "
                         "each chunk alone; encode in float32 and quantize every chunk with the same ranges= "
                         "(fastbert.sentence.quantize.quantize_embeddings)")
    _check_device(model, device)
    return _finished(encode_stream(model, texts, opts, stats), returned, model.device)


def _finished(chunks, returned, device):
    with contextlib.closing(chunks):  # closing this generator stops the stream's background thread too
        for chunk in chunks:
            yield returned.finish(chunk, False, device)


def encode_stream(model, texts, opts, stats=None, chunk_sizes=None):
    """iter_encode() with options already resolved (EncodeOptions.resolve): checks `texts` now and returns
    the generator that reads and encodes it. `chunk_sizes`, an endless iterator of positive ints, gives each
    chunk's length in turn instead of opts.chunk_size (`fastbert encode` starts small so that its first rows
    reach the disk early)."""
    if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or an iterable of strings, got {type(texts).__name__}")
    sizes = itertools.repeat(opts.chunk_size) if chunk_sizes is None else chunk_sizes
    return _stream(model, texts, opts, stats if stats is not None else EncodeStats(), sizes)


def _stream(model, texts, opts, stats, sizes):
    pipeline = sentence_pipeline(model)
    tokenizer = model.get_tokenizer()
    prompt_tokens = 0  # sentence-transformers' prompt_length: tokens of the prompt in every sequence
    if opts.prompt:
        prompt_tokens = _prompt_length(tokenizer, _lower(opts.prompt, pipeline.do_lower_case), opts.max_length)
    progress = _progress_bar(texts) if opts.show_progress_bar else None
    clock = _WallClock(stats)
    tokenized = _Prefetch(_tokenize_chunks(texts, tokenizer, pipeline, opts, stats, sizes))
    try:
        pending = None
        for ids, mask, types in tokenized.items(stats):
            done = _encode_chunk(model, pipeline, opts, prompt_tokens, ids, mask, types, stats)
            # On a GPU a chunk is handed over once the next one is queued, so the GPU never idles while
            # the host waits for a copy; on the CPU the work is already done.
            if model.device.type == "cuda":
                done, pending = pending, done
            if done is not None:
                yield _finish(done, progress, stats, clock)
        if pending is not None:
            yield _finish(pending, progress, stats, clock)
    finally:
        tokenized.close()
        clock.update()
        if progress is not None:
            progress.close()


class _WallClock:
    """Adds this call's elapsed time to stats.wall_seconds (kept current while the call runs)."""

    def __init__(self, stats):
        self.stats, self.before, self.start = stats, stats.wall_seconds, time.perf_counter()

    def update(self):
        self.stats.wall_seconds = self.before + time.perf_counter() - self.start


def _lower(text, do_lower_case):
    return text.lower() if do_lower_case else text


def _prompt_length(tokenizer, prompt, max_length):
    """Tokens of the prompt at the start of every sequence, [CLS] included and a trailing special token
    ([SEP]) not: sentence-transformers' count for a Pooling that excludes the prompt."""
    ids = tokenizer([prompt], max_length=max_length)["input_ids"][0].tolist()
    return len(ids) - 1 if ids and ids[-1] in tokenizer.special_token_ids() else len(ids)


def _tokenize_chunks(texts, tokenizer, pipeline, opts, stats, sizes):
    """Chunks of padded (input_ids, attention_mask, token_type_ids) [n, S], of the lengths `sizes` gives:
    runs on the background thread."""
    prefix = opts.prompt or ""
    chunk, position, size = [], 0, next(sizes)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] must be a string, got {type(text).__name__}")
        chunk.append(_lower(prefix + text, pipeline.do_lower_case))
        position += 1
        if len(chunk) == size:
            yield _tokenize(tokenizer, chunk, position - len(chunk), opts.max_length, stats)
            chunk, size = [], next(sizes)
    if chunk:
        yield _tokenize(tokenizer, chunk, position - len(chunk), opts.max_length, stats)


def _tokenize(tokenizer, chunk, first, max_length, stats):
    started = time.perf_counter()
    try:
        batch = tokenizer(chunk, max_length=max_length)
    except UntokenizableTextError as err:
        # The tokenizer counts from the chunk's start; the caller counts from the input's.
        raise err.shifted(first) from None
    stats.tokenize_seconds += time.perf_counter() - started
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


class _Prefetch:
    """Runs a generator on a daemon thread, one item ahead, and hands its items (or its exception) over in
    order. close() stops the thread at its next item, e.g. when a caller abandons iter_encode early."""

    _END = object()

    def __init__(self, generator):
        self._queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(generator,), daemon=True,
                                        name="fastbert-tokenize")
        self._thread.start()

    def _run(self, generator):
        try:
            for item in generator:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as error:  # handed to the consumer, raised there
            self._put((None, error))

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def items(self, stats):
        while True:
            waited = time.perf_counter()
            item, error = self._queue.get()
            stats.stall_seconds += time.perf_counter() - waited
            if error is not None:
                raise error
            if item is self._END:
                return
            yield item

    def close(self):
        self._stop.set()
        # A thread blocked reading the caller's iterator (stdin, say) cannot be interrupted: it is a daemon
        # and stops at its next item; the wait is for one that is mid-tokenization.
        self._thread.join(timeout=1)


def length_sorted_batches(lengths, batch_size, max_tokens):
    """Split indices sorted by decreasing length into batches of at most `batch_size` sequences (None: no
    limit) whose padded size (count x longest) stays within `max_tokens` (a single longer sequence still
    forms a batch)."""
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


def _per_text(opts, rows, lengths, hidden, embeddings, ids, types, prompt_tokens):
    """A batch's outputs per text, for output_value "token_embeddings" (each text's real tokens [len_i, H])
    or None (a dict of every output, as sentence-transformers gives, without the batch's padding)."""
    # Copied, not viewed: the encoder may hand out a buffer that the next batch overwrites (CUDA graphs).
    tokens = _start_copy_to_host(hidden) if hidden.device.type == "cuda" else hidden.clone()
    tokens = tokens.split(lengths)
    if opts.output_value == "token_embeddings":
        return list(tokens)
    embeddings = _start_copy_to_host(embeddings)
    items = []
    for number, (row, length) in enumerate(zip(rows.tolist(), lengths)):
        item = {"input_ids": ids[row, :length], "token_type_ids": types[row, :length],
                "attention_mask": torch.ones(length, dtype=torch.int64), "modality": "text"}
        if prompt_tokens:
            item["prompt_length"] = prompt_tokens
        items.append({**item, "token_embeddings": tokens[number], "sentence_embedding": embeddings[number]})
    return items


@dataclass
class _Chunk:
    pooled: list  # per batch [b, D] (or a list of b per-text outputs), on the host (pinned on a GPU)
    order: list  # input positions of the pooled rows, batch after batch
    ready: object  # a CUDA event recorded after the copies, or None


def _encode_chunk(model, pipeline, opts, prompt_tokens, ids, mask, types, stats):
    lengths = mask.sum(dim=1).tolist()
    batches = length_sorted_batches(lengths, opts.batch_size, opts.max_tokens)
    pooled = []
    for indices in batches:
        longest = max(lengths[i] for i in indices)
        rows = torch.tensor(indices)
        # Validated and packed on the CPU, where the tokens are: no GPU synchronisation per batch, so the
        # host prepares the next batch while the GPU computes this one.
        packing, *packed = pack_inputs(model.config, "cpu", ids[rows, :longest], mask[rows, :longest],
                                       types[rows, :longest], to_device=model.device)
        hidden = model.forward_tokens(packing, *packed)
        embeddings = pipeline.embed(hidden, packing.cu_seqlens, modes=opts.pooling, prompt_tokens=prompt_tokens,
                                    normalize=opts.normalize, truncate_dim=opts.truncate_dim)
        if opts.output_value == "sentence_embedding":
            pooled.append(_start_copy_to_host(embeddings))
        else:
            pooled.append(_per_text(opts, rows, [lengths[i] for i in indices], hidden, embeddings, ids, types,
                                    prompt_tokens))
        stats.tokens += packing.num_tokens
    stats.batches += len(batches)
    ready = None
    if model.device.type == "cuda":
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(model.device))
    return _Chunk(pooled, [i for indices in batches for i in indices], ready)


def _finish(chunk, progress, stats, clock):
    """A chunk's embeddings [n, D] in input order, once its copies to the host have landed."""
    if chunk.ready is not None:
        chunk.ready.synchronize()
    if isinstance(chunk.pooled[0], list):  # per-text outputs
        embeddings = [None] * len(chunk.order)
        for position, item in zip(chunk.order, itertools.chain.from_iterable(chunk.pooled)):
            embeddings[position] = item
    else:
        pooled = torch.cat(chunk.pooled)
        embeddings = torch.empty_like(pooled)
        embeddings[torch.tensor(chunk.order)] = pooled
    stats.texts += len(chunk.order)
    stats.chunks += 1
    if progress is not None:
        progress.update(len(chunk.order))
    clock.update()
    return embeddings


def _start_copy_to_host(tensor):
    """Queue a GPU result's copy into pinned host memory without waiting for it (valid once the chunk's
    event has completed), so GPU memory holds one chunk of embeddings, not the whole corpus."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def _progress_bar(texts):
    from tqdm.auto import tqdm

    total = len(texts) if hasattr(texts, "__len__") else None
    return tqdm(total=total, desc="encode", unit="text")
