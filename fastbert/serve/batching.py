"""Token-budget batching across requests: one queue, one executor thread per device.

A request becomes a Job of tokenized sequences. Executors take batches from the shared Scheduler: up to
`max_batch_tokens` real tokens (the engine is padding-free, so real tokens are what a batch costs), drawn
round-robin one sequence at a time from every queued job of the same model, so a small request that
arrives behind a huge one rides in the next batch instead of waiting for the huge one to finish, and a
huge request is split over as many batches as it needs. Each sequence's result lands at its own index in
its job, so a job's results come back in request order whatever batches they ran in.

A cancelled job (its client went away) leaves the queue before its next sequence is taken. A batch that
raises fails the jobs it held, and only those; the executor carries on with the next batch."""

import asyncio
import logging
import threading
import time
from collections import deque

log = logging.getLogger("fastbert.serve")


class Job:
    """One request's sequences for one model. `group`: what sequences must share to run in one batch (the
    model's name and, for a Pooling that excludes the prompt, the prompt's length). Completed on the
    event loop that created it: `await job.wait()`."""

    def __init__(self, model, group, sequences, loop):
        if not sequences:
            raise ValueError("a job needs at least one sequence")
        self.model, self.group, self.sequences = model, group, sequences
        self.tokens = sum(len(ids) for ids, _ in sequences)
        self.results = [None] * len(sequences)
        self.next = 0  # the first sequence not yet handed to an executor
        self.remaining = len(sequences)  # sequences without a result yet
        self.cancelled = False
        self._lock = threading.Lock()  # executors on several devices may finish its sequences at once
        self.enqueued = time.perf_counter()
        self.started = self.finished = None  # first batch's start, last batch's end
        self._loop, self._future = loop, loop.create_future()

    @property
    def queue_seconds(self):
        return (self.started or self.enqueued) - self.enqueued

    @property
    def inference_seconds(self):
        return (self.finished - self.started) if self.started and self.finished else 0.0

    def record(self, index, output, finished):
        """A sequence's result (from an executor thread); the last one completes the job."""
        with self._lock:
            if self.remaining <= 0:  # failed in an earlier batch
                return
            self.results[index] = output
            self.remaining -= 1
            if self.remaining == 0:
                self.finished = finished
                self._settle()

    def fail(self, error):
        with self._lock:
            if self.remaining > 0:
                self.remaining = 0
                self._settle(error)

    async def wait(self):
        return await asyncio.shield(self._future)

    def _settle(self, error=None):
        def settle():
            if self._future.done():
                return
            if error is None:
                self._future.set_result(self.results)
            else:
                self._future.set_exception(error)
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


class Scheduler:
    """The queue the executors share. Thread-safe; every method may be called from any thread."""

    def __init__(self, max_batch_tokens, on_batch=None):
        self.max_batch_tokens = max_batch_tokens
        self._jobs = deque()  # jobs with sequences not yet taken, oldest first
        self._lock = threading.Condition()
        self._closed = False
        self._on_batch = on_batch or (lambda tokens, size, queued: None)

    def submit(self, job):
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._jobs.append(job)
            self._lock.notify()

    def cancel(self, job):
        with self._lock:
            job.cancelled = True
            if job in self._jobs:
                self._jobs.remove(job)

    @property
    def queued_sequences(self):
        with self._lock:
            return sum(len(job.sequences) - job.next for job in self._jobs)

    def close(self):
        """No new jobs; take() returns None once the queue is empty."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def take(self, timeout=None):
        """The next batch, a list of (job, index); waits for work. None once closed and drained (or after
        `timeout` seconds without work)."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._jobs:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._lock.wait(left)
            return self._pack()

    def _pack(self):
        head = self._jobs[0]
        members = [job for job in self._jobs if job.group == head.group]
        batch, tokens, now = [], 0, time.perf_counter()
        while members:
            progressed = False
            for job in list(members):
                ids = job.sequences[job.next][0]
                if batch and tokens + len(ids) > self.max_batch_tokens:
                    members.remove(job)  # its next sequence does not fit: the others may still
                    continue
                batch.append((job, job.next))
                tokens += len(ids)
                job.next += 1
                if job.started is None:
                    job.started = now
                if job.next == len(job.sequences):
                    members.remove(job)
                    self._jobs.remove(job)
                progressed = True
            if not progressed:
                break
        # The head goes to the back when it still has work, so another model's jobs get the next batch.
        if self._jobs and self._jobs[0] is head:
            self._jobs.rotate(-1)
        self._on_batch(tokens, len(batch), sum(len(job.sequences) - job.next for job in self._jobs))
        return batch


class Executor:
    """A thread that runs batches on one device. `run(model_name, group, sequences, device)` (given by the
    registry) returns one result per sequence."""

    def __init__(self, scheduler, device, run, name):
        self.scheduler, self.device, self._run = scheduler, device, run
        self.failures_in_a_row = 0
        self._thread = threading.Thread(target=self._loop, name=f"fastbert-serve-{name}", daemon=True)

    def start(self):
        self._thread.start()

    @property
    def alive(self):
        return self._thread.is_alive()

    def join(self, timeout):
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self):
        while True:
            batch = self.scheduler.take()
            if batch is None:
                return
            self.run_batch(batch)

    def run_batch(self, batch):
        live = [(job, index) for job, index in batch if not job.cancelled]
        if not live:
            return
        job = live[0][0]
        try:
            outputs = self._run(job.model, job.group, [j.sequences[i] for j, i in live], self.device)
        except Exception as error:  # this batch's requests fail; the server keeps serving
            self.failures_in_a_row += 1
            log.exception("a batch of %d sequences failed on %s", len(live), self.device)
            for failed in {j for j, _ in live}:
                failed.fail(error)
            return
        self.failures_in_a_row = 0
        finished = time.perf_counter()
        for (job, index), output in zip(live, outputs, strict=True):
            job.record(index, output, finished)
