"""A fault search on the job queue: hypothesis picks the faults, invariants must hold.

A simulated cluster under MockClock: a seed member ``n0``, worker pools on
``n1``..``n3``, and a coordinator ``c`` with a SQLite job store and a failure
supervisor. A batch of jobs goes out while hypothesis schedules faults: worker
crashes, partitions (healed later), message loss, duplication and delay, a
worker turned slow, and restarts of the coordinator on its store. Then:

- every job ends exactly once: the store holds one outcome for each, nothing
  is left pending, and no result was handed out twice;
- what was handed out agrees with the store, and every success has the right
  value;
- every job that failed was reported to the failure supervisor;
- nothing was sent to a node after the coordinator's membership declared it
  dead.

The default run searches a few examples from a fixed seed; ``nox -s faults``
(the "deep" profile) searches many more, at random.
"""

from __future__ import annotations

import collections
import os
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import trioactors as ta
from trioactors.testing import open_simulated_cluster

if TYPE_CHECKING:
    from collections.abc import Callable

    from trioactors.testing import SimulatedCluster

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
WORKERS = ["n1", "n2", "n3"]
POLICY = ta.RetryPolicy(max_attempts=3, attempt_timeout=30.0)
JOB_TIMEOUT = 600.0

# -- the faults ---------------------------------------------------------------------------


@attrs.frozen
class Crash:
    worker: str


@attrs.frozen
class Partition:
    worker: str
    seconds: float


@attrs.frozen
class Drop:
    rate: float
    seconds: float


@attrs.frozen
class Duplicate:
    rate: float
    seconds: float


@attrs.frozen
class Delay:
    low: float
    high: float
    seconds: float


@attrs.frozen
class Slow:
    worker: str


@attrs.frozen
class RestartCoordinator:
    pass


Fault = Crash | Partition | Drop | Duplicate | Delay | Slow | RestartCoordinator

_worker = st.sampled_from(WORKERS)
_seconds = st.floats(1, 40)
faults = st.one_of(
    st.builds(Crash, _worker),
    st.builds(Partition, _worker, _seconds),
    st.builds(Drop, st.floats(0.05, 0.5), _seconds),
    st.builds(Duplicate, st.floats(0.05, 0.5), _seconds),
    st.builds(Delay, st.floats(0, 0.5), st.floats(0.5, 2), _seconds),
    st.builds(Slow, _worker),
    st.just(RestartCoordinator()),
)


@attrs.frozen
class Scenario:
    durations: list[float]
    schedule: list[tuple[float, Fault]]  # (seconds after the previous fault, fault)
    seed: int


scenarios = st.builds(
    Scenario,
    st.lists(st.floats(0.1, 20), min_size=1, max_size=24),
    st.lists(st.tuples(st.floats(0.5, 30), faults), max_size=5),
    st.integers(0, 2**16),
)


# -- the run ------------------------------------------------------------------------------


@attrs.define
class Record:
    """What the test saw, across every incarnation of the coordinator."""

    handed_out: collections.Counter[str] = attrs.field(factory=collections.Counter)
    results: dict[str, ta.JobResult[object]] = attrs.field(factory=dict)
    reported: set[str] = attrs.field(factory=set)
    dead_placements: list[str] = attrs.field(factory=list)
    slow: set[str] = attrs.field(factory=set)

    def take(self, result: ta.JobResult[object]) -> None:
        self.handed_out[result.job.id] += 1
        self.results[result.job.id] = result


def watch_failures(failures: ta.FailureSupervisor, record: Record) -> None:
    """Record every failure report as it is made (the actor may die before it reads it)."""
    report = failures.report

    def reporting(item: ta.FailureReport) -> None:
        if isinstance(item, ta.JobGaveUp):
            record.reported.add(item.job_id)
        report(item)

    failures.report = reporting  # type: ignore[method-assign]


def watch(queue: ta.JobQueue, membership: ta.Membership, record: Record) -> None:
    """Record every placement on a node held dead."""
    place = queue._place

    def placing(pending: object, worker: str) -> object:
        member = membership.view.get(worker.rpartition("@")[2])
        if member is not None and not member.reachable:
            record.dead_placements.append(worker)
        return place(pending, worker)  # type: ignore[arg-type]

    queue._place = placing  # type: ignore[assignment, method-assign]


async def coordinator(
    cluster: SimulatedCluster,
    path: Path,
    batch: list[ta.Job[object]] | None,
    record: Record,
    done: trio.Event,
    transport: ta.transports.MemoryTransport,
    task_status: trio.TaskStatus[ta.JobQueue] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One incarnation of the coordinator, until it has nothing left or is crashed."""
    store = ta.SqliteJobStore(path)
    queue: ta.JobQueue | None = None
    try:
        async with ta.open_node("c", transport=transport) as node:
            membership = await ta.start_membership(
                node, seeds={"n0": "memory://n0"}, config=ta.MembershipConfig(seed=1)
            )
            failures = await ta.start_failure_supervisor(node, handlers=[])
            watch_failures(failures, record)
            queue = await ta.start_job_queue(
                node,
                membership=membership,
                failures=failures,
                store=store,
                retry=POLICY,
                default_timeout=JOB_TIMEOUT,
                seed=7,
            )
            watch(queue, membership, record)
            if batch is not None:
                await queue.wait_for_workers(len(WORKERS))  # (before the faults begin)
            task_status.started(queue)
            if batch is not None:
                async with queue.submit_many(batch) as results:
                    async for result in results:
                        record.take(result)
            for result in await queue.wait_recovered():
                record.take(result)
            done.set()
            await trio.sleep_forever()
    except ta.NodeCrashed:
        pass  # the process died: what it had not written down is gone with it
    finally:
        if queue is not None:
            queue.store = None  # (a dead process touches its store no more)
        store.close()


async def run(scenario: Scenario, path: Path) -> Record:
    record = Record()

    def handler(node: str) -> Callable[[float], object]:
        async def sleep(seconds: float) -> float:
            await trio.sleep(seconds * (10 if node in record.slow else 1))
            return seconds

        return sleep

    async with open_simulated_cluster(4, seed=scenario.seed, formed=True) as cluster:
        network = cluster.network
        for name in WORKERS:
            await ta.start_worker_pool(cluster.nodes[name], {"sleep": handler(name)}, concurrency=2)
        batch: list[ta.Job[object]] = [
            ta.Job("sleep", seconds, timeout=JOB_TIMEOUT) for seconds in scenario.durations
        ]
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            current: ta.JobQueue = await nursery.start(
                coordinator, cluster, path, batch, record, done, network.transport("c")
            )
            for wait, fault in scenario.schedule:
                await trio.sleep(wait)
                if done.is_set():
                    break
                match fault:
                    case Crash(worker):
                        if worker in cluster.running():
                            cluster.crash(worker)
                    case Partition(worker, seconds):
                        network.partition([worker])
                        nursery.start_soon(heal_after, network, seconds)
                    case Drop(rate, seconds):
                        network.drop(rate, between=(["c"], None))
                        nursery.start_soon(clear_after, network, seconds)
                    case Duplicate(rate, seconds):
                        network.duplicate(rate)
                        nursery.start_soon(clear_after, network, seconds)
                    case Delay(low, high, seconds):
                        network.delay(low, high)
                        nursery.start_soon(clear_after, network, seconds)
                    case Slow(worker):
                        record.slow.add(worker)
                    case RestartCoordinator():
                        current.store = None  # the process dies: it writes no more
                        network.crash("c")
                        await trio.sleep(0.1)
                        done = trio.Event()
                        current = await nursery.start(
                            coordinator, cluster, path, None, record, done, network.restart("c")
                        )
            with trio.fail_after(10 * JOB_TIMEOUT):
                await done.wait()
            nursery.cancel_scope.cancel()
    return record


async def heal_after(network: ta.transports.MemoryNetwork, seconds: float) -> None:
    await trio.sleep(seconds)
    network.heal()


async def clear_after(network: ta.transports.MemoryNetwork, seconds: float) -> None:
    await trio.sleep(seconds)
    network.drop(0.0)
    network.duplicate(0.0)
    network.delay(0.0)


def check(scenario: Scenario, record: Record, path: Path) -> None:
    store = ta.SqliteJobStore(path)
    try:
        assert store.pending() == [], "jobs were left pending"
        outcomes = {}
        for job_id in record.results:
            outcome = store.outcome(job_id)
            assert outcome is not None, f"job {job_id} was handed out but has no outcome"
            outcomes[job_id] = outcome
        twice = [job_id for job_id, n in record.handed_out.items() if n > 1]
        assert not twice, f"handed out twice: {twice}"
        for job_id, result in record.results.items():
            assert result.ok == outcomes[job_id].ok, (result, outcomes[job_id])
            if result.ok:
                assert result.value == result.job.payload
            else:
                assert job_id in record.reported, f"failure not reported: {result.error!r}"
        assert record.dead_placements == [], "sent to a node held dead"
        assert store.statistics().outcomes == len(scenario.durations), "a job was lost"
    finally:
        store.close()


def search(test: Callable[[Scenario], None]) -> Callable[[Scenario], None]:
    """Few examples from a fixed seed by default; many, at random, with the deep profile."""
    test = settings(
        max_examples=400 if DEEP else 25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(test)
    return test if DEEP else seed(20261130)(test)


@search
@given(scenario=scenarios)
def test_every_job_ends_exactly_once_under_faults(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jobs.sqlite"
        clock = trio.testing.MockClock(autojump_threshold=0)
        record = trio.run(run, scenario, path, clock=clock)
        check(scenario, record, path)


def test_a_scenario_with_every_fault() -> None:
    """One fixed scenario that has each kind of fault, as a readable regression test."""
    scenario = Scenario(
        durations=[float(1 + i % 7) for i in range(20)],
        schedule=[
            (2.0, Duplicate(0.3, 10)),
            (1.0, Slow("n1")),
            (1.0, Partition("n2", 15)),
            (3.0, Drop(0.2, 10)),
            (2.0, RestartCoordinator()),
            (5.0, Crash("n3")),
            (1.0, Delay(0.1, 1.0, 20)),
        ],
        seed=zlib.crc32(b"every fault"),
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jobs.sqlite"
        record = trio.run(run, scenario, path, clock=trio.testing.MockClock(autojump_threshold=0))
        check(scenario, record, path)
