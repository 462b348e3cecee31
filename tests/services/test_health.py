"""The health monitor (``$health``) on the in-memory transport under MockClock."""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta
from trioactors._core._healing import HealingChanged, HealingConfig, HealingState
from trioactors._services._health import (
    HealthMonitor,
    HealthStatistics,
    Probe,
    actor_probe,
    dependency_probe,
    start_health,
)
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

IDLE = HealingState.IDLE
DETECTING = HealingState.DETECTING
RECOVERING = HealingState.RECOVERING
RESTORED = HealingState.RESTORED


@asynccontextmanager
async def one_node(name: str = "n0") -> AsyncIterator[ta.Node]:
    network = MemoryNetwork(seed=5)
    with trio.fail_after(600):
        async with (
            network.running(),
            ta.open_node(
                name, transport=network.transport(name), registry=ta.MessageRegistry()
            ) as node,
        ):
            yield node


def path(monitor: HealthMonitor, name: str) -> list[tuple[HealingState, HealingState]]:
    return [(c.before, c.after) for c in monitor.history(name)]


class Script:
    """A dependency whose checks answer from a script (then ``then`` forever), and a recovery."""

    def __init__(self, answers: Iterable[bool], then: bool = True) -> None:
        self.answers = list(answers)
        self.then = then
        self.checks: list[float] = []  # when each check ran
        self.recoveries: list[float] = []

    async def check(self) -> bool:
        await trio.lowlevel.checkpoint()
        self.checks.append(trio.current_time())
        return self.answers.pop(0) if self.answers else self.then

    async def recover(self) -> bool:
        await trio.sleep(0.5)
        self.recoveries.append(trio.current_time())
        return True


# -- dependencies ------------------------------------------------------------------------


async def test_a_failing_dependency_is_recovered_and_restored(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trioactors.health")
    db = Script([False, False, False])
    async with one_node() as node:
        monitor = await start_health(
            node, [dependency_probe("database", db.check, recover=db.recover, interval=1.0)]
        )
        assert monitor.states() == {"database": IDLE}
        await monitor.wait_state("database", RESTORED)
        await monitor.wait_state("database", IDLE)
        assert path(monitor, "database") == [
            (IDLE, DETECTING),
            (DETECTING, RECOVERING),
            (RECOVERING, RESTORED),
            (RESTORED, IDLE),
        ]
        # The first check at once; the next one interval after the recovery ended.
        assert db.checks == [0.0, 1.0, 2.0, 3.5, 4.5]
        assert db.recoveries == [2.5]
        assert monitor.statistics() == HealthStatistics(
            checks=5, unhealthy=3, recoveries=1, recoveries_failed=0, gave_up=0
        )
        first = monitor.history()[0]
        assert first == HealingChanged("database", IDLE, DETECTING, 0.0, "check returned False")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "trioactors.health"]
    assert [level for level, _ in levels] == [
        logging.INFO,
        logging.WARNING,
        logging.INFO,
        logging.INFO,
    ]
    assert levels[1][1] == "$health@n0: database detecting -> recovering: check returned False"


async def test_a_flapping_dependency_is_not_recovered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = Script([True, False])
    async with one_node() as node:
        monitor = await start_health(
            node, [dependency_probe("database", db.check, recover=db.recover, interval=1.0)]
        )
        await monitor.wait_state("database", DETECTING)
        await monitor.wait_state("database", IDLE)
        assert path(monitor, "database") == [(IDLE, DETECTING), (DETECTING, IDLE)]
        assert monitor.history("database")[1].reason == "healthy again (a blip)"
        assert db.recoveries == []
        assert monitor.statistics().recoveries == 0


async def test_a_recovery_that_keeps_failing_gives_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[float] = []
    healthy = False
    checked = trio.Event()

    async def check() -> bool:
        await trio.lowlevel.checkpoint()
        if len(attempts) == 3:
            checked.set()  # the first check after the budget was spent
        return healthy

    async def recover() -> bool:
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            raise ConnectionRefusedError("db:5432")
        if len(attempts) == 2:
            await trio.sleep_forever()  # cancelled by recover_timeout
        return False

    config = HealingConfig(failures_to_recover=2, max_recoveries=3, recovery_window=600.0)
    probe = dependency_probe(
        "database", check, recover=recover, interval=1.0, recover_timeout=4.0, healing=config
    )
    async with one_node() as node:
        monitor = await start_health(node, [probe])
        await checked.wait()
        assert attempts == [1.0, 2.0, 7.0]  # one interval between recoveries
        assert monitor.statistics() == HealthStatistics(
            checks=3, unhealthy=3, recoveries=3, recoveries_failed=3, gave_up=1
        )
        assert monitor.states() == {"database": RECOVERING}
        reasons = [c.reason for c in monitor.history("database")]
        assert path(monitor, "database") == [
            (IDLE, DETECTING),
            (DETECTING, RECOVERING),
            (RECOVERING, RECOVERING),
            (RECOVERING, RECOVERING),
        ]
        assert reasons[2] == "recover() raised ConnectionRefusedError('db:5432')"
        assert reasons[3] == "recover() took longer than 4 s"
        assert any(
            r.levelno == logging.ERROR and "gave up recovering database" in r.getMessage()
            for r in caplog.records
        )
        # Healthy again by itself: restored, and no more recoveries.
        healthy = True
        await monitor.wait_state("database", RESTORED)
        await monitor.wait_state("database", IDLE)
        assert len(attempts) == 3


async def test_a_report_only_probe_gives_up_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    db = Script([False, False, False, False])
    async with one_node() as node:
        monitor = await start_health(node, [dependency_probe("disk", db.check, interval=1.0)])
        await monitor.wait_state("disk", RECOVERING)
        assert monitor.statistics().gave_up == 1
        assert monitor.statistics().recoveries == 0
        await monitor.wait_state("disk", RESTORED)
        assert monitor.statistics().gave_up == 1
    assert any(
        r.levelno == logging.ERROR and "disk is unhealthy (a report-only probe" in r.getMessage()
        for r in caplog.records
    )


async def test_a_give_up_is_reported_to_the_failure_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = Script([False, False, False, False])
    async with one_node() as node:
        failures = await ta.start_failure_supervisor(node, handlers=[])
        monitor = await start_health(
            node, [dependency_probe("disk", db.check, interval=1.0)], failures=failures
        )
        await monitor.wait_state("disk", RECOVERING)
        await trio.sleep(0.1)
        [report] = [r for r in failures.reports() if isinstance(r, ta.HealthGaveUp)]
        assert report.target == "disk"
        assert report.recoveries == 0  # (a report-only probe)


async def test_a_hanging_check_is_unhealthy_after_its_timeout_and_delays_no_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steady = Script([])
    cancelled = trio.Event()

    async def hang() -> bool:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with one_node() as node:
        monitor = await start_health(
            node,
            [
                dependency_probe("nfs", hang, interval=1.0, timeout=10.0),
                dependency_probe("steady", steady.check, interval=1.0),
            ],
        )
        await monitor.wait_state("nfs", DETECTING)
        assert cancelled.is_set()
        assert trio.current_time() == 10.0
        assert monitor.history("nfs")[0].reason == "no answer within 10 s"
        # The other probe kept its schedule while nfs hung.
        assert steady.checks[:10] == [float(t) for t in range(10)]
        assert monitor.states()["steady"] is IDLE


async def test_a_check_that_raises_or_answers_nonsense_is_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def check() -> bool | float:
        nonlocal calls
        await trio.lowlevel.checkpoint()
        calls += 1
        if calls == 1:
            raise OSError("no route to host")
        return -1.0  # a latency probe's sample must be >= 0

    async with one_node() as node:
        monitor = await start_health(
            node, [dependency_probe("api", check, interval=1.0, latency_threshold=1.0)]
        )
        await monitor.wait_state("api", RECOVERING)
        reasons = [c.reason for c in monitor.history("api")]
        assert reasons[0] == "check raised OSError('no route to host')"
        assert reasons[1] == "check returned -1.0, not a response time in seconds"


# -- actors ---------------------------------------------------------------------------------


@attrs.frozen
class Ping(ta.Request[str]):
    pass


@attrs.frozen
class Hang:
    pass


class Worker(ta.Actor[Ping | Hang]):
    """Answers pings; a Hang makes it stop answering. Each answer takes ``slowdown`` longer."""

    def __init__(self, slowdown: float = 0.0) -> None:
        self.slowdown = slowdown
        self.delay = 0.0

    async def receive(self, message: Ping | Hang) -> object:
        match message:
            case Ping():
                await trio.sleep(self.delay)
                self.delay += self.slowdown
                return "pong"
            case Hang():
                await trio.sleep_forever()


async def test_an_actor_probe_restarts_a_stuck_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with one_node() as node:
        workers = await node.root.start_supervisor(name="workers")
        ref = await workers.start_actor(Worker, name="w1", shutdown=1.0)
        monitor = await start_health(
            node, [actor_probe(ref, Ping(), restart_in=workers, interval=1.0, timeout=0.5)]
        )
        await ref.ask(Ping())
        await ref.tell(Hang())
        await monitor.wait_state("w1", RECOVERING)
        await monitor.wait_state("w1", IDLE)
        assert workers.child("w1").restarts == 1
        assert await ref.ask(Ping()) == "pong"
        assert path(monitor, "w1") == [
            (IDLE, DETECTING),
            (DETECTING, RECOVERING),
            (RECOVERING, RESTORED),
            (RESTORED, IDLE),
        ]


async def test_a_latency_probe_flags_a_slow_worker_and_recovers_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with one_node() as node:
        workers = await node.root.start_supervisor(name="workers")
        ref = await workers.start_actor(Worker, 0.125, name="slow")
        probe = actor_probe(
            ref,
            Ping(),
            restart_in=workers,
            interval=1.0,
            timeout=2.0,
            latency_threshold=0.5,
            window=5,
        )
        monitor = await start_health(node, [probe])
        await monitor.wait_state("slow", DETECTING)
        # The answers took 0, 0.125, ... 0.875 s: the last five average 0.625 s
        # (the five before, exactly 0.5 s: not above the threshold).
        first = monitor.history("slow")[0]
        assert first.reason == "mean latency 0.625 s over the last 5 checks exceeds 0.5 s"
        assert workers.child("slow").restarts == 0  # it answered every time
        await monitor.wait_state("slow", RESTORED)
        assert workers.child("slow").restarts == 1
        await monitor.wait_state("slow", IDLE)
        assert monitor.statistics().unhealthy == 3


async def test_an_actor_probe_needs_the_actors_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with one_node() as node:
        workers = await node.root.start_supervisor(name="workers")
        ref = await node.root.start_actor(Worker, name="w1")
        with pytest.raises(ta.LocalProtocolError, match="workers has no child named 'w1'"):
            actor_probe(ref, Ping(), restart_in=workers)
        probe = actor_probe(ref, Ping(), name="ping-w1", latency_threshold=0.5)
        assert probe.recover is None
        assert probe.name == "ping-w1"
        assert await probe.check() == 0.0  # a latency probe's check: the round trip


# -- the monitor ------------------------------------------------------------------------------


async def test_probes_are_added_and_removed_at_run_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0
    hanging = trio.Event()
    cancelled = trio.Event()

    async def check() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.lowlevel.checkpoint()
            return False
        hanging.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with one_node() as node:
        monitor = await start_health(node)
        assert monitor.states() == {}
        probe = dependency_probe("cache", check, interval=1.0, timeout=100.0)
        monitor.add(probe)
        assert monitor.probes() == [probe]
        with pytest.raises(ValueError, match="already watches 'cache'"):
            monitor.add(probe)
        await monitor.wait_state("cache", DETECTING)
        await hanging.wait()

        async def wait_restored(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            with pytest.raises(LookupError, match="was removed"):
                await monitor.wait_state("cache", RESTORED)

        async with trio.open_nursery() as nursery:
            await nursery.start(wait_restored)
            monitor.remove("cache")
        await cancelled.wait()
        assert monitor.states() == {}
        assert calls == 2
        assert path(monitor, "cache") == [(IDLE, DETECTING)]  # the history stays
        with pytest.raises(LookupError):
            monitor.remove("cache")
        with pytest.raises(LookupError):
            await monitor.wait_state("cache", IDLE)
        # The name is free again; a new probe starts afresh.
        db = Script([False])
        monitor.add(dependency_probe("cache", db.check, interval=1.0))
        assert monitor.states() == {"cache": IDLE}
        await monitor.wait_state("cache", DETECTING)
        await monitor.wait_state("cache", IDLE)
        assert calls == 2


async def test_a_recovery_interrupted_by_a_restart_of_the_monitor_runs_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()
    attempts = 0

    async def recover() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            started.set()
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return True

    db = Script([False, False, False])
    async with one_node() as node:
        monitor = await start_health(
            node, [dependency_probe("database", db.check, recover=recover, interval=1.0)]
        )
        await started.wait()
        assert await node.root.restart_child("$health")
        await monitor.wait_state("database", RESTORED)
        assert attempts == 2
        assert monitor.statistics().recoveries == 2
        assert path(monitor, "database") == [
            (IDLE, DETECTING),
            (DETECTING, RECOVERING),
            (RECOVERING, RESTORED),
        ]


async def test_stopping_the_node_stops_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hanging = trio.Event()
    cancelled = trio.Event()
    late = Script([])

    async def hang() -> bool:
        hanging.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with one_node() as node:
        monitor = await start_health(node, [dependency_probe("nfs", hang, timeout=1000.0)])
        await hanging.wait()
    assert cancelled.is_set()
    monitor.add(dependency_probe("late", late.check))  # (recorded; nothing runs it)
    await trio.sleep(60)
    assert late.checks == []
    assert monitor.states() == {"nfs": IDLE, "late": IDLE}


async def test_bad_arguments(autojump_clock: trio.testing.MockClock) -> None:
    db = Script([])
    with pytest.raises(ValueError, match="interval must be"):
        dependency_probe("db", db.check, interval=0)
    with pytest.raises(ValueError, match="timeout must be"):
        Probe("db", db.check, timeout=-1.0)
    with pytest.raises(ValueError, match="latency_threshold must be"):
        Probe("db", db.check, latency_threshold=math.nan)
    with pytest.raises(ValueError, match="window must be"):
        Probe("db", db.check, window=0)
    with pytest.raises(ValueError, match="needs a name"):
        Probe("", db.check)
    async with one_node() as node:
        with pytest.raises(ValueError, match="already watches 'db'"):
            await start_health(node, [Probe("db", db.check), Probe("db", db.check)])
        with pytest.raises(ValueError, match="history_size"):
            await start_health(node, history_size=0)
        monitor = await start_health(node)
        with pytest.raises(ValueError, match="one or more states"):
            await monitor.wait_state("db")
        with pytest.raises(ta.NameTaken):
            await start_health(node)
