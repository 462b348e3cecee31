"""Retries, backoff, reassignment and circuit breakers of the job queue.

A simulated cluster under MockClock, as in test_jobs.py: a coordinator on
``n0`` and worker pools on the other nodes.
"""

from __future__ import annotations

import collections

import pytest
import trio
import trio.testing
from test_jobs import SLEEP, WHERE, gather, open_jobs

import trioactors as ta


async def test_jobs_on_a_dead_node_are_retried_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(strategy="round-robin", concurrency=4) as jobs:
        results: list[ta.JobResult[object]] = []

        async def run() -> None:
            results.extend(await gather(jobs.queue, [SLEEP.job(20.0) for _ in range(6)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1)
            jobs.cluster.crash("n2")
        assert all(r.ok for r in results)
        moved = [r for r in results if r.attempt == 2]
        assert len(moved) == 2
        assert {r.worker for r in moved} <= {"jobs:worker@n1", "jobs:worker@n3"}
        assert {r.attempt for r in results} == {1, 2}
        stats = jobs.queue.statistics()
        assert (stats.retried, stats.lost, stats.exhausted, stats.failed) == (2, 0, 0, 0)
        # (a retry waits at most `base` = 1 s after the loss is known)
        detection = ta.MembershipConfig().detection_time(4)
        assert max(r.elapsed for r in moved) < 1 + detection + 1 + 20 + 0.1


async def test_attempts_run_out(autojump_clock: trio.testing.MockClock) -> None:
    hang = ta.RetryPolicy(max_attempts=3, attempt_timeout=2.0)
    async with open_jobs(retry=hang) as jobs:
        start = trio.current_time()
        result = await jobs.queue.submit_result(SLEEP.job(100.0))
        assert isinstance(result.error, ta.JobExhausted)
        assert result.error.attempts == 3
        assert result.attempt == 3
        assert isinstance(result.error.last_error, ta.JobTimeout)
        assert "attempt timeout" in str(result.error.last_error)
        elapsed = trio.current_time() - start
        # three attempts of 2 s, and two delays of at most 1 s and 2 s
        assert 6 <= elapsed <= 9.1
        received = [p.statistics().received for p in jobs.pools.values()]
        assert received == [1, 1, 1]  # three sendings, on three nodes
        stats = jobs.queue.statistics()
        assert (stats.exhausted, stats.retried, stats.failed) == (1, 2, 1)


async def test_the_first_answer_wins(autojump_clock: trio.testing.MockClock) -> None:
    """An attempt timed out and the job went elsewhere; whichever answers first wins."""
    slow_first = ta.RetryPolicy(max_attempts=2, attempt_timeout=1.0)

    async def sometimes_slow(node: str) -> str:
        if node == "n1":
            await trio.sleep(3)
        return node

    async with open_jobs(strategy="round-robin", retry=slow_first) as jobs:
        for name, pool in jobs.pools.items():
            pool.register("slow", lambda _, name=name: sometimes_slow(name))
        result = await jobs.queue.submit_result(ta.Job("slow", None))  # round-robin: n1 first
        assert result.value != "n1"
        assert result.attempt == 2
        await trio.sleep(5)  # n1 answers too, late
        assert jobs.queue.statistics().late_results == 1


async def test_a_handler_that_fails_is_retried_only_if_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = collections.Counter[str]()

    def flaky(node: str) -> str:
        calls[node] += 1
        if sum(calls.values()) == 1:
            raise ConnectionError("the database blinked")
        return node

    async with open_jobs() as jobs:
        for name, pool in jobs.pools.items():
            pool.register("flaky", lambda _, name=name: flaky(name))
        with pytest.raises(ta.JobFailed, match="the database blinked"):
            await jobs.queue.submit(ta.Job("flaky", 0))
        calls.clear()
        job = ta.Job("flaky", 0, retry=ta.RetryPolicy(retry_failed=True))
        result = await jobs.queue.submit_result(job)
        assert result.ok
        assert result.attempt == 2
        failed_on = next(n for n, k in calls.items() if k == 1 and n != result.value)
        assert result.value != failed_on  # retried elsewhere


async def test_no_retry_for_kinds_that_must_not_run_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    once = ta.JobKind("sleep", float, float, retry=ta.NO_RETRY)
    async with open_jobs(strategy="round-robin") as jobs:
        results: list[ta.JobResult[object]] = []

        async def run() -> None:
            results.extend(await gather(jobs.queue, [once.job(20.0) for _ in range(3)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1)
            jobs.cluster.crash("n1")
        lost = [r for r in results if not r.ok]
        assert len(lost) == 1
        assert isinstance(lost[0].error, ta.WorkerLost)
        assert jobs.queue.statistics().retried == 0


async def test_a_failing_node_is_cut_off_by_its_circuit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """n1 never answers its jobs: its circuit opens, then lets one trial through."""
    retry = ta.RetryPolicy(max_attempts=5, attempt_timeout=1.0, base=0.1)
    breaker = ta.BreakerConfig(failure_threshold=3, reset_timeout=30.0)

    async def answer(node: str) -> str:
        if node == "n1":
            await trio.sleep(1000)
        return node

    async with open_jobs(strategy="round-robin", retry=retry) as jobs:
        queue = await ta.start_job_queue(
            jobs.node("n0"),
            membership=jobs.cluster.members["n0"],
            strategy="round-robin",
            retry=retry,
            breaker=breaker,
            name="$jobs:guarded",
        )
        await queue.wait_for_workers(3)
        for name, pool in jobs.pools.items():
            pool.register("answer", lambda _, name=name: answer(name))
        results = await gather(queue, [ta.Job("answer", i) for i in range(30)])
        assert all(r.ok for r in results)
        assert {r.value for r in results} == {"n2", "n3"}
        assert queue.circuit_states()["n1"] == "open"
        sent_to_n1 = jobs.pools["n1"].statistics().received
        assert sent_to_n1 == 4  # its four slots, filled before any failure; then nothing
        more = await gather(queue, [ta.Job("answer", i) for i in range(30)])
        assert {r.value for r in more} == {"n2", "n3"}
        assert jobs.pools["n1"].statistics().received == sent_to_n1
        # after the reset timeout, one trial goes to n1 (and fails: open again)
        await trio.sleep(30)
        await gather(queue, [ta.Job("answer", i) for i in range(10)])
        assert jobs.pools["n1"].statistics().received == sent_to_n1 + 1
        assert queue.circuit_states()["n1"] in {"open", "half_open"}


async def test_a_circuit_closes_when_the_node_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retry = ta.RetryPolicy(max_attempts=5, attempt_timeout=1.0, base=0.1)
    breaker = ta.BreakerConfig(failure_threshold=2, reset_timeout=10.0)
    broken = {"n1"}

    async def answer(node: str) -> str:
        while node in broken:
            await trio.sleep(1)
        return node

    async with open_jobs(strategy="round-robin") as jobs:
        queue = await ta.start_job_queue(
            jobs.node("n0"),
            membership=jobs.cluster.members["n0"],
            strategy="round-robin",
            retry=retry,
            breaker=breaker,
            name="$jobs:guarded",
        )
        await queue.wait_for_workers(3)
        for name, pool in jobs.pools.items():
            pool.register("answer", lambda _, name=name: answer(name))
        await gather(queue, [ta.Job("answer", i) for i in range(10)])
        assert queue.circuit_states()["n1"] == "open"
        broken.clear()  # n1 is well again
        await trio.sleep(10)
        later = await gather(queue, [ta.Job("answer", i) for i in range(30)])
        assert queue.circuit_states()["n1"] == "closed"
        assert "n1" in {r.value for r in later}


async def test_nothing_is_sent_to_a_node_after_it_is_declared_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs() as jobs:
        membership = jobs.cluster.members["n0"]
        jobs.cluster.crash("n3")
        await jobs.cluster.wait_until(lambda m: "n3" not in m.alive(), nodes=["n0"])
        results = await gather(jobs.queue, [WHERE.job(i) for i in range(200)])
        assert {r.value for r in results} == {"n1", "n2"}
        assert "n3" not in membership.alive()
        assert jobs.queue.statistics().retried == 0  # none went to n3 and was lost


async def test_jobs_on_a_pool_that_stopped_are_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pool's actor stops on a live node: discovery finds it gone, its jobs move."""
    async with open_jobs(strategy="round-robin") as jobs:
        results: list[ta.JobResult[object]] = []

        async def run() -> None:
            results.extend(await gather(jobs.queue, [SLEEP.job(5.0) for _ in range(3)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1)
            await jobs.node("n2").root.stop_child("jobs:worker")
        assert all(r.ok for r in results)
        assert [r.attempt for r in results].count(2) == 1
        assert jobs.queue.workers() == ["jobs:worker@n1", "jobs:worker@n3"]
        assert max(r.elapsed for r in results) < 1 + 1 + 1 + 5 + 0.1  # a refresh, a backoff


async def test_a_circuit_lets_its_trial_through_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retry = ta.RetryPolicy(max_attempts=5, attempt_timeout=1.0, base=0.1)
    breaker = ta.BreakerConfig(failure_threshold=1, reset_timeout=10.0)
    async with open_jobs(workers=1, concurrency=2, prefetch=1) as jobs:
        queue = await ta.start_job_queue(
            jobs.node("n0"),
            membership=jobs.cluster.members["n0"],
            retry=retry,
            breaker=breaker,
            refresh_interval=60.0,  # (no discovery round wakes it)
            name="$jobs:guarded",
        )
        slow = {"yes"}

        async def answer(_: int) -> str:
            if slow:
                slow.clear()
                await trio.sleep(1000)  # the first attempt never answers
            return "ok"

        jobs.pools["n1"].register("answer", answer)
        await queue.refresh()
        start = trio.current_time()
        result = await queue.submit_result(ta.Job("answer", 0))
        assert result.ok
        assert result.attempt == 2
        # the first attempt timed out at 1 s and opened the circuit; the retry
        # went out as the trial when it half-opened, 10 s later
        assert 11 <= trio.current_time() - start <= 11.1
