"""Many devices, one machine: a pool of worker processes, one per device, that encode in input order.

    with model.start_pool(["cuda:0", "cuda:1"]) as pool:  # each worker loads the model once
        embeddings = pool.encode(texts)                     # what model.encode(texts) returns
    embeddings = model.encode(texts, devices=["cuda:0", "cuda:1"])  # a pool for this one call

Workers are spawned, not forked (CUDA cannot be used in a forked child), and load the model from its
folder on their device. They take chunks of texts from one shared task queue, so a faster device takes
more chunks, and tokenize their own chunks, so tokenization runs in parallel too; the parent puts the
results back in input order. A worker's exception is raised again in the parent, of its own type and
with the worker's traceback as its cause, once the chunks before its chunk have been yielded; a text it
names is named by its index in the caller's input. A worker that dies (killed, out of memory) fails the
call within POLL_S seconds and closes the pool; a parent that dies (even by SIGKILL) takes its workers
with it (fastbert.parallel.worker.watch_parent). Spawned workers import the main module: a script needs
the usual `if __name__ == "__main__":` guard."""

import itertools
import math
import queue
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sized

import numpy as np
import torch

from fastbert.checkpoint.tokenizer import UntokenizableTextError
from fastbert.defaults import CHUNK_TEXTS
from fastbert.sentence.output import split_return_options

from .devices import cpu_threads, describe_runtimes, parse_devices
from .worker import from_transport, unpack_exception, worker_main

# How often the parent checks that its workers live while it waits for a reply.
POLL_S = 0.5

# encode() cuts a call into about this many chunks per worker: enough for a fast device to take more
# than a slow one, few enough that each chunk fills the token budget of several batches.
CHUNKS_PER_WORKER = 4
# ...but no task larger than this (a task, not a memory bound: the worker streams it in chunks of
# fastbert.defaults.CHUNK_TEXTS); an iterable of unknown length goes out in chunks of CHUNK_TEXTS.
MAX_CHUNK_TEXTS = 4096
# Chunks handed out but not yet returned in order, per worker: bounds the parent's memory while every
# worker always has its next chunk waiting.
IN_FLIGHT_PER_WORKER = 2
# How long close() lets workers finish their current chunk before terminating them.
CLOSE_GRACE_S = 5.0


class WorkerError(RuntimeError):
    """A worker failed with no exception of its own to raise again: it died, or its exception could not
    be pickled."""


class RemoteTraceback(Exception):
    """The `__cause__` of an exception raised again from a worker: the worker's own traceback."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


def _concatenate(parts):
    """One result from the chunks' results, in order: what encode would return for all the texts."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    if isinstance(parts[0], list):
        return [item for part in parts for item in part]
    raise TypeError(f"cannot join encode results of type {type(parts[0]).__name__} across chunks")


def _shutdown(processes, tasks, results, grace=CLOSE_GRACE_S):
    """Stop the workers: politely (finish the current chunk, within `grace` seconds), then terminate,
    then kill."""
    for process in processes:
        if process.is_alive():
            tasks.put(None)
    deadline = time.monotonic() + grace
    while any(process.is_alive() for process in processes) and time.monotonic() < deadline:
        try:  # a worker cannot exit while its last result is stuck in a full pipe: keep reading
            results.get(timeout=0.05)
        except queue.Empty:
            pass
    for process in processes:
        if process.pid is None:
            continue  # never started
        if process.is_alive():
            process.terminate()
        process.join(timeout=1.0)
        if process.is_alive():
            process.kill()
            process.join()
    for channel in (tasks, results):
        channel.cancel_join_thread()  # never block the parent's exit on data nobody will read
        channel.close()


# ---------------------------------------------------------------------------------------------------
# The pool


class EncodePool:
    """Worker processes, one per entry of `devices`, each holding the model of folder `path` (or Hub id).

    dtype, backend, gemm, cuda_graphs: as FastBertModel.from_pretrained, resolved on each worker's device.
    chunk_size: texts per task in encode() (default: about CHUNKS_PER_WORKER tasks per worker, at most
    MAX_CHUNK_TEXTS). timeout: seconds without any reply from the workers after which a call fails and
    the pool closes (default None: wait as long as they live; a first call on a GPU may compile and tune
    kernels); loading the model waits as long as the workers live. encode_defaults: keyword arguments
    every encode call gets unless it names them.
    Use as a context manager, or call close(); the pool serves any number of calls until then."""

    def __init__(self, path, devices, *, dtype=None, backend="auto", gemm="auto", cuda_graphs=None,
                 chunk_size=None, timeout=None, encode_defaults=None):
        from fastbert.checkpoint.hub import resolve_model_path

        self.path = resolve_model_path(path)  # a hub id is fetched once, here: the workers read the folder
        if not self.path.is_dir():
            raise FileNotFoundError(f"model folder not found: {self.path} is a file, not a checkpoint folder")
        self.devices = parse_devices(devices)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        self.chunk_size, self.timeout = chunk_size, timeout
        self.encode_defaults = dict(encode_defaults or {})
        options = dict(dtype=dtype, backend=backend, gemm=gemm, cuda_graphs=cuda_graphs)
        context = torch.multiprocessing.get_context("spawn")
        self._tasks, self._results = context.Queue(), context.Queue()
        self._cancelled = context.Value("q", 0)  # the last abandoned call: workers skip its chunks
        self._call = 0
        self._busy = False
        self._closed = False
        self.workers = []  # each worker's "device, backend, dtype", once all have loaded the model
        self._runtimes = []  # the same as (device, backend, dtype)
        threads = cpu_threads(self.devices)
        # Linux's parent-death signal follows the thread that starts a worker: only the main thread lives
        # as long as the process (a pool started from another thread relies on the workers' watch thread).
        watch_kernel = threading.current_thread() is threading.main_thread()
        self._processes = [
            context.Process(target=worker_main, name=f"fastbert-worker-{index}-{device}", daemon=True,
                            args=(index, device, self.path, options, threads, watch_kernel, self._tasks,
                                  self._results, self._cancelled))
            for index, device in enumerate(self.devices)]
        # Also at garbage collection and interpreter exit: a forgotten pool leaves no processes behind.
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._tasks, self._results)
        try:
            for process in self._processes:
                process.start()
            self._runtimes = self._wait_ready()
            self.workers = [", ".join(runtime) for runtime in self._runtimes]
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_model(cls, model, devices, **options):
        """A pool whose workers load `model`'s folder with its dtype, backend and GEMM choice (options
        override them)."""
        if model.path is None:
            raise ValueError("a worker pool loads the model from its folder: load it with "
                             "fastbert.from_pretrained(folder)")
        defaults = dict(dtype=model.dtype, backend=model.backend,
                        gemm=getattr(getattr(model.ops, "gemm", None), "mode", "auto"))
        # A truncate_dim given to fastbert.from_pretrained lives in the model's sentence pipeline, which
        # the workers' own loading does not see: it travels as an encode default instead.
        truncate_dim = getattr(getattr(model, "sentence_pipeline", None), "truncate_dim", None)
        if truncate_dim is not None:
            defaults["encode_defaults"] = {"truncate_dim": truncate_dim}
        return cls(model.path, devices, **{**defaults, **options})

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        # Leaving on an exception (Ctrl-C included): the chunks in flight are abandoned, stop at once.
        self.close(grace=CLOSE_GRACE_S if exc_type is None else 0)

    def __repr__(self):
        state = "closed" if self._closed else ", ".join(self.workers)
        return f"EncodePool({str(self.path)!r}, workers: {state})"

    @property
    def closed(self):
        return self._closed

    @property
    def summary(self):
        """The workers in one line (describe_runtimes)."""
        return describe_runtimes(self._runtimes)

    def close(self, grace=CLOSE_GRACE_S):
        """Stop every worker, letting each finish its chunk for up to `grace` seconds (idempotent)."""
        self._closed = True
        state = self._finalizer.detach()  # None once closed, or after garbage collection closed it
        if state is not None:
            _, shutdown, args, _ = state
            shutdown(*args, grace=grace)

    def encode(self, texts, *args, **kwargs):
        """model.encode(texts, *args, **kwargs) spread over the workers: the same result, in input order.
        texts: a string, a list, or any iterable of strings (read lazily, a bounded number of chunks ahead);
        a sized one must yield as many texts as its len() says."""
        if "stats" in kwargs:
            raise ValueError("stats= is not collected across worker processes: encode on one device to measure")
        if "device" in kwargs:
            raise ValueError("device= does not apply to a pool: each worker encodes on its own device "
                             f"({', '.join(map(str, self.devices))})")
        # Workers return float tensors; precision and the return type apply once, to the joined result.
        kwargs, returned = split_return_options({**self.encode_defaults, **kwargs})
        if isinstance(texts, str):
            return returned.finish(list(self._run(iter([[texts]]), args, kwargs, lambda chunk: ("the text", 0)))[0],
                                   single=True)
        if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a string or an iterable of strings, got {type(texts).__name__}")
        total = len(texts) if isinstance(texts, Sized) else None
        size = self.chunk_size or (CHUNK_TEXTS if total is None else min(
            MAX_CHUNK_TEXTS, max(1, math.ceil(total / (CHUNKS_PER_WORKER * len(self.devices))))))
        spans = []  # (first, end) index of each chunk sent, for error messages

        def chunks():
            iterator, first = iter(texts), 0
            while True:
                chunk = _checked_texts(list(itertools.islice(iterator, size)), "texts", first)
                if chunk or not spans:  # no texts at all: one empty chunk, for encode's own empty result
                    spans.append((first, first + len(chunk)))
                    yield chunk
                if len(chunk) < size:
                    return
                first += len(chunk)

        progress = None
        if kwargs.get("show_progress_bar"):
            from tqdm.auto import tqdm

            progress = tqdm(total=total, desc="encode", unit="text")
        if "show_progress_bar" in kwargs:  # one bar, the parent's, not one per chunk in every worker
            kwargs = {**kwargs, "show_progress_bar": False}
        parts = []
        try:
            for part in self._run(chunks(), args, kwargs,
                                  lambda chunk: ("texts[{}:{}]".format(*spans[chunk]), spans[chunk][0])):
                parts.append(part)
                if progress is not None:
                    progress.update(len(part))
        finally:
            if progress is not None:
                progress.close()
        read = spans[-1][1]
        if total is not None and read != total:
            # a list subclass or a view whose iteration disagrees with its len(): which rows would be missing
            # (or extra) is unknowable, so no result rather than a wrong one
            raise ValueError(f"texts has len() {total} but its iteration gave {read} texts: a sized input must "
                             "give as many texts as its len() says")
        return returned.finish(_concatenate(parts), single=False)

    def encode_chunks(self, chunks, *args, **kwargs):
        """Yield model.encode(chunk, *args, **kwargs) for each chunk of an iterable, in order, with
        IN_FLIGHT_PER_WORKER chunks per worker in flight: for streams too large to hold at once.
        Stopping the iteration early abandons the chunks in flight; the pool stays usable. As in iter_encode,
        precision "int8" / "uint8" is refused: each chunk's ranges would be its own."""
        kwargs = {**self.encode_defaults, **kwargs}
        if split_return_options(kwargs)[1].per_call_ranges:
            raise ValueError(f"encode_chunks cannot quantize to precision={kwargs['precision']!r}: its ranges "
                             "would come from each chunk alone; encode in float32 and quantize with fixed ranges=")
        copies = (chunk if isinstance(chunk, str) else _checked_texts(list(chunk), f"chunk {number}: texts", 0)
                  for number, chunk in enumerate(chunks))
        return self._run(copies, args, kwargs, lambda chunk: (f"chunk {chunk}", 0))

    def _run(self, chunks, args, kwargs, locate):
        """Generator: send chunks (a bounded number ahead), yield their results in order. An error, the
        workers' or the one reading the chunks raised, is raised in its chunk's turn: after the results of
        the chunks before it, as a single-device stream would. locate(chunk) -> (how to name the chunk, the
        index in the caller's input of its first text)."""
        if self._closed:
            raise RuntimeError("this EncodePool is closed")
        if self._busy:
            raise RuntimeError("this EncodePool is already running a call: one call at a time")
        self._busy, finished = True, False
        self._call += 1
        call, sent, returned, outcomes, exhausted = self._call, 0, 0, {}, False
        limit = IN_FLIGHT_PER_WORKER * len(self._processes)
        try:
            while True:
                while not exhausted and sent - returned < limit:
                    try:
                        chunk = next(chunks, None)
                    except Exception as err:  # a text that is not a string, or the caller's iterator failing
                        outcomes[sent], sent, exhausted = ("raise", err), sent + 1, True
                        break
                    if chunk is None:
                        exhausted = True
                    else:
                        self._tasks.put((call, sent, chunk, args, kwargs))
                        sent += 1
                if returned in outcomes:
                    kind, payload = outcomes.pop(returned)
                    if kind == "raise":
                        raise payload
                    if kind == "error":
                        raise self._chunk_error(payload, *locate(returned))
                    returned += 1
                    yield from_transport(payload)
                    continue
                if exhausted and returned == sent:
                    finished = True
                    return
                kind, worker, reply_call, chunk, payload = self._next_reply(self.timeout)
                if reply_call != call:
                    continue  # a late result of an abandoned call
                outcomes[chunk] = (kind, payload if kind == "done" else (worker, payload))
        finally:
            if not finished:
                self._cancelled.value = call
            self._busy = False

    def _chunk_error(self, failure, name, first):
        """A worker's error on the chunk `name`, told in the caller's numbers: an untokenizable text's index
        counted from the input's start, not the chunk's."""
        worker, payload = failure
        error = self._remote_error(worker, payload, f"while encoding {name}")
        if isinstance(error, UntokenizableTextError) and first:
            shifted = error.shifted(first)
            shifted.__cause__ = error.__cause__
            error = shifted
        return error

    def _wait_ready(self):
        """Each worker's (device, backend, dtype), once all have loaded the model."""
        runtimes = [None] * len(self._processes)
        while None in runtimes:
            kind, worker, _, _, payload = self._next_reply(timeout=None)  # loading: as long as they live
            if kind == "failed":
                raise self._remote_error(worker, payload, "while loading the model")
            if kind == "ready":
                runtimes[worker] = payload
        return runtimes

    def _next_reply(self, timeout):
        """The next message from any worker; WorkerError when a worker has died, TimeoutError after
        `timeout` seconds of silence (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._results.get(timeout=POLL_S)
            except queue.Empty:
                pass
            except (OSError, ValueError) as err:  # the queue was closed under us
                raise RuntimeError("this EncodePool was closed during the call") from err
            dead = [(index, process) for index, process in enumerate(self._processes) if not process.is_alive()]
            if dead:
                try:  # what a worker sent just before it exited (its load failure) explains it best
                    return self._results.get(timeout=POLL_S)
                except queue.Empty:
                    pass
                self.close(grace=0)  # a broken pool: its survivors' chunks belong to a failed call
                index, process = dead[0]
                raise WorkerError(f"fastbert worker {index} on {self.devices[index]} died "
                                  f"({_exit_reason(process.exitcode)}); the pool is closed")
            if deadline is not None and time.monotonic() > deadline:
                self.close(grace=0)
                raise TimeoutError(f"no reply from the fastbert workers in {timeout} s; the pool is closed")

    def _remote_error(self, worker, payload, what):
        exception, summary, text = unpack_exception(payload)
        where = f"fastbert worker {worker} on {self.devices[worker]}, {what}"
        if exception is None:
            exception = WorkerError(f"{where}: {summary}")
        exception.__cause__ = RemoteTraceback(f'\n"""\n{where}:\n{text}"""')
        return exception


def _checked_texts(chunk, name, first):
    """`chunk`, once every item is known to be a string: checked here, where the index in the caller's
    input is known (and before anything unpicklable reaches a queue, which would drop it silently)."""
    for position, text in enumerate(chunk, first):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{position}] must be a string, got {type(text).__name__}")
    return chunk


def _exit_reason(exitcode):
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"
