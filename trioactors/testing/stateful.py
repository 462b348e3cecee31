"""A base class for stateful property tests of actors on a simulated cluster.

Needs ``hypothesis`` (``pip install trioactors[test]``). Subclass
:class:`ClusterMachine`, start your actors in :meth:`~ClusterMachine.setup_node`,
add hypothesis ``@rule`` methods that use them (through :meth:`~ClusterMachine.run`)
and ``@invariant`` methods that check what must always hold. The base class
brings the faults as rules of its own (crash, restart, partition, heal, drop,
delay, duplicate, and letting time pass), so hypothesis interleaves your
operations with faults and shrinks a failure to a short sequence of both::

    class CounterMachine(ClusterMachine):
        node_count = 3

        async def setup_node(self, node):
            await node.root.start_actor(Counter, name="counter")

        @rule(amount=st.integers(1, 10))
        def add(self, amount):
            self.run(self.cluster.nodes["n0"].ref("counter").tell, Add(amount))

        @invariant()
        def never_negative(self):
            ...

    TestCounter = CounterMachine.TestCase

The cluster lives in a Trio *guest run* under ``MockClock(autojump_threshold=0)``
driven by the machine itself: single-threaded, deterministic, and minutes of
simulated time take milliseconds. Between rules nothing runs, so invariants
read your objects' state directly. A failing run prints hypothesis' steps and,
as a note, the fault plan it applied (``FaultPlan.parse('...')``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import queue
from typing import TYPE_CHECKING, ClassVar, TypeVar, TypeVarTuple, Unpack

import outcome
import trio
import trio.testing
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from .._errors import LocalProtocolError
from .._services._membership import MembershipConfig
from ..transports._memory import MemoryNetwork
from ._cluster import SimulatedCluster, open_simulated_cluster
from ._plan import (
    Crash,
    Delay,
    Drop,
    Duplicate,
    Fault,
    FaultPlan,
    Heal,
    Restart,
    Step,
)
from ._simulate import _seed_scheduler
from .strategies import FAULT_KINDS, partitions

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._runtime._node import Node

__all__ = ["ClusterMachine"]

T = TypeVar("T")
Args = TypeVarTuple("Args")


class ClusterMachine(RuleBasedStateMachine):
    """A hypothesis state machine that owns a simulated cluster; subclass it.

    Class attributes to override:

    - ``node_count`` (3): nodes ``n0`` … ``n{node_count-1}``.
    - ``seed`` (0): seeds the network, the membership and Trio's scheduler.
    - ``fault_kinds``: which fault rules may fire (default: all of
      :data:`~trioactors.testing.strategies.FAULT_KINDS`); an empty set
      turns faults off.
    - ``max_down`` (``None``: a minority): at most this many nodes down at once.
    - ``max_wait`` (30.0): the longest a "time passes" step lasts, in seconds.
    - ``latency`` (0.001): one-way delay of every frame.
    - ``membership_config``: the nodes' :class:`~trioactors.MembershipConfig`.

    Attributes:
      cluster: the :class:`~trioactors.testing.SimulatedCluster`.
      plan: the faults applied so far, as a :class:`~trioactors.testing.FaultPlan`.

    .. versionadded:: 0.1
    """

    node_count: ClassVar[int] = 3
    seed: ClassVar[int] = 0
    fault_kinds: ClassVar[frozenset[str]] = frozenset(FAULT_KINDS)
    max_down: ClassVar[int | None] = None
    max_wait: ClassVar[float] = 30.0
    latency: ClassVar[float] = 0.001
    membership_config: ClassVar[MembershipConfig | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._host: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._done: outcome.Outcome[None] | None = None
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._steps: list[Step] = []
        self._cluster: SimulatedCluster | None = None
        self._started_at = 0.0
        self._stopped = False
        self._clock = trio.testing.MockClock(autojump_threshold=0)
        _seed_scheduler(self.seed)
        trio.lowlevel.start_guest_run(
            self._root,
            run_sync_soon_threadsafe=self._host.put,
            done_callback=self._finished,
            clock=self._clock,
        )
        self._pump(lambda: self._cluster is not None)

    # -- to override ------------------------------------------------------------------

    async def setup_node(self, node: Node) -> None:
        """Start your actors on ``node``; called when it starts and after each restart."""

    # -- the guest run ----------------------------------------------------------------

    async def _root(self) -> None:
        network = MemoryNetwork(seed=self.seed, latency=self.latency, trace_limit=0)
        config = self.membership_config or MembershipConfig(seed=self.seed)
        with self._scope:
            async with (
                open_simulated_cluster(
                    self.node_count,
                    seed=self.seed,
                    network=network,
                    config=config,
                    formed=True,
                    setup=self.setup_node,
                ) as cluster,
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                self._started_at = trio.current_time()
                self._cluster = cluster
                await trio.sleep_forever()

    def _finished(self, result: outcome.Outcome[None]) -> None:
        self._done = result

    def _pump(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._done is not None:
                self._done.unwrap()  # the cluster failed: raise why
                raise LocalProtocolError("the simulated cluster stopped")
            self._host.get()()

    @property
    def cluster(self) -> SimulatedCluster:
        assert self._cluster is not None
        return self._cluster

    @property
    def plan(self) -> FaultPlan:
        return FaultPlan(self._steps)

    def run(self, fn: Callable[[Unpack[Args]], Awaitable[T]], *args: *Args) -> T:
        """Run ``await fn(*args)`` in the cluster's Trio run; return its result or raise.

        Other tasks (the nodes, your actors) run meanwhile, and simulated
        time passes only while ``fn`` waits.
        """
        result: list[outcome.Outcome[T]] = []

        async def task() -> None:
            result.append(await outcome.acapture(fn, *args))

        assert self._token is not None
        assert self._nursery is not None
        self._token.run_sync_soon(self._nursery.start_soon, task)
        self._pump(lambda: bool(result))
        return result[0].unwrap()

    def now(self) -> float:
        """Simulated seconds since the machine started (read between rules)."""
        return self._clock.current_time() - self._started_at

    def apply(self, fault: Fault) -> None:
        """Apply a fault now and record it in :attr:`plan`."""
        self._steps.append(Step(round(self.now(), 3), fault))
        self.run(self.cluster.apply, fault)

    def teardown(self) -> None:
        """Stop the cluster. An override's own steps run first; the stop always follows."""
        self._stop()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("teardown")
        if own is not None and not getattr(own, "_stops_cluster", False):
            # A guest run left behind would make every later example fail to start: whatever
            # a subclass's teardown does or raises, the cluster stops after it.
            @functools.wraps(own)
            def teardown(self: ClusterMachine) -> None:
                try:
                    own(self)
                finally:
                    self._stop()

            teardown._stops_cluster = True  # type: ignore[attr-defined]
            cls.teardown = teardown  # type: ignore[method-assign]

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._steps:
            note(f"faults applied: {self.plan!r}")
        if self._token is not None and self._done is None:
            self._token.run_sync_soon(self._scope.cancel)
        while self._done is None:
            self._host.get()()
        self._done.unwrap()

    # -- fault rules --------------------------------------------------------------------

    def _can(self, kind: str) -> bool:
        return kind in self.fault_kinds

    def _may_crash(self) -> bool:
        limit = (self.node_count - 1) // 2 if self.max_down is None else self.max_down
        return self._can("crash") and len(self.cluster.down()) < limit

    @rule(seconds=st.floats(0.001, 1.0))
    def time_passes(self, seconds: float) -> None:
        """Let ``seconds`` (scaled up to ``max_wait``) of simulated time pass."""
        self.run(trio.sleep, round(seconds * self.max_wait, 3))

    @precondition(lambda self: self._may_crash())
    @rule(data=st.data())
    def crash_node(self, data: st.DataObject) -> None:
        self.apply(Crash(data.draw(st.sampled_from(self.cluster.running()), label="node")))

    @precondition(lambda self: self._can("restart") and bool(self.cluster.down()))
    @rule(data=st.data())
    def restart_node(self, data: st.DataObject) -> None:
        self.apply(Restart(data.draw(st.sampled_from(self.cluster.down()), label="node")))

    @precondition(lambda self: self._can("partition") and self.node_count >= 2)
    @rule(data=st.data())
    def partition_nodes(self, data: st.DataObject) -> None:
        self.apply(data.draw(partitions(self.node_count), label="partition"))

    @precondition(lambda self: self._can("heal"))
    @rule()
    def heal_network(self) -> None:
        self.apply(Heal())

    @precondition(lambda self: self._can("drop"))
    @rule(rate=st.sampled_from([0.0, 0.05, 0.2, 0.5]))
    def drop_frames(self, rate: float) -> None:
        self.apply(Drop(rate))

    @precondition(lambda self: self._can("delay"))
    @rule(high=st.sampled_from([0.0, 0.05, 0.5, 2.0]))
    def delay_frames(self, high: float) -> None:
        self.apply(Delay(0.0, high))

    @precondition(lambda self: self._can("duplicate"))
    @rule(rate=st.sampled_from([0.0, 0.1, 0.5]))
    def duplicate_frames(self, rate: float) -> None:
        self.apply(Duplicate(rate))
