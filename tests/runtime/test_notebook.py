"""trioactors.notebook: Trio in guest mode on an asyncio loop, and the tree drawing.

Each test is a plain function running ``asyncio.run``: the session is driven
from asyncio, as a notebook's cells drive it.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import rich.console
import trio

import trioactors as ta
from trioactors import notebook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from rich.tree import Tree

LIMIT = 10.0  # seconds any test may take before it counts as hung


def run_session(test: Callable[[notebook.TrioSession], Awaitable[None]]) -> None:
    """Run ``test(session)`` under ``asyncio.run``; the session is stopped however it ends."""

    async def main() -> None:
        async with asyncio.timeout(LIMIT), await notebook.start() as session:
            await test(session)
        assert not session.running

    asyncio.run(main())


def render(drawing: Tree) -> str:
    out = io.StringIO()
    rich.console.Console(file=out, width=120, color_system=None).print(drawing)
    return out.getvalue()


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Total(ta.Request[int]):
    pass


@attrs.frozen
class Crash:
    pass


class Account(ta.Actor[Add | Total | Crash]):
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.total = 0

    async def on_stop(self) -> None:
        self.journal.append(f"stop {self.context.name}")

    async def receive(self, message: Add | Total | Crash) -> object:
        match message:
            case Add(amount):
                self.total += amount
            case Total():
                return self.total
            case Crash():
                raise RuntimeError("crashed on purpose")
        return None


@asynccontextmanager
async def recorded(journal: list[str], name: str) -> AsyncIterator[str]:
    journal.append(f"enter {name}")
    try:
        yield name
    except trio.Cancelled:
        journal.append(f"cancelled {name}")
        raise
    journal.append(f"exit {name}")


# -- calls ------------------------------------------------------------------------


def test_results_and_exceptions_cross_over() -> None:
    async def add(a: int, b: int) -> int:
        await trio.sleep(0)
        return a + b

    error = ValueError("from trio")

    async def fail() -> None:
        await trio.sleep(0)
        raise error

    async def test(session: notebook.TrioSession) -> None:
        assert session.running
        assert await session.run(add, 2, 3) == 5
        assert await session.run(trio.to_thread.run_sync, sum, [1, 2]) == 3
        with pytest.raises(ValueError, match="from trio") as raised:
            await session.run(fail)
        assert raised.value is error

    run_session(test)


def test_errors_raised_in_trio_keep_their_type() -> None:
    async def fail_after_zero() -> None:
        with trio.fail_after(0):
            await trio.sleep_forever()

    async def test(session: notebook.TrioSession) -> None:
        with pytest.raises(trio.TooSlowError):
            await session.run(fail_after_zero)

    run_session(test)


def test_a_coroutine_object_is_refused_with_advice() -> None:
    async def nothing() -> None:
        await trio.sleep(0)

    async def test(session: notebook.TrioSession) -> None:
        with pytest.raises(TypeError, match=r"session.run\(fn, \*args\)"):
            await session.run(nothing())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="start_soon"):
            session.start_soon(nothing())  # type: ignore[arg-type]

    run_session(test)


def test_only_one_session_per_thread() -> None:
    async def test(session: notebook.TrioSession) -> None:
        with pytest.raises(ta.LocalProtocolError, match="already runs"):
            await notebook.start()
        assert session.running

    run_session(test)


# -- contexts ---------------------------------------------------------------------


def test_a_node_stays_open_across_calls_and_stops_with_the_session() -> None:
    journal: list[str] = []
    seen: dict[str, object] = {}

    async def test(session: notebook.TrioSession) -> None:
        node = await session.enter(ta.open_node("nb-a"))
        seen["node"] = node
        start = functools.partial(node.root.start_actor, Account, journal, name="account")
        account = await session.run(start)
        for amount in (1, 2, 3):
            await session.run(account.tell, Add(amount))  # one call each, like cells
        assert await session.run(account.ask, Total()) == 6
        account.tell_nowait(Add(4))  # (sync-colored calls work from the asyncio side)
        assert await session.run(node.ref("account@nb-a").ask, Total()) == 10
        assert "1 context(s) open" in repr(session)
        assert journal == []

    run_session(test)
    assert journal == ["stop account"]  # the node was left normally: on_stop ran
    node = seen["node"]
    assert isinstance(node, ta.Node)
    assert [(c.name, c.state) for c in node.root.children()] == [("account", ta.ChildState.STOPPED)]


def test_stop_leaves_contexts_newest_first_and_is_idempotent() -> None:
    journal: list[str] = []

    async def main() -> None:
        session = await notebook.start()
        assert await session.enter(recorded(journal, "a")) == "a"
        assert await session.enter(recorded(journal, "b")) == "b"
        await session.stop()
        assert not session.running
        await session.stop()  # again: nothing to do
        with pytest.raises(trio.ClosedResourceError):
            await session.run(trio.sleep, 0)
        with pytest.raises(trio.ClosedResourceError):
            await session.enter(recorded(journal, "c"))
        with pytest.raises(trio.ClosedResourceError):
            session.start_soon(trio.sleep, 0)

    asyncio.run(main())
    assert journal == ["enter a", "enter b", "exit b", "exit a"]


def test_exit_one_context_by_its_value_normally_or_cancelled() -> None:
    journal: list[str] = []

    async def test(session: notebook.TrioSession) -> None:
        a = await session.enter(recorded(journal, "a"))
        b = await session.enter(recorded(journal, "b"))
        await session.exit(a)
        await session.exit(b, cancel=True)
        assert journal == ["enter a", "enter b", "exit a", "cancelled b"]
        with pytest.raises(LookupError, match="no context"):
            await session.exit(a)

    run_session(test)


def test_an_error_leaving_a_context_is_raised_by_exit() -> None:
    @asynccontextmanager
    async def fails_on_exit() -> AsyncIterator[str]:
        yield "value"
        raise OSError("could not close")

    async def test(session: notebook.TrioSession) -> None:
        value = await session.enter(fails_on_exit())
        with pytest.raises(OSError, match="could not close"):
            await session.exit(value)
        assert "0 context(s) open" in repr(session)

    run_session(test)


def test_entering_that_fails_raises_and_leaves_nothing_open() -> None:
    @asynccontextmanager
    async def refuses() -> AsyncIterator[None]:
        await trio.sleep(0)
        raise ConnectionRefusedError("no")
        yield  # (unreachable: an async generator all the same)

    async def test(session: notebook.TrioSession) -> None:
        with pytest.raises(ConnectionRefusedError):
            await session.enter(refuses())
        assert "0 context(s) open" in repr(session)

    run_session(test)


def test_a_context_that_ends_on_its_own_reports_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []

    async def crash_and_wait(root: ta.Supervisor, account: ta.ActorRef[Crash]) -> None:
        with root.system.subscribe() as events:
            await account.tell(Crash())
            await events.wait_for(ta.SupervisorEscalated, path="/root")

    async def test(session: notebook.TrioSession) -> None:
        root = await session.enter(ta.open_supervisor(intensity=0))
        account = await session.run(functools.partial(root.start_actor, Account, journal))
        with caplog.at_level(logging.ERROR, logger="trioactors.notebook"):
            await session.run(crash_and_wait, root, account)
            with pytest.raises(ta.SupervisorGaveUp):
                await session.exit(root)
        assert "open_supervisor() (entered as <Supervisor /root" in caplog.text
        assert "ended on its own with SupervisorGaveUp" in caplog.text

    run_session(test)


def test_an_error_never_collected_is_raised_by_stop() -> None:
    @asynccontextmanager
    async def fragile(trigger: trio.Event) -> AsyncIterator[str]:
        async def fail() -> None:
            await trigger.wait()
            raise ValueError("on its own")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            yield "fragile"

    async def main() -> None:
        trigger = trio.Event()
        session = await notebook.start()
        await session.enter(fragile(trigger))
        trigger.set()
        with pytest.RaisesGroup(
            pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="on its own"))
        ):
            await session.stop()

    asyncio.run(main())


# -- cancellation -----------------------------------------------------------------


def test_cancelling_the_await_cancels_the_trio_task() -> None:
    journal: list[str] = []

    async def forever(started: trio.Event) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            journal.append("trio task ended")

    async def test(session: notebook.TrioSession) -> None:
        started = trio.Event()
        call = asyncio.create_task(session.run(forever, started))
        await session.run(started.wait)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert journal == ["trio task ended"]  # (before the await returned)

    run_session(test)


def test_a_timeout_on_the_asyncio_side_reaches_trio() -> None:
    journal: list[str] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            journal.append("cancelled")

    async def test(session: notebook.TrioSession) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await session.run(forever)
        assert journal == ["cancelled"]

    run_session(test)


def test_cancelling_an_enter_cancels_the_entering() -> None:
    journal: list[str] = []

    @asynccontextmanager
    async def slow_to_open(started: trio.Event) -> AsyncIterator[None]:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            journal.append("entering cancelled")
        yield

    async def test(session: notebook.TrioSession) -> None:
        started = trio.Event()
        entering = asyncio.create_task(session.enter(slow_to_open(started)))
        await session.run(started.wait)
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        assert journal == ["entering cancelled"]
        assert "0 context(s) open" in repr(session)

    run_session(test)


def test_stop_cancels_calls_in_flight() -> None:
    async def main() -> None:
        session = await notebook.start()
        started = trio.Event()

        async def forever() -> None:
            started.set()
            await trio.sleep_forever()

        call = asyncio.create_task(session.run(forever))
        await session.run(started.wait)
        await session.stop()
        with pytest.raises(trio.ClosedResourceError, match="stopped before the call ended"):
            await call

    asyncio.run(main())


# -- background tasks -------------------------------------------------------------


def test_background_tasks_run_and_their_errors_surface(caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []

    async def fail(ran: trio.Event) -> None:
        try:
            raise KeyError("background")
        finally:
            ran.set()

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            journal.append("cancelled")

    async def main() -> None:
        session = await notebook.start()
        ran = trio.Event()
        session.start_soon(forever)
        session.start_soon(fail, ran, name="failing task")
        with caplog.at_level(logging.ERROR, logger="trioactors.notebook"):
            await session.run(ran.wait)
            assert "background task failing task raised KeyError('background')" in caplog.text
            assert await session.run(trio.sleep, 0) is None  # the session carries on
            with pytest.RaisesGroup(KeyError):
                await session.stop()

    asyncio.run(main())
    assert journal == ["cancelled"]


# -- the tree ---------------------------------------------------------------------


def test_the_tree_shows_a_restart_after_a_crash() -> None:
    journal: list[str] = []

    async def crash_and_wait(account: ta.ActorRef[Crash], system: ta.ActorSystem) -> None:
        with system.subscribe() as events:
            await account.tell(Crash())
            await events.wait_for(ta.ChildRestarted, path="/root/bank/account")

    async def test(session: notebook.TrioSession) -> None:
        node = await session.enter(ta.open_node("nb-tree"))
        await session.run(ta.start_admin, node)
        bank = await session.run(
            functools.partial(node.root.start_supervisor, name="bank", intensity=3, period=60)
        )
        account = await session.run(
            functools.partial(bank.start_actor, Account, journal, name="account")
        )
        await session.run(account.tell, Add(1))

        before = render(notebook.tree(node))
        assert before.startswith("nb-tree (ws://127.0.0.1:")
        assert "one_for_one, at most 1 restart in 5 s" in before
        assert "bank  supervisor  running  restarts 0  one_for_one, at most 3 restarts in 60 s" in (
            before
        )
        assert "account  actor  running  restarts 0  mailbox " in before
        assert "$admin  actor  running" in before

        await session.run(crash_and_wait, account, node.system)
        after = render(notebook.tree(node, system_actors=False))
        assert "account  actor  running  restarts 1  mailbox 0" in after
        assert "$admin" not in after
        assert render(notebook.tree(bank)).startswith("/root/bank  one_for_one")
        assert render(notebook.tree(node.system)).startswith("nb-tree  /root")

    run_session(test)


def test_the_tree_of_nothing_running() -> None:
    assert render(notebook.tree(ta.ActorSystem("idle"))).strip() == "idle (no supervisor running)"
