"""The job queue on the in-memory transport under MockClock.

A simulated cluster: a coordinator on ``n0`` and worker pools on the other
nodes. Every balancing strategy is checked for where it sends jobs (with fixed
seeds for the random ones); results always reach the submitter; bad input
ends in a typed error, never a hang.
"""

from __future__ import annotations

import collections
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioactors as ta
from trioactors.examples import HANDLERS
from trioactors.examples.wordcount import count_words, split_text, word_count
from trioactors.testing import open_simulated_cluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from trioactors.testing import SimulatedCluster


@attrs.frozen
class Point:
    x: int
    y: int


@attrs.frozen
class Norm:
    squared: int
    via: str


ECHO = ta.JobKind("echo", object, object)
SLEEP = ta.JobKind("sleep", float, float)
NORM = ta.JobKind("norm", Point, Norm)
WHERE = ta.JobKind("where", int, str)  # -> the node that ran it


@attrs.define
class Jobs:
    cluster: SimulatedCluster
    queue: ta.JobQueue
    pools: dict[str, ta.WorkerPool]

    def node(self, name: str) -> ta.Node:
        return self.cluster.nodes[name]


def handlers_for(node: str) -> dict[str, Callable[[object], object]]:
    def norm(p: Point) -> Norm:
        return Norm(p.x * p.x + p.y * p.y, node)

    def where(_: int) -> str:
        return node

    return {**HANDLERS, NORM.name: norm, WHERE.name: where}  # type: ignore[dict-item]


@asynccontextmanager
async def open_jobs(
    workers: int = 3,
    *,
    strategy: ta.BalanceStrategy | str = "least-loaded",
    concurrency: int = 2,
    prefetch: int = 2,
    tags: Mapping[str, set[str]] | None = None,
    seed: int = 1,
    retry: ta.RetryPolicy | None = None,
) -> AsyncIterator[Jobs]:
    """``n0`` coordinates; ``n1``..``n{workers}`` each run a pool."""
    async with open_simulated_cluster(workers + 1, seed=seed, formed=True) as cluster:
        pools = {}
        for i in range(1, workers + 1):
            name = f"n{i}"
            pools[name] = await ta.start_worker_pool(
                cluster.nodes[name],
                handlers_for(name),  # type: ignore[arg-type]
                concurrency=concurrency,
                prefetch=prefetch,
                tags=(tags or {}).get(name, set()),
            )
        queue = await ta.start_job_queue(
            cluster.nodes["n0"],
            membership=cluster.members["n0"],
            strategy=strategy,
            seed=seed,
            retry=retry,
        )
        with trio.fail_after(30):
            await queue.wait_for_workers(workers)
            await queue.wait_for_workers(workers, kind=NORM)  # a kind, or its name
            await queue.wait_for_workers(workers, kind="norm")
        yield Jobs(cluster, queue, pools)


async def gather(queue: ta.JobQueue, jobs: list[ta.Job[object]]) -> list[ta.JobResult[object]]:
    results = []
    async with queue.submit_many(jobs) as stream:
        async for result in stream:
            results.append(result)
    return results


# -- results come home ---------------------------------------------------------------------


async def test_submit_returns_typed_results(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        norm = await jobs.queue.submit(NORM.job(Point(3, 4)))
        assert isinstance(norm, Norm)
        assert norm.squared == 25
        assert norm.via in {"n1", "n2", "n3"}
        assert await jobs.queue.submit(ta.Job("echo", {"a": [1, 2]})) == {"a": [1, 2]}
        result = await jobs.queue.submit_result(SLEEP.job(2.5))
        assert result.ok
        assert result.value == 2.5
        assert result.worker in {f"jobs:worker@n{i}" for i in (1, 2, 3)}
        assert result.elapsed == pytest.approx(2.5, abs=0.1)
        assert result.job.submitter == "$jobs:queue@n0"
        stats = jobs.queue.statistics()
        assert (stats.submitted, stats.succeeded, stats.failed) == (3, 3, 0)
        assert (stats.waiting, stats.in_flight, stats.workers) == (0, 0, 3)


async def test_results_go_back_to_whoever_submitted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two coordinators share the pools: each gets its own results and no one else's."""
    async with open_jobs() as jobs:
        other = await ta.start_job_queue(
            jobs.node("n1"),
            membership=jobs.cluster.members["n1"],
            name="$jobs:other",
            strategy="round-robin",  # (least-loaded would keep them on n1's idle local pool)
        )
        await other.wait_for_workers(3)
        mine = [WHERE.job(i) for i in range(300)]
        theirs = [WHERE.job(i) for i in range(300)]
        async with trio.open_nursery() as nursery:
            got: dict[str, list[ta.JobResult[object]]] = {}

            async def run(name: str, q: ta.JobQueue, js: list[ta.Job[object]]) -> None:
                got[name] = await gather(q, js)

            nursery.start_soon(run, "n0", jobs.queue, mine)
            nursery.start_soon(run, "n1", other, theirs)
        assert {r.job.id for r in got["n0"]} == {j.id for j in mine}
        assert {r.job.id for r in got["n1"]} == {j.id for j in theirs}
        for q in (jobs.queue, other):
            stats = q.statistics()
            assert (stats.succeeded, stats.late_results, stats.failed) == (300, 0, 0)
        assert sum(p.statistics().succeeded for p in jobs.pools.values()) == 600


async def test_scatter_gather_streams_as_results_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs() as jobs:
        sleeps = [SLEEP.job(float(s)) for s in (30, 1, 20, 2, 10, 3)]
        start = trio.current_time()
        order = [r.value for r in await gather(jobs.queue, sleeps)]  # type: ignore[arg-type]
        assert order == [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]
        assert trio.current_time() - start < 30.1  # all at once


async def test_window_bounds_what_the_coordinator_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(concurrency=1, prefetch=1) as jobs:
        taken = 0

        def payloads() -> collections.abc.Iterator[float]:
            nonlocal taken
            for _ in range(50):
                taken += 1
                yield 1.0

        seen = 0
        async with jobs.queue.map(SLEEP, payloads(), window=5) as results:
            async for _ in results:
                seen += 1
                stats = jobs.queue.statistics()
                assert stats.waiting + stats.in_flight <= 5
                assert taken <= seen + 5
        assert seen == 50


async def test_leaving_a_stream_early_abandons_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs() as jobs:
        async with jobs.queue.map(SLEEP, [1.0, 50.0, 60.0, 70.0]) as results:
            async for result in results:
                assert result.value == 1.0
                break
        assert jobs.queue.statistics().in_flight == 0
        await trio.sleep(100)  # the abandoned jobs finish on their workers
        stats = jobs.queue.statistics()
        assert stats.late_results == 3
        assert stats.succeeded == 1


async def test_ten_thousand_jobs(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        batch = [ECHO.job(i) for i in range(10_000)]
        results = await gather(jobs.queue, batch)
        assert sorted(r.value for r in results) == list(range(10_000))  # type: ignore[type-var]
        assert len({r.job.id for r in results}) == 10_000
        by_worker = collections.Counter(r.worker for r in results)
        assert len(by_worker) == 3
        assert min(by_worker.values()) > 2_000
        done = sum(p.statistics().succeeded for p in jobs.pools.values())
        assert done == 10_000


# -- bad input: typed errors, never a hang ---------------------------------------------------


async def test_unknown_kind_fails_after_asking_the_pools(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs() as jobs:
        start = trio.current_time()
        with pytest.raises(ta.UnknownJobKind, match="no worker handles 'resize'"):
            await jobs.queue.submit(ta.Job("resize", "cat.png"))
        assert trio.current_time() - start < 0.01  # one round trip, not a refresh interval
        assert sum(p.statistics().received for p in jobs.pools.values()) == 0


async def test_a_kind_registered_after_the_queue_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs() as jobs:
        jobs.pools["n2"].register("resize", lambda path: f"small {path}")
        start = trio.current_time()
        assert await jobs.queue.submit(ta.Job("resize", "cat.png")) == "small cat.png"
        assert trio.current_time() - start < 0.01


async def test_kind_unknown_to_the_worker_it_reached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pool dropped the kind after the coordinator last asked: the worker says so."""
    async with open_jobs(workers=1) as jobs:
        jobs.pools["n1"].unregister(WHERE)
        with pytest.raises(
            ta.UnknownJobKind, match="no handler for 'where' jobs on jobs:worker@n1"
        ):
            await jobs.queue.submit(WHERE.job(1))
        assert jobs.pools["n1"].statistics().unknown_kind == 1


async def test_payload_of_the_wrong_type(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        with pytest.raises(ta.InvalidJobPayload, match="does not fit Point"):
            await jobs.queue.submit(ta.Job("norm", {"x": 1}))  # no y
        with pytest.raises(ta.InvalidJobPayload, match="does not fit float"):
            await jobs.queue.submit(ta.Job("sleep", "soon"))
        stats = [p.statistics() for p in jobs.pools.values()]
        assert sum(s.invalid_payload for s in stats) == 2


async def test_result_of_the_wrong_type(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        claims_int = ta.JobKind("echo", object, int)
        with pytest.raises(ta.InvalidJobPayload, match=r"result of 'echo' job .* does not fit int"):
            await jobs.queue.submit(claims_int.job("not a number"))


async def test_handler_raises(autojump_clock: trio.testing.MockClock) -> None:
    def boom(n: int) -> int:
        raise KeyError(n)

    async with open_jobs(workers=1) as jobs:
        jobs.pools["n1"].register("boom", boom)
        with pytest.raises(ta.JobFailed, match="KeyError: 7") as caught:
            await jobs.queue.submit(ta.Job("boom", 7))
        assert caught.value.error_type == "KeyError"
        assert await jobs.queue.submit(WHERE.job(0)) == "n1"  # the pool carries on


async def test_no_worker_offers_the_tags(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(tags={"n2": {"gpu"}}) as jobs:
        with pytest.raises(ta.NoMatchingWorker, match=r"\['gpu', 'tpu'\]"):
            await jobs.queue.submit(WHERE.job(0, tags={"gpu", "tpu"}))


async def test_a_payload_that_cannot_be_sent(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        with pytest.raises(ta.InvalidJobPayload, match="cannot be sent"):
            await jobs.queue.submit(ta.Job("echo", object()))
        assert jobs.queue.statistics().in_flight == 0


async def test_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        start = trio.current_time()
        with pytest.raises(ta.JobTimeout, match="within 5 s"):
            await jobs.queue.submit(SLEEP.job(100.0, timeout=5))
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)
        # The worker gave up too, at the same deadline, and its answer came late.
        await trio.sleep(1)
        assert sum(p.statistics().timed_out for p in jobs.pools.values()) == 1
        assert jobs.queue.statistics().late_results == 1


async def test_deadline_while_waiting_for_a_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_jobs(workers=1, concurrency=1, prefetch=1) as jobs,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(jobs.queue.submit, SLEEP.job(10.0))
        await trio.sleep(0.5)
        with pytest.raises(ta.JobTimeout, match="waiting for a free worker"):
            await jobs.queue.submit(SLEEP.job(1.0, timeout=2))


async def test_cancelled_submit_forgets_the_job(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        with trio.move_on_after(1):
            await jobs.queue.submit(SLEEP.job(10.0))
        assert jobs.queue.statistics().in_flight == 0
        await trio.sleep(20)
        assert jobs.queue.statistics().late_results == 1


async def test_worker_lost_when_its_node_dies(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(strategy="round-robin", retry=ta.NO_RETRY) as jobs:
        results: list[ta.JobResult[object]] = []

        async def run() -> None:
            results.extend(
                await gather(jobs.queue, [SLEEP.job(100.0, timeout=300) for _ in range(6)])
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1)
            jobs.cluster.crash("n2")
        lost = [r for r in results if isinstance(r.error, ta.WorkerLost)]
        assert len(lost) == 2
        assert all(r.worker == "jobs:worker@n2" for r in lost)
        assert all(r.elapsed < 30 for r in lost)  # when n2 was declared dead, not at the deadline
        assert sorted(r.value for r in results if r.ok) == [100.0] * 4  # type: ignore[type-var]
        assert jobs.queue.workers() == ["jobs:worker@n1", "jobs:worker@n3"]
        after = await gather(jobs.queue, [WHERE.job(i) for i in range(20)])
        assert {r.value for r in after} == {"n1", "n3"}


async def test_malformed_jobs_are_refused_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(workers=1) as jobs:
        n0 = jobs.node("n0")
        before = jobs.node("n1").statistics()
        await n0.ref("jobs:worker@n1").tell(ta.RawMessage("$jobs.RunJob", ["id", "echo"]))
        await n0.ref("jobs:worker@n1").tell(ta.RawMessage("$jobs.RunJob", {"id": 1}))
        await trio.sleep(1)
        after = jobs.node("n1").statistics()
        assert after.invalid_payloads - before.invalid_payloads == 2
        assert await jobs.queue.submit(WHERE.job(0)) == "n1"


async def test_a_job_told_from_outside_an_actor_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(workers=1) as jobs:
        pool = jobs.node("n1").ref("jobs:worker@n1")
        from trioactors._services._workers import RunJob

        await pool.tell(RunJob("x", "echo", 1, 1, 1, None, "nobody", None))
        await trio.sleep(1)
        assert jobs.pools["n1"].statistics().unanswerable == 1


# -- workers -------------------------------------------------------------------------------


async def test_concurrency_limit(autojump_clock: trio.testing.MockClock) -> None:
    running = peak = 0

    async def work(_: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return 0

    async with open_jobs(workers=1, concurrency=3, prefetch=4) as jobs:
        jobs.pools["n1"].register("work", work)
        start = trio.current_time()
        results = await gather(jobs.queue, [ta.Job("work", i) for i in range(30)])
        assert all(r.ok for r in results)
        assert peak == 3
        assert trio.current_time() - start == pytest.approx(10, abs=0.5)


async def test_busy_pools_refuse_and_jobs_go_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two coordinators overfill one-slot pools: refused jobs are placed again, none lost."""
    async with open_jobs(workers=2, concurrency=1, prefetch=1) as jobs:
        other = await ta.start_job_queue(
            jobs.node("n1"), membership=jobs.cluster.members["n1"], name="$jobs:other"
        )
        await other.wait_for_workers(2)
        got: list[ta.JobResult[object]] = []

        async def run(q: ta.JobQueue) -> None:
            got.extend(await gather(q, [SLEEP.job(1.0) for _ in range(20)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, jobs.queue)
            nursery.start_soon(run, other)
        assert len(got) == 40
        assert all(r.ok for r in got)
        refused = sum(p.statistics().rejected_busy for p in jobs.pools.values())
        assert refused > 0
        assert refused == jobs.queue.statistics().rejected_busy + other.statistics().rejected_busy


async def test_actor_as_handler(autojump_clock: trio.testing.MockClock) -> None:
    class Doubler(ta.Actor[int]):
        def __init__(self) -> None:
            self.seen = 0

        async def receive(self, message: int) -> object:
            self.seen += 1
            return (message * 2, self.seen)

    async with open_jobs(workers=1) as jobs:
        ref = await jobs.node("n1").root.start_actor(Doubler, name="doubler")
        jobs.pools["n1"].register("double", ref, payload_type=int)
        assert await jobs.queue.submit(ta.Job("double", 21)) == [42, 1]
        assert await jobs.queue.submit(ta.Job("double", 5)) == [10, 2]
        with pytest.raises(ta.InvalidJobPayload):
            await jobs.queue.submit(ta.Job("double", "x"))


def test_thread_handler() -> None:
    # Real clock: a worker thread does not advance a MockClock.
    def blocking(n: int) -> int:
        return sum(range(n))

    async def main() -> None:
        async with ta.open_node("solo") as node:
            pool = await ta.start_worker_pool(node, concurrency=2)
            pool.register("sum", blocking, thread=True)
            queue = await ta.start_job_queue(node)
            with trio.fail_after(10):
                assert await queue.submit(ta.Job("sum", 1000)) == 499500

    trio.run(main)


def test_register_checks_its_arguments() -> None:
    async def main() -> None:
        async with ta.open_node("solo") as node:
            pool = await ta.start_worker_pool(node)
            with pytest.raises(TypeError, match="takes none"):
                pool.register("x", lambda: 1)  # type: ignore[arg-type,misc]
            with pytest.raises(ValueError, match="non-empty"):
                pool.register("", lambda p: p)
            with pytest.raises(TypeError, match="function or an ActorRef"):
                pool.register("x", 42)  # type: ignore[arg-type]

            async def coro(p: int) -> int:
                return p

            with pytest.raises(ValueError, match="async functions run on the loop"):
                pool.register("x", coro, thread=True)
            with pytest.raises(TypeError, match="not the string"):
                await ta.start_worker_pool(node, name="other", tags="gpu")
            with pytest.raises(ValueError, match="concurrency"):
                await ta.start_worker_pool(node, name="other", concurrency=0)

    trio.run(main)


async def test_a_node_without_membership(autojump_clock: trio.testing.MockClock) -> None:
    async with ta.open_node("solo") as node:
        await ta.start_worker_pool(node, HANDLERS)
        queue = await ta.start_job_queue(node)
        assert queue.workers() == ["jobs:worker@solo"]
        assert await queue.submit(ta.Job("echo", "hi")) == "hi"


# -- strategies ----------------------------------------------------------------------------


async def test_round_robin_takes_turns(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(strategy="round-robin") as jobs:
        where = [await jobs.queue.submit(WHERE.job(i)) for i in range(30)]
        assert where[:3] == ["n1", "n2", "n3"]
        assert where == where[:3] * 10


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_is_uniform(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    async with open_jobs(strategy="random", seed=seed) as jobs:
        where = collections.Counter([await jobs.queue.submit(WHERE.job(i)) for i in range(600)])
        assert set(where) == {"n1", "n2", "n3"}
        # chi-squared with 2 degrees of freedom; 13.8 is the 0.1% critical value
        chi2 = sum((n - 200) ** 2 / 200 for n in where.values())
        assert chi2 < 13.8


async def test_least_loaded_avoids_busy_workers(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(concurrency=4, prefetch=1) as jobs:
        # Another coordinator keeps three of n1's four slots busy.
        hogger = await ta.start_job_queue(
            jobs.node("n1"), workers=["jobs:worker@n1"], name="$jobs:hogger"
        )
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(hogger.submit, SLEEP.job(1000.0, timeout=2000))
            await trio.sleep(2)  # a refresh: the coordinator on n0 hears n1's load
            assert jobs.pools["n1"].statistics().running == 3
            where = collections.Counter([await jobs.queue.submit(WHERE.job(i)) for i in range(200)])
            nursery.cancel_scope.cancel()
        # Of two random candidates the less loaded wins, and n2 and n3 are idle.
        assert where["n1"] == 0
        assert where["n2"] > 60
        assert where["n3"] > 60


async def test_lowest_latency_prefers_the_nearest(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(strategy="lowest-latency", concurrency=1, prefetch=1) as jobs:
        network = jobs.cluster.network
        network.delay(0.05, between=(["n1"], None))
        network.delay(0.02, between=(["n2"], None))
        await trio.sleep(10)  # a few refreshes measure the round trips
        where = collections.Counter([await jobs.queue.submit(WHERE.job(i)) for i in range(50)])
        assert where == {"n3": 50}
        # When the nearest is full, the next nearest takes over.
        results = await gather(jobs.queue, [SLEEP.job(5.0) for _ in range(2)])
        assert sorted(r.worker for r in results) == ["jobs:worker@n2", "jobs:worker@n3"]  # type: ignore[type-var]


async def test_tags_route_to_capable_workers(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(strategy="random", tags={"n2": {"gpu"}, "n3": {"gpu", "big"}}) as jobs:
        gpu = collections.Counter(
            [await jobs.queue.submit(WHERE.job(i, tags={"gpu"})) for i in range(100)]
        )
        assert set(gpu) == {"n2", "n3"}
        big = {await jobs.queue.submit(WHERE.job(i, tags={"gpu", "big"})) for i in range(20)}
        assert big == {"n3"}
        plain = {await jobs.queue.submit(WHERE.job(i)) for i in range(100)}
        assert plain == {"n1", "n2", "n3"}


async def test_consistent_hash_keeps_keys_on_their_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(strategy="consistent-hash", workers=4) as jobs:
        keys = [f"user-{i}" for i in range(200)]

        async def placement() -> dict[str, str]:
            return {k: await jobs.queue.submit(WHERE.job(0, key=k)) for k in keys}

        first = await placement()
        assert await placement() == first  # the same key, the same worker
        assert set(first.values()) == {"n1", "n2", "n3", "n4"}
        jobs.cluster.crash("n4")
        await jobs.cluster.wait_until(lambda m: "n4" not in m.alive(), nodes=["n0"])
        await jobs.queue.refresh()
        assert len(jobs.queue.workers()) == 3
        second = await placement()
        moved = {k for k in keys if first[k] != second[k]}
        assert moved == {k for k in keys if first[k] == "n4"}  # only n4's keys moved
        # keyless jobs fall back to least-loaded
        assert await jobs.queue.submit(WHERE.job(0)) in {"n1", "n2", "n3"}


# -- map, shuffle, reduce --------------------------------------------------------------------

CORPUS = """\
It was the best of times, it was the worst of times,
it was the age of wisdom, it was the age of foolishness,
it was the epoch of belief, it was the epoch of incredulity,
it was the season of Light, it was the season of Darkness,
it was the spring of hope, it was the winter of despair.
"""


async def test_word_count(autojump_clock: trio.testing.MockClock) -> None:
    text = CORPUS * 40
    async with open_jobs(strategy="consistent-hash") as jobs:
        counts = await word_count(jobs.queue, text, parts=9, partitions=5)
        assert counts == count_words(text)
        assert counts["it"] == 400
        assert counts["was"] == 400
        assert counts["times"] == 80
        # each map part and each partition ran as a job somewhere
        assert jobs.queue.statistics().succeeded == len(split_text(text, 9)) + 5


async def test_map_reduce_fails_with_the_first_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad = ta.JobKind("wordcount.map", int, dict[str, int])  # the handler wants str
    reduce = ta.JobKind("wordcount.reduce", dict[str, list[int]], dict[str, int])
    async with open_jobs() as jobs:
        with pytest.raises(ta.InvalidJobPayload):
            await ta.map_reduce(jobs.queue, [1, 2, 3], map_kind=bad, reduce_kind=reduce)


def test_split_text_and_partitions() -> None:
    text = "".join(f"line {i}\n" for i in range(10))
    parts = split_text(text, 3)
    assert "".join(parts) == text
    assert len(parts) == 3
    assert split_text("", 4) == []
    assert ta.partition_of("word", 8) == ta.partition_of("word", 8)
    assert len({ta.partition_of(f"w{i}", 8) for i in range(100)}) == 8
    with pytest.raises(ValueError, match="parts must be >= 1"):
        split_text(text, 0)


# -- every job ends exactly once ---------------------------------------------------------------

_JOBS = st.lists(
    st.one_of(
        st.tuples(st.just("sleep"), st.floats(0, 20), st.sampled_from([None, 5.0, 30.0])),
        st.tuples(st.just("echo"), st.integers(), st.none()),
        st.tuples(st.just("unknown"), st.none(), st.none()),
        st.tuples(st.just("sleep"), st.text(max_size=3), st.none()),  # a bad payload
    ),
    max_size=40,
)


@settings(max_examples=20)
@given(specs=_JOBS, strategy=st.sampled_from(ta.STRATEGY_NAMES), seed=st.integers(0, 5))
def test_every_job_ends_exactly_once(
    specs: list[tuple[str, object, float | None]], strategy: str, seed: int
) -> None:
    async def main() -> None:
        async with open_jobs(strategy=strategy, seed=seed, concurrency=1) as jobs:
            batch = [
                ta.Job(kind, payload, timeout=timeout, key=str(i))
                for i, (kind, payload, timeout) in enumerate(specs)
            ]
            results = await gather(jobs.queue, batch)
            assert sorted(r.job.id for r in results) == sorted(j.id for j in batch)
            for r in results:
                kind, payload, timeout = r.job.kind, r.job.payload, r.job.timeout
                if kind == "unknown":
                    assert isinstance(r.error, ta.UnknownJobKind)
                elif kind == "sleep" and isinstance(payload, str):
                    assert isinstance(r.error, ta.InvalidJobPayload)
                elif kind == "sleep" and timeout is not None and r.elapsed >= timeout:
                    assert isinstance(r.error, ta.JobTimeout)
                else:
                    assert r.ok, r
                    assert r.value == payload
            stats = jobs.queue.statistics()
            assert stats.submitted == stats.succeeded + stats.failed == len(batch)
            assert (stats.waiting, stats.in_flight) == (0, 0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_draining_node_gets_no_new_jobs(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs() as jobs:
        admin = await ta.start_admin(jobs.node("n2"), membership=jobs.cluster.members["n2"])
        report = await admin.drain(10)
        assert report.drained
        await jobs.cluster.wait_until(
            lambda m: not any(r.address.endswith("@n2") for r in m.lookup("jobs:worker")),
            nodes=["n0"],
        )
        await jobs.queue.refresh()
        assert jobs.queue.workers() == ["jobs:worker@n1", "jobs:worker@n3"]
        where = {await jobs.queue.submit(WHERE.job(i)) for i in range(50)}
        assert where == {"n1", "n3"}


async def test_a_drain_waits_for_the_pools_jobs(autojump_clock: trio.testing.MockClock) -> None:
    async with open_jobs(workers=1) as jobs:
        admin = await ta.start_admin(jobs.node("n1"), membership=jobs.cluster.members["n1"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(jobs.queue.submit, SLEEP.job(10.0))
            await trio.sleep(1)
            assert not (await admin.drain(2)).drained  # still running
            start = trio.current_time()
            assert (await admin.drain(60)).drained
            assert trio.current_time() - start == pytest.approx(7, abs=0.2)


async def test_jobs_on_a_drained_node_that_dies_are_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(strategy="round-robin", retry=ta.NO_RETRY) as jobs:
        admin = await ta.start_admin(jobs.node("n1"), membership=jobs.cluster.members["n1"])
        results: list[ta.JobResult[object]] = []

        async def run() -> None:
            results.extend(await gather(jobs.queue, [SLEEP.job(100.0) for _ in range(3)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1)
            with trio.move_on_after(1):
                await admin.drain(60)
            await jobs.queue.refresh()
            assert "jobs:worker@n1" not in jobs.queue.workers()
            jobs.cluster.crash("n1")
        lost = [r for r in results if isinstance(r.error, ta.WorkerLost)]
        assert [r.worker for r in lost] == ["jobs:worker@n1"]
        assert lost[0].elapsed < 30


async def test_a_strategy_that_raises_fails_the_job_not_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(strategy=ta.ConsistentHash()) as jobs:  # no fallback for keyless jobs
        for _ in range(3):
            with pytest.raises(ta.NoMatchingWorker, match="consistent hashing needs a key"):
                await jobs.queue.submit(WHERE.job(0))
        assert await jobs.queue.submit(WHERE.job(0, key="k")) in {"n1", "n2", "n3"}


async def test_the_same_job_submitted_again_gets_its_own_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_jobs(workers=1) as jobs:
        job = ta.Job("sleep", 5.0)
        with trio.move_on_after(1):
            await jobs.queue.submit(job)  # abandoned; it runs on
        start = trio.current_time()
        result = await jobs.queue.submit_result(job)
        assert result.elapsed == pytest.approx(5, abs=0.1)  # not the first run's, at 4 s
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
        assert jobs.queue.statistics().late_results == 1
