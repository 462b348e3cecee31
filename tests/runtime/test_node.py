"""Nodes on the in-memory transport: remote tell/ask, replies, errors, forwarding."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

registry = ta.MessageRegistry()


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Total(ta.Request[int]):
    pass


@attrs.frozen
class Boom:
    pass


@attrs.frozen
class Relay:
    """Ask the actor at `target` for its total and return it."""

    target: str


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class Pong:
    sender: str


@attrs.frozen
class Unserializable:
    pass


for cls in (Add, Total, Boom, Relay, Ping, Pong):
    registry.register(cls)


class Account(ta.Actor[Add | Total | Boom | Relay | Ping]):
    def __init__(self, node: ta.Node | None = None) -> None:
        self.total = 0
        self.node = node

    async def receive(self, message: Add | Total | Boom | Relay | Ping) -> object:
        match message:
            case Add(amount):
                self.total += amount
            case Total():
                return self.total
            case Boom():
                raise RuntimeError("boom")
            case Relay(target):
                assert self.node is not None
                return await self.node.ref(target).ask(Total(), timeout=5)
            case Ping():
                # reply through the sender address the envelope carried
                assert self.context.sender is not None
                await self.context.sender.tell(Pong(self.context.system.name))
            case _:
                return await super().receive(message)
        return None


@asynccontextmanager
async def cluster(
    *names: str, network: MemoryNetwork | None = None, **options: object
) -> AsyncIterator[dict[str, ta.Node]]:
    network = network or MemoryNetwork(seed=3)
    nodes: dict[str, ta.Node] = {}
    async with network.running(), trio.open_nursery() as nursery:
        ready = []
        for name in names:
            ready.append(await nursery.start(_run_node, network, name, nodes, options))
        for a in names:
            for b in names:
                if a != b:
                    nodes[a].add_peer(b, nodes[b].address)
        yield nodes
        for stop in ready:
            stop.set()


async def _run_node(
    network: MemoryNetwork,
    name: str,
    nodes: dict[str, ta.Node],
    options: dict[str, object],
    task_status: trio.TaskStatus[trio.Event] = trio.TASK_STATUS_IGNORED,
) -> None:
    stop = trio.Event()
    async with ta.open_node(
        name, transport=network.transport(name), registry=registry, **options
    ) as node:  # type: ignore[arg-type]
        nodes[name] = node
        task_status.started(stop)
        await stop.wait()


async def test_tell_and_ask_across_nodes(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        await nodes["b"].root.start_actor(Account, name="account")
        remote = nodes["a"].ref("account@b")
        assert not remote.is_local
        assert remote.address == "account@b"
        for _ in range(10):
            await remote.tell(Add(5))
        total: int = await remote.ask(Total())
        assert total == 50
        assert nodes["b"].ref("account@b").is_local


async def test_sender_address_of_a_remote_tell_is_the_telling_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[Pong] = []
    done = trio.Event()
    async with cluster("a", "b") as nodes:
        await nodes["b"].root.start_actor(Account, name="account")

        class Asker(ta.Actor[str | Pong]):
            async def receive(self, message: str | Pong) -> object:
                if isinstance(message, Pong):
                    got.append(message)
                    assert self.context.sender is not None
                    assert self.context.sender.address == "account@b"
                    done.set()
                else:
                    await nodes["a"].ref("account@b").tell(Ping())
                return None

        asker = await nodes["a"].root.start_actor(Asker, name="asker")
        await asker.tell("go")
        with trio.fail_after(5):
            await done.wait()
        assert got == [Pong("b")]


async def test_an_actor_asks_another_node_inside_a_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b", "c") as nodes:
        account = await nodes["c"].root.start_actor(Account, name="account")
        await account.tell(Add(7))
        await nodes["b"].root.start_actor(Account, nodes["b"], name="relay")
        assert await nodes["a"].ref("relay@b").ask(Relay("account@c")) == 7


async def test_remote_errors_are_typed(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        await nodes["b"].root.start_actor(Account, name="account")
        a = nodes["a"]
        with pytest.raises(ta.ActorNotFound, match="no actor named 'ghost' on node 'b'"):
            await a.ref("ghost@b").ask(Total())
        with pytest.raises(ta.ActorCrashed, match="boom") as crashed:
            await a.ref("account@b").ask(Boom())
        assert crashed.value.exception is None  # the exception object stays on its node
        with pytest.raises(ta.UnhandledMessage):
            await a.ref("account@b").ask("text")
        with pytest.raises(ta.NodeUnreachable, match="no address or route for node 'nowhere'"):
            await a.ref("x@nowhere").tell(Add(1))
        with pytest.raises(ta.NotSerializable, match="not a registered message type"):
            await a.ref("account@b").tell(Unserializable())
        assert await a.ref("account@b").ask(Total()) == 0  # still serving


async def test_a_tell_to_an_unknown_actor_is_answered_and_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]

        class Teller(ta.Actor[str]):
            async def receive(self, message: str) -> object:
                await a.ref("ghost@b").tell(Add(1))
                return None

        with a.system.subscribe() as events_a, b.system.subscribe() as events_b:
            teller = await a.root.start_actor(Teller, name="teller")
            await teller.tell("go")
            on_b = await events_b.wait_for(ta.DeadLetter)
            assert (on_b.recipient, on_b.message, on_b.reason) == (
                "ghost@b",
                Add(1),
                "unknown actor",
            )
            on_a = await events_a.wait_for(ta.DeadLetter)
            assert on_a.recipient == "ghost@b"
            assert on_a.reason.startswith("ActorNotFound")
        assert b.statistics().unknown_actors == 1
        assert a.statistics().remote_errors == 1


async def test_ask_timeout_and_late_replies(autojump_clock: trio.testing.MockClock) -> None:
    class Slow(ta.Actor[Total]):
        async def receive(self, message: Total) -> object:
            await trio.sleep(10)
            return 1

    async with cluster("a", "b") as nodes:
        await nodes["b"].root.start_actor(Slow, name="slow")
        start = trio.current_time()
        with pytest.raises(ta.AskTimeout, match="no reply from slow@b"):
            await nodes["a"].ref("slow@b").ask(Total(), timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        await trio.sleep(20)
        assert nodes["a"].statistics().late_replies == 1
        assert nodes["a"].statistics().pending_asks == 0


async def test_forwarding_through_a_gateway(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=5)
    async with cluster("a", "b", "c", network=network) as nodes:
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        # a and c cannot talk directly: a routes to c through b, and back
        a.transport.remove_peer("c")  # type: ignore[attr-defined]
        c.transport.remove_peer("a")  # type: ignore[attr-defined]
        network.partition(["a"], ["c"])
        a.routes["c"] = "b"
        c.routes["a"] = "b"
        account = await c.root.start_actor(Account, name="account")
        await account.tell(Add(3))
        assert await a.ref("account@c").ask(Total()) == 3
        assert b.statistics().forwarded == 2  # the ask and its reply


async def test_hop_limit_stops_routing_loops(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b", "c", "d", max_hops=3) as nodes:
        # a misconfigured loop for node "z": b -> c -> d -> b -> ...
        for here, via in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")]:
            nodes[here].routes["z"] = via
        with pytest.raises(ta.NodeUnreachable, match="hop limit 3 exceeded at b"):
            await nodes["a"].ref("x@z").ask(Total())
        assert [nodes[n].statistics().forwarded for n in "bcd"] == [1, 1, 1]
        assert nodes["b"].statistics().hop_limit_exceeded == 1


async def test_a_node_never_forwards_back_where_it_came_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]
        a.routes["z"] = "b"
        b.routes["z"] = "a"
        with pytest.raises(ta.NodeUnreachable, match="no address or route for node 'z'"):
            await a.ref("x@z").ask(Total())
        assert b.statistics().unknown_nodes == 1


def frame(*fields: object) -> bytes:
    return json.dumps(list(fields)).encode()


@pytest.mark.parametrize(
    ("raw", "counter", "answered"),
    [
        (b"\xff\x00 not json", "malformed_frames", None),
        (frame(1, 0, "account@b", "sender@a", 1, None, 0), "malformed_frames", None),
        (
            frame(1, 1, "account@b", "sender@a", 1, None, 0, "Nope", {}),
            "unknown_types",
            "UnknownMessageType",
        ),
        (
            frame(1, 1, "account@b", "sender@a", 1, None, 0, "Add", {"amount": "5"}),
            "invalid_payloads",
            "InvalidPayload",
        ),
        (
            frame(1, 1, "nobody@b", "sender@a", 1, None, 0, "Add", {"amount": 5}),
            "unknown_actors",
            "ActorNotFound",
        ),
    ],
)
async def test_bad_input_is_refused_counted_and_answered(
    autojump_clock: trio.testing.MockClock, raw: bytes, counter: str, answered: str | None
) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]
        account = await b.root.start_actor(Account, name="account")
        await a.root.start_actor(Account, name="sender")
        with a.system.subscribe() as events:
            await a.transport.send("b", raw)  # type: ignore[attr-defined]
            if answered is not None:
                dead = await events.wait_for(ta.DeadLetter)
                assert dead.reason.startswith(answered)
            else:
                await trio.sleep(1)
        assert getattr(b.statistics(), counter) == 1
        await account.tell(Add(2))
        assert await a.ref("account@b").ask(Total()) == 2  # b keeps serving


async def test_reply_that_cannot_be_encoded_becomes_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Weird(ta.Actor[Total]):
        async def receive(self, message: Total) -> object:
            return Unserializable()

    async with cluster("a", "b") as nodes:
        await nodes["b"].root.start_actor(Weird, name="weird")
        with pytest.raises(ta.NotSerializable):
            await nodes["a"].ref("weird@b").ask(Total())


async def test_msgpack_wire_format(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b", wire_format="msgpack") as nodes:
        await nodes["b"].root.start_actor(Account, name="account")
        await nodes["a"].ref("account@b").tell(Add(4))
        assert await nodes["a"].ref("account@b").ask(Total()) == 4


async def _lossy_run(seed: int) -> list[str]:
    """Asks over a lossy, jittery network; the outcome of each, in order."""
    network = MemoryNetwork(seed=seed, latency=0.01)
    network.drop(0.2)
    network.delay(0.0, 0.05)
    outcomes = []
    async with cluster("a", "b", network=network) as nodes:
        account = await nodes["b"].root.start_actor(Account, name="account")
        remote = nodes["a"].ref("account@b")
        for i in range(40):
            await account.tell(Add(1))
            try:
                outcomes.append(f"{i}:{await remote.ask(Total(), timeout=1)}")
            except ta.AskTimeout:
                outcomes.append(f"{i}:timeout")
        assert nodes["b"].ref("account@b").is_local
    return outcomes


def test_faults_are_reproducible_from_a_seed() -> None:
    def run(seed: int) -> list[str]:
        return trio.run(_lossy_run, seed, clock=trio.testing.MockClock(autojump_threshold=0))

    first = run(11)
    assert run(11) == first  # same seed, same losses, same outcomes
    assert any(o.endswith("timeout") for o in first)
    assert any(not o.endswith("timeout") for o in first)  # and the node kept serving
    assert run(12) != first


class Recorder(ta.Actor[Add | Total]):
    """Logs the amounts in the order they arrive; Total answers how many."""

    def __init__(self, log: list[int]) -> None:
        self.log = log

    async def receive(self, message: Add | Total) -> int | None:
        if isinstance(message, Add):
            self.log.append(message.amount)
            return None
        return len(self.log)


async def test_frames_queued_for_a_node_keep_their_order_behind_later_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # While a node cannot be reached, what is sent to it waits in its outbox;
    # sends made after it comes back must not overtake what waits there.
    network = MemoryNetwork(seed=7)
    with trio.fail_after(60):
        async with cluster("a", "b", network=network) as nodes:
            log: list[int] = []
            await nodes["b"].root.start_actor(Recorder, log, name="recorder")
            ref = nodes["a"].ref("recorder@b")
            network.partition(["a"], ["b"])
            for i in range(5):
                ref.tell_nowait(Add(i))  # queued: no link can be made
            network.heal()
            ref.tell_nowait(Add(5))
            await ref.tell(Add(6))
            assert await ref.ask(Total()) == 7
            assert log == list(range(7))
