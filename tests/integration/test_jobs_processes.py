"""The job queue across real OS processes on 127.0.0.1.

Three ``trioactors node --workers 2`` processes form a cluster; the test's own
node (in this process, with no worker pool) joins it with membership and
submits jobs through a :class:`~trioactors.JobQueue`, which finds the three
pools (``jobs:worker``, running the example handlers) by membership.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from _nodes import SECRET, NodeProcess, node_cluster

import trioactors as ta
from trioactors.examples import DIGEST, ECHO, SLEEP, Digest, digest
from trioactors.examples.wordcount import WORD_COUNT_MAP, WORD_COUNT_REDUCE, word_count
from trioactors.transports import TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

WORKERS = ("w1", "w2", "w3")
POOLS = {f"jobs:worker@{name}": name for name in WORKERS}


class Placements:
    """A balancing strategy that records where its inner strategy places each job."""

    def __init__(self, inner: ta.BalanceStrategy) -> None:
        self.inner = inner
        self.placed: list[tuple[ta.Job[object], str]] = []
        self._changed = trio.Event()

    def choose(
        self, job: ta.Job[object], candidates: Sequence[ta.Candidate]
    ) -> ta.Candidate | None:
        chosen = self.inner.choose(job, candidates)
        if chosen is not None:
            self.placed.append((job, chosen.worker))
            self._changed.set()
            self._changed = trio.Event()
        return chosen

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


@attrs.frozen
class Cluster:
    nodes: dict[str, NodeProcess]
    node: ta.Node
    membership: ta.Membership
    queue: ta.JobQueue
    placements: Placements


@asynccontextmanager
async def job_cluster() -> AsyncIterator[Cluster]:
    """Three worker node processes (each tagged with its own name) and a queue here."""
    async with node_cluster() as start:
        seed = await start("w1", args=["--workers", "2", "--tag", "w1"])
        nodes = {"w1": seed}
        for name in WORKERS[1:]:
            nodes[name] = await start(
                name, join=[("w1", seed.address)], args=["--workers", "2", "--tag", name]
            )
        carrier = WebSocketTransport(TransportConfig(secret=SECRET.encode()))
        async with ta.open_node(
            "submitter", transport=carrier, registry=ta.MessageRegistry()
        ) as node:
            membership = await ta.start_membership(node, seeds={"w1": seed.address})
            placements = Placements(ta.LeastLoaded(random.Random(7)))
            queue = await ta.start_job_queue(node, membership=membership, strategy=placements)
            with trio.fail_after(20):
                await queue.wait_for_workers(3)
            assert queue.workers() == sorted(POOLS)
            yield Cluster(nodes, node, membership, queue, placements)


# -- scatter, gather ------------------------------------------------------------------------


async def test_ten_thousand_jobs_come_back_correct_exactly_once_from_all_three_nodes() -> None:
    count = 10_000
    with trio.fail_after(120):
        async with job_cluster() as cluster:
            queue = cluster.queue
            jobs = {}
            expected = {}
            for i in range(count):
                payload = Digest(f"job-{i}", rounds=1 + i % 3)
                job = DIGEST.job(payload)
                jobs[job.id] = job
                expected[job.id] = digest(payload)
            assert len(jobs) == count

            seen: set[str] = set()
            by_worker: Counter[str | None] = Counter()
            started = trio.current_time()
            async with queue.submit_many(jobs.values()) as results:
                async for result in results:
                    job_id = result.job.id
                    assert job_id in jobs, f"a result for a job never submitted: {job_id}"
                    assert job_id not in seen, f"a second result for job {job_id}"
                    seen.add(job_id)
                    assert result.ok, result.error
                    assert result.value == expected[job_id]
                    by_worker[result.worker] += 1
            elapsed = trio.current_time() - started

            assert seen == jobs.keys()
            assert set(by_worker) == POOLS.keys(), by_worker
            assert all(n >= count // 100 for n in by_worker.values()), by_worker
            stats = queue.statistics()
            assert stats.submitted == count
            assert stats.succeeded == count
            assert (stats.failed, stats.late_results) == (0, 0)
            assert (stats.waiting, stats.in_flight) == (0, 0)
            assert stats.workers == 3
            print(f"{count} jobs in {elapsed:.2f} s; {dict(by_worker)}; {stats}")


# -- map, shuffle, reduce -------------------------------------------------------------------

VOCABULARY = [
    "actor", "nursery", "cancel", "scope", "supervisor", "mailbox", "gossip", "probe",
    "suspect", "alive", "dead", "worker", "queue", "job", "shuffle", "reduce", "map",
    "trio", "don't", "it's", "o'clock", "café", "naïve", "straße", "über", "a", "i",
    "the", "of", "and", "node", "cluster", "partition", "key", "value", "deadline",
]  # fmt: skip


def make_corpus(lines: int, seed: int) -> tuple[str, Counter[str]]:
    """A text of ``lines`` lines of words and punctuation, and how often each word occurs."""
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(0, 14)):
            word = rng.choice(VOCABULARY)
            counts[word.casefold()] += 1
            shape = rng.random()
            if shape < 0.1:
                word = word.upper()
            elif shape < 0.3:
                word = word.capitalize()
            words.append(word + rng.choice(["", "", "", ",", ".", ";", "!", " -", " 42"]))
        out.append(" ".join(words) + "\n")
    return "".join(out), counts


async def test_a_word_count_across_the_processes_equals_a_local_count() -> None:
    text, expected = make_corpus(4000, seed=20240601)
    assert sum(expected.values()) > 20_000
    with trio.fail_after(60):
        async with job_cluster() as cluster:
            counts = await word_count(cluster.queue, text, parts=24, partitions=4)
            assert counts == dict(expected)
            kinds = Counter({job.id: job.kind for job, _ in cluster.placements.placed}.values())
            assert kinds == {WORD_COUNT_MAP.name: 24, WORD_COUNT_REDUCE.name: 4}
            maps = {w for job, w in cluster.placements.placed if job.kind == WORD_COUNT_MAP.name}
            assert maps == POOLS.keys()  # the map jobs were spread over all three
            stats = cluster.queue.statistics()
            assert (stats.succeeded, stats.failed, stats.late_results) == (28, 0, 0)


# -- bad input ------------------------------------------------------------------------------


async def test_bad_jobs_fail_with_typed_errors_across_processes() -> None:
    with trio.fail_after(60):
        async with job_cluster() as cluster:
            queue = cluster.queue

            # Decided by the coordinator: no known pool could ever take these.
            result: ta.JobResult[object] = await queue.submit_result(ta.Job("no-such-kind", 1))
            assert isinstance(result.error, ta.UnknownJobKind), result
            assert "no-such-kind" in str(result.error)
            assert result.worker is None
            with pytest.raises(ta.NoMatchingWorker):
                await queue.submit(ECHO.job("x", tags={"gpu"}))

            # Decided by a worker process: the payload does not fit the handler's type.
            for job in (
                SLEEP.job("soon"),  # type: ignore[arg-type]
                ta.Job(DIGEST.name, {"rounds": 3}),  # no text
                ta.Job(DIGEST.name, "just a string"),
                ta.Job(WORD_COUNT_REDUCE.name, {"word": [1, "two"]}),
            ):
                result = await queue.submit_result(job)
                assert isinstance(result.error, ta.InvalidJobPayload), result
                assert result.worker in POOLS, result
                assert "does not fit" in str(result.error)

            # The handler raises on a worker: trio.sleep(-1) is a ValueError there.
            result = await queue.submit_result(SLEEP.job(-1.0))
            assert isinstance(result.error, ta.JobFailed), result
            assert result.error.error_type == "ValueError"
            assert result.worker in POOLS

            # Decided here: the worker's result does not fit the job's result type.
            result = await queue.submit_result(ta.Job(ECHO.name, "abc", result_type=int))
            assert isinstance(result.error, ta.InvalidJobPayload), result
            assert result.worker in POOLS

            # The pools are no worse for it.
            assert await queue.submit(ECHO.job({"still": "fine"})) == {"still": "fine"}
            stats = queue.statistics()
            assert (stats.succeeded, stats.failed, stats.late_results) == (1, 8, 0)
            assert (stats.waiting, stats.in_flight) == (0, 0)
            assert stats.workers == 3


# -- a worker process dies ------------------------------------------------------------------


async def test_a_killed_worker_process_loses_its_jobs_and_the_survivors_take_the_rest() -> None:
    """Jobs on a SIGKILLed worker: retried on the survivors if they can take them
    (the default retry policy), else ended with ``WorkerLost``."""
    victim = "w3"
    pool = f"jobs:worker@{victim}"
    survivors = POOLS.keys() - {pool}
    with trio.fail_after(90):
        async with job_cluster() as cluster:
            queue = cluster.queue
            placements = cluster.placements
            # Two long sleeps that only the victim offers the tag for: both its runners.
            sleeps = [SLEEP.job(30.0, tags={victim}, timeout=60) for _ in range(2)]
            sleep_ids = {job.id for job in sleeps}
            outcomes: dict[str, ta.JobResult[float]] = {}
            # Then a stream of short jobs over every pool, until the sleeps end.
            sleeps_ended = False
            streamed: Counter[tuple[str | None, str]] = Counter()
            retried: list[ta.JobResult[float]] = []

            def stream() -> Iterator[ta.Job[float]]:
                while not sleeps_ended:
                    yield SLEEP.job(0.05, timeout=60)

            def streamed_to_victim() -> int:
                return sum(w == pool and j.id not in sleep_ids for j, w in placements.placed)

            async def submit(job: ta.Job[float]) -> None:
                outcomes[job.id] = await queue.submit_result(job)

            async def run_stream() -> None:
                async with queue.submit_many(stream(), window=32) as results:
                    async for result in results:
                        error = "ok" if result.error is None else type(result.error).__name__
                        streamed[result.worker, error] += 1
                        if result.attempt > 1:
                            retried.append(result)

            async with trio.open_nursery() as streaming:
                async with trio.open_nursery() as sleeping:
                    for job in sleeps:
                        sleeping.start_soon(submit, job)
                    await placements.wait_until(
                        lambda: sleep_ids <= {job.id for job, _ in placements.placed}
                    )
                    assert {w for j, w in placements.placed if j.id in sleep_ids} == {pool}
                    # Asked after the jobs were sent, over the same connection: the pool has them.
                    info = await cluster.node.ref(pool).ask(ta.DescribeWorker(), timeout=10)
                    assert info.running + info.queued == 2, info
                    # The stream fills the victim's two free slots too (queued behind the sleeps).
                    streaming.start_soon(run_stream)
                    await placements.wait_until(lambda: streamed_to_victim() == 2)

                    killed_at = trio.current_time()
                    cluster.nodes[victim].kill()  # SIGKILL: no goodbye
                    # this nursery waits for both sleeps to end: WorkerLost, not a hang
                lost_after = trio.current_time() - killed_at
                sleeps_ended = True  # (the stream ends with the jobs it has out)

            assert outcomes.keys() == sleep_ids
            for result in outcomes.values():  # nowhere else to go: lost
                assert isinstance(result.error, ta.WorkerLost), result
                assert result.worker == pool
                assert victim in str(result.error)
                assert "cannot be retried" in str(result.error)
            states = {m.node: m.state for m in cluster.membership.members()}
            assert states[victim] == ta.MemberState.DEAD, states
            # Every streamed job succeeded: the two queued on the victim on a second attempt.
            assert streamed_to_victim() == 2  # (the victim was full: nothing more went there)
            assert {(w, error) for w, error in streamed} == {(w, "ok") for w in survivors}
            assert len(retried) == 2
            assert {r.worker for r in retried} <= survivors
            print(f"WorkerLost {lost_after:.2f} s after the kill; the stream: {dict(streamed)}")

            # Afterwards: only the survivors get jobs, and every job succeeds.
            assert queue.workers() == sorted(survivors)
            placements.placed.clear()
            by_worker: Counter[str | None] = Counter()
            async with queue.map(ECHO, range(600)) as results:
                async for echoed in results:
                    assert echoed.ok, echoed.error
                    by_worker[echoed.worker] += 1
            assert set(by_worker) == survivors, by_worker
            assert {w for _, w in placements.placed} == survivors
            stats = queue.statistics()
            assert stats.lost == len(sleeps)
            assert stats.retried == len(sleeps) + 2  # (the sleeps' retries found no taker)
            assert stats.failed == stats.lost
            assert stats.late_results == 0
            assert (stats.waiting, stats.in_flight) == (0, 0)
            # A job only the dead node could take has nowhere to go.
            with pytest.raises(ta.NoMatchingWorker):
                await queue.submit(SLEEP.job(0.1, tags={victim}))
