"""The ``$admin`` actor on the in-memory transport under MockClock: every message."""

from __future__ import annotations

import zlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta
from trioactors import (
    ActorInfo,
    AdminPing,
    AdminService,
    Broadcast,
    Drain,
    DrainReport,
    GetInfo,
    ListMembers,
    MemberInfo,
    MemberList,
    NodeInfo,
    Pong,
    RestartActor,
    Shutdown,
    Spawn,
    StopActor,
    UnknownFactory,
    start_admin,
)
from trioactors._wire._codec import Codec, Envelope, Kind
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


@attrs.frozen
class Note:
    text: str


if ta.default_registry.tag_of(Note) is None:
    ta.default_registry.register(Note, "test_admin.Note")

READ_ONLY = [AdminPing, GetInfo, ListMembers]
COMMANDS = [Spawn, StopActor, RestartActor, Broadcast, Drain, Shutdown]
REPLIES = [Pong, NodeInfo, ActorInfo, MemberList, MemberInfo, DrainReport]


@attrs.define
class Running:
    node: ta.Node
    membership: ta.Membership
    admin: AdminService
    exited: trio.Event


async def run_node(
    network: MemoryNetwork,
    name: str,
    seeds: dict[str, str],
    factories: dict[str, Callable[[], object]],
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A node as the ``trioactors node`` command runs one: until asked to shut down."""
    exited = trio.Event()
    try:
        async with ta.open_node(name, transport=network.transport(name)) as node:
            config = ta.MembershipConfig(seed=zlib.crc32(name.encode()))
            membership = await ta.start_membership(node, seeds=seeds, config=config)
            admin = await start_admin(node, membership=membership, factories=factories)
            task_status.started(Running(node, membership, admin, exited))
            await admin.wait_shutdown()
    finally:
        exited.set()


@asynccontextmanager
async def cluster(
    size: int, factories: dict[str, Callable[[], object]] | None = None
) -> AsyncIterator[tuple[dict[str, Running], ta.Node]]:
    """``size`` nodes with membership and admin, formed, plus ``ops``: an operator's node."""
    network = MemoryNetwork(seed=5)
    async with network.running(), trio.open_nursery() as nursery:
        nodes: dict[str, Running] = {}
        for i in range(size):
            name = f"n{i}"
            seeds = {"n0": "memory://n0"} if i else {}
            nodes[name] = await nursery.start(run_node, network, name, seeds, factories or {})
        for running in nodes.values():
            while len(running.membership.alive()) < size:
                await running.membership.wait_changed()
        async with ta.open_node("ops", transport=network.transport("ops")) as ops:
            for name in nodes:
                ops.add_peer(name, f"memory://{name}")
            yield nodes, ops
        for running in nodes.values():
            running.admin.shutdown_requested.set()


def test_queries_are_read_only_and_commands_are_not() -> None:
    for cls in READ_ONLY:
        assert ta.is_read_only(cls), cls
    for cls in COMMANDS + REPLIES:
        assert not ta.is_read_only(cls), cls
    registry = ta.MessageRegistry()
    ta.register_admin_messages(registry)
    ta.register_admin_messages(registry)  # (twice is fine)
    for cls in READ_ONLY + COMMANDS + REPLIES:
        assert registry.tag_of(cls) == f"$admin.{cls.__name__}"


async def test_ping_info_and_members(autojump_clock: trio.testing.MockClock) -> None:
    entered, release = trio.Event(), trio.Event()

    class Gate(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            entered.set()
            await release.wait()
            return None

    class Crasher(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            raise RuntimeError(message)

    class Parent(ta.Actor[str]):
        async def on_start(self) -> None:
            await self.context.start_actor(Crasher, name="kid")

    with trio.fail_after(60):
        async with cluster(2) as (nodes, ops):
            n0 = nodes["n0"]
            root = n0.node.root
            gate = await root.start_actor(Gate, name="gate", mailbox_size=10)
            crasher = await root.start_actor(Crasher, name="crasher")
            await root.start_actor(Parent, name="parent")
            admin = ops.ref("$admin@n0")

            sent = trio.current_time()
            pong = await admin.ask(AdminPing(sent))
            assert pong == Pong("n0", sent, pong.received)
            assert pong.received >= sent

            gate.tell_nowait("first")
            await entered.wait()
            for _ in range(3):
                gate.tell_nowait("queued")
            with n0.node.system.subscribe() as events:
                crasher.tell_nowait("boom")
                await events.wait_for(ta.ChildRestarted, path="/root/crasher")
                n0.node.system.lookup("kid").tell_nowait("boom")  # a child of an actor
                await events.wait_for(ta.ChildRestarted, path="/root/parent/kid")
            autojump_clock.jump(10)

            info = await admin.ask(GetInfo())
            assert isinstance(info, NodeInfo)
            assert (info.node, info.address, info.version) == ("n0", "memory://n0", ta.__version__)
            assert (info.draining, info.members) == (False, 2)
            assert info.uptime >= 10
            assert info.load >= 0
            actors = {a.name: a for a in info.actors}
            assert [a.name for a in info.actors] == sorted(actors)
            assert {"$admin", "$membership", "gate", "crasher", "parent", "kid"} == set(actors)
            assert actors["gate"] == ActorInfo("gate", "/root/gate", 3, 10, 0)
            assert actors["crasher"] == ActorInfo("crasher", "/root/crasher", 0, 1000, 1)
            assert actors["kid"].restarts == 1
            assert actors["$admin"].path == "/root/$admin"

            members = await admin.ask(ListMembers())
            assert isinstance(members, MemberList)
            assert list(members) == [
                MemberInfo("n0", "memory://n0", "alive", 0),
                MemberInfo("n1", "memory://n1", "alive", 0),
            ]
            assert len(members) == 2
            assert members[1].node == "n1"
            release.set()


async def test_a_node_without_membership(autojump_clock: trio.testing.MockClock) -> None:
    class Echo(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            return message

    network = MemoryNetwork(seed=1)
    with trio.fail_after(60):
        async with (
            network.running(),
            ta.open_node("solo", transport=network.transport("solo")) as node,
        ):
            service = await start_admin(node, factories={"echo": Echo})
            admin = node.ref("$admin@solo")  # local asks: errors arrive typed
            members = await admin.ask(ListMembers())
            assert list(members) == [MemberInfo("solo", "memory://solo", "alive", 0)]
            assert (await admin.ask(GetInfo())).members == 1
            assert await admin.ask(Spawn("echo", "echo")) == "echo@solo"
            with pytest.raises(UnknownFactory, match=r"unknown factory 'nope'.*known: echo"):
                await admin.ask(Spawn("nope", "x"))
            assert await admin.ask(Broadcast("echo", "", "plain")) == 1
            assert await admin.ask(Shutdown(drain=False)) is True
            with trio.fail_after(1):
                await service.wait_shutdown()
            assert not service.draining


async def test_spawn(autojump_clock: trio.testing.MockClock) -> None:
    class Echo(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            return f"{message} from {self.context.system.name}"

    with trio.fail_after(60):
        async with cluster(1, factories={"echo": Echo}) as (_, ops):
            admin = ops.ref("$admin@n0")
            assert await admin.ask(Spawn("echo", "e1")) == "e1@n0"
            assert await ops.ref("e1@n0").ask("hi") == "hi from n0"
            # errors answer the ask, typed across nodes too, and the admin actor carries on
            with pytest.raises(UnknownFactory, match="unknown factory 'nope'"):
                await admin.ask(Spawn("nope", "e2"))
            with pytest.raises(ta.NameTaken, match="already has a child named 'e1'"):
                await admin.ask(Spawn("echo", "e1"))
            assert isinstance(await admin.ask(AdminPing(0.0)), Pong)


async def test_stop_and_restart(autojump_clock: trio.testing.MockClock) -> None:
    class Counter(ta.Actor[str]):
        def __init__(self) -> None:
            self.count = 0

        async def receive(self, message: str) -> object:
            if message == "inc":
                self.count += 1
            return self.count

    with trio.fail_after(60):
        async with cluster(1) as (nodes, ops):
            node = nodes["n0"].node
            counter = await node.root.start_actor(Counter, name="counter")
            team = await node.root.start_supervisor(name="team")
            inner = await team.start_actor(Counter, name="inner")
            admin = ops.ref("$admin@n0")
            for _ in range(3):
                await counter.tell("inc")
            await inner.tell("inc")
            assert await counter.ask("get") == 3

            with node.system.subscribe() as events:
                assert await admin.ask(RestartActor("counter")) is True
                restarted = await events.wait_for(ta.ChildRestarted, path="/root/counter")
            assert restarted.restarts == 1
            assert await counter.ask("get") == 0  # a new instance, behind the same reference
            # an operator's restarts do not count against the supervisor's intensity
            # (the root allows 1 restart in 5 s)
            assert await admin.ask(RestartActor("counter")) is True
            assert await admin.ask(RestartActor("inner")) is True  # in a nested supervisor
            assert await inner.ask("get") == 0
            info = await admin.ask(GetInfo())
            restarts = {a.name: a.restarts for a in info.actors}
            assert (restarts["counter"], restarts["inner"]) == (2, 1)
            assert await admin.ask(RestartActor("nobody")) is False
            assert await admin.ask(RestartActor("$membership")) is False

            assert await admin.ask(StopActor("counter")) is True
            assert counter.stopped
            assert node.system.whereis("counter") is None
            assert await admin.ask(StopActor("counter")) is False
            assert await admin.ask(StopActor("$membership")) is False
            assert await admin.ask(StopActor("inner")) is True
            assert team.children() == []


async def test_broadcast_reaches_every_member(autojump_clock: trio.testing.MockClock) -> None:
    received: list[tuple[str, Note]] = []
    all_in = trio.Event()

    class Sink(ta.Actor[Note]):
        async def receive(self, message: Note) -> object:
            received.append((self.context.system.name, message))
            if len(received) == 3:
                all_in.set()
            return None

    with trio.fail_after(60):
        async with cluster(3) as (nodes, ops):
            for running in nodes.values():
                await running.node.root.start_actor(Sink, name="sink")
            n0 = nodes["n0"].membership
            while len(n0.lookup("sink")) < 3:
                await n0.wait_changed()
            admin = ops.ref("$admin@n0")
            assert await admin.ask(Broadcast("sink", "test_admin.Note", {"text": "hi"})) == 3
            await all_in.wait()
            assert sorted(received) == [(n, Note("hi")) for n in ("n0", "n1", "n2")]

            with pytest.raises(ta.UnknownMessageType):
                await admin.ask(Broadcast("sink", "no.such.Tag", {}))
            with pytest.raises(ta.InvalidPayload, match="text"):
                await admin.ask(Broadcast("sink", "test_admin.Note", {"text": 5}))
            assert await admin.ask(Broadcast("nobody", "test_admin.Note", {"text": "x"})) == 0
            assert len(received) == 3


@pytest.mark.parametrize("wire_format", ["json", "msgpack"])
@pytest.mark.parametrize(
    "payload",
    [
        {"actor": "a", "tag": "t", "data": {"x": [1, None]}},
        {"actor": 1, "tag": "t", "data": None},
        {"actor": "a", "data": None},
        {"actor": "a", "tag": "t", "data": None, "extra": 1},
        ["a", "t", None],
    ],
)
def test_broadcast_data_travels_unstructured(wire_format: str, payload: object) -> None:
    registry = ta.MessageRegistry()
    ta.register_admin_messages(registry)
    codec = Codec(registry, format=wire_format)  # type: ignore[arg-type]
    message = Broadcast("a", "t", {"x": [1, None]})
    frame = codec.encode(Envelope(Kind.ASK, "$admin@n0", "x@y", 1, None, "", message))
    raw = attrs.evolve(codec.decode(frame, structure=False), payload=payload)
    frame = codec.encode(raw, raw=True)
    if payload == {"actor": "a", "tag": "t", "data": {"x": [1, None]}}:
        assert codec.decode(frame).payload == message
    else:
        with pytest.raises(ta.InvalidPayload):
            codec.decode(frame)


async def test_drain(autojump_clock: trio.testing.MockClock) -> None:
    done: list[float] = []
    stuck = trio.Event()  # never set

    class Worker(ta.Actor[float]):
        async def receive(self, message: float) -> object:
            await trio.sleep(message)  # the work
            done.append(message)
            return None

    class Stuck(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            await stuck.wait()
            return None

    with trio.fail_after(120):
        async with cluster(2) as (nodes, ops):
            n0, n1 = nodes["n0"], nodes["n1"]
            worker = await n0.node.root.start_actor(Worker, name="worker")
            while [r.address for r in n1.membership.lookup("worker")] != ["worker@n0"]:
                await n1.membership.wait_changed()
            for _ in range(5):
                worker.tell_nowait(1.0)
            admin = ops.ref("$admin@n0")
            reports: list[DrainReport] = []

            async def drain() -> None:
                reports.append(await admin.ask(Drain(timeout=30), timeout=60))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                # the cluster stops finding the node's actors
                while n1.membership.lookup("worker"):
                    await n1.membership.wait_changed()
                info = await admin.ask(GetInfo())  # answered while the drain runs
                assert info.draining
                assert n0.admin.draining
            assert reports == [DrainReport("n0", True, 0)]
            assert done == [1.0] * 5  # what was in flight finished
            assert n0.membership.lookup("worker") == []

            # a drain that runs out of time says what is left
            blocker = await n0.node.root.start_actor(Stuck, name="stuck")
            blocker.tell_nowait("handled forever")
            blocker.tell_nowait("queued")
            started = trio.current_time()
            report = await admin.ask(Drain(timeout=2), timeout=10)
            assert report == DrainReport("n0", False, 2)
            assert 2 <= trio.current_time() - started < 3


async def test_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    done: list[float] = []

    class Worker(ta.Actor[float]):
        async def receive(self, message: float) -> object:
            await trio.sleep(message)
            done.append(message)
            return None

    with trio.fail_after(120):
        async with cluster(2) as (nodes, ops):
            n0, n1 = nodes["n0"], nodes["n1"]
            worker = await n1.node.root.start_actor(Worker, name="worker")
            for _ in range(3):
                worker.tell_nowait(2.0)
            assert await ops.ref("$admin@n1").ask(Shutdown()) is True
            assert not n1.exited.is_set()  # the answer comes first
            await n1.exited.wait()  # then the node leaves its open_node block
            assert done == [2.0] * 3  # after draining
            assert n1.admin.draining
            states = {m.node: m.state for m in n0.membership.members()}
            assert states["n1"] is ta.MemberState.LEFT  # it left gracefully
