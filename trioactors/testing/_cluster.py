"""Simulated clusters: many nodes with membership on one in-memory network."""

from __future__ import annotations

import zlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import attrs
import trio

from .._errors import LocalProtocolError, NodeCrashed
from .._open import open_node
from .._services._membership import Membership, MembershipConfig, start_membership
from ..transports._memory import MemoryNetwork
from ._plan import (
    Clear,
    Crash,
    Delay,
    Drop,
    Duplicate,
    Fault,
    FaultPlan,
    Heal,
    InvariantViolated,
    Partition,
    Reorder,
    Restart,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

    from .._runtime._node import Node
    from .._wire._codec import Format, MessageRegistry
    from ..transports._base import Transport

__all__ = ["SimulatedCluster", "open_simulated_cluster"]


@final
class SimulatedCluster:
    """Nodes with membership on a :class:`MemoryNetwork`; see :func:`open_simulated_cluster`.

    Attributes:
      network: the :class:`MemoryNetwork` every node is on.
      nodes: the running nodes by name (a crashed node is absent until it restarts).
      members: each running node's :class:`~trioactors.Membership`.
      names: every node name the cluster has had, in the order they started.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        network: MemoryNetwork,
        nursery: trio.Nursery,
        config: MembershipConfig,
        *,
        setup: Callable[[Node], Awaitable[None]] | None = None,
        wire_format: Format = "json",
        registry: MessageRegistry | None = None,
    ) -> None:
        self.network = network
        self.config = config
        self.nodes: dict[str, Node] = {}
        self.members: dict[str, Membership] = {}
        self.names: list[str] = []
        self._nursery = nursery
        self._setup = setup
        self._wire_format: Format = wire_format
        self._registry = registry
        self._stops: dict[str, trio.Event] = {}
        self._exited: dict[str, trio.Event] = {}
        self._down: set[str] = set()
        self._crashed: set[str] = set()
        self._started = trio.current_time()
        self._steps_applied = 0

    async def add(self, name: str, *, seeds: list[str] | None = None) -> Membership:
        """Start node ``name`` and join it through ``seeds`` (default: the first running node)."""
        if name in self._stops and name not in self._down:
            raise LocalProtocolError(f"node {name!r} is running already")
        if seeds is None:
            seeds = self.running()[:1]
        membership: Membership = await self._nursery.start(self._run, name, seeds, [], None)
        return membership

    async def _run(
        self,
        name: str,
        seeds: list[str],
        known: list[str],
        transport: Transport | None,
        task_status: trio.TaskStatus[Membership] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        stop = self._stops[name] = trio.Event()
        exited = self._exited[name] = trio.Event()
        if name not in self.names:
            self.names.append(name)
        self._down.discard(name)
        config = self.config
        if config.seed is not None:  # each node its own stream, reproducible
            config = attrs.evolve(config, seed=config.seed ^ zlib.crc32(name.encode()))
        memory = self.network.transport(name) if transport is None else transport
        try:
            async with open_node(
                name,
                transport=memory,
                wire_format=self._wire_format,
                registry=self._registry,
            ) as node:
                self.nodes[name] = node
                membership = await start_membership(
                    node,
                    seeds={s: f"memory://{s}" for s in seeds if s != name},
                    config=config,
                    known={k: f"memory://{k}" for k in known if k != name},
                )
                self.members[name] = membership
                if self._setup is not None:
                    await self._setup(node)
                task_status.started(membership)
                await stop.wait()
        except* NodeCrashed:
            pass  # the fault plan crashed it: that is the point
        finally:
            self.nodes.pop(name, None)
            self.members.pop(name, None)
            exited.set()

    # -- faults -----------------------------------------------------------------------

    def crash(self, name: str) -> None:
        """Crash node ``name`` through the network's fault plan: its tasks are cancelled."""
        self._down.add(name)
        self._crashed.add(name)
        self.network.crash(name)

    def stop(self, name: str) -> None:
        """Stop node ``name`` (without leaving: to the others it just falls silent)."""
        self._down.add(name)
        self._stops[name].set()

    async def restart(self, name: str) -> Membership:
        """Start crashed (or stopped) node ``name`` again: empty, with a fresh transport.

        It joins through the running nodes and runs the cluster's ``setup``
        again. Returns once it has started (not once everyone knows it).

        Raises:
          LocalProtocolError: ``name`` is running, or was never part of the cluster.
        """
        if name not in self._stops:
            raise LocalProtocolError(f"no node named {name!r} in this cluster")
        if name not in self._down:
            raise LocalProtocolError(f"node {name!r} is running; crash or stop it first")
        await self._exited[name].wait()  # (its tasks have seen the crash)
        transport: Transport | None = None
        if name in self._crashed:
            self._crashed.discard(name)
            transport = self.network.restart(name)
        membership: Membership = await self._nursery.start(
            self._run, name, self.running(), [], transport
        )
        return membership

    async def apply(self, fault: Fault) -> None:
        """Apply one fault of a plan now (see :mod:`trioactors.testing` for each)."""
        network = self.network
        match fault:
            case Crash(node):
                self.crash(node)
            case Restart(node):
                await self.restart(node)
            case Partition(a, b):
                network.partition(a, b or None)
            case Heal():
                network.heal()
            case Clear():
                network.clear()
            case Drop(rate, between):
                network.drop(rate, between=_groups(between))
            case Delay(low, high, between):
                network.delay(low, high, between=_groups(between))
            case Duplicate(rate):
                network.duplicate(rate)
            case Reorder(rate):
                network.reorder(rate)

    async def run_plan(
        self,
        plan: FaultPlan | str,
        *,
        invariants: Sequence[Callable[[SimulatedCluster], object]] = (),
        check_every: float | None = None,
    ) -> None:
        """Apply ``plan``'s steps at their times (from now), checking ``invariants``.

        Each invariant is called with the cluster after every step (and
        every ``check_every`` simulated seconds, if given); one that returns
        ``False`` or raises ``AssertionError`` fails the run with
        :class:`InvariantViolated`.

        Raises:
          FaultPlanError: the plan names unknown nodes, crashes a node that
            is down or restarts one that is running.
          InvariantViolated: an invariant did not hold.
        """
        if isinstance(plan, str):
            plan = FaultPlan.parse(plan)
        plan.check(self.names, down=self._down)
        start = trio.current_time()
        self._steps_applied = 0
        async with trio.open_nursery() as nursery:
            if check_every is not None and invariants:
                nursery.start_soon(self._check_periodically, invariants, check_every)
            for number, step in enumerate(plan.steps, 1):
                if trio.current_time() < start + step.at:
                    await trio.sleep_until(start + step.at)
                # (a step whose time has come costs no checkpoint: a plan with one more
                # harmless step schedules the tasks as the plan without it does)
                await self.apply(step.fault)
                self._steps_applied = number
                self.check(invariants)
            nursery.cancel_scope.cancel()

    async def _check_periodically(
        self, invariants: Sequence[Callable[[SimulatedCluster], object]], every: float
    ) -> None:
        while True:
            await trio.sleep(every)
            self.check(invariants)

    def check(self, invariants: Iterable[Callable[[SimulatedCluster], object]]) -> None:
        """Check each invariant now.

        Raises:
          InvariantViolated: one returned ``False`` or raised ``AssertionError``
            (then the ``__cause__``).
        """
        for invariant in invariants:
            name = getattr(invariant, "__name__", repr(invariant))
            now = trio.current_time() - self._started
            where = f"at {now:.3f} s (simulated), after {self._steps_applied} step(s) of the plan"
            cause: AssertionError | None = None
            try:
                held = invariant(self)
            except AssertionError as exc:
                held, cause = False, exc
            if held is False:
                how = f"failed {where}: {cause}" if cause is not None else f"returned False {where}"
                raise InvariantViolated(
                    f"invariant {name} {how}", name=name, time=now, step=self._steps_applied
                ) from cause

    # -- views ------------------------------------------------------------------------

    def running(self) -> list[str]:
        """Names of the nodes that are up (not crashed, not stopped), in start order."""
        return [name for name in self.names if name not in self._down and name in self.members]

    def down(self) -> list[str]:
        """Names of the nodes crashed or stopped and not restarted."""
        return [name for name in self.names if name in self._down]

    def converged(self) -> bool:
        """Whether every running node sees exactly the running nodes as reachable."""
        running = sorted(self.running())
        return all(self.members[name].alive() == running for name in running)

    async def wait_converged(self, *, timeout: float = 600.0) -> None:
        """Wait until :meth:`converged` holds; event-driven, no polling.

        Raises:
          trio.TooSlowError: not within ``timeout`` simulated seconds.
        """
        with trio.fail_after(timeout):
            while not self.converged():
                async with trio.open_nursery() as nursery:
                    for membership in list(self.members.values()):
                        await nursery.start(_changed_then_cancel, membership, nursery)
                    if self.converged():  # (it changed before everyone was listening)
                        nursery.cancel_scope.cancel()

    async def wait_until(
        self, condition: Callable[[Membership], bool], *, nodes: list[str] | None = None
    ) -> None:
        """Wait until ``condition`` holds for every running (or each named) member; no polling."""
        for name in nodes if nodes is not None else self.running():
            membership = self.members.get(name)
            while membership is not None and name not in self._down and not condition(membership):
                await membership.wait_changed()
                membership = self.members.get(name)

    def _stop_all(self) -> None:
        for stop in self._stops.values():
            stop.set()


async def _changed_then_cancel(
    membership: Membership,
    nursery: trio.Nursery,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    await membership.wait_changed()  # (no checkpoint since started(): no change is missed)
    nursery.cancel_scope.cancel()


def _groups(
    between: tuple[tuple[str, ...], tuple[str, ...]] | None,
) -> tuple[tuple[str, ...], tuple[str, ...] | None] | None:
    if between is None:
        return None
    a, b = between
    return a, b or None


@asynccontextmanager
async def open_simulated_cluster(
    size: int,
    *,
    seed: int = 0,
    network: MemoryNetwork | None = None,
    config: MembershipConfig | None = None,
    prefix: str = "n",
    formed: bool = False,
    setup: Callable[[Node], Awaitable[None]] | None = None,
    wire_format: Format = "json",
    registry: MessageRegistry | None = None,
) -> AsyncIterator[SimulatedCluster]:
    """Start ``size`` nodes named ``n0``, ``n1``, ... on one in-memory network.

    Node ``n0`` starts alone; the others join through it. Returns once every
    node has started (not once all know each other: use ``wait_until`` or
    ``wait_converged``). Deterministic for a given seed under
    ``trio.testing.MockClock``.

    Args:
      size: how many nodes.
      seed: seed of the network's and the membership's random choices.
      network: the network (default: ``MemoryNetwork(seed, latency=0.001)``).
      config: membership settings (default: ``MembershipConfig(seed=seed)``).
      prefix: node names are ``prefix`` and a number.
      formed: every node starts knowing every other as alive (see ``known``
        in :func:`~trioactors.start_membership`), as if the cluster had been
        running for a while: this skips the gossip of ``size`` simultaneous
        joins, which costs ``O(size**2)`` merges of real work (minutes of
        real time for a thousand nodes).
      setup: called with each node once its membership has started, and
        again after each restart: start your actors here.
      wire_format: the nodes' wire format, ``"json"`` or ``"msgpack"``.
      registry: the nodes' message registry (default: the default registry,
        where :func:`~trioactors.message` registers your messages).

    A big simulation keeps ``size**2`` member records alive; Python's cyclic
    garbage collector rescans them all in every full collection. Calling
    :func:`gc.freeze` once the cluster has formed takes them out of its way.

    .. versionadded:: 0.1
    """
    network = network or MemoryNetwork(seed=seed, latency=0.001, trace_limit=0)
    config = config or MembershipConfig(seed=seed)
    async with network.running(), trio.open_nursery() as nursery:
        cluster = SimulatedCluster(
            network, nursery, config, setup=setup, wire_format=wire_format, registry=registry
        )
        names = [f"{prefix}{i}" for i in range(size)]
        for name in names:
            if formed:
                await nursery.start(cluster._run, name, [], names, None)
            else:
                await cluster.add(name)
        try:
            yield cluster
        finally:
            cluster._stop_all()
