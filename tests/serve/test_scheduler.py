"""The scheduler and executors alone, without a model: token budgets, fairness, splitting, cancellation and
a failing batch."""

import asyncio

import pytest

from fastbert.serve.batching import Executor, Job, Scheduler


def _job(loop, model, lengths, group=None):
    return Job(model, group or (model, 0), [([1] * n, [0] * n) for n in lengths], loop)


def test_batches_stay_within_the_token_budget_and_split_a_large_request():
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(max_batch_tokens=100)
    big = _job(loop, "m", [30] * 10)
    scheduler.submit(big)
    batches = []
    while (batch := scheduler.take(timeout=0)) is not None:
        batches.append(batch)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(i for b in batches for _, i in b) == list(range(10))
    loop.close()


def test_a_small_request_rides_in_the_next_batch_beside_a_huge_one():
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(max_batch_tokens=1000)
    huge, small = _job(loop, "m", [100] * 100), _job(loop, "m", [10, 10])
    scheduler.submit(huge)
    scheduler.submit(small)
    first = scheduler.take(timeout=0)
    assert sum(1 for job, _ in first if job is small) == 2
    assert sum(len(job.sequences[i][0]) for job, i in first) <= 1000
    loop.close()


def test_other_models_are_not_starved_and_never_share_a_batch():
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(max_batch_tokens=50)
    a, b = _job(loop, "a", [50] * 5), _job(loop, "b", [50])
    scheduler.submit(a)
    scheduler.submit(b)
    batches = [scheduler.take(timeout=0) for _ in range(2)]
    assert {job.model for batch in batches for job, _ in batch} == {"a", "b"}
    assert all(len({job.model for job, _ in batch}) == 1 for batch in batches)
    loop.close()


def test_a_cancelled_job_leaves_the_queue():
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(max_batch_tokens=10)
    gone = _job(loop, "m", [5, 5, 5])
    scheduler.submit(gone)
    scheduler.cancel(gone)
    assert scheduler.take(timeout=0) is None
    loop.close()


def test_a_failing_batch_fails_its_own_jobs_only_and_results_come_back_in_order():
    def run(model, group, sequences, device):
        if model == "bad":
            raise RuntimeError("boom")
        return [len(ids) for ids, _ in sequences]

    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(max_batch_tokens=8)
        executors = [Executor(scheduler, "cpu", run, str(n)) for n in range(2)]
        for executor in executors:
            executor.start()
        good, bad = _job(loop, "good", [3, 1, 4, 1, 5]), _job(loop, "bad", [2])
        scheduler.submit(good)
        scheduler.submit(bad)
        assert await asyncio.wait_for(good.wait(), 10) == [3, 1, 4, 1, 5]
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(bad.wait(), 10)
        scheduler.close()
        assert all(executor.join(10) for executor in executors)

    asyncio.run(main())
