"""Actors: tell, ask, mailboxes, names, dead letters, lifecycle hooks."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta


@attrs.frozen
class Inc:
    n: int = 1


@attrs.frozen
class Get(ta.Request[int]):
    pass


@attrs.frozen
class Crash:
    reason: str = "boom"


@attrs.frozen
class Sleep:
    seconds: float


class Counter(ta.Actor[Inc | Get | Crash | Sleep]):
    def __init__(self) -> None:
        self.n = 0

    async def receive(self, message: Inc | Get | Crash | Sleep) -> object:
        match message:
            case Inc(n):
                self.n += n
            case Get():
                return self.n
            case Crash(reason):
                raise ValueError(reason)
            case Sleep(seconds):
                await trio.sleep(seconds)
            case _:
                return await super().receive(message)
        return None


async def test_tell_then_ask_sees_every_message() -> None:
    async with ta.open_supervisor() as sup:
        counter = await sup.start_actor(Counter, name="counter")
        for _ in range(250):
            await counter.tell(Inc())
        n: int = await counter.ask(Get())
        assert n == 250


async def test_messages_are_handled_in_order() -> None:
    seen: list[int] = []

    class Recorder(ta.Actor[int]):
        async def receive(self, message: int) -> object:
            seen.append(message)
            return len(seen)

    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Recorder)
        for i in range(2000):
            await ref.tell(i)
        assert await ref.ask(-1) == 2001
    assert seen == [*range(2000), -1]


async def test_ask_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with ta.open_supervisor() as sup:
        counter = await sup.start_actor(Counter)
        await counter.tell(Sleep(3600))
        start = trio.current_time()
        with pytest.raises(ta.AskTimeout, match="within 2"):
            await counter.ask(Get(), timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        # the request is still handled later; its reply is discarded
        assert await counter.ask(Get(), timeout=None) == 0


async def test_ask_observer_sees_every_ask(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[float, bool]] = []
    async with ta.open_supervisor() as sup:
        sup.system.ask_observer = lambda seconds, ok: seen.append((seconds, ok))
        counter = await sup.start_actor(Counter)
        assert await counter.ask(Get()) == 0
        await counter.tell(Sleep(3))
        assert await counter.ask(Get()) == 0
        with pytest.raises(ta.AskTimeout):
            await counter.ask(Sleep(10), timeout=1)
        sup.system.ask_observer = None
        await counter.ask(Get(), timeout=None)
    assert [ok for _, ok in seen] == [True, True, False]
    assert [round(t, 3) for t, _ in seen] == [0.0, 3.0, 1.0]


async def test_a_shorter_deadline_fires_before_a_longer_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ta.open_supervisor() as sup:
        slow = await sup.start_actor(Counter, name="slow")
        other = await sup.start_actor(Counter, name="other")
        await slow.tell(Sleep(3600))
        await other.tell(Sleep(3600))
        outcomes: list[tuple[str, float]] = []

        async def ask(ref: ta.ActorRef[Get], timeout: float) -> None:
            start = trio.current_time()
            with pytest.raises(ta.AskTimeout):
                await ref.ask(Get(), timeout=timeout)
            outcomes.append((ref.name, trio.current_time() - start))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, slow, 100)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, other, 1.5)
        assert outcomes == [("other", pytest.approx(1.5)), ("slow", pytest.approx(100))]


async def test_many_distinct_timeouts_all_fire(autojump_clock: trio.testing.MockClock) -> None:
    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Counter)
        await ref.tell(Sleep(3600))
        fired: list[float] = []

        async def ask(timeout: float) -> None:
            start = trio.current_time()
            with pytest.raises(ta.AskTimeout):
                await ref.ask(Get(), timeout=timeout)
            fired.append(round(trio.current_time() - start, 6))

        async with trio.open_nursery() as nursery:
            for i in range(40):  # more distinct values than the timer serves
                nursery.start_soon(ask, 1 + i / 10)
        assert sorted(fired) == [round(1 + i / 10, 6) for i in range(40)]


async def test_an_outer_cancel_scope_bounds_an_ask(autojump_clock: trio.testing.MockClock) -> None:
    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Counter)
        await ref.tell(Sleep(10))
        with trio.move_on_after(1) as scope:
            await ref.ask(Get(), timeout=100)
        assert scope.cancelled_caught
        assert await ref.ask(Get(), timeout=100) == 0  # the abandoned reply was dropped


async def test_an_ask_whose_handler_is_cancelled_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Counter, name="c", shutdown=0)
        async with trio.open_nursery() as nursery:

            async def asker() -> None:
                with pytest.raises(ta.ActorStopped, match="cancelled while handling"):
                    await ref.ask(Sleep(3600), timeout=None)

            nursery.start_soon(asker)
            await trio.testing.wait_all_tasks_blocked()
            await sup.stop_child("c")


async def test_ask_timeout_covers_waiting_for_mailbox_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ta.open_supervisor() as sup:
        counter = await sup.start_actor(Counter, mailbox_size=1)
        await counter.tell(Sleep(3600))  # being handled
        await counter.tell(Inc())  # fills the mailbox
        with pytest.raises(ta.AskTimeout):
            await counter.ask(Get(), timeout=1)


async def test_tell_waits_when_the_mailbox_is_full(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    class Blocked(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            if message == "block":
                await release.wait()
            return message

    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Blocked, mailbox_size=2)
        await ref.tell("block")
        await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait("a")
        ref.tell_nowait("b")
        assert ref.mailbox_length() == 2
        with pytest.raises(trio.WouldBlock):
            ref.tell_nowait("c")
        with trio.move_on_after(10) as scope:
            await ref.tell("c")
        assert scope.cancelled_caught, "tell must wait while the mailbox is full"
        release.set()
        await ref.tell("c")  # room again once the actor drains
        assert await ref.ask("done") == "done"


async def test_tell_on_a_full_mailbox_is_still_a_cancellation_point() -> None:
    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Counter)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.tell(Inc())
        assert scope.cancelled_caught
        assert await ref.ask(Get()) == 0


async def test_handler_return_value_is_the_reply_and_errors_reach_the_asker() -> None:
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        counter = await sup.start_actor(Counter, name="c")
        with pytest.raises(ta.ActorCrashed) as info:
            await counter.ask(Crash("bad input"))
        assert isinstance(info.value.exception, ValueError)
        assert info.value.__cause__ is None or isinstance(info.value.__cause__, ValueError)
        crashed = await events.wait_for(ta.ChildCrashed, path="/root/c")
        assert crashed.message == Crash("bad input")
        assert isinstance(crashed.exception, ValueError)


async def test_queued_messages_survive_a_restart() -> None:
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        counter = await sup.start_actor(Counter, name="c")
        await counter.tell(Inc(100))
        await counter.tell(Crash())
        for _ in range(5):
            await counter.tell(Inc())
        await events.wait_for(ta.ChildRestarted, path="/root/c")
        # the crash lost the old instance's state; the queued Incs reached the new one
        assert await counter.ask(Get()) == 5
        assert sup.child("c").restarts == 1


async def test_unhandled_message_fails_the_ask_and_dead_letters_the_tell() -> None:
    async with ta.open_supervisor() as sup:
        counter = await sup.start_actor(Counter, name="c")
        with pytest.raises(ta.UnhandledMessage, match="str is not handled by /root/c"):
            await counter.ask("what?")  # type: ignore[arg-type]
        await counter.tell("what?")  # type: ignore[arg-type]
        assert await counter.ask(Get()) == 0  # not a crash
        assert sup.child("c").restarts == 0
        [dead] = sup.system.dead_letters
        assert (dead.recipient, dead.message, dead.reason) == ("/root/c", "what?", "unhandled")


async def test_dead_letters_for_stopped_actors() -> None:
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        counter = await sup.start_actor(Counter, name="c")
        await sup.stop_child("c")
        assert counter.stopped
        await counter.tell(Inc(7))
        dead = await events.wait_for(ta.DeadLetter)
        assert (dead.recipient, dead.message, dead.reason) == ("/root/c", Inc(7), "stopped")
        with pytest.raises(ta.ActorStopped):
            await counter.ask(Get())
        assert sup.system.statistics().dead_letters == 2
        with pytest.raises(ta.ActorNotFound):
            sup.system.lookup("c")


async def test_messages_left_at_shutdown_become_dead_letters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    system = ta.ActorSystem()
    async with ta.open_supervisor(system=system) as sup:
        counter = await sup.start_actor(Counter, name="c", shutdown=1)
        await counter.tell(Sleep(3600))
        await trio.testing.wait_all_tasks_blocked()  # now handling Sleep
        await counter.tell(Inc(1))
        await counter.tell(Inc(2))
    assert [d.message for d in system.dead_letters] == [Inc(1), Inc(2)]
    assert {d.reason for d in system.dead_letters} == {"stopped"}


async def test_names_are_registered_and_unique() -> None:
    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Counter, name="counter")
        assert sup.system.lookup("counter") is ref
        assert sup.system.whereis("nobody") is None
        with pytest.raises(ta.NameTaken, match="already has a child named 'counter'"):
            await sup.start_actor(Counter, name="counter")
        nested = await sup.start_supervisor(name="nested")
        with pytest.raises(ta.NameTaken, match="already taken by /root/counter"):
            await nested.start_actor(Counter, name="counter")
        with pytest.raises(ta.ActorNotFound, match="known: counter"):
            sup.system.lookup("nobody")
        anonymous = await sup.start_actor(Counter)
        assert anonymous.name.startswith("counter-")
        with pytest.raises(ta.LocalProtocolError):
            await sup.start_actor(Counter, name="a/b")


async def test_ask_to_self_fails_at_once() -> None:
    class Narcissus(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            if message == "self":
                return await self.context.ref.ask("hi")
            return message

    async with ta.open_supervisor() as sup:
        ref = await sup.start_actor(Narcissus, name="n")
        with pytest.raises(ta.ActorCrashed) as info:
            await ref.ask("self", timeout=math.inf)
        assert isinstance(info.value.exception, ta.AskDeadlock)
        assert "asks /root/n, which is itself" in str(info.value.exception)


async def test_ask_cycle_fails_at_once() -> None:
    class Ping(ta.Actor[str]):
        def __init__(self, other: str) -> None:
            self.other = other

        async def receive(self, message: str) -> object:
            if message == "go":
                other = self.context.system.lookup(self.other)
                try:
                    return await other.ask("go", timeout=math.inf)
                except ta.AskDeadlock as exc:
                    return f"deadlock: {exc}"
            return message

    async with ta.open_supervisor() as sup:
        a = await sup.start_actor(Ping, "b", name="a")
        await sup.start_actor(Ping, "a", name="b")
        result = await a.ask("go", timeout=math.inf)
        assert isinstance(result, str)
        assert "/root/b asks /root/a, which is an actor that is waiting on it" in result


async def test_sender_is_the_telling_actor() -> None:
    got: list[ta.ActorRef[object] | None] = []

    class Echo(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            got.append(self.context.sender)
            if self.context.sender is not None and message == "ping":
                await self.context.sender.tell("pong")
            return None

    class Pinger(ta.Actor[str]):
        def __init__(self, done: trio.Event) -> None:
            self.done = done

        async def receive(self, message: str) -> object:
            if message == "start":
                await self.context.system.lookup("echo").tell("ping")
            elif message == "pong":
                self.done.set()
            return None

    done = trio.Event()
    async with ta.open_supervisor() as sup:
        await sup.start_actor(Echo, name="echo")
        pinger = await sup.start_actor(Pinger, done, name="pinger")
        await pinger.tell("start")
        await done.wait()
        assert got == [pinger]


async def test_lifecycle_hooks_and_start_failure(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[str] = []

    class Hooked(ta.Actor[str]):
        async def on_start(self) -> None:
            calls.append(f"start {self.context.name}")

        async def on_stop(self) -> None:
            calls.append(f"stop {self.context.name}")

    class BadStart(ta.Actor[str]):
        async def on_start(self) -> None:
            raise OSError("no database")

    class SlowStart(ta.Actor[str]):
        async def on_start(self) -> None:
            await trio.sleep_forever()

    async with ta.open_supervisor() as sup:
        await sup.start_actor(Hooked, name="h")
        with pytest.raises(ta.StartFailed, match="no database") as info:
            await sup.start_actor(BadStart, name="bad")
        assert isinstance(info.value.__cause__, OSError)
        assert sup.system.whereis("bad") is None
        with pytest.raises(ta.StartFailed):
            await sup.start_actor(SlowStart, name="slow", start_timeout=3)
        assert [c.name for c in sup.children()] == ["h"]
    assert calls == ["start h", "stop h"]


async def test_factory_must_return_an_actor() -> None:
    async with ta.open_supervisor() as sup:
        with pytest.raises(ta.StartFailed, match="not an Actor"):
            await sup.start_actor(lambda: "nope", name="x")  # type: ignore[arg-type, return-value]


async def test_actors_spawn_children_that_die_with_them() -> None:
    class Child(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            return f"child got {message}"

    class Parent(ta.Actor[str]):
        async def on_start(self) -> None:
            self.child = await self.context.start_actor(Child, name="kid")

        async def receive(self, message: str) -> object:
            if message == "crash":
                raise RuntimeError("parent crash")
            return await self.child.ask(message)

    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        parent = await sup.start_actor(Parent, name="parent")
        assert await parent.ask("hi") == "child got hi"
        kid = sup.system.lookup("kid")
        assert kid.path == "/root/parent/kid"
        await parent.tell("crash")
        await events.wait_for(ta.ChildRestarted, path="/root/parent")
        assert kid.stopped, "the old instance's children stopped with it"
        assert await parent.ask("again") == "child got again"
        assert sup.system.lookup("kid") is not kid


async def test_background_tasks_live_and_die_with_the_instance() -> None:
    ticks: list[str] = []
    finished = trio.Event()

    class Ticker(ta.Actor[str]):
        async def on_start(self) -> None:
            self.context.start_soon(self.tick)

        async def tick(self) -> None:
            try:
                ticks.append("tick")
                await trio.sleep_forever()
            finally:
                finished.set()

    async with ta.open_supervisor() as sup:
        await sup.start_actor(Ticker)
        await trio.testing.wait_all_tasks_blocked()
        assert ticks == ["tick"]
    assert finished.is_set()


async def test_events_lost_when_a_subscriber_falls_behind() -> None:
    async with ta.open_supervisor() as sup:
        with sup.system.subscribe(capacity=2) as events:
            for i in range(5):
                await sup.start_actor(Counter, name=f"c{i}")
            received = [await events.receive() for _ in range(3)]
        assert isinstance(received[0], ta.ChildStarted)
        assert isinstance(received[1], ta.ChildStarted)
        assert received[2] == ta.EventsLost(3, received[2].time)


async def test_actor_ref_cannot_be_built_by_hand() -> None:
    with pytest.raises(TypeError):
        ta.ActorRef()


async def test_a_sender_waiting_for_room_gets_a_dead_letter_when_the_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ta.open_supervisor() as sup, sup.system.subscribe() as events:
        ref = await sup.start_actor(Counter, name="c", mailbox_size=1, shutdown=0)
        await ref.tell(Sleep(3600))
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell(Inc(1))  # fills the mailbox
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.tell, Inc(2))  # waits for room
            await trio.testing.wait_all_tasks_blocked()
            await sup.stop_child("c")
        letters = [e async for e in _take(events, ta.DeadLetter, 2)]
        assert [d.message for d in letters] == [Inc(1), Inc(2)]


async def _take(events: ta.Subscription, kind: type[ta.DeadLetter], n: int):  # type: ignore[no-untyped-def]
    for _ in range(n):
        yield await events.wait_for(kind)
