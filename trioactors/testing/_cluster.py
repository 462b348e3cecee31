"""Simulated clusters: many nodes with membership on one in-memory network."""

from __future__ import annotations

import zlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import attrs
import trio

from .._errors import NodeCrashed
from .._open import open_node
from .._services._membership import Membership, MembershipConfig, start_membership
from ..transports._memory import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .._runtime._node import Node

__all__ = ["SimulatedCluster", "open_simulated_cluster"]


@final
class SimulatedCluster:
    """Nodes with membership on a :class:`MemoryNetwork`; see :func:`open_simulated_cluster`.

    .. versionadded:: 0.1
    """

    def __init__(
        self, network: MemoryNetwork, nursery: trio.Nursery, config: MembershipConfig
    ) -> None:
        self.network = network
        self.config = config
        self.nodes: dict[str, Node] = {}
        self.members: dict[str, Membership] = {}
        self._nursery = nursery
        self._stops: dict[str, trio.Event] = {}
        self._down: set[str] = set()

    async def add(self, name: str, *, seeds: list[str] | None = None) -> Membership:
        """Start node ``name`` and join it through ``seeds`` (default: the first node)."""
        if seeds is None:
            seeds = list(self.nodes)[:1]
        membership: Membership = await self._nursery.start(self._run, name, seeds, [])
        return membership

    async def _run(
        self,
        name: str,
        seeds: list[str],
        known: list[str],
        task_status: trio.TaskStatus[Membership] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        stop = self._stops[name] = trio.Event()
        config = self.config
        if config.seed is not None:  # each node its own stream, reproducible
            config = attrs.evolve(config, seed=config.seed ^ zlib.crc32(name.encode()))
        try:
            async with open_node(name, transport=self.network.transport(name)) as node:
                self.nodes[name] = node
                membership = await start_membership(
                    node,
                    seeds={s: f"memory://{s}" for s in seeds},
                    config=config,
                    known={k: f"memory://{k}" for k in known},
                )
                self.members[name] = membership
                task_status.started(membership)
                await stop.wait()
        except NodeCrashed:
            pass  # the fault plan crashed it: that is the point
        finally:
            self.nodes.pop(name, None)
            self.members.pop(name, None)

    def crash(self, name: str) -> None:
        """Crash node ``name`` through the network's fault plan."""
        self._down.add(name)
        self.network.crash(name)

    def stop(self, name: str) -> None:
        """Stop node ``name`` (without leaving: to the others it just falls silent)."""
        self._down.add(name)
        self._stops[name].set()

    def running(self) -> list[str]:
        """Names of the nodes that have not been crashed or stopped."""
        return [name for name in self.members if name not in self._down]

    async def wait_until(
        self, condition: Callable[[Membership], bool], *, nodes: list[str] | None = None
    ) -> None:
        """Wait until ``condition`` holds for every running (or each named) member; no polling."""
        for name in nodes if nodes is not None else self.running():
            membership = self.members.get(name)
            while membership is not None and name not in self._down and not condition(membership):
                await membership.wait_changed()

    def _stop_all(self) -> None:
        for stop in self._stops.values():
            stop.set()


@asynccontextmanager
async def open_simulated_cluster(
    size: int,
    *,
    seed: int = 0,
    network: MemoryNetwork | None = None,
    config: MembershipConfig | None = None,
    prefix: str = "n",
    formed: bool = False,
) -> AsyncIterator[SimulatedCluster]:
    """Start ``size`` nodes named ``n0``, ``n1``, ... on one in-memory network.

    Node ``n0`` starts alone; the others join through it. Returns once every
    node has started (not once all know each other: use ``wait_until``).
    Deterministic for a given seed under ``trio.testing.MockClock``.

    With ``formed=True`` every node starts knowing every other as alive (see
    ``known`` in :func:`~trioactors.start_membership`), as if the cluster had
    been running for a while: this skips the gossip of ``size`` simultaneous
    joins, which costs ``O(size**2)`` merges of real work (minutes of real
    time for a thousand nodes).

    A big simulation keeps ``size**2`` member records alive; Python's cyclic
    garbage collector rescans them all in every full collection. Calling
    :func:`gc.freeze` once the cluster has formed takes them out of its way.

    .. versionadded:: 0.1
    """
    network = network or MemoryNetwork(seed=seed, latency=0.001, trace_limit=0)
    config = config or MembershipConfig(seed=seed)
    async with network.running(), trio.open_nursery() as nursery:
        cluster = SimulatedCluster(network, nursery, config)
        names = [f"{prefix}{i}" for i in range(size)]
        for name in names:
            if formed:
                await nursery.start(cluster._run, name, [], names)
            else:
                await cluster.add(name)
        try:
            yield cluster
        finally:
            cluster._stop_all()
