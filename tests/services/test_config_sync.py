"""Config sync on simulated clusters under MockClock.

A write spreads to every node; concurrent writes and partitions converge to
the same last-writer-wins winners everywhere; a late joiner starts with the
configuration; subscribers see each change once; bad values are refused,
locally with a typed error and from peers by counting, never by crashing.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioactors as ta
from trioactors._core._config import ConfigError, ConfigState
from trioactors._services._config import (
    ConfigChanged,
    ConfigService,
    Push,
    Sync,
    SyncReply,
    start_config,
)
from trioactors.testing import open_simulated_cluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from types import UnionType

    from trioactors.testing import SimulatedCluster

INTERVAL = 1.0


@attrs.frozen
class Limits:
    rps: int
    burst: int = 10


SCHEMA: dict[str, type | UnionType] = {"port": int, "limits": Limits, "hosts": list[str]}


@attrs.define
class Configs:
    cluster: SimulatedCluster
    services: dict[str, ConfigService]

    def __getitem__(self, name: str) -> ConfigService:
        return self.services[name]

    async def add(self, name: str) -> ConfigService:
        membership = await self.cluster.add(name)
        service = await start_config(
            self.cluster.nodes[name], membership, schema=SCHEMA, interval=INTERVAL
        )
        self.services[name] = service
        return service

    async def until(
        self, condition: Callable[[ConfigService], bool], *, nodes: list[str] | None = None
    ) -> None:
        """Wait until ``condition`` holds on every (or each named) node; no polling."""
        for name in nodes if nodes is not None else list(self.services):
            service = self.services[name]
            while not condition(service):
                await service.wait_changed()

    def assert_converged(self, expected: ConfigState) -> None:
        for name, service in self.services.items():
            assert service.entries() == expected.entries(), name


@asynccontextmanager
async def open_configs(
    size: int, *, seed: int = 1, schema: Mapping[str, type | UnionType] | None = None
) -> AsyncIterator[Configs]:
    async with open_simulated_cluster(size, seed=seed, formed=True) as cluster:
        services = {}
        for name, node in list(cluster.nodes.items()):
            services[name] = await start_config(
                node,
                cluster.members[name],
                schema=SCHEMA if schema is None else schema,
                interval=INTERVAL,
            )
        yield Configs(cluster, services)


def expected_from(*services: ConfigService) -> ConfigState:
    """The pure merge of everything the services hold: the LWW winners."""
    state = ConfigState()
    for service in services:
        state.merge(service.entries())
    return state


@pytest.fixture(autouse=True)
def _quiet() -> object:
    # partitioned and crashed nodes make their peers log failed sends; expected here
    logging.getLogger("trioactors").setLevel(logging.ERROR)
    yield
    logging.getLogger("trioactors").setLevel(logging.NOTSET)


# -- spreading -------------------------------------------------------------------------------


async def test_a_write_reaches_every_node(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with open_configs(8) as configs:
            start = trio.current_time()
            entry = await configs["n3"].set("port", 8080)
            assert (entry.key, entry.value, entry.node, entry.deleted) == (
                "port",
                8080,
                "n3",
                False,
            )
            assert configs["n3"].get("port") == 8080  # applied here before set returns
            await configs.until(lambda c: c.get("port") == 8080)
            assert trio.current_time() - start <= 3 * INTERVAL
            await configs["n5"].set("limits", Limits(rps=100))
            await configs.until(lambda c: c.get("limits") == Limits(rps=100))
            assert trio.current_time() - start <= 6 * INTERVAL
            for service in configs.services.values():
                assert service.snapshot() == {"limits": Limits(100), "port": 8080}
                assert service.state.entry("limits").value == {"rps": 100, "burst": 10}  # type: ignore[union-attr]


async def test_anti_entropy_repairs_what_gossip_missed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_configs(5) as configs:
            network = configs.cluster.network
            network.partition(["n4"])  # (shorter than a suspicion: still a member to everyone)
            await configs["n0"].set("port", 1)
            await configs["n1"].set("hosts", ["a", "b"])
            await trio.sleep(0.5)  # the pushes to n4 are lost
            assert configs["n4"].snapshot() == {}
            network.heal()
            start = trio.current_time()
            await configs.until(lambda c: c.snapshot() == {"hosts": ["a", "b"], "port": 1})
            assert trio.current_time() - start <= 3 * INTERVAL
            assert configs["n4"].statistics().syncs >= 1


async def test_concurrent_writes_to_one_key_converge_to_one_winner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_configs(5) as configs:
            # every node writes before any write arrives anywhere: all at version 1
            written = [await configs[f"n{i}"].set("port", 1000 + i) for i in range(5)]
            assert {e.version for e in written} == {1}
            await configs.until(lambda c: c.get("port") == 1004)  # (1, "n4") is the greatest
            winner = max(written, key=lambda e: e.stamp)
            for service in configs.services.values():
                assert service.state.entry("port") == winner
            # a later write anywhere beats it: it has seen version 1
            later = await configs["n0"].set("port", 7)
            assert later.version == 2
            await configs.until(lambda c: c.get("port") == 7)


async def test_config_converges_across_a_partition_and_heal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with open_configs(6, seed=3) as configs:
            left, right = ["n0", "n1", "n2"], ["n3", "n4", "n5"]
            await configs["n0"].set("gone", 1)
            await configs["n0"].set("kept", 1)
            await configs.until(lambda c: c.get("kept") == 1)

            configs.cluster.network.partition(left)
            # each side declares the other dead
            await configs.cluster.wait_until(
                lambda m: not set(m.alive()) & set(right if m.node.name in left else left)
            )
            # writes on both sides: "shared" concurrently; "gone" is written on
            # the right, then deleted on the left at a higher version
            await configs["n3"].set("shared", "right")
            await configs["n4"].set("gone", 2)
            await configs["n4"].set("right-only", True)
            for i in range(5):
                await configs["n1"].set("left-counter", i)
            # (the left side has seen more writes: its later writes win)
            await configs.until(lambda c: c.get("left-counter") == 4, nodes=left)
            await configs["n2"].set("shared", "left")
            await configs["n0"].delete("gone")
            await configs["n5"].delete("kept")
            await configs.until(lambda c: c.get("shared") == "left", nodes=left)
            await configs.until(lambda c: c.get("shared") == "right", nodes=right)
            expected = expected_from(*configs.services.values())
            assert expected.snapshot() == {"left-counter": 4, "right-only": True, "shared": "left"}

            configs.cluster.network.heal()
            start = trio.current_time()
            await configs.until(lambda c: c.entries() == expected.entries())
            elapsed = trio.current_time() - start
            config = configs.cluster.config
            assert elapsed <= config.reconnect_interval + 5 * INTERVAL
            configs.assert_converged(expected)
            for service in configs.services.values():
                assert service.snapshot() == expected.snapshot()
                assert service.get("gone") is None  # the delete won over the older write
                assert service.get("kept") is None


async def test_a_node_that_joins_late_gets_the_current_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_configs(4) as configs:
            await configs["n0"].set("port", 80)
            await configs["n1"].set("hosts", ["x"])
            await configs["n2"].delete("port")
            await configs["n3"].set("limits", Limits(5, 6))
            await configs.until(lambda c: c.get("limits") == Limits(5, 6))
            snapshot = configs["n0"].snapshot()
            clock = configs["n0"].state.clock

            late = await configs.add("late")
            # start_config pulled from a member before it returned
            assert late.snapshot() == snapshot
            assert late.entries() == configs["n0"].entries()  # tombstones too
            assert late.state.clock == clock
            entry = await late.set("port", 443)  # a Lamport clock past everything it got
            assert entry.version == clock + 1
            await configs.until(lambda c: c.get("port") == 443)


async def test_a_restarted_config_actor_keeps_the_replica(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_configs(3) as configs:
            await configs["n0"].set("port", 1)
            await configs.until(lambda c: c.get("port") == 1)
            assert await configs.cluster.nodes["n1"].root.restart_child("$config")
            assert configs["n1"].get("port") == 1
            await configs["n2"].set("port", 2)
            await configs.until(lambda c: c.get("port") == 2)


# -- subscribers -----------------------------------------------------------------------------


class Recorder(ta.Actor[ConfigChanged]):
    def __init__(self, seen: list[ConfigChanged]) -> None:
        self.seen = seen

    async def receive(self, message: ConfigChanged) -> object:
        self.seen.append(message)
        return None


async def test_subscribers_see_each_change_once(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with open_configs(4) as configs:
            seen: dict[str, list[tuple[str, object, object]]] = {n: [] for n in configs.services}
            for name, service in configs.services.items():

                def record(change: ConfigChanged, name: str = name) -> None:
                    seen[name].append((change.key, change.old, change.new))

                service.subscribe(record)
            by_actor: list[ConfigChanged] = []
            ref = await configs.cluster.nodes["n2"].root.start_actor(Recorder, by_actor)
            configs["n2"].subscribe(ref)

            await configs["n0"].set("port", 1)
            await configs.until(lambda c: c.get("port") == 1)
            await configs["n1"].set("port", 1)  # the same value: nobody is notified
            await configs.until(lambda c: c.state.entry("port").node == "n1")  # type: ignore[union-attr]
            await configs["n3"].set("port", 2)
            await configs.until(lambda c: c.get("port") == 2)
            await configs["n0"].delete("port")
            await configs.until(lambda c: c.state.entry("port").deleted)  # type: ignore[union-attr]
            await configs["n1"].set("limits", Limits(1))
            await configs.until(lambda c: c.get("limits") is not None)
            await trio.sleep(10 * INTERVAL)  # anti-entropy rounds bring nothing new

            changes = [("port", None, 1), ("port", 1, 2), ("port", 2, None)]
            changes.append(("limits", None, Limits(1)))
            for name in configs.services:
                assert seen[name] == changes, name
            assert [(c.key, c.old, c.new) for c in by_actor] == changes
            assert by_actor[-1].entry.node == "n1"
            assert by_actor[2].entry.deleted

            configs["n2"].unsubscribe(ref)
            await configs["n0"].set("port", 3)
            await configs.until(lambda c: c.get("port") == 3)
            assert len(by_actor) == 4
            assert len(seen["n2"]) == 5


async def test_a_failing_subscriber_does_not_stop_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_configs(2) as configs:
            got: list[object] = []

            def broken(_: ConfigChanged) -> None:
                raise RuntimeError("boom")

            configs["n1"].subscribe(broken)
            configs["n1"].subscribe(lambda change: got.append(change.new))
            await configs["n0"].set("port", 5)
            await configs.until(lambda c: c.get("port") == 5)
            assert got == [5]
            assert configs["n1"].statistics().callback_errors == 1
            await configs["n1"].set("port", 6)  # the node (and its actor) carry on
            await configs.until(lambda c: c.get("port") == 6)


async def test_subscribers_that_cannot_work_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_configs(2) as configs:

        async def asynchronous(_: ConfigChanged) -> None:
            pass

        with pytest.raises(ta.LocalProtocolError, match="async"):
            configs["n0"].subscribe(asynchronous)
        remote = configs.cluster.nodes["n0"].ref("someone@n1")
        with pytest.raises(ta.LocalProtocolError, match="another node"):
            configs["n0"].subscribe(remote)


async def test_wait_for(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with open_configs(3) as configs:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    for port in (1, 2, 3):
                        await trio.sleep(1)
                        await configs["n0"].set("port", port)

                nursery.start_soon(writer)
                assert await configs["n2"].wait_for("port") == 1
                assert await configs["n2"].wait_for("port", lambda p: p == 3) == 3
            assert await configs["n1"].wait_for("port", lambda p: p == 3) == 3  # already true
            with trio.move_on_after(5) as scope:
                await configs["n1"].wait_for("nothing")
            assert scope.cancelled_caught


# -- bad input --------------------------------------------------------------------------------


async def test_a_value_of_the_wrong_type_is_refused_locally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_configs(2) as configs:
        config = configs["n0"]
        for key, bad in [
            ("port", "80"),
            ("port", True),
            ("port", 1.5),
            ("hosts", ["a", 1]),
            ("limits", {"rps": "many"}),
            ("limits", {"rps": 1, "extra": 2}),
            ("anything", (1, 2)),
            ("anything", {1: 2}),
        ]:
            with pytest.raises(ConfigError, match=repr(key)):
                await config.set(key, bad)
        with pytest.raises(ValueError, match="key"):
            await config.set("", 1)
        with pytest.raises(ConfigError, match="limit is"):
            await config.set("blob", "x" * 70_000)
        assert config.snapshot() == {}
        assert config.statistics().writes == 0
        # the right types are taken, attrs instances unstructured on the way
        await config.set("limits", Limits(3))
        await config.set("anything", {"nested": [1, None, "x"]})
        assert config.get("limits") == Limits(3, 10)
        assert config.state.get("limits") == {"rps": 3, "burst": 10}


async def test_bad_entries_from_a_peer_are_refused_counted_and_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        async with open_configs(3) as configs:
            n0 = configs.cluster.nodes["n0"]
            target = n0.ref("$config@n1")
            await configs["n2"].set("port", 80)
            await configs.until(lambda c: c.get("port") == 80)
            before = configs.cluster.nodes["n1"].statistics().invalid_payloads

            with caplog.at_level(logging.WARNING, logger="trioactors.config"):
                # well formed, but the wrong type for the schema, and too large:
                # refused one by one; the good entry in the same message is taken
                bad = {
                    "origin": "n0",
                    "entries": [
                        ["port", 50, "n0", False, "eighty"],
                        ["blob", 50, "n0", False, "x" * 70_000],
                        ["hosts", 50, "n0", False, ["ok"]],
                    ],
                }
                await target.tell(ta.RawMessage("$config.Push", bad))
                await trio.sleep(3 * INTERVAL)  # (n0 keeps offering them in exchanges)
            n1 = configs["n1"]
            assert n1.get("port") == 80
            assert n1.get("blob") is None
            assert n1.get("hosts") == ["ok"]
            assert n1.statistics().rejected >= 2
            refused = [r for r in caplog.records if "refused" in r.getMessage()]
            assert len(refused) == 2  # logged once per entry, counted every time
            assert "'port' takes int" in refused[0].getMessage()

            # not well formed: the whole message is an invalid payload
            await target.tell(
                ta.RawMessage("$config.Push", {"origin": "n0", "entries": [["port"]]})
            )
            await target.tell(
                ta.RawMessage(
                    "$config.Push", {"origin": "n0", "entries": [["k", 0, "n0", False, 1]]}
                )
            )
            with pytest.raises(ta.InvalidPayload):
                await target.ask(ta.RawMessage("$config.Sync", {"origin": "n0", "summary": ["x"]}))
            with pytest.raises(ta.InvalidPayload):
                await target.ask(
                    ta.RawMessage(
                        "$config.Exchange",
                        {"origin": "n0", "entries": [["port", 1, "n0", True, 5]], "wanted": []},
                    )
                )
            await trio.sleep(1)
            after = configs.cluster.nodes["n1"].statistics().invalid_payloads
            assert after - before == 4

            # the node carries on: it answers, and writes still spread
            reply = await target.ask(Sync("n0", n1.state.summary()))
            assert reply == SyncReply([], [], partial=False)
            await configs["n1"].set("port", 81)
            await configs.until(lambda c: c.get("port") == 81)


async def test_a_peer_without_the_schema_cannot_spread_bad_values(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=2, formed=True) as cluster:
            typed = {
                n: await start_config(cluster.nodes[n], cluster.members[n], schema={"port": int})
                for n in ("n0", "n1")
            }
            loose = await start_config(cluster.nodes["n2"], cluster.members["n2"])
            await loose.set("port", "eighty")  # no schema here: taken
            await loose.set("name", "svc")
            for config in typed.values():
                await config.wait_for("name")
            await trio.sleep(5)
            for config in typed.values():
                assert config.get("port") is None
                assert config.statistics().rejected >= 1
            # (a later write of the right type wins everywhere, the loose node included)
            await typed["n0"].set("port", 80)
            await loose.wait_for("port", lambda p: p == 80)


async def test_get_config_is_a_read_only_query(autojump_clock: trio.testing.MockClock) -> None:
    async with open_configs(2) as configs:
        await configs.services["n0"].set("k", [1, 2])
        n1 = configs.cluster.nodes["n1"]
        await configs.services["n1"].wait_for("k")
        assert await n1.ref("$config@n0").ask(ta.GetConfig()) == {"k": [1, 2]}
        assert ta.is_read_only(ta.GetConfig)


async def test_a_push_is_tagged_under_config(autojump_clock: trio.testing.MockClock) -> None:
    async with open_configs(2) as configs:
        registry = configs.cluster.nodes["n0"].codec.registry
        assert registry.tag_of(Push) == "$config.Push"
        assert {t for t in registry.tags() if t.startswith("$config.")} == {
            "$config.Sync",
            "$config.SyncReply",
            "$config.Exchange",
            "$config.Entries",
            "$config.Push",
            "$config.GetConfig",
        }


# -- faults chosen by hypothesis ----------------------------------------------------------------

writes = st.lists(
    st.tuples(
        st.integers(0, 3),  # the node that writes
        st.sampled_from(["a", "b", "c"]),
        st.none() | st.integers(0, 9),  # None: a delete
        st.floats(0, 2),  # seconds before the write
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25)
@given(writes, st.integers(0, 2**16), st.sampled_from([0.0, 0.1, 0.3]))
def test_every_node_converges_to_the_merge_of_all_writes_under_faults(
    plan: list[tuple[int, str, int | None, float]], seed: int, loss: float
) -> None:
    async def main() -> None:
        with trio.fail_after(600):
            async with open_configs(4, seed=seed) as configs:
                network = configs.cluster.network
                network.drop(loss)
                network.duplicate(0.1)
                network.reorder(0.1)
                written = []
                for node, key, value, pause in plan:
                    await trio.sleep(pause)
                    config = configs[f"n{node}"]
                    if value is None:
                        written.append(await config.delete(key))
                    else:
                        written.append(await config.set(key, value))
                network.clear()
                expected = ConfigState()
                expected.merge(written)
                await configs.until(lambda c: c.entries() == expected.entries())
                for service in configs.services.values():
                    assert service.snapshot() == expected.snapshot()
                    assert service.statistics().rejected == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
