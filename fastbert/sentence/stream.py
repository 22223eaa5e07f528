"""Sentence embeddings at corpus scale: the folder's sentence-transformers pipeline on packed tokens.

The texts (any iterable) are read in chunks of `chunk_size`. A background thread tokenizes the next
chunk while the model encodes the current one (the `tokenizers` library releases the GIL). Within a
chunk, texts are sorted by length and cut into batches under a token budget, so one long text never
pads a batch of short ones; the encoder's packed output is pooled directly (fastbert.sentence.pooling), and the
results come back in input order. Memory is bounded by a chunk, never by the corpus: `iter_encode` yields
each chunk's embeddings as soon as they are ready, `encode` gathers them into one tensor."""

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

from .modules import int_option
from .pipeline import load_pipeline
from .pooling import check_modes


@dataclass
class EncodeStats:
    """Where an encode's time went; pass one as `stats=` and read it afterwards (calls accumulate).

    tokenize_seconds: the background thread's time tokenizing (overlapped with the model's work);
    stall_seconds: the time the model sat waiting for tokens, i.e. tokenization that was not hidden;
    wall_seconds: the whole call, from the first text read to the last embedding returned."""

    texts: int = 0
    tokens: int = 0
    batches: int = 0
    chunks: int = 0
    tokenize_seconds: float = 0.0
    stall_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def tokenize_share(self):
        """Tokenizing time as a share of wall time (it runs alongside the model, so it can be hidden)."""
        return self.tokenize_seconds / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def stall_share(self):
        """The share of wall time lost waiting for the tokenizer: above ~0 it is the bottleneck."""
        return self.stall_seconds / self.wall_seconds if self.wall_seconds else 0.0


@dataclass(frozen=True)
class EncodeOptions:
    """encode()'s keyword arguments, checked once and resolved against the model's pipeline (plain values:
    they can be sent to worker processes)."""

    prompt: str | None = None
    batch_size: int | None = None
    max_tokens: int = MAX_BATCH_TOKENS
    chunk_size: int = CHUNK_TEXTS
    pooling: tuple | None = None
    normalize: bool | None = None
    truncate_dim: int | None = None
    max_length: int | None = None
    show_progress_bar: bool = False

    @classmethod
    def resolve(cls, model, *, prompt_name=None, prompt=None, batch_size=None, max_tokens=MAX_BATCH_TOKENS,
                chunk_size=CHUNK_TEXTS, pooling=None, normalize=None, truncate_dim=None, max_length=None,
                show_progress_bar=False):
        """Check encode()'s keyword arguments and resolve them against `model`'s pipeline."""
        pipeline = sentence_pipeline(model)
        if pooling is not None:
            pooling = check_modes(pooling, "pooling")
        if normalize not in (None, True, False):
            raise TypeError(f"normalize must be None, True or False, got {normalize!r}")
        truncate_dim = int_option(truncate_dim, "truncate_dim")
        truncate_dim = pipeline.truncate_dim if truncate_dim is None else truncate_dim
        dim = pipeline.output_dim(pooling)
        if truncate_dim is not None and truncate_dim > dim:
            raise ValueError(f"truncate_dim={truncate_dim} exceeds the embedding size {dim}")
        max_length = int_option(max_length, "max_length", minimum=2)
        return cls(
            # "" is no prompt, as in sentence-transformers
            prompt=pipeline.resolve_prompt(prompt, prompt_name) or None,
            batch_size=int_option(batch_size, "batch_size"), max_tokens=_required("max_tokens", max_tokens),
            chunk_size=_required("chunk_size", chunk_size), pooling=pooling, normalize=normalize,
            truncate_dim=truncate_dim, max_length=pipeline.max_seq_length if max_length is None else max_length,
            show_progress_bar=bool(show_progress_bar))


def _required(name, value):
    """A count that has no 'unset' value: int_option's check, None included."""
    if value is None:
        raise ValueError(f"{name} must be an integer >= 1, got None")
    return int_option(value, name)


def sentence_pipeline(model):
    """The model's SentencePipeline on its device: set by fastbert.from_pretrained, else read from the
    model's folder on first use (a model without a folder: mean pooling, nothing after it)."""
    pipeline = getattr(model, "sentence_pipeline", None)
    if pipeline is None:
        pipeline = load_pipeline(model.path, model.config.hidden_size).to(model.device)
        model.sentence_pipeline = pipeline
    return pipeline


def encode(model, texts, *, stats=None, **options):
    """Embed `texts` with `model` (a FastBertModel with a tokenizer) -> float32 [N, D] on the CPU, in input
    order; a single string gives [D].

    texts: a string, or any iterable of strings (a list, a generator, a file's lines...).
    prompt / prompt_name: as sentence-transformers: `prompt` is prepended to every text; else
      prompts[prompt_name] from config_sentence_transformers.json; else its default_prompt_name's prompt.
    batch_size: an upper bound on sequences per batch (sentence-transformers compatibility); None, the
      default, lets the token budget alone decide.
    max_tokens: the token budget of a batch (sequences x longest sequence), default
      fastbert.defaults.MAX_BATCH_TOKENS.
    chunk_size: texts read and tokenized at a time (memory is bounded by a chunk), default
      fastbert.defaults.CHUNK_TEXTS.
    pooling: a mode or list of modes replacing the folder's Pooling (fastbert.sentence.pooling.POOLING_MODES).
    normalize: None follows the folder (its Normalize module); True L2-normalizes the final vectors; False
      leaves out the folder's final Normalize.
    truncate_dim: keep the first D dimensions (Matryoshka), after the pipeline; default: the model's.
    max_length: truncation in tokens; None follows the folder's max_seq_length, else the model's maximum.
    stats: an EncodeStats to fill with the time spent tokenizing and waiting for tokens.
    A model encodes from one thread at a time (its tokenizer is shared with the background thread)."""
    single = isinstance(texts, str)
    opts = EncodeOptions.resolve(model, **options)
    texts = [texts] if single else texts
    chunks = encode_stream(model, texts, opts, stats)
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
    return embeddings[0] if single else embeddings


def _wrong_length(texts, given):
    raise ValueError(f"texts has len() {len(texts)} but its iteration gave {given} texts: a sized input must "
                     "give as many texts as its len() says")


def iter_encode(model, texts, *, stats=None, **options):
    """encode() as a generator: yields float32 [n, D] CPU tensors, one per chunk of `chunk_size` texts (the
    last may be shorter), in input order. Reads `texts` lazily, so a stream of any length is encoded in
    bounded memory; the options are encode()'s, checked before the first text is read. The reader runs a few
    chunks ahead of what has been yielded (at most four): a stream closed early may have read that much more."""
    if isinstance(texts, str):
        raise TypeError("iter_encode needs an iterable of strings, got a single string: use encode(text)")
    opts = EncodeOptions.resolve(model, **options)
    return encode_stream(model, texts, opts, stats)


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
    prompt_tokens = 0
    if opts.prompt and not pipeline.pooling.include_prompt:
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


@dataclass
class _Chunk:
    pooled: list  # per batch [b, D], on the host (pinned, copies in flight on a GPU)
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
        pooled.append(_start_copy_to_host(embeddings))
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
