"""Supervisors: strategies, restart types, intensity, escalation, shutdown."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta


@attrs.frozen
class Crash:
    pass


@attrs.frozen
class Exit:
    pass


@attrs.frozen
class Ping(ta.Request[str]):
    pass


class Worker(ta.Actor[Crash | Exit | Ping]):
    """Records its starts and stops in a shared journal."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    async def on_start(self) -> None:
        self.journal.append(f"start {self.context.name}")

    async def on_stop(self) -> None:
        self.journal.append(f"stop {self.context.name}")

    async def receive(self, message: Crash | Exit | Ping) -> object:
        match message:
            case Crash():
                raise RuntimeError(f"{self.context.name} crashed")
            case Exit():
                self.context.stop()
            case Ping():
                return "pong"
        return None


async def start_three(
    sup: ta.Supervisor, journal: list[str], restart: ta.Restart = ta.PERMANENT
) -> list[ta.ActorRef[Crash | Exit | Ping]]:
    return [await sup.start_actor(Worker, journal, name=n, restart=restart) for n in "abc"]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (ta.ONE_FOR_ONE, ["stop b", "start b"]),
        (ta.ONE_FOR_ALL, ["stop b", "stop c", "stop a", "start a", "start b", "start c"]),
        (ta.REST_FOR_ONE, ["stop b", "stop c", "start b", "start c"]),
    ],
)
async def test_strategies_restart_the_right_children(
    strategy: ta.Strategy, expected: list[str]
) -> None:
    journal: list[str] = []
    async with ta.open_supervisor(strategy=strategy) as sup:
        a, b, _c = await start_three(sup, journal)
        journal.clear()
        with sup.system.subscribe() as events:
            await b.tell(Crash())
            await events.wait_for(ta.ChildRestarted, path="/root/b")
        assert await a.ask(Ping()) == "pong"
        # the crashed child's on_stop runs first (it crashed), then siblings stop in
        # reverse start order, then everyone affected starts in start order
        assert journal == expected
        restarted = {c.name: c.restarts for c in sup.children()}
        assert restarted["b"] == 1
        assert all(c.state is ta.ChildState.RUNNING for c in sup.children())


async def test_permanent_child_is_restarted_after_a_normal_exit() -> None:
    journal: list[str] = []
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        ref = await sup.start_actor(Worker, journal, name="w")
        await ref.tell(Exit())
        await events.wait_for(ta.ChildRestarted, path="/root/w")
        assert journal == ["start w", "stop w", "start w"]


async def test_transient_child_stays_stopped_after_a_normal_exit() -> None:
    journal: list[str] = []
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        ref = await sup.start_actor(Worker, journal, name="w", restart=ta.TRANSIENT)
        await ref.tell(Crash())
        await events.wait_for(ta.ChildRestarted, path="/root/w")
        await ref.tell(Exit())
        stopped = await events.wait_for(ta.ChildStopped, path="/root/w")
        assert stopped.reason == "normal"
        assert sup.child("w").state is ta.ChildState.STOPPED
        assert sup.child("w").restarts == 1
        await ref.tell(Ping())
        assert (await events.wait_for(ta.DeadLetter)).recipient == "/root/w"


async def test_temporary_child_is_removed_when_it_exits() -> None:
    journal: list[str] = []
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        ref = await sup.start_actor(Worker, journal, name="w", restart=ta.TEMPORARY)
        await ref.tell(Crash())
        await events.wait_for(ta.ChildStopped, lambda e: e.reason == "removed", path="/root/w")
        assert sup.children() == []
        assert ref.stopped
        assert sup.system.whereis("w") is None


async def test_temporary_sibling_is_removed_by_a_one_for_all_restart() -> None:
    journal: list[str] = []
    async with ta.open_supervisor(strategy=ta.ONE_FOR_ALL) as sup:
        a = await sup.start_actor(Worker, journal, name="a")
        await sup.start_actor(Worker, journal, name="t", restart=ta.TEMPORARY)
        with sup.system.subscribe() as events:
            await a.tell(Crash())
            await events.wait_for(ta.ChildRestarted, path="/root/a")
        assert [c.name for c in sup.children()] == ["a"]


async def test_intensity_exceeded_escalates_to_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal: list[str] = []
    with pytest.raises(ta.SupervisorGaveUp, match=r"2 restarts within 5\.0 s") as info:
        async with ta.open_supervisor() as sup:  # OTP default: 1 restart in 5 s
            a, b, _ = await start_three(sup, journal)
            await a.tell(Crash())
            await trio.sleep(4.9)
            await b.tell(Crash())
            await trio.sleep_forever()  # the give-up cancels the body
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.path == "/root"
    # b's crash was the second restart in 5 s: the supervisor stopped the running
    # children in reverse start order and gave up
    assert journal == [
        *("start a", "start b", "start c"),
        *("stop a", "start a"),  # first crash: restarted
        *("stop b", "stop c", "stop a"),  # second crash: give up
    ]


async def test_restarts_outside_the_period_do_not_add_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal: list[str] = []
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        ref = await sup.start_actor(Worker, journal, name="w")
        for i in range(5):
            await ref.tell(Crash())
            await events.wait_for(ta.ChildRestarted, lambda e, i=i: e.restarts == i + 1)
            await trio.sleep(5.01)
        assert sup.child("w").restarts == 5


async def test_nested_supervisor_gives_up_and_its_parent_restarts_it() -> None:
    journal: list[str] = []
    async with ta.open_supervisor(intensity=3) as root, root.system.subscribe() as events:
        inner = await root.start_supervisor(name="inner", intensity=0)
        ref = await inner.start_actor(Worker, journal, name="w")
        await inner.start_actor(Worker, journal, name="v")
        journal.clear()
        await ref.tell(Crash())
        escalated = await events.wait_for(ta.SupervisorEscalated)
        assert escalated.path == "/root/inner"
        crashed = await events.wait_for(ta.ChildCrashed, path="/root/inner")
        assert isinstance(crashed.exception, ta.SupervisorGaveUp)
        await events.wait_for(ta.ChildRestarted, path="/root/inner")
        # the restarted supervisor started its children again, in order, and the
        # references handed out before still work
        assert await ref.ask(Ping()) == "pong"
        assert journal == ["stop w", "stop v", "start w", "start v"]
        assert root.child("inner").restarts == 1
        assert [(c.name, c.restarts) for c in inner.children()] == [("w", 1), ("v", 1)]


async def test_escalation_reaches_the_root() -> None:
    journal: list[str] = []
    with pytest.raises(ta.SupervisorGaveUp) as info:
        async with ta.open_supervisor(intensity=0) as root:
            inner = await root.start_supervisor(name="inner", intensity=0)
            ref = await inner.start_actor(Worker, journal, name="w")
            await ref.tell(Crash())
            await trio.sleep_forever()
    assert info.value.path == "/root"
    assert isinstance(info.value.__cause__, ta.SupervisorGaveUp)
    assert info.value.__cause__.path == "/root/inner"


async def test_shutdown_timeout_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    cancelled: list[str] = []

    class Stubborn(ta.Actor[str]):
        async def on_stop(self) -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(self.context.name)
                raise

    async with ta.open_supervisor() as sup:
        await sup.start_actor(Stubborn, name="slow", shutdown=3)
        await sup.start_actor(Stubborn, name="brutal", shutdown=0)
        start = trio.current_time()
    assert cancelled == ["brutal", "slow"]
    assert trio.current_time() - start == pytest.approx(3)


async def test_default_worker_shutdown_is_five_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stubborn(ta.Actor[str]):
        async def on_stop(self) -> None:
            await trio.sleep_forever()

    async with ta.open_supervisor() as sup:
        await sup.start_actor(Stubborn)
        start = trio.current_time()
    assert trio.current_time() - start == pytest.approx(ta.DEFAULT_SHUTDOWN) == 5


async def test_children_stop_in_reverse_start_order_through_the_tree() -> None:
    journal: list[str] = []
    async with ta.open_supervisor() as root:
        await root.start_actor(Worker, journal, name="a")
        inner = await root.start_supervisor(name="inner")
        await inner.start_actor(Worker, journal, name="b")
        await inner.start_actor(Worker, journal, name="c")
        await root.start_actor(Worker, journal, name="d")
        journal.clear()
    assert journal == ["stop d", "stop c", "stop b", "stop a"]


async def test_strict_lifetime_nothing_outlives_the_block() -> None:
    alive: set[str] = set()

    class Spawner(ta.Actor[str]):
        async def on_start(self) -> None:
            self.context.start_soon(self.background)
            await self.context.start_actor(Leaf, name=f"{self.context.name}-leaf")

        async def background(self) -> None:
            alive.add(self.context.name)
            try:
                await trio.sleep_forever()
            finally:
                alive.discard(self.context.name)

    class Leaf(ta.Actor[str]):
        async def on_start(self) -> None:
            alive.add(self.context.name)

        async def on_stop(self) -> None:
            alive.discard(self.context.name)

    async with ta.open_supervisor() as root:
        inner = await root.start_supervisor(name="inner", strategy=ta.ONE_FOR_ALL)
        for i in range(3):
            await inner.start_actor(Spawner, name=f"s{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert len(alive) == 6
        outer_task = trio.lowlevel.current_task()
    assert alive == set()
    assert root.system.names() == []
    # only the test's own nurseries remain: no task of the tree survived
    assert all(not n.child_tasks for n in outer_task.child_nurseries)


async def test_body_error_stops_children_gracefully_and_propagates() -> None:
    journal: list[str] = []
    with pytest.raises(KeyError):
        async with ta.open_supervisor() as sup:
            await start_three(sup, journal)
            raise KeyError("user bug")
    assert journal[-3:] == ["stop c", "stop b", "stop a"]


async def test_outer_cancellation_cancels_the_tree() -> None:
    journal: list[str] = []
    with trio.CancelScope() as scope:
        async with ta.open_supervisor() as sup:
            await start_three(sup, journal)
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert journal == ["start a", "start b", "start c"]  # cancelled: no on_stop


async def test_restart_backoff_delays_restarts(autojump_clock: trio.testing.MockClock) -> None:
    journal: list[str] = []
    backoff = ta.Backoff(initial=1.0, factor=2.0, maximum=3.0)
    async with ta.open_supervisor(intensity=10, period=100, backoff=backoff) as sup:
        ref = await sup.start_actor(Worker, journal, name="w")
        delays = []
        with sup.system.subscribe() as events:
            for _ in range(4):
                crashed_at = trio.current_time()
                await ref.tell(Crash())
                restarted = await events.wait_for(ta.ChildRestarted)
                delays.append(restarted.time - crashed_at)
        assert delays == pytest.approx([1.0, 2.0, 3.0, 3.0])


async def test_introspection() -> None:
    journal: list[str] = []
    async with ta.open_supervisor() as sup:
        a, _, _ = await start_three(sup, journal)
        infos = sup.children()
        assert [(i.name, i.kind, i.state, i.restarts) for i in infos] == [
            (n, "actor", ta.ChildState.RUNNING, 0) for n in "abc"
        ]
        assert infos[0].ref is a
        inner = await sup.start_supervisor(name="inner", strategy=ta.REST_FOR_ONE)
        await inner.start_actor(Worker, journal, name="d")
        dump = sup.system.dump_tree()
        assert "/root [one_for_one, intensity 1/5.0s]" in dump
        assert "/root/inner [rest_for_one" in dump
        assert "d (actor) running, restarts=0, mailbox=0" in dump
        stats = sup.system.statistics()
        assert (stats.actors, stats.crashes, stats.restarts) == (4, 0, 0)


async def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="intensity must be >= 0"):
        async with ta.open_supervisor(intensity=-1):
            pass
    with pytest.raises(ValueError, match="period must be > 0"):
        async with ta.open_supervisor(period=0):
            pass
    async with ta.open_supervisor() as sup:
        with pytest.raises(ValueError, match="mailbox capacity"):
            await sup.start_actor(Worker, [], mailbox_size=0)
        await sup.start_actor(Worker, [], mailbox_size=math.inf)


async def test_supervisor_is_unusable_after_its_block() -> None:
    async with ta.open_supervisor() as sup:
        pass
    with pytest.raises(ta.LocalProtocolError, match="not running"):
        await sup.start_actor(Worker, [])


async def test_restart_child_stops_and_starts_it_in_place() -> None:
    journal: list[str] = []
    with trio.fail_after(10):
        async with ta.open_supervisor(strategy=ta.ONE_FOR_ALL, intensity=0) as sup:
            refs = await start_three(sup, journal)
            journal.clear()
            # an operator's restart: only that child, whatever the strategy, and
            # it does not count against the intensity (0 here)
            assert await sup.restart_child("b") is True
            assert journal == ["stop b", "start b"]
            assert await refs[1].ask(Ping()) == "pong"  # the same reference
            assert [c.restarts for c in sup.children()] == [0, 1, 0]
            assert await sup.restart_child("nobody") is False
            await sup.stop_child("c")  # removed: nothing to restart
            assert await sup.restart_child("c") is False
