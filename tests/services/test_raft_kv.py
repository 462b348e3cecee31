"""The Raft-replicated key-value store on simulated clusters.

The fault search drives clients against three servers while hypothesis
schedules crashes, restarts, partitions, loss, duplication, reordering and
delay; after every step of the plan (and every simulated second) Raft's
safety properties are checked across the servers, and at the end the whole
client history must be linearizable.
"""

from __future__ import annotations

import os
import random
import zlib
from typing import TYPE_CHECKING

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import trioactors as ta
from trioactors._core._raft import RaftConfig
from trioactors._core._raft_messages import RaftRole
from trioactors._services._kv import KvClient, KvState, KvUnavailable
from trioactors._services._raft import (
    RaftCommand,
    RaftMembership,
    RaftServer,
    start_raft,
)
from trioactors._services._raftstore import MemoryRaftStore, RaftStore, SqliteRaftStore
from trioactors.testing import (
    CompareAndSet,
    Delete,
    FaultPlan,
    Get,
    History,
    KVModel,
    Put,
    SimulatedCluster,
    check_linearizable,
    simulate,
)
from trioactors.testing.strategies import fault_plans

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
NAMES = ["n0", "n1", "n2"]


class Recording:
    """A KvState that reports every command it applies to the harness."""

    def __init__(self, kv: Kv, name: str) -> None:
        self.kv = kv
        self.name = name
        self.state = KvState()

    def apply(self, index: int, command: bytes) -> str | None:
        seen = self.kv.applied.setdefault(index, command)
        if seen != command:
            self.kv.violations.append(f"{self.name} applied another command at {index}")
        return self.state.apply(index, command)

    def query(self, query: str) -> str | None:
        return self.state.query(query)

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        self.state.restore(data)


class Kv:
    """Servers on the cluster's nodes, their stores (kept across crashes), and invariants."""

    def __init__(
        self,
        voters: list[str],
        *,
        config: RaftConfig | None = None,
        store: Callable[[str], RaftStore] | None = None,
    ) -> None:
        self.voters = voters
        self.config = config
        self._make_store = store
        self.stores: dict[str, RaftStore] = {}
        self.servers: dict[str, RaftServer] = {}
        self.applied: dict[int, bytes] = {}
        self.leaders: dict[int, str] = {}  # term -> the one leader it ever had
        self.violations: list[str] = []

    def store(self, name: str) -> RaftStore:
        if name not in self.stores:
            self.stores[name] = (
                self._make_store(name) if self._make_store is not None else MemoryRaftStore()
            )
        return self.stores[name]

    async def setup(self, node: ta.Node) -> None:
        if node.name not in self.voters and node.name not in self.servers:
            return
        self.servers[node.name] = await start_raft(
            node,
            self.voters,
            Recording(self, node.name),
            store=self.store(node.name),
            config=self.config,
            seed=zlib.crc32(node.name.encode()),
        )

    def live(self, cluster: SimulatedCluster) -> dict[str, RaftServer]:
        return {n: s for n, s in self.servers.items() if n in cluster.nodes}

    # -- Raft's safety properties, checked across the servers ---------------------------

    def election_safety(self, cluster: SimulatedCluster) -> None:
        for name, server in self.live(cluster).items():
            if server.role is RaftRole.LEADER:
                first = self.leaders.setdefault(server.term, name)
                assert first == name, f"two leaders in term {server.term}: {first}, {name}"

    def log_matching(self, cluster: SimulatedCluster) -> None:
        logs = {n: {e.index: e for e in s.raft.log} for n, s in self.live(cluster).items()}
        names = sorted(logs)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                common = sorted(set(logs[a]) & set(logs[b]), reverse=True)
                # the latest index where both have an entry of the same term: all before agree
                for index in common:
                    if logs[a][index].term == logs[b][index].term:
                        for earlier in common:
                            if earlier <= index:
                                assert logs[a][earlier] == logs[b][earlier], (
                                    f"{a} and {b} differ at {earlier}, below a shared "
                                    f"entry at {index}"
                                )
                        break

    def leader_completeness(self, cluster: SimulatedCluster) -> None:
        for name, server in self.live(cluster).items():
            if server.role is not RaftRole.LEADER:
                continue
            log = server.raft.log
            for index, command in self.applied.items():
                if index > log.snapshot_index:
                    assert index <= log.last_index, f"leader {name} lacks applied entry {index}"
                    assert log.entry(index).data == command, f"leader {name} differs at {index}"

    def state_machine_safety(self, cluster: SimulatedCluster) -> None:
        assert not self.violations, self.violations

    @property
    def invariants(self) -> list[Callable[[SimulatedCluster], None]]:
        return [
            self.election_safety,
            self.log_matching,
            self.leader_completeness,
            self.state_machine_safety,
        ]


def kv_simulation(
    scenario: Callable[[SimulatedCluster, Kv], object],
    *,
    kv: Kv | None = None,
    plan: FaultPlan | str | None = None,
    seed: int = 0,
    nodes: int = 3,
) -> Kv:
    kv = kv or Kv(NAMES)

    async def run(cluster: SimulatedCluster) -> None:
        await scenario(cluster, kv)  # type: ignore[misc]

    simulate(
        run,
        nodes=nodes,
        seed=seed,
        setup=kv.setup,
        plan=plan,
        invariants=kv.invariants,
        check_every=0.5,
        timeout=600,
    )
    return kv


# -- behaviour ------------------------------------------------------------------------------


def test_put_get_delete_and_compare_and_set() -> None:
    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES, seed=1)
        assert await client.get("a") is None
        await client.put("a", "1")
        assert await client.get("a") == "1"
        assert await client.compare_and_set("a", "1", "2")
        assert not await client.compare_and_set("a", "1", "3")
        assert await client.compare_and_set("b", None, "new")  # create if absent
        assert await client.get("b") == "new"
        assert await client.delete("a")
        assert not await client.delete("a")
        assert await client.get("a") is None
        assert await client.compare_and_set("b", "new", None)  # delete if equal
        assert await client.get("b") is None
        # every server applied the same commands
        await trio.sleep(1)
        states = {n: s.state_machine.state.data for n, s in kv.servers.items()}  # type: ignore[attr-defined]
        assert list(states.values()) == [{}, {}, {}]

    kv_simulation(scenario)


def test_clients_are_redirected_to_the_leader() -> None:
    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        await KvClient(cluster.nodes["n0"], NAMES).put("x", "1")
        leader = next(n for n, s in kv.servers.items() if s.role is RaftRole.LEADER)
        follower = next(n for n in NAMES if n != leader)
        client = KvClient(cluster.nodes[follower], [follower, *NAMES])
        assert await client.get("x") == "1"
        assert client.redirects == 1
        assert client.leader == leader

    kv_simulation(scenario)


def test_a_retried_write_is_applied_once() -> None:
    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES)
        await client.put("counter", "0")
        leader = client.leader
        assert leader is not None
        # the same command (same client, same number) sent three times, as a client
        # whose replies were lost would: applied once, the same answer every time
        command = b'{"c": "retrier", "s": 1, "op": "cas", "k": "counter", "e": "0", "v": "1"}'
        ref = cluster.nodes["n0"].ref(f"$raft@{leader}")
        replies = [await ref.ask(RaftCommand(command)) for _ in range(3)]
        assert {r.result for r in replies} == {'{"ok": true}'}
        await trio.sleep(1)
        for server in kv.servers.values():
            state = server.state_machine.state  # type: ignore[attr-defined]
            assert state.data["counter"] == "1"
            assert state.duplicates == 2

    kv_simulation(scenario)


def test_no_leader_means_a_clear_error_not_a_hang() -> None:
    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES, timeout=5)
        await client.put("a", "1")
        cluster.network.partition(["n0"])  # n0 alone: no majority on its side
        with pytest.raises(KvUnavailable, match="no leader among n0, n1, n2 answered within 5"):
            await client.put("a", "2")
        cluster.network.heal()
        assert await client.get("a") in {"1", "2"}  # (the write may have been applied)

    kv_simulation(scenario)


def test_a_new_server_joins_and_one_leaves() -> None:
    kv = Kv(NAMES)

    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES)
        for i in range(20):
            await client.put(f"k{i}", str(i))
        leader = client.leader
        assert leader is not None
        # n3 starts knowing the current voters, without itself: it waits to be added
        kv.servers["n3"] = await start_raft(
            cluster.nodes["n3"], NAMES, Recording(kv, "n3"), store=kv.store("n3")
        )
        reply = await cluster.nodes["n0"].ref(f"$raft@{leader}").ask(RaftMembership("n3", True))
        assert reply.status == "ok", reply
        await trio.sleep(1)
        assert kv.servers["n3"].state_machine.state.data["k19"] == "19"  # type: ignore[attr-defined]
        assert kv.servers["n3"].raft.voters == ("n0", "n1", "n2", "n3")
        reply = await cluster.nodes["n0"].ref(f"$raft@{leader}").ask(RaftMembership("n1", False))
        assert reply.status == "ok", reply
        await trio.sleep(1)
        for name in ("n0", "n2", "n3"):
            assert set(kv.servers[name].raft.voters) == {"n0", "n2", "n3"}
        client = KvClient(cluster.nodes["n0"], ["n0", "n2", "n3"])
        await client.put("after", "change")
        assert await client.get("after") == "change"

    kv_simulation(scenario, kv=kv, nodes=4)


def test_snapshots_compact_the_log_and_catch_up_a_lagging_server() -> None:
    kv = Kv(NAMES, config=RaftConfig(snapshot_threshold=10))

    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES)
        await client.put("first", "1")
        lagging = next(n for n in NAMES if n != client.leader and n != "n0")
        cluster.crash(lagging)
        for i in range(50):
            await client.put(f"k{i}", str(i))
        leader = kv.servers[client.leader or ""]
        assert leader.raft.log.snapshot_index >= 40  # compacted
        await cluster.restart(lagging)
        await trio.sleep(2)
        server = kv.servers[lagging]
        assert server.raft.statistics().snapshots_installed >= 1
        assert server.state_machine.state.data["k49"] == "49"  # type: ignore[attr-defined]

    kv_simulation(scenario, kv=kv)


def test_the_whole_cluster_restarts_from_sqlite(tmp_path: Path) -> None:
    kv = Kv(NAMES, store=lambda name: SqliteRaftStore(tmp_path / f"{name}.db"))

    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES)
        for i in range(30):
            await client.put(f"k{i}", str(i))
        for name in NAMES:
            cluster.crash(name)
        for name in NAMES:  # new store objects on the same files: only the disk remains
            kv.stores[name].close()
            kv.stores[name] = SqliteRaftStore(tmp_path / f"{name}.db")
        for name in NAMES:
            await cluster.restart(name)
        client = KvClient(cluster.nodes["n1"], NAMES)
        assert await client.get("k29") == "29"
        assert await client.get("k0") == "0"

    kv_simulation(scenario, kv=kv, plan=None)


# -- the fault search -----------------------------------------------------------------------

KEYS = ["a", "b", "c"]


async def client_loop(
    cluster: SimulatedCluster,
    name: str,
    history: History[object, object],
    rng: random.Random,
    until: float,
) -> None:
    """Random operations from node ``name`` until ``until``, each recorded in ``history``."""
    client = KvClient(cluster.nodes[name], NAMES, timeout=3, client_id=name, seed=rng.random())
    count = 0
    while trio.current_time() < until:
        if name not in cluster.nodes:  # our node is down: wait for it
            await trio.sleep(1)
            continue
        client.node = cluster.nodes[name]
        count += 1
        key = rng.choice(KEYS)
        roll = rng.random()
        value = f"{name}-{count}"
        op: object
        if roll < 0.4:
            op = Get(key)
        elif roll < 0.7:
            op = Put(key, value)
        elif roll < 0.8:
            op = Delete(key)
        else:
            op = CompareAndSet(key, rng.choice([None, f"{name}-{count - 1}"]), value)
        handle = history.invoke(name, op, trio.current_time())
        try:
            match op:
                case Get(key):
                    output: object = await client.get(key)
                case Put(key, value):
                    await client.put(key, value)
                    output = None
                case Delete(key):
                    await client.delete(key)
                    output = None
                case CompareAndSet(key, expected, new):
                    output = await client.compare_and_set(key, expected, new)
        except (KvUnavailable, ta.TrioactorsError):
            if isinstance(op, Get):
                history.fail(handle, trio.current_time())  # a read has no effect
            # a write's outcome is unknown: it stays pending (it may have happened)
            await trio.sleep(0.2)
            continue
        history.complete(handle, output, trio.current_time())
        await trio.sleep(rng.uniform(0, 0.2))  # (think time: ~10 operations a second each)


def linearizable_under(plan: FaultPlan, seed_: int) -> None:
    history: History[object, object] = History()
    rng = random.Random(seed_)

    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        until = trio.current_time() + plan.duration + 5
        async with trio.open_nursery() as nursery:
            for name in NAMES:
                nursery.start_soon(
                    client_loop, cluster, name, history, random.Random(rng.random()), until
                )
        # the faults are over: the cluster must serve again
        client = KvClient(cluster.nodes["n0"], NAMES, timeout=30)
        for key in KEYS:
            handle = history.invoke("final", Get(key), trio.current_time())
            history.complete(handle, await client.get(key), trio.current_time())

    kv_simulation(scenario, plan=plan, seed=seed_)
    operations = history.operations()  # (a plan that cuts every majority may leave few)
    result = check_linearizable(operations, KVModel(), timeout=60)
    assert result.ok, str(result)


@settings(
    max_examples=300 if DEEP else 10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not DEEP,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # (explain: too slow)
)
@seed(20261130)
@given(
    plan=fault_plans(NAMES, duration=20, max_steps=6),
    seed_=st.integers(0, 2**16),
)
def test_safety_and_linearizability_under_faults(plan: FaultPlan, seed_: int) -> None:
    linearizable_under(plan, seed_)


def test_a_leader_crash_during_writes_loses_no_acknowledged_write() -> None:
    async def scenario(cluster: SimulatedCluster, kv: Kv) -> None:
        client = KvClient(cluster.nodes["n0"], NAMES)
        await client.put("start", "1")
        leader = client.leader
        acknowledged: list[str] = []

        async def writer(prefix: str, node: str) -> None:
            c = KvClient(cluster.nodes[node], NAMES, client_id=prefix)
            for i in range(40):
                try:
                    await c.put(f"{prefix}{i}", str(i))
                    acknowledged.append(f"{prefix}{i}")
                except KvUnavailable:
                    pass
                await trio.sleep(0.05)

        others = [n for n in NAMES if n != leader]
        async with trio.open_nursery() as nursery:
            for n in others:
                nursery.start_soon(writer, f"w{n}-", n)
            await trio.sleep(0.5)
            cluster.crash(leader or "")
        reader = KvClient(cluster.nodes[others[0]], NAMES)
        for key in acknowledged:
            assert await reader.get(key) is not None, key
        assert len(acknowledged) >= 60

    kv_simulation(scenario)
