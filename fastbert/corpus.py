"""`fastbert encode` over a corpus: stream records in, embed them chunk by chunk (fastbert.sentences tokenizes
the next chunk while the model encodes this one), append each chunk's rows to a partial output on disk, and
make the output final with one atomic rename.

Nothing is lost:
- The output may not be the input (or its partial files), and its folder must take a new file: both are
  checked before the model loads, by creating the partial file itself.
- The output is written as `<output>.partial` beside it, with `<output>.progress.json` recording after every
  chunk (once the chunk's bytes are on disk) how many rows and bytes are complete, a SHA-256 of the input
  records they came from, and the settings that shaped them. `--resume` truncates the partial file to the
  recorded bytes, re-reads (without encoding) the recorded number of input records, and continues only if
  their digest and the settings match: no duplicated or missing rows, and never rows of another input.
- SIGINT and SIGTERM end the run between chunks' commits: the partial files are removed (with --resume
  they are kept, resumable); the rename to the final name is never interrupted.
- A full disk reads `no space left on device` naming the output, in every format."""

import collections
import contextlib
import errno
import hashlib
import itertools
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np

from .sinks import OUTPUT_FORMATS
from .textio import CliError
from .tokenizer import UntokenizableTextError, check_encodable

PROGRESS_VERSION = 1
FIRST_CHUNK = 32  # records in the first chunk: its rows reach the disk within seconds, even on a CPU


class Interrupted(Exception):
    """SIGINT or SIGTERM, raised in the main thread between two commits."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Turns SIGINT and SIGTERM into Interrupted, held back while `deferred()` writes a commit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.deferring, self.pending, self.previous = False, None, {}

    def _handle(self, signum, frame):
        if self.deferring:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise Interrupted(self.pending)


def chunk_sizes(chunk_size, resuming):
    """Chunk lengths: doubling from FIRST_CHUNK up to chunk_size, so the first rows land fast while later
    chunks are large enough to batch well; constant when resuming (the first rows exist already)."""
    size = chunk_size if resuming else min(FIRST_CHUNK, chunk_size)
    while True:
        yield size
        size = min(2 * size, chunk_size)


def record_digest_update(hasher, records):
    """Feed records to the input digest in a canonical form (sorted keys, UTF-8)."""
    for record in records:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
        hasher.update(line.encode("utf-8", "surrogatepass") + b"\n")


# ---------------------------------------------------------------------------------------------------
# Output checks and the partial files


def partial_paths(output):
    return output.with_name(output.name + ".partial"), output.with_name(output.name + ".progress.json")


def _write_error(err, output):
    disk_full = getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)
    if disk_full:
        return CliError(f"no space left on device: cannot write --output {output}")
    return CliError(f"cannot write --output {output}: {getattr(err, 'strerror', None) or err}")


def check_output(option, input_option, resume):
    """The output path and its format, refused before anything is written: an unknown suffix, a folder,
    a missing parent, the input file itself, a read-only file, or an interrupted run without --resume."""
    output = Path(option).expanduser()
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise CliError(f"--output {output}: unknown extension {suffix or '(none)'!r}; "
                       f"use one of {', '.join(OUTPUT_FORMATS)}")
    if output.is_dir():
        raise CliError(f"--output {output} is a directory")
    if not output.parent.is_dir():
        what = "is not a folder" if output.parent.exists() else "does not exist"
        raise CliError(f"--output {output}: folder {output.parent} {what}")
    partial, progress = partial_paths(output)
    if input_option not in (None, "-"):
        source = Path(input_option).expanduser()
        for path in (output, partial, progress):
            if source.exists() and path.exists() and os.path.samefile(source, path):
                raise CliError(f"--output {output} would overwrite the input file {source}: choose another path")
    if output.exists() and not os.access(output, os.W_OK):
        raise CliError(f"--output {output} exists and is read-only")
    if partial.exists() and not resume:
        raise CliError(f"{partial} holds an interrupted run's rows: pass --resume to continue it, "
                       "or delete it (and its .progress.json) to start over")
    return output, suffix


class PartialOutput:
    """`<output>.partial` and its progress record; rows are committed chunk by chunk."""

    def __init__(self, output, format_class, settings, text_field, embedding_field):
        self.output, self.settings = output, settings
        self.partial, self.progress = partial_paths(output)
        self.temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        self.format = format_class(text_field, embedding_field)
        self.rows, self.bytes, self.digest, self.file = 0, 0, None, None
        # True once this run holds the partial file and has checked it is its own: only then may it delete it.
        self.owned = False

    def open(self, resume):
        """Continue the partial file (resume) or create it, which proves the folder takes new files."""
        resuming = resume and self.partial.exists()
        if not resuming and self.progress.exists():
            self.progress.unlink()  # left by a run that ended between its rename and this cleanup
        try:
            self.file = open(self.partial, "r+b" if resuming else "xb")  # noqa: SIM115 - closed by finish/abandon
        except FileExistsError as err:
            raise CliError(f"{self.partial} appeared meanwhile: is another fastbert encode writing "
                           f"{self.output}?") from err
        except OSError as err:
            raise _write_error(err, self.output) from err
        self._lock()  # before reading the progress record: a live run may be rewriting it
        if resuming:
            self._load_progress()
            size = os.fstat(self.file.fileno()).st_size
            if size < self.bytes:
                raise CliError(f"cannot resume: {self.partial} holds {size} bytes, fewer than the {self.bytes} "
                               "its progress record says are complete; delete both files to start over")
            if self.rows == 0:
                self.truncate()  # nothing complete to check against the input: start the file afresh
        else:
            try:
                self._write_progress()
            except OSError as err:
                self.owned = True  # our new, empty file: remove it
                raise _write_error(err, self.output) from err
        self.owned = True
        return self

    def _lock(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the exclusive create still guards a fresh run
            return
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self.file.close()
            self.file = None
            raise CliError(f"another fastbert encode is writing {self.output}") from err

    def _load_progress(self):
        try:
            progress = json.loads(self.progress.read_text(encoding="utf-8"))
            version, rows, size, digest = (progress["version"], progress["rows"], progress["bytes"],
                                           progress["input_sha256"])
            settings, state = progress["settings"], progress["format_state"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CliError(f"cannot resume: the progress record {self.progress} is missing or unreadable; delete "
                           f"{self.partial} to start over") from err
        if version != PROGRESS_VERSION:
            raise CliError(f"cannot resume: {self.progress} was written by another fastbert version")
        changed = sorted(key for key in set(settings) | set(self.settings)
                         if settings.get(key) != self.settings.get(key))
        if changed:
            differences = "; ".join(f"{key} {settings.get(key)!r} then, {self.settings.get(key)!r} now"
                                    for key in changed)
            raise CliError(f"cannot resume {self.output} with other settings ({differences}): rerun with the "
                           "interrupted run's options, or delete its .partial to start over")
        self.rows, self.bytes, self.digest, self.format.state = rows, size, digest, state

    def _write_progress(self):
        record = {"version": PROGRESS_VERSION, "output": self.output.name, "rows": self.rows, "bytes": self.bytes,
                  "input_sha256": self.digest, "settings": self.settings, "format_state": self.format.state}
        staging = self.progress.with_name(self.progress.name + ".tmp")
        with open(staging, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self.progress)

    def truncate(self):
        """Drop what follows the last commit (a chunk whose commit a kill cut short)."""
        self.file.truncate(self.bytes)
        self.file.seek(self.bytes)

    def append(self, data):
        self.file.write(data)

    def commit(self, data, rows, digest):
        """Write a chunk's bytes, make them durable, then record them: the record never runs ahead."""
        try:
            self.append(data)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.bytes += len(data)
            self.rows += rows
            self.digest = digest
            self._write_progress()
        except OSError as err:
            raise _write_error(err, self.output) from err

    def finish(self):
        try:
            self.file.close()
            final = self.format.finish(self.partial, self.rows, self.temporary)
            os.replace(final, self.output)
            for path in (self.partial, self.progress):
                path.unlink(missing_ok=True)
        except OSError as err:
            raise _write_error(err, self.output) from err

    def abandon(self, keep):
        """After a failure or a signal: keep the partial files (resumable) or remove every trace."""
        if self.file is not None and not self.file.closed:
            self.file.close()
        if not self.owned:
            return
        paths = [self.temporary, self.progress.with_name(self.progress.name + ".tmp")]
        if not keep:
            paths += [self.partial, self.progress]
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------
# The run


def _fields(reader, records):
    """The input's field names: known up front (CSV, Parquet) or those of the first chunk, in order."""
    if reader.fields is not None:
        return list(reader.fields)
    return list(dict.fromkeys(key for record in records for key in record))


def _skip_committed(records, reader, sink, hasher, progress_bar):
    """Read (without encoding) the records an interrupted run committed, check that they are the ones it
    encoded, and drop what follows its last commit. Returns their count."""
    skipped = 0

    def counted():
        nonlocal skipped
        for record in itertools.islice(records, sink.rows):
            skipped += 1
            yield record

    record_digest_update(hasher, counted())
    if progress_bar is not None:
        progress_bar.update(skipped)
    if skipped < sink.rows:
        raise CliError(f"cannot resume: {reader.name} holds {skipped} records, fewer than the {sink.rows} "
                       "the interrupted run encoded (another input?)")
    if hasher.hexdigest() != sink.digest:
        raise CliError(f"cannot resume: the first {sink.rows} records of {reader.name} differ from those the "
                       "interrupted run encoded (another input?)")
    sink.truncate()
    return skipped


def _refused_texts_error(err, unwritten, number, text_field):
    """A CliError for an encode failure that input text explains, else None. The records read and not yet
    written (from record `number` on) hold the chunk that failed: a text that is not valid Unicode among
    them is named by its record number, checked here, after the failure, so good chunks pay nothing (and a
    worker pool's error, which counts in its own chunk, is told in the input's numbers too)."""
    try:
        check_encodable("texts", [record[text_field] for record in unwritten])
    except UntokenizableTextError as bad:
        where = ", ".join(str(number + i) for i in bad.indices[:5])
        return CliError(f"cannot encode input record {where}: {bad.shifted(number - 1)}")
    if not isinstance(err, ValueError):
        return None
    last = number + len(unwritten) - 1
    where = f"records {number}-{last}" if unwritten else f"the records from {number} on"
    return CliError(f"cannot encode input {where}: {err}")


def embedding_chunks(model, texts, options, sizes):
    """Embeddings [n, D] of the iterable `texts`, chunk after chunk in input order, of the lengths the
    endless iterator `sizes` gives. A FastBertModel streams through fastbert.sentences (a background thread
    tokenizes the next chunk while the model encodes this one); a worker pool (--devices) through its own
    encode_chunks (each worker tokenizes its chunks, a few chunks in flight)."""
    from .sentences import encode_chunks, encode_options
    from .workers import EncodePool

    if isinstance(model, EncodePool):
        chunks = iter(lambda: list(itertools.islice(texts, next(sizes))), [])
        return model.encode_chunks(chunks, **options)
    try:
        opts = encode_options(model, **options)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from err
    return encode_chunks(model, texts, opts, chunk_sizes=sizes)


def encode_records(reader, model, options, text_field, chunk_size, sink=None, on_rows=None, progress_bar=None):
    """Embed every record of `reader` through fastbert.sentences.encode_chunks: its background thread reads
    the records and tokenizes the next chunk while the model encodes this one. `options`: encode()'s keyword
    arguments. With a PartialOutput `sink`, each chunk's rows are committed to it in input order (after
    skipping and checking what an interrupted run committed); `on_rows(first_index, records, embeddings)`
    sees every new chunk. Returns the number of rows."""
    resuming = sink is not None and sink.rows > 0
    records = (record for chunk in reader.chunks(chunk_sizes(chunk_size, resuming)) for record in chunk)
    hasher, number = hashlib.sha256(), 1  # number: the input record number of the next row to write
    if resuming:
        number += _skip_committed(records, reader, sink, hasher, progress_bar)
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
                _commit_chunk(sink, reader, chunk, embeddings, number, hasher)
            if on_rows is not None:
                on_rows(number - 1, chunk, embeddings)
            number += len(chunk)
            if progress_bar is not None:
                progress_bar.update(len(chunk))
    if number == 1:
        raise CliError(f"{reader.name} holds no records")
    return number - 1


def _commit_chunk(sink, reader, chunk, embeddings, number, hasher):
    """Append one chunk's rows to the partial output and record them, signals held back meanwhile."""
    sink.format.check(chunk, number)
    header = b""
    if sink.format.state is None:
        header = sink.format.start(_fields(reader, chunk), chunk, embeddings.shape[1],
                                   getattr(reader, "arrow_schema", None))
    elif embeddings.shape[1] != sink.format.state["dim"]:
        raise CliError(f"the model gives {embeddings.shape[1]} dimensions, the partial output holds "
                       f"{sink.format.state['dim']}")
    data = header + sink.format.rows(chunk, embeddings)
    record_digest_update(hasher, chunk)
    with sink.guard.deferred():
        sink.commit(data, len(chunk), hasher.hexdigest())


def write_corpus(output, suffix, settings, resume, reader, load_model, options, text_field,
                 embedding_field, chunk_size, progress_bar=None):
    """The whole --output run: open (or continue) the partial output, load the model, encode, rename.
    Returns (rows, dim, model). Any failure or signal abandons the partial files (kept with --resume)."""
    sink = PartialOutput(output, OUTPUT_FORMATS[suffix], settings, text_field, embedding_field)
    if sink.format.carries_fields and embedding_field in (reader.fields or ()):
        raise CliError(f"{reader.name} already has a column {embedding_field!r}; name the embedding column with "
                       "--embedding-field")
    with SignalGuard() as guard:
        sink.guard = guard
        try:
            sink.open(resume)
            model = load_model()
            rows = encode_records(reader, model, options, text_field, chunk_size, sink=sink,
                                  progress_bar=progress_bar)
            with guard.deferred():
                sink.finish()
        except BaseException as err:
            keep = resume and sink.owned and sink.rows > 0
            sink.abandon(keep)
            if keep:
                err.resume_hint = f"{sink.rows} rows are complete in {sink.partial}: rerun with --resume to continue"
            raise
    return rows, sink.format.state["dim"], model
