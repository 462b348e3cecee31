"""Membership on the in-memory transport under MockClock: join, detect, leave."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

import trioactors as ta
from trioactors._core._membership import MemberState
from trioactors._services._membership import (
    Gossip,
    Membership,
    MembershipConfig,
    start_membership,
)
from trioactors._wire._codec import Codec, Envelope, Kind
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import Callable


async def run_member(
    network: MemoryNetwork,
    name: str,
    seeds: dict[str, str],
    members: dict[str, Membership],
    task_status: trio.TaskStatus[trio.Event] = trio.TASK_STATUS_IGNORED,
) -> None:
    stop = trio.Event()
    try:
        async with ta.open_node(name, transport=network.transport(name)) as node:
            members[name] = await start_membership(
                node, seeds=seeds, config=MembershipConfig(seed=zlib.crc32(name.encode()))
            )
            task_status.started(stop)
            await stop.wait()
    except ta.NodeCrashed:
        pass  # the fault plan crashed this node


async def until(members: list[Membership], condition: Callable[[Membership], bool]) -> None:
    for m in members:
        while not condition(m):
            await m.wait_changed()


async def test_join_detect_and_leave(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=7)
    members: dict[str, Membership] = {}
    with trio.fail_after(120):
        async with network.running(), trio.open_nursery() as nursery:
            stops = [await nursery.start(run_member, network, "a", {}, members)]
            seeds = {"a": "memory://a"}
            for name in "bcde":
                stops.append(await nursery.start(run_member, network, name, seeds, members))
            everyone = list(members.values())
            await until(everyone, lambda m: len(m.alive()) == 5)
            joined = trio.current_time()

            # a crash is detected by every survivor and taken out of routing
            network.crash("e")
            crashed = trio.current_time()
            survivors = [members[n] for n in "abcd"]
            await until(survivors, lambda m: m.view.get("e").state is MemberState.DEAD)  # type: ignore[union-attr]
            detected = trio.current_time() - crashed
            config = MembershipConfig()
            assert detected <= config.detection_time(5) + 2 * config.swim.protocol_period
            for m in survivors:
                assert "e" not in m.node.transport.peers()
                assert m.alive() == ["a", "b", "c", "d"]

            # a graceful leave: the members it tells answer before they forget it
            start = trio.current_time()
            await members["d"].leave()
            assert trio.current_time() - start < 0.1  # not a timed-out answer
            stops[3].set()  # (a node leaves, then stops)
            await until(
                [members[n] for n in "abc"], lambda m: m.view.get("d").state is MemberState.LEFT
            )  # type: ignore[union-attr]
            assert members["a"].alive() == ["a", "b", "c"]
            await trio.sleep(config.swim.protocol_period + 0.01)  # then they close its connections
            for m in survivors[:3]:
                assert "d" not in m.node.transport.peers()
            assert joined < 10
            for stop in stops:
                stop.set()


async def test_names_are_discovered_cluster_wide(autojump_clock: trio.testing.MockClock) -> None:
    class Worker(ta.Actor[str]):
        async def receive(self, message: str) -> object:
            return f"{message} from {self.context.system.name}"

    network = MemoryNetwork(seed=8)
    members: dict[str, Membership] = {}
    with trio.fail_after(120):
        async with network.running(), trio.open_nursery() as nursery:
            stops = [await nursery.start(run_member, network, "a", {}, members)]
            for name in "bc":
                stops.append(
                    await nursery.start(run_member, network, name, {"a": "memory://a"}, members)
                )
            for name in "bc":
                await members[name].node.root.start_actor(Worker, name="worker")
            a = members["a"]
            while len(a.lookup("worker")) < 2:
                await a.wait_changed()
            refs = a.lookup("worker")
            assert [r.address for r in refs] == ["worker@b", "worker@c"]
            assert [await r.ask("hi") for r in refs] == ["hi from b", "hi from c"]
            for stop in stops:
                stop.set()


async def test_subscribed_actors_are_told_of_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trioactors.testing import open_simulated_cluster

    seen: list[tuple[str, MemberState]] = []
    joined = trio.Event()

    class Watcher(ta.Actor[ta.MemberChanged]):
        async def receive(self, message: ta.MemberChanged) -> object:
            seen.append((message.node, message.after.state))
            if message.node == "late":
                joined.set()
            return None

    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=2) as cluster:
            await cluster.wait_until(lambda m: len(m.alive()) == 3)
            n0 = cluster.members["n0"]
            watcher = await n0.node.root.start_actor(Watcher, name="watcher")
            n0.subscribe(watcher)
            await cluster.add("late")
            await joined.wait()
            assert ("late", MemberState.JOINING) in seen or ("late", MemberState.ALIVE) in seen


VALID_CLAIM = ["n1", "memory://n1", 1, 0]


@pytest.mark.parametrize("wire_format", ["json", "msgpack"])
@pytest.mark.parametrize(
    "claim",
    [
        VALID_CLAIM,
        ["n1", "memory://n1", 9, 0],  # no such state
        ["n1", "memory://n1", 1, -1],
        ["n1", "memory://n1", True, 0],
        ["n1", 5, 1, 0],
        {"node": "n1", "address": "memory://n1", "state": 1, "incarnation": 0},
        ["n1", "memory://n1", 1],
    ],
)
def test_claims_travel_as_checked_lists(wire_format: str, claim: object) -> None:
    registry = ta.MessageRegistry()
    registry.register(Gossip, "$membership.Gossip")
    codec = Codec(registry, format=wire_format)  # type: ignore[arg-type]
    frame = codec.encode(
        Envelope(Kind.TELL, "$membership@n2", None, 1, None, "", Gossip([], [], "n1"))
    )
    raw = codec.decode(frame, structure=False)
    bad = attrs.evolve(raw, payload={"claims": [claim], "names": [], "origin": "n1"})
    frame = codec.encode(bad, raw=True)
    if claim is VALID_CLAIM:
        decoded = codec.decode(frame)
        assert isinstance(decoded.payload, Gossip)
        assert decoded.payload.claims[0].node == "n1"
    else:
        with pytest.raises(ta.InvalidPayload):
            codec.decode(frame)


VALID_NAMES = ["n1", 3, ["worker", "db"]]


@pytest.mark.parametrize(
    "names",
    [
        VALID_NAMES,
        ["n1", "3", ["worker"]],
        ["n1", 3, "worker"],
        ["n1", 3, ["worker", 5]],
        {"node": "n1", "version": 3, "names": []},
    ],
)
def test_name_lists_travel_as_checked_lists(names: object) -> None:
    registry = ta.MessageRegistry()
    registry.register(Gossip, "$membership.Gossip")
    codec = Codec(registry)
    frame = codec.encode(
        Envelope(Kind.TELL, "$membership@n2", None, 1, None, "", Gossip([], [], "n1"))
    )
    raw = codec.decode(frame, structure=False)
    frame = codec.encode(
        attrs.evolve(raw, payload={"claims": [], "names": [names], "origin": "n1"}), raw=True
    )
    if names is VALID_NAMES:
        decoded = codec.decode(frame)
        assert isinstance(decoded.payload, Gossip)
        assert decoded.payload.names[0].names == ["worker", "db"]
    else:
        with pytest.raises(ta.InvalidPayload):
            codec.decode(frame)


def test_push_pull_is_stretched_in_big_clusters_as_in_memberlist() -> None:
    config = MembershipConfig()
    assert [config.push_pull_period(n) for n in (1, 32, 33, 64, 65, 200, 1000)] == [
        30.0,
        30.0,
        60.0,
        60.0,
        90.0,
        120.0,
        180.0,
    ]
