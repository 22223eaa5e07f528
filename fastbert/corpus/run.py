"""The chunked run of `fastbert encode`: records streamed through the model chunk by chunk, in input order
(embedding_chunks: a background thread tokenizes the next chunk while the model encodes this one), each
chunk's rows shown or committed to the partial output of fastbert.corpus.partial (encode_records), and the
whole --output run from opening the partial output to the final rename (write_corpus)."""

import collections
import contextlib
import itertools

import numpy as np

from fastbert.checkpoint.tokenizer import UntokenizableTextError, check_encodable
from fastbert.errors import InputError

from .partial import PartialOutput
from .writers import OUTPUT_FORMATS

FIRST_CHUNK = 32  # records in the first chunk: its rows reach the disk within seconds, even on a CPU


def chunk_sizes(chunk_size, resuming):
    """Chunk lengths: doubling from FIRST_CHUNK up to chunk_size, so the first rows land fast while later
    chunks are large enough to batch well; constant when resuming (the first rows exist already)."""
    size = chunk_size if resuming else min(FIRST_CHUNK, chunk_size)
    while True:
        yield size
        size = min(2 * size, chunk_size)


def _refused_texts_error(err, unwritten, number, text_field):
    """An InputError for an encode failure that input text explains, else None. The records read and not yet
    written (from record `number` on) hold the chunk that failed: a text that is not valid Unicode among
    them is named by its record number, checked here, after the failure, so good chunks pay nothing (and a
    worker pool's error, which counts in its own chunk, is told in the input's numbers too)."""
    try:
        check_encodable("texts", [record[text_field] for record in unwritten])
    except UntokenizableTextError as bad:
        where = ", ".join(str(number + i) for i in bad.indices[:5])
        return InputError(f"cannot encode input record {where}: {bad.shifted(number - 1)}")
    if not isinstance(err, ValueError):
        return None
    last = number + len(unwritten) - 1
    where = f"records {number}-{last}" if unwritten else f"the records from {number} on"
    return InputError(f"cannot encode input {where}: {err}")


def embedding_chunks(model, texts, options, sizes):
    """Embeddings [n, D] of the iterable `texts`, chunk after chunk in input order, of the lengths the
    endless iterator `sizes` gives. A FastBertModel streams through fastbert.sentence.stream (a background thread
    tokenizes the next chunk while the model encodes this one); a worker pool (--devices) through its own
    encode_chunks (each worker tokenizes its chunks, a few chunks in flight)."""
    from fastbert.parallel.pool import EncodePool
    from fastbert.sentence.stream import EncodeOptions, encode_stream

    if isinstance(model, EncodePool):
        chunks = iter(lambda: list(itertools.islice(texts, next(sizes))), [])
        return model.encode_chunks(chunks, **options)
    try:
        opts = EncodeOptions.resolve(model, **options)
    except (TypeError, ValueError) as err:
        raise InputError(str(err)) from err
    return encode_stream(model, texts, opts, chunk_sizes=sizes)


def encode_records(reader, model, options, text_field, chunk_size, sink=None, on_rows=None, progress_bar=None):
    """Embed every record of `reader` through embedding_chunks, which reads the records and tokenizes the
    next chunk while the model encodes this one. `options`: encode()'s keyword arguments. With a
    PartialOutput `sink`, each chunk's rows are committed to it in input order (after skipping and checking
    what an interrupted run committed); `on_rows(first_index, records, embeddings)` sees every new chunk.
    Returns the number of rows."""
    resuming = sink is not None and sink.rows > 0
    records = (record for chunk in reader.chunks(chunk_sizes(chunk_size, resuming)) for record in chunk)
    number = 1  # the input record number of the next row to write
    if resuming:
        skipped = sink.skip_committed(records, reader.name)
        number += skipped
        if progress_bar is not None:
            progress_bar.update(skipped)
    # The records the background thread has read and whose rows are not written yet, oldest first: the
    # stream's embeddings come in the same order, so a chunk of n rows belongs to the first n records here.
    unwritten = collections.deque()

    def texts():
        for record in records:
            unwritten.append(record)
            yield record[text_field]

    stream = embedding_chunks(model, texts(), options, chunk_sizes(chunk_size, resuming))
    with contextlib.closing(stream):  # stops the background work when a signal or an error ends the run
        while True:
            try:
                embeddings = next(stream, None)
            except InputError:  # the reader's own error (a bad record), raised where the stream reads it
                raise
            except (ValueError, RuntimeError) as err:  # RuntimeError: how a worker pool reports a failure
                refused = _refused_texts_error(err, unwritten, number, text_field)
                if refused is None:
                    raise
                raise refused from err
            if embeddings is None:
                break
            chunk = [unwritten.popleft() for _ in range(len(embeddings))]
            embeddings = np.asarray(embeddings, dtype=np.float32)
            if sink is not None:
                sink.commit_chunk(chunk, embeddings, number, reader.fields, getattr(reader, "arrow_schema", None))
            if on_rows is not None:
                on_rows(number - 1, chunk, embeddings)
            number += len(chunk)
            if progress_bar is not None:
                progress_bar.update(len(chunk))
    if number == 1:
        raise InputError(f"{reader.name} holds no records")
    return number - 1


def write_corpus(output, suffix, settings, resume, reader, load_model, options, text_field,
                 embedding_field, chunk_size, progress_bar=None, overwrite=False, model_folder=None):
    """The whole --output run: open (or continue) the partial output, load the model, encode, rename.
    Returns (rows, dim, model). Any failure or signal abandons the partial files (kept with --resume).
    `model_folder`: the folder whose file digests the progress record keeps beside `settings`."""
    sink = PartialOutput(output, OUTPUT_FORMATS[suffix], settings, text_field, embedding_field, resume,
                         overwrite=overwrite, model_folder=model_folder)
    if sink.format.carries_fields and embedding_field in (reader.fields or ()):
        raise InputError(f"{reader.name} already has a column {embedding_field!r}; name the embedding column with "
                         "--embedding-field")
    with sink:
        sink.open()
        model = load_model()
        rows = encode_records(reader, model, options, text_field, chunk_size, sink=sink, progress_bar=progress_bar)
        sink.finish()
    return rows, sink.format.state["dim"], model
