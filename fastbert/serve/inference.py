"""The path every inference route shares: tokenize off the event loop, queue a job, wait for it (dropping
it when the client goes away), and report the time each step took as TEI's timing headers."""

import asyncio
import time
from dataclasses import dataclass, field

import torch

from fastbert.checkpoint.tokenizer import UntokenizableTextError

from .batching import Job
from .errors import ServeError

# How often a waiting request checks that its client is still connected.
DISCONNECT_POLL_SECONDS = 0.1


@dataclass
class Timing:
    """One request's steps, in seconds, and the tokens and characters it computed."""

    start: float = field(default_factory=time.perf_counter)
    tokenize: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    tokens: int = 0
    characters: int = 0

    def headers(self):
        total = time.perf_counter() - self.start
        ms = lambda seconds: str(int(round(seconds * 1000)))
        return {"x-total-time": ms(total), "x-tokenization-time": ms(self.tokenize), "x-queue-time": ms(self.queue),
                "x-inference-time": ms(self.inference), "x-compute-tokens": str(self.tokens),
                "x-compute-characters": str(self.characters)}


async def prepare(state, model, timing, function, *args, **kwargs):
    """Run `function` (a model's tokenizing step) on the model's tokenizer thread; its errors as 4xx."""
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(state.tokenizer_pool(model.name), lambda: function(*args, **kwargs))
    except UntokenizableTextError as err:
        raise ServeError(422, str(err), "Tokenizer") from None
    except (ValueError, TypeError) as err:  # ServeError (an HTTPException) passes through as it is
        raise ServeError(422, f"cannot tokenize: {err}", "Tokenizer") from None
    timing.tokenize += time.perf_counter() - started
    state.metrics.tokenize_seconds.observe(time.perf_counter() - started)
    return result


async def run(state, request, model, group, sequences, timing):
    """Queue the sequences as one job; their results in order. A client that disconnects while its job
    waits gets its queued work dropped."""
    if not state.accepting():
        raise ServeError(503, "the server cannot serve: its executors have stopped", "Unhealthy")
    job = Job(model.name, group, sequences, asyncio.get_running_loop())
    timing.tokens += job.tokens
    try:
        state.scheduler.submit(job)
    except RuntimeError as err:
        raise ServeError(503, str(err), "Unhealthy") from None
    state.metrics.queue_depth.set(state.scheduler.queued_sequences)
    waiting = asyncio.ensure_future(job.wait())
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                break
            if await request.is_disconnected():
                state.scheduler.cancel(job)
                raise ServeError(499, "the client disconnected", "Validation")
        try:
            results = waiting.result()
        except Exception as err:
            raise ServeError(500, f"inference failed: {type(err).__name__}: {err}", "Backend") from None
    finally:
        waiting.cancel()
        state.metrics.queue_depth.set(state.scheduler.queued_sequences)
    timing.queue += job.queue_seconds
    timing.inference += job.inference_seconds
    state.metrics.queue_seconds.observe(job.queue_seconds)
    state.metrics.inference_seconds.observe(job.inference_seconds)
    return results


def finish_embeddings(model, vectors, dimensions=None, normalize=None):
    """The executor's vectors (before the final Normalize) -> [n, D] float32: truncated to `dimensions`,
    then L2-normalized when `normalize` says so (None: when the model's pipeline normalizes)."""
    if dimensions is not None and (isinstance(dimensions, bool) or not 1 <= dimensions <= model.dim):
        raise ServeError(400, f"dimensions must be between 1 and this model's {model.dim}, got {dimensions}",
                         param="dimensions")
    embeddings = torch.stack(vectors)
    if dimensions is not None:
        embeddings = embeddings[:, :dimensions]
    if model.normalizes if normalize is None else normalize:
        embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
    return embeddings


def check_count(state, count, what):
    if count == 0:
        raise ServeError(400, f"{what} is empty", "Empty")
    if count > state.settings.max_client_batch_size:
        raise ServeError(413, f"{what} holds {count} inputs, more than the server's max_client_batch_size of "
                              f"{state.settings.max_client_batch_size}")


def split_inputs(inputs):
    """An embeddings request's input -> ("texts", [str]) or ("ids", [[int]])."""
    if isinstance(inputs, str):
        return "texts", [inputs]
    if inputs and isinstance(inputs[0], int):
        return "ids", [inputs]
    if inputs and isinstance(inputs[0], list):
        return "ids", inputs
    return "texts", list(inputs)
