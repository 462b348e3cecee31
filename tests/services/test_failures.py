"""The failure supervisor (``$failures``) on the in-memory transport under MockClock."""

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
from trioactors._services._failures import (
    HANDLER_QUEUE_SIZE,
    AlertHook,
    CircuitClosed,
    CircuitOpened,
    DeadLetterList,
    FailureHandler,
    FailureInfo,
    FailureReport,
    FailureStatistics,
    FailureSupervisor,
    HealthGaveUp,
    JobGaveUp,
    ListDeadLetters,
    NodeDown,
    RestartStorm,
    RestartStormDetector,
    default_alert_key,
    describe_failure,
    log_failures,
    register_failure_messages,
    start_failure_supervisor,
)
from trioactors.testing import open_simulated_cluster
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def job(job_id: str = "j1", kind: str = "resize", attempts: int = 3) -> JobGaveUp:
    return JobGaveUp(
        job_id=job_id,
        kind=kind,
        attempts=attempts,
        error="JobFailed",
        message="no such image",
        worker="n1",
        submitter="n0",
        payload={"image": "cat.png", "sizes": [64, 128], "sharpen": None},
    )


REPORTS: list[FailureReport] = [
    job(),
    NodeDown("n2", "memory://n2", "dead"),
    RestartStorm("/root/crasher", 6, 10.0),
    CircuitOpened("n3", 5, 30.0),
    CircuitClosed("n3"),
    HealthGaveUp("database", 3, 300.0, "recover() took longer than 30 s"),
]


class Seen:
    """Handlers that write what they see to one channel, labelled."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[str, FailureReport]](math.inf)

    def handler(self, label: str = "seen") -> FailureHandler:
        def record(report: FailureReport) -> None:
            self.send.send_nowait((label, report))

        return record

    async def next(self, n: int = 1) -> list[tuple[str, FailureReport]]:
        return [await self.receive.receive() for _ in range(n)]

    async def reports(self, n: int = 1) -> list[FailureReport]:
        return [report for _, report in await self.next(n)]

    def nothing_more(self) -> bool:
        try:
            self.receive.receive_nowait()
        except trio.WouldBlock:
            return True
        return False


@asynccontextmanager
async def one_node(
    name: str = "n0", *, intensity: int = 1, period: float = 5.0
) -> AsyncIterator[ta.Node]:
    network = MemoryNetwork(seed=3)
    with trio.fail_after(120):
        async with (
            network.running(),
            ta.open_node(
                name,
                transport=network.transport(name),
                registry=ta.MessageRegistry(),
                intensity=intensity,
                period=period,
            ) as node,
        ):
            yield node


def test_messages_registered_and_queries_read_only() -> None:
    registry = ta.MessageRegistry()
    register_failure_messages(registry)
    register_failure_messages(registry)  # (twice is fine)
    for cls in (*map(type, REPORTS), ListDeadLetters, FailureInfo):
        assert registry.tag_of(cls) == f"$failures.{cls.__name__}"
    for cls in (DeadLetterList, FailureStatistics):
        assert registry.tag_of(cls) == f"$failures.{cls.__name__}"
    assert ta.is_read_only(ListDeadLetters)
    assert ta.is_read_only(FailureInfo)
    for report in REPORTS:
        assert not ta.is_read_only(type(report))


def test_describe_and_default_keys() -> None:
    lines = [describe_failure(r) for r in REPORTS]
    assert lines == [
        "job j1 (resize) from n0 gave up after 3 attempts (last on n1): JobFailed: no such image",
        "node n2 (memory://n2) is dead",
        "restart storm: /root/crasher restarted 6 times within 10 s",
        "circuit to node n3 opened after 5 failures; a trial job in 30 s",
        "circuit to node n3 closed",
        "gave up healing database after 3 recoveries within 300 s: recover() took longer than 30 s",
    ]
    assert [default_alert_key(r) for r in REPORTS] == [
        "JobGaveUp:resize",
        "NodeDown:n2",
        "RestartStorm:/root/crasher",
        "CircuitOpened:n3",
        "CircuitClosed:n3",
        "HealthGaveUp:database",
    ]


async def test_each_report_reaches_the_handlers_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()

    async def slow(report: FailureReport) -> None:
        await trio.sleep(1)  # an async handler: the next waits for it
        seen.send.send_nowait(("slow", report))

    async with one_node() as node:
        failures = await start_failure_supervisor(
            node, handlers=[seen.handler("first"), slow], restart_storm=None
        )
        assert failures.address == "$failures@n0"
        failures.add_handler(seen.handler("last"))
        start = trio.current_time()
        for report in REPORTS:
            failures.report(report)
        got = await seen.next(3 * len(REPORTS))
        assert got == [(label, report) for report in REPORTS for label in ("first", "slow", "last")]
        assert trio.current_time() - start == pytest.approx(len(REPORTS))
        assert failures.reports() == REPORTS
        assert failures.dead_letters() == [REPORTS[0]]
        assert failures.statistics() == FailureStatistics(
            received={type(r).__name__: 1 for r in REPORTS},
            handled=len(REPORTS),
            handler_errors=0,
            handler_timeouts=0,
            dropped=0,
            dead_letters=1,
            pending=0,
        )


async def test_a_raising_handler_is_counted_and_a_hanging_one_times_out(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()

    def broken(report: FailureReport) -> None:
        raise RuntimeError("the pager is down")

    async def hangs(report: FailureReport) -> None:
        await trio.sleep_forever()

    async with one_node() as node:
        failures = await start_failure_supervisor(
            node,
            handlers=[broken, hangs, seen.handler()],
            handler_timeout=2.0,
            restart_storm=None,
        )
        start = trio.current_time()
        failures.report(REPORTS[1])
        failures.report(REPORTS[3])
        assert await seen.reports(2) == [REPORTS[1], REPORTS[3]]
        assert trio.current_time() - start == pytest.approx(4.0)  # two timeouts of 2 s
        stats = failures.statistics()
        assert (stats.handler_errors, stats.handler_timeouts, stats.handled) == (2, 2, 2)
    raised = [r for r in caplog.records if "raised on" in r.getMessage()]
    assert len(raised) == 2
    assert raised[0].name == "trioactors.failures"
    assert raised[0].exc_info is not None
    assert "broken" in raised[0].getMessage()
    assert sum("took longer than 2 s" in r.getMessage() for r in caplog.records) == 2


async def test_the_dead_letter_log_is_bounded_and_filterable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()
    jobs = [job(f"j{i}", "resize" if i % 2 else "thumbnail") for i in range(5)]
    async with one_node() as node:
        failures = await start_failure_supervisor(
            node, handlers=[seen.handler()], capacity=3, restart_storm=None
        )
        for j in jobs:
            failures.report(j)
        failures.report(REPORTS[1])
        await seen.next(6)
        assert failures.dead_letters() == jobs[2:]  # the newest three, oldest first
        assert failures.dead_letters("resize") == [jobs[3]]
        assert failures.dead_letters("thumbnail") == [jobs[2], jobs[4]]
        assert failures.dead_letters("nothing") == []
        assert failures.reports() == [jobs[3], jobs[4], REPORTS[1]]
        stats = failures.statistics()
        assert (stats.received["JobGaveUp"], stats.dead_letters) == (5, 3)

        # the queries, asked locally
        ref = node.ref("$failures@n0")
        assert list(await ref.ask(ListDeadLetters())) == jobs[2:]
        assert list(await ref.ask(ListDeadLetters(limit=2))) == jobs[3:]
        assert list(await ref.ask(ListDeadLetters("thumbnail", limit=1))) == [jobs[4]]
        assert list(await ref.ask(ListDeadLetters(limit=0))) == []
        assert await ref.ask(FailureInfo()) == failures.statistics()


async def test_alert_hook_cooldown_per_key(autojump_clock: trio.testing.MockClock) -> None:
    alerts: list[FailureReport] = []
    hook = AlertHook(
        alerts.append, predicate=lambda r: not isinstance(r, CircuitClosed), cooldown=60.0
    )
    n1, n2 = NodeDown("n1", "memory://n1", "dead"), NodeDown("n2", "memory://n2", "dead")
    hook(n1)
    hook(n1)
    hook(n2)  # another key: alerts at once
    hook(CircuitClosed("n1"))  # not wanted: neither alerted nor suppressed
    await trio.sleep(59)
    hook(n1)
    assert alerts == [n1, n2]
    await trio.sleep(1)
    hook(n1)
    assert alerts == [n1, n2, n1]
    assert (hook.alerts, hook.suppressed) == (3, 2)

    # one key for everything: one page per cooldown whatever fails
    everything = AlertHook(alerts.append, cooldown=10.0, key=lambda r: "all")
    alerts.clear()
    for report in REPORTS:
        everything(report)
    assert alerts == [REPORTS[0]]


async def test_an_async_alert_hook_in_the_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    paged: list[FailureReport] = []
    seen = Seen()

    async def page(report: FailureReport) -> None:
        await trio.sleep(0.5)
        paged.append(report)

    async with one_node() as node:
        hook = AlertHook(page, predicate=lambda r: isinstance(r, NodeDown), cooldown=60.0)
        failures = await start_failure_supervisor(
            node, handlers=[hook, seen.handler()], restart_storm=None
        )
        for _ in range(3):
            failures.report(NodeDown("n1", "memory://n1", "dead"))
        failures.report(REPORTS[0])
        await seen.next(4)
        assert paged == [NodeDown("n1", "memory://n1", "dead", at=paged[0].at)]
        assert (hook.alerts, hook.suppressed) == (1, 2)


async def test_log_failures_by_default_and_only_then(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioactors.failures")
    async with one_node() as node:
        failures = await start_failure_supervisor(node, restart_storm=None)
        for report in REPORTS:
            failures.report(report)
        while failures.statistics().handled < len(REPORTS):
            await trio.sleep(0.1)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "trioactors.failures"]
    assert lines == [(logging.WARNING, describe_failure(r)) for r in REPORTS]

    caplog.clear()
    async with one_node() as node:
        failures = await start_failure_supervisor(node, handlers=[], restart_storm=None)
        failures.report(REPORTS[0])
        while failures.statistics().handled < 1:
            await trio.sleep(0.1)
    assert not [r for r in caplog.records if r.name == "trioactors.failures"]

    quiet = log_failures(logging.INFO)
    quiet(REPORTS[1])
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "node n2 (memory://n2) is dead")
    ]


async def test_node_down_from_a_simulated_cluster(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    with trio.fail_after(300):
        async with open_simulated_cluster(3, seed=4) as cluster:
            await cluster.wait_until(lambda m: len(m.alive()) == 3)
            failures = await start_failure_supervisor(
                cluster.nodes["n0"],
                handlers=[seen.handler()],
                membership=cluster.members["n0"],
                restart_storm=None,
            )
            cluster.crash("n2")
            [down] = await seen.reports()
            assert down == NodeDown("n2", "memory://n2", "dead", at=down.at)
            await cluster.members["n1"].leave()
            [left] = await seen.reports()
            assert left == NodeDown("n1", "memory://n1", "left", at=left.at)
            await trio.sleep(60)  # (more gossip: no news, no reports)
            assert seen.nothing_more()
            assert failures.statistics().received["NodeDown"] == 2


class Crasher(ta.Actor[str]):
    async def receive(self, message: str) -> object:
        raise RuntimeError(message)


async def test_restart_storm_from_a_crashing_actor(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    async with one_node(intensity=100, period=60.0) as node:
        failures = await start_failure_supervisor(
            node, handlers=[seen.handler()], restart_storm=(3, 10.0)
        )
        crasher = await node.root.start_actor(Crasher, name="crasher")

        async def crash(times: int) -> None:
            with node.system.subscribe() as events:
                for _ in range(times):
                    crasher.tell_nowait("boom")
                    await events.wait_for(ta.ChildRestarted, path="/root/crasher")

        await crash(3)  # three restarts: not more than 3
        await trio.sleep(1)
        assert seen.nothing_more()
        await crash(1)
        [storm] = await seen.reports()
        assert storm == RestartStorm("/root/crasher", 4, 10.0, at=storm.at)

        await crash(5)  # the same storm goes on: no new report
        await trio.sleep(9)
        await crash(1)  # (still within 10 s of the last restart of the storm)
        await trio.sleep(10.5)  # a window without a storm
        await crash(3)
        await trio.sleep(1)
        assert seen.nothing_more()
        await crash(1)
        [again] = await seen.reports()
        assert again == RestartStorm("/root/crasher", 4, 10.0, at=again.at)
        assert failures.statistics().received["RestartStorm"] == 2


async def test_a_supervisor_giving_up_is_a_restart_storm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()
    async with one_node(intensity=100, period=60.0) as node:
        await start_failure_supervisor(node, handlers=[seen.handler()])
        inner = await node.root.start_supervisor(name="inner", intensity=2, period=7.0)
        kid = await inner.start_actor(Crasher, name="kid")
        with node.system.subscribe() as events:
            for _ in range(3):
                kid.tell_nowait("boom")
                await events.wait_for(ta.ChildCrashed, path="/root/inner/kid")
            await events.wait_for(ta.ChildRestarted, path="/root/inner")
        [storm] = await seen.reports()
        assert storm == RestartStorm("/root/inner", 3, 7.0, at=storm.at)


def test_restart_storm_detector() -> None:
    d = RestartStormDetector(2, 10.0)
    assert [d.on_restart("/a", now=t) for t in (0.0, 1.0)] == [None, None]
    assert d.on_restart("/b", now=1.5) is None
    assert d.on_restart("/a", now=2.0) == 3
    assert d.on_restart("/a", now=3.0) is None  # the same storm
    assert d.on_restart("/a", now=12.5) is None  # below the limit: quiet since 3.0
    assert d.on_restart("/a", now=13.1) is None  # (3.0 fell out of the window)
    assert [d.on_restart("/a", now=t) for t in (13.2, 13.3)] == [3, None]  # a new storm
    assert d.on_restart("/a", now=50.0) is None  # old restarts fall out of the window
    assert d.on_gave_up("/s", now=0.0)
    assert not d.on_gave_up("/s", now=9.0)
    assert d.on_gave_up("/s", now=19.0)
    d.forget("/a")
    assert [d.on_restart("/a", now=t) for t in (51.0, 51.0, 51.0)] == [None, None, 3]
    with pytest.raises(ValueError, match="window"):
        RestartStormDetector(2, 0.0)
    with pytest.raises(ValueError, match="restarts"):
        RestartStormDetector(-1, 1.0)


async def test_a_report_told_across_nodes_arrives_typed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()
    network = MemoryNetwork(seed=9)
    with trio.fail_after(60):
        async with (
            network.running(),
            ta.open_node(
                "node-a", transport=network.transport("node-a"), registry=ta.MessageRegistry()
            ) as a,
            ta.open_node(
                "node-b", transport=network.transport("node-b"), registry=ta.MessageRegistry()
            ) as b,
        ):
            failures = await start_failure_supervisor(a, handlers=[seen.handler()])
            register_failure_messages(b.codec.registry)
            b.add_peer("node-a", "memory://node-a")
            remote = b.ref(failures.address)

            sent = job()
            await remote.tell(sent)
            [got] = await seen.reports()
            assert type(got) is JobGaveUp
            assert got == sent  # payload (plain data) and time included

            for report in REPORTS[1:]:
                await remote.tell(report)
            assert await seen.reports(len(REPORTS) - 1) == REPORTS[1:]

            letters = await remote.ask(ListDeadLetters())
            assert isinstance(letters, DeadLetterList)
            assert list(letters) == [sent]
            assert (len(letters), letters[0].payload) == (1, sent.payload)
            assert list(await remote.ask(ListDeadLetters(kind="other"))) == []
            info = await remote.ask(FailureInfo())
            assert isinstance(info, FailureStatistics)
            assert info == failures.statistics()
            assert info.received == dict.fromkeys(info.received, 1)

            bad = ta.RawMessage("$failures.JobGaveUp", {**attrs.asdict(sent), "attempts": "3"})
            with pytest.raises(ta.InvalidPayload, match="attempts"):
                await remote.ask(bad)
            extra = ta.RawMessage("$failures.NodeDown", {"node": "x", "address": "y"})
            with pytest.raises(ta.InvalidPayload):
                await remote.ask(extra)
            assert failures.statistics().received["JobGaveUp"] == 1


async def test_report_never_blocks_or_raises_when_the_mailbox_is_full(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    async with one_node() as node:
        failures = await start_failure_supervisor(
            node, handlers=[seen.handler()], restart_storm=None, capacity=2000
        )
        mailbox = node.system.mailbox_size  # (1000)
        for i in range(int(mailbox) + 500):  # no checkpoint: the actor cannot run
            failures.report(NodeDown(f"n{i}", "memory://x", "dead"))
        assert failures.statistics().dropped == 500
        dropped = [r for r in caplog.records if "dropped a report" in r.getMessage()]
        assert len(dropped) == 1  # the first of the run; the rest are counted
        await seen.next(int(mailbox))
        failures.report(REPORTS[0])  # gets through: the run's length is logged
        await seen.next()
        assert any("dropped 500 reports in a row" in r.getMessage() for r in caplog.records)
        stats = failures.statistics()
        assert (stats.received["NodeDown"], stats.handled, stats.dropped) == (1000, 1001, 500)

        with pytest.raises(TypeError, match="not a failure report"):
            failures.report("boom")  # type: ignore[arg-type]


async def test_slow_handlers_fall_behind_and_reports_stay_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, release = trio.Event(), trio.Event()
    seen = Seen()

    async def stuck(report: FailureReport) -> None:
        entered.set()
        await release.wait()

    async with one_node() as node:
        failures = await start_failure_supervisor(
            node, handlers=[stuck, seen.handler()], handler_timeout=math.inf, restart_storm=None
        )
        first = job("first")
        failures.report(first)
        await entered.wait()
        jobs = [job(f"j{i}") for i in range(HANDLER_QUEUE_SIZE + 5)]
        recorded = 1
        for batch in (jobs[:HANDLER_QUEUE_SIZE], jobs[HANDLER_QUEUE_SIZE:]):
            for j in batch:  # (no more at once than the mailbox holds)
                failures.report(j)
            recorded += len(batch)
            while failures.statistics().received["JobGaveUp"] < recorded:
                await trio.sleep(0.1)
        # one being handled, the queue full, five dropped for the handlers but recorded
        stats = failures.statistics()
        assert (stats.pending, stats.dropped, stats.dead_letters) == (HANDLER_QUEUE_SIZE, 5, 1000)
        assert failures.dead_letters()[-5:] == jobs[-5:]
        release.set()
        handled = await seen.reports(1 + HANDLER_QUEUE_SIZE)
        assert handled == [first, *jobs[:HANDLER_QUEUE_SIZE]]


async def test_the_state_survives_a_restart_of_the_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()
    async with one_node() as node:
        failures = await start_failure_supervisor(node, handlers=[seen.handler()])
        failures.report(REPORTS[0])
        await seen.next()
        assert await node.root.restart_child("$failures")
        failures.report(REPORTS[1])
        assert await seen.reports() == [REPORTS[1]]
        assert failures.dead_letters() == [REPORTS[0]]
        assert failures.statistics().handled == 2


async def test_bad_arguments(autojump_clock: trio.testing.MockClock) -> None:
    async with one_node() as node:
        with pytest.raises(ValueError, match="capacity"):
            await start_failure_supervisor(node, capacity=0)
        with pytest.raises(ValueError, match="handler_timeout"):
            await start_failure_supervisor(node, handler_timeout=0)
        with pytest.raises(ValueError, match="window"):
            await start_failure_supervisor(node, restart_storm=(3, -1.0))
        failures = await start_failure_supervisor(node)
        assert isinstance(failures, FailureSupervisor)
        with pytest.raises(ta.NameTaken):
            await start_failure_supervisor(node)
    with pytest.raises(ValueError, match="cooldown"):
        AlertHook(print, cooldown=-1)
