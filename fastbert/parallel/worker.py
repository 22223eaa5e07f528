"""What a fastbert worker process runs (fastbert.parallel.pool starts them), and what crosses its queues.

A worker builds what it runs from the layers below: the engine's encoder, loaded from the folder on the
worker's device, and the single-device stream of fastbert.sentence.stream. It watches its parent on its
own (watch_parent): a parent that dies, even by SIGKILL, takes its workers with it within a second,
whatever they are doing."""

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import traceback

import torch

# linux/prctl.h: ask the kernel to send this process a signal when its parent exits.
PR_SET_PDEATHSIG = 1
# The exit status of a worker that stops because its parent died (nobody reads it; ps and logs may).
ORPHANED_EXIT = 3


def watch_parent(kernel_signal):
    """Stop this worker as soon as the process that started it dies: its results would go to nobody, and
    it holds a model's memory (on a GPU too). A dying parent cannot tell its workers, and a busy worker
    reads no queue, so the watch runs beside the work:
    - on Linux, when `kernel_signal` is true, the kernel SIGKILLs this process when its parent exits
      (prctl PR_SET_PDEATHSIG). The kernel ties it to the parent *thread* that started the worker, so the
      pool asks for it only when it starts its workers from the main thread;
    - everywhere, a daemon thread waits on the parent's sentinel (a pipe the parent holds open, readable
      once it is gone) and ends the process with os._exit: no queue flush that would block on a pipe
      nobody reads."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing: nothing to watch
        return
    if kernel_signal and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent.pid:  # the parent died before the request: no signal will come
            os._exit(ORPHANED_EXIT)

    def wait_for_parent():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=wait_for_parent, name="fastbert-parent-watch", daemon=True).start()


# ---------------------------------------------------------------------------------------------------
# What crosses the queues. Tensors travel as NumPy arrays (plain pickled bytes): torch would pass them as
# shared-memory file descriptors, one per tensor, which a long run exhausts.


class _Array:
    def __init__(self, array):
        self.array = array


def _map_leaves(value, convert):
    """`value` with `convert` applied to everything its nested lists, tuples and dicts hold."""
    if isinstance(value, (list, tuple)):
        return type(value)(_map_leaves(item, convert) for item in value)
    if isinstance(value, dict):
        return {key: _map_leaves(item, convert) for key, item in value.items()}
    return convert(value)


def to_transport(value):
    return _map_leaves(value, lambda leaf: _Array(leaf.detach().cpu().numpy()) if isinstance(leaf, torch.Tensor)
                       else leaf)


def from_transport(value):
    return _map_leaves(value, lambda leaf: torch.from_numpy(leaf.array) if isinstance(leaf, _Array) else leaf)


class _ExceptionState:
    """An exception pickle cannot rebuild, because its __init__ takes other arguments than its `args`
    (UntokenizableTextError's indices): its type, args and attributes, rebuilt without calling __init__."""

    def __init__(self, err):
        self.type, self.args, self.attributes = type(err), err.args, dict(vars(err))

    def rebuild(self):
        exception = self.type.__new__(self.type, *self.args)
        exception.args = self.args
        exception.__dict__.update(self.attributes)
        return exception


def pack_exception(err):
    """(exception or its _ExceptionState, or None when neither survives pickling; 'Type: message'; the
    worker's traceback): what a worker sends for a failure."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    exception = None
    for candidate in (err, _ExceptionState(err)):
        try:
            pickle.loads(pickle.dumps(candidate))
        except Exception:
            continue
        exception = candidate
        break
    return exception, f"{type(err).__name__}: {err}", text


def unpack_exception(packed):
    """pack_exception's result, in the parent -> (exception of the worker's type or None, summary, text)."""
    exception, summary, text = packed
    if isinstance(exception, _ExceptionState):
        exception = exception.rebuild()
    return exception, summary, text


def worker_main(index, device, path, options, threads, watch_kernel, tasks, results, cancelled):
    """Watch the parent, load the model, report ready (or the failure), then encode chunks until told to
    stop. watch_kernel: use the kernel's parent-death signal too (see watch_parent)."""
    # Ctrl-C reaches every process of the terminal's group: the parent handles it and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        watch_parent(watch_kernel)  # first: the parent may die while the model loads
        from fastbert.engine.model import Encoder
        from fastbert.sentence.stream import encode

        if device.type == "cpu":
            torch.set_num_threads(threads)
        else:
            torch.cuda.set_device(device)
        model = Encoder.from_pretrained(path, device=device, **options)
        # A folder without a usable tokenizer, or with a sentence-transformers module fastbert cannot
        # run, fails now rather than on the first chunk.
        model.get_tokenizer()
        encode(model, [])
        runtime = (str(model.device), model.backend, str(model.dtype).removeprefix("torch."))
    except BaseException as err:
        results.put(("failed", index, None, None, pack_exception(err)))
        return
    results.put(("ready", index, None, None, runtime))
    while True:
        task = tasks.get()  # as long as it takes: watch_parent ends an orphaned worker
        if task is None:
            return
        call, chunk, texts, args, kwargs = task
        if call <= cancelled.value:
            continue  # the call was abandoned (an error elsewhere, or the caller stopped reading)
        try:
            result = to_transport(encode(model, texts, *args, **kwargs))
        except Exception as err:
            results.put(("error", index, call, chunk, pack_exception(err)))
            continue
        results.put(("done", index, call, chunk, result))
