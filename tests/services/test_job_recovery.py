"""The persistent job queue: a coordinator crashes and restarts on its SQLite store."""

from __future__ import annotations

import time
import zlib
from functools import partial
from typing import TYPE_CHECKING

import trio
import trio.testing
from test_jobs import SLEEP, WHERE, open_jobs

import trioactors as ta

if TYPE_CHECKING:
    from pathlib import Path

    from test_jobs import Jobs


async def run_coordinator(
    jobs: Jobs,
    store: ta.JobStore,
    *,
    task_status: trio.TaskStatus[ta.JobQueue] = trio.TASK_STATUS_IGNORED,
    transport: ta.transports.MemoryTransport | None = None,
) -> None:
    """A coordinator on node ``c`` of the simulated network, until the network crashes it."""
    network = jobs.cluster.network
    try:
        async with ta.open_node("c", transport=transport or network.transport("c")) as node:
            membership = await ta.start_membership(
                node,
                seeds={"n1": "memory://n1"},
                config=ta.MembershipConfig(seed=zlib.crc32(b"c")),
            )
            queue = await ta.start_job_queue(node, membership=membership, store=store, seed=3)
            task_status.started(queue)
            await trio.sleep_forever()
    except ta.NodeCrashed:
        pass


async def test_pending_jobs_survive_a_crash_of_the_coordinator(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite"
    async with open_jobs() as jobs, trio.open_nursery() as nursery:
        store = ta.SqliteJobStore(path)
        queue: ta.JobQueue = await nursery.start(run_coordinator, jobs, store)
        await queue.wait_for_workers(3)
        quick = [await queue.submit(WHERE.job(i)) for i in range(3)]  # done before the crash
        assert len(quick) == 3
        long = [SLEEP.job(float(10 + i), timeout=600) for i in range(12)]
        submitted = trio.Event()

        async def submit_all() -> None:
            async with trio.open_nursery() as inner:
                for job in long:
                    inner.start_soon(queue.submit, job)
                submitted.set()

        submitters = trio.CancelScope()

        async def submitting() -> None:
            with submitters:
                await submit_all()

        nursery.start_soon(submitting)
        await submitted.wait()
        await trio.sleep(1)  # all twelve are out on workers
        assert queue.statistics().in_flight == 12
        pending = {job.id: job.attempt for job in store.pending()}
        assert pending == {job.id: 1 for job in long}  # written before they were sent

        jobs.cluster.network.crash("c")  # the coordinator's process dies...
        queue.store = None  # ...with its memory (its submitters do not abandon anything)
        submitters.cancel()
        store.close()  # (and the process's file lock goes with it)
        await trio.sleep(5)

        store = ta.SqliteJobStore(path)
        transport = jobs.cluster.network.restart("c")
        queue = await nursery.start(partial(run_coordinator, transport=transport), jobs, store)
        results = await queue.wait_recovered()
        assert sorted(r.job.id for r in results) == sorted(job.id for job in long)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert {r.attempt for r in results} == {2}  # the attempt out at the crash counts
        assert sorted(r.value for r in results) == [float(10 + i) for i in range(12)]  # type: ignore[type-var]
        assert store.pending() == []
        for job in long:
            outcome = store.outcome(job.id)
            assert outcome is not None
            assert outcome.ok
        stats = store.statistics()
        assert stats.pending == 0
        nursery.cancel_scope.cancel()
        store.close()


async def test_a_job_on_its_last_attempt_at_the_crash_is_reported_lost(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite"
    async with open_jobs() as jobs, trio.open_nursery() as nursery:
        store = ta.SqliteJobStore(path)
        queue: ta.JobQueue = await nursery.start(run_coordinator, jobs, store)
        await queue.wait_for_workers(3)
        once = SLEEP.job(30.0, retry=ta.NO_RETRY)
        submitter = trio.CancelScope()

        async def submit() -> None:
            with submitter:
                await queue.submit(once)

        nursery.start_soon(submit)
        await trio.sleep(1)
        jobs.cluster.network.crash("c")
        queue.store = None
        submitter.cancel()
        store.close()

        store = ta.SqliteJobStore(path)
        transport = jobs.cluster.network.restart("c")
        queue = await nursery.start(partial(run_coordinator, transport=transport), jobs, store)
        [result] = await queue.wait_recovered()
        # it may have run: with no attempt left, it is not run again
        assert isinstance(result.error, ta.WorkerLost)
        assert "the coordinator stopped while attempt 1" in str(result.error)
        nursery.cancel_scope.cancel()
        store.close()


async def test_a_recovered_job_past_its_deadline_ends_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Written down, never sent, and its deadline passed while the coordinator was down."""
    path = tmp_path / "jobs.sqlite"
    store = ta.SqliteJobStore(path)
    late = ta.StoredJob(
        "late-1", "sleep", 1.0, (), None, 0, time.time() - 1, "$jobs:queue@c", time.time() - 60
    )
    store.save([late])
    async with open_jobs() as jobs, trio.open_nursery() as nursery:
        queue: ta.JobQueue = await nursery.start(run_coordinator, jobs, store)
        [result] = await queue.wait_recovered()
        assert isinstance(result.error, ta.JobTimeout)
        assert store.pending() == []
        outcome = store.outcome("late-1")
        assert outcome is not None
        assert outcome.error == "JobTimeout"
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_submitter_cancelled_as_the_node_stops_leaves_its_job_for_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite"
    async with open_jobs() as jobs:
        store = ta.SqliteJobStore(path)
        async with trio.open_nursery() as nursery:
            queue: ta.JobQueue = await nursery.start(run_coordinator, jobs, store)
            nursery.start_soon(queue.submit, SLEEP.job(30.0))
            await trio.sleep(1)
            nursery.cancel_scope.cancel()  # Ctrl-C: the node and its submitter stop together
        assert [job.attempt for job in store.pending()] == [1]
        store.close()
