"""What a fastbert worker process runs (fastbert.parallel.pool starts them), and what crosses its queues.

A worker builds what it runs from the layers below: the engine's encoder, loaded from the folder on the
worker's device, and the single-device stream of fastbert.sentence.stream."""

import multiprocessing
import pickle
import queue
import signal
import traceback

import torch

# How often an idle worker checks that its parent lives (the parent checks its workers as often).
POLL_S = 0.5


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


def pack_exception(err):
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        exception = pickle.loads(pickle.dumps(err))
    except Exception:  # an exception that does not survive pickling: described, not lost
        exception = None
    return exception, f"{type(err).__name__}: {err}", text


def worker_main(index, device, path, options, threads, tasks, results, cancelled):
    """Load the model, report ready (or the failure), then encode chunks until told to stop."""
    # Ctrl-C reaches every process of the terminal's group: the parent handles it and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    try:
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
        summary = f"{model.device}, {model.backend}, {str(model.dtype).removeprefix('torch.')}"
    except BaseException as err:
        results.put(("failed", index, None, None, pack_exception(err)))
        return
    results.put(("ready", index, None, None, summary))
    while True:
        try:
            task = tasks.get(timeout=POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # orphaned: nobody will read the results
            continue
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
