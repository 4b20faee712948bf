"""WorkQueue: de-duplication, one worker per key, delays, backoff and shutdown."""

from __future__ import annotations

import asyncio
import random

import pytest

from kubevisor.client.queueing import ExponentialBackoff, QueueShutDown, WorkQueue, run_workers


async def test_adding_a_waiting_key_again_does_not_duplicate_it() -> None:
    q = WorkQueue()
    for key in ["a", "b", "a", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]
    assert len(q) == 0


async def test_a_key_being_processed_is_not_handed_out_again_until_done() -> None:
    q = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0, "a key being processed must not be queued for a second worker"
    assert q.processing == {"a"}
    q.done("a")
    assert len(q) == 1, "a key re-added while processing is queued once after done"
    assert await q.get() == "a"
    q.done("a")
    assert q.is_idle()


async def test_done_without_readd_does_not_requeue() -> None:
    q = WorkQueue()
    q.add("a")
    await q.get()
    q.done("a")
    assert len(q) == 0
    assert q.is_idle()


async def test_getter_waiting_on_an_empty_queue_is_woken_by_add() -> None:
    q = WorkQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.add("x")
    async with asyncio.timeout(5):
        assert await getter == "x"


async def test_a_cancelled_getter_does_not_swallow_a_wakeup() -> None:
    q = WorkQueue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add("x")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    async with asyncio.timeout(5):
        assert await second == "x"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_never_two_workers_on_one_key_under_load() -> None:
    q = WorkQueue(name="load")
    keys = [f"k{i}" for i in range(5)]
    in_flight: set[str] = set()
    overlaps: list[str] = []
    processed = 0
    target = 400
    finished = asyncio.Event()
    rng = random.Random(7)

    async def worker(key: str) -> None:
        nonlocal processed
        if key in in_flight:
            overlaps.append(key)
        in_flight.add(key)
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
            q.add(rng.choice(keys))  # re-add keys, often the one being processed
        in_flight.discard(key)
        processed += 1
        if processed >= target:
            finished.set()
        else:
            q.add(rng.choice(keys))

    for key in keys:
        q.add(key)
    workers = asyncio.create_task(run_workers(q, worker, concurrency=8))
    async with asyncio.timeout(10):
        await finished.wait()
    q.shutdown()
    async with asyncio.timeout(5):
        await workers
    assert processed >= target
    assert overlaps == []


def test_backoff_doubles_from_5ms_up_to_the_cap_and_forget_resets() -> None:
    backoff = ExponentialBackoff()
    delays = [backoff.when("a") for _ in range(5)]
    assert delays == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08])
    assert backoff.when("b") == pytest.approx(0.005), "backoff is per key"
    for _ in range(40):
        last = backoff.when("a")
    assert last == 1000.0
    assert backoff.failures("a") == 45
    backoff.forget("a")
    assert backoff.when("a") == pytest.approx(0.005)
    huge = ExponentialBackoff(base=1.0, cap=5.0)
    assert [huge.when("x") for _ in range(200)][-1] == 5.0


async def test_add_rate_limited_delays_the_key_and_counts_requeues() -> None:
    q = WorkQueue(ExponentialBackoff(base=0.01, cap=1.0))
    q.add_rate_limited("a")
    assert len(q) == 0
    assert q.delayed == {"a"}
    assert q.num_requeues("a") == 1
    async with asyncio.timeout(5):
        assert await q.get() == "a"
    q.done("a")
    q.forget("a")
    assert q.num_requeues("a") == 0


async def test_add_after_hands_keys_out_in_due_order() -> None:
    q = WorkQueue()
    q.add_after("late", 0.06)
    q.add_after("early", 0.01)
    q.add_after("middle", 0.03)
    q.add("now")
    async with asyncio.timeout(5):
        got = [await q.get() for _ in range(4)]
    assert got == ["now", "early", "middle", "late"]


async def test_add_after_keeps_the_earliest_due_time_for_a_key() -> None:
    q = WorkQueue()
    q.add_after("a", 3600)
    q.add_after("a", 0.01)  # earlier: replaces the hour-long delay
    q.add_after("a", 3600)  # later: ignored
    async with asyncio.timeout(5):
        assert await q.get() == "a"
    assert q.delayed == frozenset()


async def test_add_after_with_no_delay_adds_at_once() -> None:
    q = WorkQueue()
    q.add_after("a", 0)
    assert len(q) == 1


async def test_shutdown_wakes_waiting_getters_and_drops_pending_work() -> None:
    q = WorkQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add_after("later", 3600)
    q.shutdown()
    with pytest.raises(QueueShutDown):
        async with asyncio.timeout(5):
            await getter
    assert q.delayed == frozenset(), "shutdown cancels delay timers"
    q.add("x")
    q.add_after("y", 0.01)
    assert len(q) == 0 and q.delayed == frozenset(), "adds after shutdown are ignored"
    with pytest.raises(QueueShutDown):
        await q.get()


async def test_run_workers_retries_failures_with_backoff_and_forgets_successes() -> None:
    q = WorkQueue(ExponentialBackoff(base=0.001, cap=0.01))
    attempts: dict[str, int] = {}
    succeeded = asyncio.Event()

    async def worker(key: str) -> None:
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] < 3:
            raise RuntimeError("not yet")
        succeeded.set()

    q.add("flaky")
    workers = asyncio.create_task(run_workers(q, worker, concurrency=2))
    async with asyncio.timeout(5):
        await succeeded.wait()
    assert attempts == {"flaky": 3}
    assert q.num_requeues("flaky") == 0, "success forgets the backoff"
    q.shutdown()
    async with asyncio.timeout(5):
        await workers


async def test_a_worker_in_progress_finishes_its_key_after_shutdown() -> None:
    q = WorkQueue()
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def worker(key: str) -> None:
        started.set()
        await release.wait()
        finished.append(key)

    q.add("a")
    workers = asyncio.create_task(run_workers(q, worker))
    async with asyncio.timeout(5):
        await started.wait()
    q.shutdown()
    release.set()
    async with asyncio.timeout(5):
        await workers
    assert finished == ["a"]
    assert q.processing == frozenset()


async def test_run_workers_rejects_zero_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        await run_workers(WorkQueue(), lambda key: asyncio.sleep(0), concurrency=0)
