"""The partial output of `fastbert encode --output`: `<output>.partial`, its progress record, and the one
commit path every chunk's rows take; the chunked run that feeds it is fastbert.corpus.run.

Nothing is lost:
- The output may not be the input (or its partial files), and its folder must take a new file: both are
  checked before the model loads, by creating the partial file itself.
- The lock comes first: a run holds `<output>.partial` locked (flock) from before it looks at anything
  else until its rename, so a second run on the same output is refused at once, touching nothing. With
  the lock held: an interrupted run's partial continues only with --resume, and an existing output is
  replaced only with --overwrite. The rename commits the file this run holds: if the partial was deleted
  or replaced under it, the run fails instead of renaming another file into place.
- The output is written as `<output>.partial` beside it, with `<output>.progress.json` recording after every
  chunk (once the chunk's bytes are on disk) how many rows and bytes are complete, a SHA-256 of the input
  records they came from, and the settings that shaped them, the model's file digests among them
  (fastbert.corpus.model_files). `--resume` truncates the partial file to the recorded bytes, re-reads
  (without encoding) the recorded number of input records, and continues only if their digest and the
  settings match: no duplicated or missing rows, never rows of another input or another model.
- SIGINT and SIGTERM end the run between chunks' commits: the partial files are removed (with --resume
  they are kept, resumable); the rename to the final name is never interrupted.
- A full disk reads `no space left on device` naming the output, in every format."""

import contextlib
import errno
import hashlib
import itertools
import json
import os
import signal
import threading
from pathlib import Path

from fastbert.errors import InputError
from fastbert.jsonio import read_json

from .model_files import model_file_digests
from .writers import OUTPUT_FORMATS

PROGRESS_VERSION = 2  # 2: the settings hold the model's file digests


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


def _digest_update(hasher, records):
    """Feed records to the input digest in a canonical form (sorted keys, UTF-8)."""
    for record in records:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
        hasher.update(line.encode("utf-8", "surrogatepass") + b"\n")


# ---------------------------------------------------------------------------------------------------
# Output checks and the partial files


def _differences(then, now):
    """What differs between two settings dicts, in words; a dict-valued setting (the model's file
    digests) by the names of the entries that differ."""
    for key in sorted(set(then) | set(now)):
        before, after = then.get(key), now.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            names = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            yield f"{key} differ: {', '.join(names[:5])}{more}"
        else:
            yield f"{key} {before!r} then, {after!r} now"


def partial_paths(output):
    return output.with_name(output.name + ".partial"), output.with_name(output.name + ".progress.json")


def _write_error(err, output):
    disk_full = getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)
    if disk_full:
        return InputError(f"no space left on device: cannot write --output {output}")
    return InputError(f"cannot write --output {output}: {getattr(err, 'strerror', None) or err}")


def check_output(option, input_option):
    """The output path and its format, refused before anything is written: an unknown suffix, a folder,
    a missing parent, the input file itself, or a read-only file. What needs the lock (another run, an
    interrupted run's partial, an existing output) PartialOutput.open checks."""
    output = Path(option).expanduser()
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise InputError(f"--output {output}: unknown extension {suffix or '(none)'!r}; "
                         f"use one of {', '.join(OUTPUT_FORMATS)}")
    if output.is_dir():
        raise InputError(f"--output {output} is a directory")
    if not output.parent.is_dir():
        what = "is not a folder" if output.parent.exists() else "does not exist"
        raise InputError(f"--output {output}: folder {output.parent} {what}")
    partial, progress = partial_paths(output)
    if input_option not in (None, "-"):
        source = Path(input_option).expanduser()
        for path in (output, partial, progress):
            if source.exists() and path.exists() and os.path.samefile(source, path):
                raise InputError(f"--output {output} would overwrite the input file {source}: choose another path")
    if output.exists() and not os.access(output, os.W_OK):
        raise InputError(f"--output {output} exists and is read-only")
    return output, suffix


def _same_file(file, path):
    """Whether `path` still names the open `file` (not deleted, not replaced by another file)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(file.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _lock(file):
    """An exclusive lock on `file` without waiting: False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the exclusive create still guards a fresh run
        return True
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class PartialOutput:
    """`<output>.partial` and its progress record; rows are committed chunk by chunk (commit_chunk).

    Use as a context manager around the whole run: inside it SIGINT and SIGTERM raise Interrupted between
    commits, never during one; leaving it on an exception (or a signal) abandons the partial files, keeping
    them when `resume` is set and rows are complete, with a hint on the exception (err.resume_hint)."""

    def __init__(self, output, format_class, settings, text_field, embedding_field, resume, overwrite=False,
                 model_folder=None):
        self.output, self.settings, self.resume, self.overwrite = output, settings, resume, overwrite
        self.model_folder = model_folder  # its file digests join the settings once the lock is held
        self.partial, self.progress = partial_paths(output)
        self.temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        self.format = format_class(text_field, embedding_field)
        self.rows, self.bytes, self.digest, self.file = 0, 0, None, None
        # True once this run holds the partial file and has checked it is its own: only then may it delete it.
        self.owned = False
        self._hasher = hashlib.sha256()  # the digest of the input records whose rows are committed
        self._guard = SignalGuard()

    def __enter__(self):
        self._guard.__enter__()
        return self

    def __exit__(self, exc_type, err, traceback):
        try:
            if err is not None:
                keep = self.resume and self.owned and self.rows > 0
                self.abandon(keep)
                if keep:
                    err.resume_hint = (f"{self.rows} rows are complete in {self.partial}: rerun with --resume "
                                       "to continue")
        finally:
            self._guard.__exit__(exc_type, err, traceback)

    def open(self):
        """Hold the partial file, locked, before anything else; then, under the lock: an interrupted run's
        partial continues only with --resume, an existing output is replaced only with --overwrite, and
        the model's file digests join the settings (hashing takes a while: a second run waits for none)."""
        self.file, existed = self._hold()
        if not existed:
            self.owned = True  # a new, empty file: this run's to remove
            self._add_model_files()
            try:
                self._write_progress()  # replaces one a run left when it ended between rename and cleanup
            except OSError as err:
                raise _write_error(err, self.output) from err
            return self
        if not self.resume:
            self._release()
            raise InputError(f"{self.partial} holds an interrupted run's rows: pass --resume to continue it, "
                             "or delete it (and its .progress.json) to start over")
        self._refuse_existing_output()
        self._add_model_files()
        self._load_progress()
        size = os.fstat(self.file.fileno()).st_size
        if size < self.bytes:
            raise InputError(f"cannot resume: {self.partial} holds {size} bytes, fewer than the {self.bytes} "
                             "its progress record says are complete; delete both files to start over")
        self.owned = True  # checked: the interrupted run was this one's
        if self.rows == 0:
            self.truncate()  # nothing complete to check against the input: start the file afresh
        return self

    def _add_model_files(self):
        if self.model_folder is not None:
            self.settings = {**self.settings, "model_files": model_file_digests(self.model_folder)}

    def _refuse_existing_output(self):
        if self.output.exists() and not self.overwrite:
            raise InputError(f"--output {self.output} exists: pass --overwrite to replace it, or choose "
                             "another path")

    def _hold(self):
        """Open and lock the partial file -> (file, whether it existed). An existing one is opened without
        a change, locked, and kept only if its path still names it (a run finishing renames it away)."""
        for _ in range(3):
            existed = self.partial.exists()
            if not existed:
                self._refuse_existing_output()  # before creating anything
            try:
                # "x": exclusive, so a new file is never another run's.
                file = open(self.partial, "r+b" if existed else "x+b")  # noqa: SIM115 - closed by finish/abandon
            except (FileNotFoundError, FileExistsError):
                continue  # another run created it or renamed it away meanwhile: look again
            except OSError as err:
                raise _write_error(err, self.output) from err
            if not _lock(file):
                file.close()
                raise InputError(f"another fastbert encode is writing {self.output}: wait for it to end, or "
                                 "choose another --output")
            if _same_file(file, self.partial):
                return file, existed
            file.close()
        raise InputError(f"{self.partial} keeps changing: is another fastbert encode writing {self.output}?")

    def _release(self):
        self.file.close()
        self.file = None

    def _load_progress(self):
        try:
            progress = read_json(self.progress)
            version, rows, size, digest = (progress["version"], progress["rows"], progress["bytes"],
                                           progress["input_sha256"])
            settings, state = progress["settings"], progress["format_state"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"cannot resume: the progress record {self.progress} is missing or unreadable; delete "
                             f"{self.partial} to start over") from err
        if version != PROGRESS_VERSION:
            raise InputError(f"cannot resume: {self.progress} was written by another fastbert version")
        differences = "; ".join(_differences(settings, self.settings))
        if differences:
            raise InputError(f"cannot resume {self.output} with other settings ({differences}): rerun with the "
                             "interrupted run's model and options, or delete its .partial to start over")
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

    def skip_committed(self, records, source):
        """Read (without encoding) from the iterator `records` the ones an interrupted run committed, check
        that they are the ones it encoded, and drop what follows its last commit. `source` names the input
        in errors. Returns their count."""
        skipped = 0

        def counted():
            nonlocal skipped
            for record in itertools.islice(records, self.rows):
                skipped += 1
                yield record

        _digest_update(self._hasher, counted())
        if skipped < self.rows:
            raise InputError(f"cannot resume: {source} holds {skipped} records, fewer than the {self.rows} "
                             "the interrupted run encoded (another input?)")
        if self._hasher.hexdigest() != self.digest:
            raise InputError(f"cannot resume: the first {self.rows} records of {source} differ from those the "
                             "interrupted run encoded (another input?)")
        self.truncate()
        return skipped

    def commit_chunk(self, records, embeddings, first_number, fields=None, arrow_schema=None):
        """Append one chunk's rows (input records from number `first_number` on, float32 embeddings [n, D]) and
        record them, signals held back meanwhile. The first chunk fixes the format's columns: `fields` (the
        input's field names where known up front, else the first chunk's) and an Arrow schema, if any."""
        self.format.check(records, first_number)
        header = b""
        if self.format.state is None:
            fields = list(fields) if fields is not None else list(dict.fromkeys(k for r in records for k in r))
            header = self.format.start(fields, records, embeddings.shape[1], first_number, arrow_schema)
        elif embeddings.shape[1] != self.format.state["dim"]:
            raise InputError(f"the model gives {embeddings.shape[1]} dimensions, the partial output holds "
                             f"{self.format.state['dim']}")
        data = header + self.format.rows(records, embeddings, first_number)
        _digest_update(self._hasher, records)
        with self._guard.deferred():
            self._commit(data, len(records))

    def append(self, data):
        self.file.write(data)

    def _commit(self, data, rows):
        """Write a chunk's bytes, make them durable, then record them: the record never runs ahead."""
        try:
            self.append(data)
            self.file.flush()
            os.fsync(self.file.fileno())
            self._check_held()  # before the progress record, which would then be another run's
            self.bytes += len(data)
            self.rows += rows
            self.digest = self._hasher.hexdigest()
            self._write_progress()
        except OSError as err:
            raise _write_error(err, self.output) from err

    def _check_held(self):
        if not _same_file(self.file, self.partial):
            self.owned = False  # whatever the path names now is not this run's to remove
            raise InputError(f"{self.partial} was deleted or replaced while this run wrote it: {self.output} "
                             "is not written (is another fastbert encode writing it?)")

    def finish(self):
        """Make the output final: the format's last pass over the file this run holds, then one atomic
        rename (never cut by a signal), still under the lock, and only while the path names that file."""
        with self._guard.deferred():
            try:
                final = self.format.finish(self.file, self.rows, self.temporary)
                self._check_held()
                os.replace(final, self.output)
                if final != self.partial:
                    self.partial.unlink()  # still this run's: under its name and locked until the close
                self.progress.unlink(missing_ok=True)
                self.file.close()
            except OSError as err:
                raise _write_error(err, self.output) from err

    def abandon(self, keep):
        """After a failure or a signal: keep the partial files (resumable) or remove every trace."""
        if self.file is not None and not self.file.closed:
            self.file.close()
        paths = [self.temporary]  # this process's own name
        if self.owned:
            paths.append(self.progress.with_name(self.progress.name + ".tmp"))
            if not keep:
                paths += [self.partial, self.progress]
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
