"""Hot reload (``$reloader``): new code in place, mailbox and state kept, automatic rollback."""

from __future__ import annotations

import sys
import textwrap
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta
from trioactors._services._failures import HealthGaveUp, start_failure_supervisor
from trioactors._services._reload import (
    InvalidReloadTarget,
    MigrationFailed,
    NoPreviousVersion,
    NotReloadable,
    Reloadable,
    Reloader,
    ReloadError,
    ReloadImportError,
    ReloadOutcome,
    ReloadStartFailed,
    start_reloader,
)
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

RELOADED = ReloadOutcome.RELOADED
CONFIRMED = ReloadOutcome.CONFIRMED
ROLLED_BACK = ReloadOutcome.ROLLED_BACK
REJECTED = ReloadOutcome.REJECTED


@asynccontextmanager
async def reloading_node(
    **options: float,
) -> AsyncIterator[tuple[ta.Node, ta.Supervisor, Reloader]]:
    """A node, a supervisor that tolerates crashes ("app") and a reloader."""
    network = MemoryNetwork(seed=3)
    with trio.fail_after(600):
        async with (
            network.running(),
            ta.open_node(
                "n0", transport=network.transport("n0"), registry=ta.MessageRegistry()
            ) as node,
        ):
            app = await node.root.start_supervisor(name="app", intensity=1000, period=1.0)
            reloader = await start_reloader(node, **options)  # type: ignore[arg-type]
            yield node, app, reloader


def outcomes(reloader: Reloader, name: str = "counter") -> list[tuple[ReloadOutcome, str]]:
    return [(r.outcome, r.version) for r in reloader.history(name)]


# -- a counter in three versions -------------------------------------------------------------


@attrs.frozen
class Incr:
    i: int = 0


@attrs.frozen
class Get(ta.Request[tuple[int, tuple[str, ...]]]):
    pass


class CounterV1(Reloadable[object]):
    """Counts; ``log`` says which version handled each increment."""

    def __init__(self, stopping: trio.Event | None = None, stop_delay: float = 0.0) -> None:
        self.count = 0
        self.log: list[str] = []
        self.stopping = stopping  # (not plain data: not state)
        self.stop_delay = stop_delay

    async def receive(self, message: object) -> object:
        match message:
            case Incr():
                self.count += 1
                self.log.append("v1")
            case Get():
                return self.count, tuple(self.log)
            case _:
                return await super().receive(message)
        return None

    async def on_stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()
        await trio.sleep(self.stop_delay)


class CounterV2(Reloadable[object]):
    """The same counter with ``count`` renamed ``total``: it migrates both ways."""

    def __init__(self, stopping: trio.Event | None = None, stop_delay: float = 0.0) -> None:
        self.total = 0
        self.log: list[str] = []
        self.migrated_from: str | None = None

    def migrate(self, state: object, from_version: str) -> None:
        assert isinstance(state, dict)
        self.total = state["count"]
        self.log = state["log"]
        self.migrated_from = from_version

    def downgrade(self, to_version: str) -> object:
        return {"count": self.total, "log": self.log}

    async def receive(self, message: object) -> object:
        match message:
            case Incr():
                self.total += 1
                self.log.append("v2")
            case Get():
                return self.total, tuple(self.log)
            case _:
                return await super().receive(message)
        return None


class Flaky(CounterV1):
    """Version 2 that raises (crashes) on every fifth message: a 20 % error rate."""

    async def receive(self, message: object) -> object:
        if isinstance(message, Incr) and message.i % 5 == 4:
            raise RuntimeError(f"bug on {message.i}")
        if isinstance(message, Incr):
            self.count += 1
            self.log.append("v2")
            return None
        return await super().receive(message)


# -- a reload keeps the mailbox and the state --------------------------------------------------


async def test_reload_keeps_mailbox_references_and_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reloading_node() as (node, app, reloader):
        stopping = trio.Event()
        ref = await reloader.start_reloadable(
            app, CounterV1, stopping, 2.0, name="counter", version="1"
        )
        for i in range(10):
            await ref.tell(Incr(i))
        assert reloader.current("counter") == "1"

        records = []
        async with trio.open_nursery() as nursery:

            async def reload() -> None:
                records.append(await reloader.reload("counter", CounterV2, version="2"))

            nursery.start_soon(reload)
            await stopping.wait()  # the old instance runs on_stop (for 2 s): the reload is on
            for i in range(10, 60):
                await ref.tell(Incr(i))  # queued in the place's mailbox meanwhile
            assert ref.mailbox_length() == 50
        [record] = records
        assert (record.outcome, record.version, record.before, record.after) == (
            RELOADED,
            "2",
            "1",
            "2",
        )
        assert "state migrated" in record.reason

        total, log = await ref.ask(Get())
        assert total == 60  # none lost
        assert log == ("v1",) * 10 + ("v2",) * 50  # queued during the reload: the new version
        assert node.system.lookup("counter") is ref
        assert not ref.stopped
        assert reloader.current("counter") == "2"
        assert reloader.previous("counter") == "1"
        assert reloader.on_probation("counter")
        assert app.child("counter").state is ta.ChildState.RUNNING


async def test_a_good_version_is_confirmed_then_rolled_back_by_hand(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reloading_node(window=30.0, min_messages=5) as (_, app, reloader):
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        await ref.tell(Incr())
        await reloader.reload("counter", CounterV2, version="2")
        for i in range(25):
            await ref.tell(Incr(i))
        start = trio.current_time()
        record = await reloader.wait_settled("counter")
        assert record is not None
        assert (record.outcome, record.messages, record.errors, record.error_rate) == (
            CONFIRMED,
            25,
            0,
            0.0,
        )
        assert trio.current_time() - start == pytest.approx(30.0)
        assert not reloader.on_probation("counter")

        record = await reloader.rollback("counter")  # by hand, after the probation
        assert (record.outcome, record.version, record.after) == (ROLLED_BACK, "2", "1")
        assert "handed back by version '2'" in record.reason  # CounterV2.downgrade
        assert await ref.ask(Get()) == (26, ("v1",) + ("v2",) * 25)
        assert reloader.current("counter") == "1"
        with pytest.raises(NoPreviousVersion):
            await reloader.rollback("counter")  # (a misuse, not an attempt: not in the history)
        assert outcomes(reloader) == [(RELOADED, "2"), (CONFIRMED, "2"), (ROLLED_BACK, "2")]
        stats = reloader.statistics()
        assert (stats.reloaded, stats.confirmed, stats.rolled_back, stats.rejected) == (1, 1, 1, 0)


async def test_a_plain_actor_starts_fresh_and_a_cancelled_caller_does_not_stop_the_reload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Plain(ta.Actor[object]):
        def __init__(self, tag: str) -> None:
            self.tag = tag
            self.seen = 0

        async def receive(self, message: object) -> object:
            self.seen += 1
            return f"{self.tag}{self.seen}"

    class PlainV2(Plain):
        async def on_stop(self) -> None:
            await trio.sleep(0)

        async def receive(self, message: object) -> object:
            return "v2:" + str(await super().receive(message))

    class SlowStop(Plain):
        async def on_stop(self) -> None:
            await trio.sleep(5)

    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, SlowStop, "x", name="plain")
        assert await ref.ask("a") == "x1"
        with trio.move_on_after(1) as scope:
            await reloader.reload("plain", PlainV2, version="2")
        assert scope.cancelled_caught  # the caller gave up waiting; the reload goes on
        await trio.sleep(5)
        assert reloader.current("plain") == "2"
        assert await ref.ask("b") == "v2:x1"  # no state carried: a fresh instance
        [record] = reloader.history("plain")
        assert "no state carried" in record.reason


# -- code from disk ----------------------------------------------------------------------------


SOURCE = """
import trioactors._services._reload as r


class Counter(r.Reloadable[object]):
    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: object) -> object:
        if message == "get":
            return self.count
        self.count += {step}
        return None

{tail}
"""


def write(path: Path, step: int, tail: str = "") -> None:
    # The same size for every step: the bytecode cache must not be trusted.
    path.write_text(textwrap.dedent(SOURCE).format(step=step, tail=tail))


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


async def test_a_module_changed_on_disk_is_picked_up(
    autojump_clock: trio.testing.MockClock, module_dir: Path
) -> None:
    write(module_dir / "reload_counter_a.py", 1)
    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, "reload_counter_a:Counter", name="counter")
        for _ in range(3):
            await ref.tell("incr")
        assert await ref.ask("get") == 3

        # Unchanged on disk: the module is not reloaded, the version is the same code.
        module = sys.modules["reload_counter_a"]
        v1 = module.Counter
        await reloader.reload("counter", "reload_counter_a:Counter", version="1b")
        assert module.Counter is v1
        assert await ref.ask("get") == 3  # (the default migrate carried the count)

        write(module_dir / "reload_counter_a.py", 2)
        record = await reloader.reload("counter", "reload_counter_a:Counter", version="2")
        assert module.Counter is not v1
        assert record.reason.startswith("reload_counter_a:Counter")
        await ref.tell("incr")
        assert await ref.ask("get") == 5  # 3 carried over, then + 2
        assert reloader.current("counter") == "2"


async def test_a_module_imported_elsewhere_first_is_reloaded(
    autojump_clock: trio.testing.MockClock, module_dir: Path
) -> None:
    write(module_dir / "reload_counter_b.py", 1)
    import reload_counter_b  # type: ignore[import-not-found]

    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, reload_counter_b.Counter, name="counter")
        await ref.tell("incr")
        write(module_dir / "reload_counter_b.py", 7)
        await reloader.reload("counter", "reload_counter_b:Counter", version="2")
        await ref.tell("incr")
        assert await ref.ask("get") == 8


async def test_a_file_path_is_loaded_fresh_each_time_it_changes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "pushed" / "counter.py"
    path.parent.mkdir()
    write(path, 1)
    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, f"{path}:Counter", name="counter")
        await ref.tell("incr")
        write(path, 3)  # as file distribution would push it
        await reloader.reload("counter", f"{path}:Counter", version="2")
        await ref.tell("incr")
        assert await ref.ask("get") == 4
        with pytest.raises(ReloadImportError):
            await reloader.reload("counter", f"{tmp_path}/missing.py:Counter", version="3")
    for name in [n for n in sys.modules if n.startswith("trioactors_reload_counter_")]:
        del sys.modules[name]


async def test_a_version_that_fails_to_import_is_rejected_and_v1_keeps_serving(
    autojump_clock: trio.testing.MockClock, module_dir: Path
) -> None:
    write(module_dir / "reload_counter_c.py", 1)
    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, "reload_counter_c:Counter", name="counter")
        await ref.tell("incr")
        module = sys.modules["reload_counter_c"]
        v1 = module.Counter

        # Its top level defines a new Counter, then raises.
        write(module_dir / "reload_counter_c.py", 5, tail="raise RuntimeError('half-deployed')")
        with pytest.raises(ReloadImportError) as caught:
            await reloader.reload("counter", "reload_counter_c:Counter", version="2")
        assert isinstance(caught.value, ImportError)
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert caught.value.record is not None
        assert caught.value.record.outcome is REJECTED
        assert module.Counter is v1  # the module's namespace is as it was

        (module_dir / "reload_counter_c.py").write_text("class Counter(:\n")  # a syntax error
        with pytest.raises(ReloadImportError):
            await reloader.reload("counter", "reload_counter_c:Counter", version="3")
        with pytest.raises(ReloadImportError):
            await reloader.reload("counter", "no_such_module_here:Counter", version="4")

        await ref.tell("incr")
        assert await ref.ask("get") == 2  # version 1, never stopped
        assert app.child("counter").restarts == 0
        assert reloader.current("counter") == "1"
        assert outcomes(reloader) == [(REJECTED, "2"), (REJECTED, "3"), (REJECTED, "4")]


async def test_targets_that_name_no_actor_are_rejected(
    autojump_clock: trio.testing.MockClock, module_dir: Path
) -> None:
    (module_dir / "reload_things.py").write_text("LIMIT = 3\n\ndef make():\n    return 'nope'\n")
    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        await ref.tell(Incr())
        for target in [
            "reload_things",
            "reload_things:",
            "reload_things:Missing",
            "reload_things:LIMIT",
            "reload_things:make",
            "reload_things:1x",
        ]:
            with pytest.raises(InvalidReloadTarget):
                await reloader.reload("counter", target, version="2")
        with pytest.raises(InvalidReloadTarget):
            await reloader.reload("counter", CounterV2, version="")

        # A stateful version 1 cannot hand its state to a plain actor.
        class Plain(ta.Actor[object]):
            def __init__(self, *args: object) -> None:
                pass

        with pytest.raises(MigrationFailed, match="not Reloadable"):
            await reloader.reload("counter", Plain, version="2")
        with pytest.raises(NotReloadable):
            await reloader.reload("nobody", CounterV2, version="2")
        with pytest.raises(NotReloadable):
            reloader.current("nobody")
        assert await ref.ask(Get()) == (1, ("v1",))
        assert [o for o, _ in outcomes(reloader)] == [REJECTED] * 8
        assert app.child("counter").restarts == 0


# -- migration failures --------------------------------------------------------------------------


async def test_a_migrate_that_raises_is_rejected(autojump_clock: trio.testing.MockClock) -> None:
    class Broken(CounterV2):
        def migrate(self, state: object, from_version: str) -> None:
            raise KeyError("total")

    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        await ref.tell(Incr())
        with pytest.raises(MigrationFailed) as caught:
            await reloader.reload("counter", Broken, version="2")
        assert isinstance(caught.value.__cause__, KeyError)
        assert caught.value.actor == "counter"
        assert caught.value.version == "2"
        assert await ref.ask(Get()) == (1, ("v1",))
        assert app.child("counter").restarts == 0  # found in the dry run: never stopped
        [record] = reloader.history("counter")
        assert (record.outcome, record.version, record.after) == (REJECTED, "2", "1")
        assert "could not migrate" in record.reason


async def test_a_migrate_that_fails_after_the_stop_brings_v1_back_with_its_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = []

    class SecondTimeUnlucky(CounterV2):
        def migrate(self, state: object, from_version: str) -> None:
            calls.append(from_version)
            if len(calls) == 2:  # the dry run passes; the real one fails
                raise ValueError("state too large")
            super().migrate(state, from_version)

    async with reloading_node() as (_, app, reloader):
        stopping = trio.Event()
        ref = await reloader.start_reloadable(app, CounterV1, stopping, 1.0, name="counter")
        await ref.tell(Incr())
        async with trio.open_nursery() as nursery:

            async def reload() -> None:
                with pytest.raises(MigrationFailed):
                    await reloader.reload("counter", SecondTimeUnlucky, version="2")

            nursery.start_soon(reload)
            await stopping.wait()
            await ref.tell(Incr())  # sent during the failed reload
        assert calls == ["1", "1"]
        assert await ref.ask(Get()) == (2, ("v1", "v1"))  # version 1, its state restored
        assert reloader.current("counter") == "1"
        assert outcomes(reloader) == [(REJECTED, "2")]


async def test_a_version_whose_on_start_fails_is_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class NoStart(CounterV2):
        async def on_start(self) -> None:
            raise OSError("cannot open its database")

    async with reloading_node() as (node, app, reloader):
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        for _ in range(3):
            await ref.tell(Incr())
        with node.system.subscribe() as events:
            with pytest.raises(ReloadStartFailed) as caught:
                await reloader.reload("counter", NoStart, version="2")
            crash = await events.wait_for(ta.ChildCrashed, path="/root/app/counter")
        assert isinstance(crash.exception, OSError)  # a crash: its restart brings v1 back
        assert isinstance(caught.value.__cause__, OSError)
        assert await ref.ask(Get()) == (3, ("v1",) * 3)
        assert reloader.current("counter") == "1"
        assert outcomes(reloader) == [(REJECTED, "2")]


# -- automatic rollback ------------------------------------------------------------------------


async def test_a_version_with_a_20_percent_error_rate_is_rolled_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reloading_node() as (node, app, _):
        failures = await start_failure_supervisor(node, handlers=[], restart_storm=None)
        reloader = await start_reloader(
            node, name="$reloader2", failures=failures, window=60.0, min_messages=20
        )
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        for i in range(5):
            await ref.tell(Incr(i))
        await reloader.reload("counter", Flaky, version="2")
        start = trio.current_time()
        for i in range(40):
            await ref.tell(Incr(i))
        record = await reloader.wait_settled("counter")
        assert trio.current_time() - start < 1  # as soon as 20 messages were in: no waiting

        assert record is not None
        assert (record.outcome, record.version, record.before, record.after) == (
            ROLLED_BACK,
            "2",
            "2",
            "1",
        )
        assert (record.messages, record.errors, record.error_rate) == (20, 4, 0.2)
        assert "error rate 20.0% > 5.0% over 20 messages" in record.reason
        assert outcomes(reloader) == [(RELOADED, "2"), (ROLLED_BACK, "2")]
        assert reloader.current("counter") == "1"
        assert reloader.previous("counter") is None

        await ref.tell(Incr(100))
        _, log = await ref.ask(Get())
        assert log[-1] == "v1"
        assert reloader.statistics().automatic_rollbacks == 1
        await trio.testing.wait_all_tasks_blocked()
        [report] = failures.reports()
        assert isinstance(report, HealthGaveUp)
        assert report.target == "/root/app/counter"
        assert "rolled back to '1'" in report.reason


async def test_below_the_threshold_or_with_too_few_messages_it_is_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class RarelyFlaky(CounterV1):
        async def receive(self, message: object) -> object:
            if isinstance(message, Incr) and message.i == 7:
                raise RuntimeError("one bad message")
            return await super().receive(message)

    async with reloading_node(max_error_rate=0.05, min_messages=20) as (_, app, reloader):
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        await reloader.reload("counter", RarelyFlaky, version="2")
        for i in range(20):  # 1 error in 20: exactly 5 %, not above
            await ref.tell(Incr(i))
        record = await reloader.wait_settled("counter")
        assert record is not None
        assert (record.outcome, record.messages, record.errors) == (CONFIRMED, 20, 1)

        await reloader.reload("counter", Flaky, version="3")
        for i in range(5):  # 20 % of 5: too few to judge
            await ref.tell(Incr(i))
        record = await reloader.wait_settled("counter")
        assert record is not None
        assert record.outcome is CONFIRMED
        assert "too few to judge" in record.reason


async def test_parameters_are_checked() -> None:
    async with reloading_node() as (node, _, _):
        for options in [
            {"window": 0.0},
            {"max_error_rate": 1.0},
            {"max_error_rate": -0.1},
            {"min_messages": 0},
        ]:
            with pytest.raises(ValueError, match="must be"):
                await start_reloader(node, name="$r2", **options)  # type: ignore[arg-type]


def test_errors_are_typed() -> None:
    assert issubclass(ReloadError, ta.TrioactorsError)
    assert issubclass(ReloadImportError, ImportError)
    assert issubclass(InvalidReloadTarget, TypeError)
    assert issubclass(NotReloadable, LookupError)
    assert issubclass(NoPreviousVersion, LookupError)
    for cls in (MigrationFailed, ReloadStartFailed):
        assert issubclass(cls, ReloadError)


async def test_a_reload_during_probation_supersedes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class CounterV3(CounterV2):
        def migrate(self, state: object, from_version: str) -> None:
            if from_version == "2":
                self.restore(state)  # the same shape
            else:
                super().migrate(state, from_version)

    async with reloading_node(window=10.0) as (_, app, reloader):
        ref = await reloader.start_reloadable(app, CounterV1, name="counter")
        await ref.tell(Incr())
        await reloader.reload("counter", CounterV2, version="2")
        await trio.sleep(5)
        start = trio.current_time()
        await reloader.reload("counter", CounterV3, version="3")
        assert reloader.previous("counter") == "2"
        record = await reloader.wait_settled("counter")
        assert record is not None
        assert (record.outcome, record.version) == (CONFIRMED, "3")
        assert trio.current_time() - start == pytest.approx(10.0)  # the window of version 3
        assert outcomes(reloader) == [(RELOADED, "2"), (RELOADED, "3"), (CONFIRMED, "3")]
        assert await ref.ask(Get()) == (1, ("v1",))


async def test_a_temporary_actor_that_fails_to_start_the_new_version_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class NoStart(CounterV2):
        async def on_start(self) -> None:
            raise OSError("cannot open its database")

    async with reloading_node() as (_, app, reloader):
        ref = await reloader.start_reloadable(
            app, CounterV1, name="counter", restart=ta.Restart.TEMPORARY
        )
        with pytest.raises(ReloadStartFailed) as caught:
            await reloader.reload("counter", NoStart, version="2")
        assert caught.value.record is not None
        assert "the actor is gone" in caught.value.record.reason
        assert ref.stopped
        with pytest.raises(NotReloadable):
            reloader.current("counter")
