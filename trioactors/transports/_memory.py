"""In-memory transport: many nodes inside one ``trio.run``, with a seeded fault plan.

Theory of operation
-------------------

A :class:`MemoryNetwork` owns every node's :class:`MemoryTransport`, one heap of
frames in flight ordered by ``(due time, sequence number)``, and one
``random.Random(seed)`` from which every random decision is drawn. Its
scheduler task (:meth:`MemoryNetwork.run`) sleeps until the earliest due time,
then moves every due frame into its destination's inbox; each serving
transport's own ``serve()`` task drains its inbox into ``deliver``
(:meth:`MemoryNetwork.wait_delivered` waits until both are empty). There is no
task per frame, so hundreds of nodes and millions of frames are cheap, and
under ``trio.testing.MockClock`` simulated seconds take no real time.

A send from A to B goes through a *link*, A's connection to B's current
incarnation. States of a transport: ``NEW`` → ``SERVING`` → ``STOPPED`` (serve
was cancelled or ``deliver`` raised) or ``CRASHED`` (the fault plan). Events:
send, arrival (a frame's due time passes), fault changes, serve start/end.

Invariants:

- All randomness is drawn at ``send`` time from the one RNG, in send order, so
  the same seed and the same sequence of sends (deterministic under Trio's
  seeded scheduler, e.g. in hypothesis examples) give the same trace.
- Frames on one link arrive in send order: each frame's due time is at least
  the previous one's, unless the reorder fault exempts it.
- A link holds at most ``config.send_queue_size`` frames sent but not yet
  handed to ``deliver``; ``send`` parks while it is full (backpressure).
- A node that stops or crashes closes all its links, both ways; the frames on
  them are lost (counted in the sender's ``frames_lost``), and senders parked
  on them wake up and reconnect or fail.

Fault semantics (each takes effect when it is set and can change at any time):

- ``drop(rate)``: each accepted frame is lost with probability ``rate``
  (optionally only between two groups of nodes). The send still succeeds.
- ``delay(low, high)``: each frame waits an extra ``uniform(low, high)``
  seconds on top of the network's ``latency``; FIFO per link is kept.
- ``duplicate(rate)``: a frame is, with probability ``rate``, delivered twice;
  the copy follows the original on the same link with its own delay draws.
- ``reorder(rate, window=)``: a frame is, with probability ``rate``, held back
  an extra ``uniform(0, window)`` seconds *without* holding back the frames
  after it, so they may overtake it.
- ``partition(a, b)``: frames between the groups are lost, both those sent
  from now on and those in flight. A sender with an existing link to the
  other side keeps "sending" into the void until the link has been
  partitioned for ``heartbeat_timeout`` (checked at its next send), then the
  link is closed (``heartbeat_failures`` += 1). A sender without a link waits
  up to ``connect_timeout`` for the partition to heal, then gets
  :class:`NodeUnreachable`. ``heal()`` removes all partitions.
- ``crash(name)``: the node's ``serve()`` raises :class:`NodeCrashed` at once,
  its links close, frames to and from it in flight are lost; sends to it wait
  ``connect_timeout`` and raise :class:`NodeUnreachable`, unless
  ``restart(name)`` hands out a fresh transport that starts serving in time.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NamedTuple, final

import attrs
import trio
from trio.lowlevel import ParkingLot, cancel_shielded_checkpoint, checkpoint_if_cancelled

from .._errors import FrameTooLarge, LocalProtocolError, NodeCrashed, NodeUnreachable
from ._base import Deliver, Transport, TransportConfig, TransportStatistics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

__all__ = [
    "MemoryNetwork",
    "MemoryNetworkStatistics",
    "MemoryTransport",
    "TraceEvent",
    "Traced",
]

SCHEME = "memory://"
_FAIRNESS = 128  # a serve loop yields at least this often while draining its inbox

_Group = frozenset[str]


class Traced(enum.Enum):
    """What happened to a frame (or node) in a :class:`TraceEvent`.

    .. versionadded:: 0.1
    """

    SENT = "sent"
    ARRIVED = "arrived"  # put in the destination's inbox, ready for deliver()
    DROPPED = "dropped"  # the drop fault
    PARTITIONED = "partitioned"  # lost to a partition
    LOST = "lost"  # its link closed: stop, crash, remove_peer, or oversize at the receiver
    DUPLICATED = "duplicated"
    REORDERED = "reordered"
    CRASHED = "crashed"
    RESTARTED = "restarted"


class TraceEvent(NamedTuple):
    """One entry of :meth:`MemoryNetwork.trace`.

    ``frame`` numbers the sends (a duplicate shares its original's number);
    it is ``-1`` for node events (``CRASHED``, ``RESTARTED``).

    .. versionadded:: 0.1
    """

    time: float
    src: str
    dst: str
    event: Traced
    frame: int


@attrs.frozen
class MemoryNetworkStatistics:
    """Counters of a whole :class:`MemoryNetwork` (:meth:`MemoryNetwork.statistics`).

    .. versionadded:: 0.1
    """

    seed: int
    frames_sent: int
    frames_arrived: int
    frames_dropped: int
    frames_partitioned: int
    frames_lost: int
    """Lost because a link closed (stop, crash, remove_peer, oversize)."""
    frames_duplicated: int
    frames_reordered: int
    frames_in_flight: int
    """Sent and not yet handed to ``deliver`` (nor lost)."""
    nodes_serving: int
    nodes_crashed: int


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"
    CRASHED = "crashed"


@final
class _Link:
    """A sender's connection to one incarnation of a destination."""

    __slots__ = ("closed", "dst", "last_due", "lot", "queued", "src")

    def __init__(self, src: MemoryTransport, dst: MemoryTransport) -> None:
        self.src = src
        self.dst = dst
        self.closed = False
        self.last_due = -math.inf
        self.queued = 0  # sent, not yet handed to deliver (or lost)
        self.lot: ParkingLot | None = None  # senders waiting for room (made when one waits)


@final
class _Frame:
    __slots__ = ("data", "id", "link")

    def __init__(self, link: _Link, data: bytes, frame_id: int) -> None:
        self.link = link
        self.data = data
        self.id = frame_id


def _crosses(group_a: _Group, group_b: _Group | None, a: str, b: str) -> bool:
    """Whether a frame between ``a`` and ``b`` crosses from one group to the other."""
    if a in group_a:
        return b not in group_a if group_b is None else b in group_b
    if b in group_a:
        return a not in group_a if group_b is None else a in group_b
    return False


def _groups(group_a: Iterable[str], group_b: Iterable[str] | None) -> tuple[_Group, _Group | None]:
    a = frozenset(group_a)
    b = None if group_b is None else frozenset(group_b)
    if b is not None and a & b:
        raise ValueError(f"a node cannot be on both sides: {sorted(a & b)}")
    return a, b


def _check_rate(rate: float) -> float:
    if not (0.0 <= rate <= 1.0):
        raise ValueError(f"a rate is a probability between 0 and 1, not {rate!r}")
    return float(rate)


@final
class MemoryNetwork:
    """Many nodes in one ``trio.run``, with a deterministic fault plan.

    Run its scheduler in a nursery you own (``async with network.running():``
    or ``await nursery.start(network.run)``), then create a transport per node
    with :meth:`transport` and serve it. Every random choice is drawn from
    ``random.Random(seed)``, so the same seed and program give the same trace.

    Args:
      seed: Seed of the network's only random number generator.
      latency: One-way delay of every frame, in (simulated) seconds.
      config: Default :class:`TransportConfig` of the transports it creates.
      trace_limit: How many recent :class:`TraceEvent` to keep (``None``: all,
        0: none).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        latency: float = 0.0,
        config: TransportConfig | None = None,
        trace_limit: int | None = 10_000,
    ) -> None:
        if not (0.0 <= latency < math.inf):
            raise ValueError(f"latency must be a finite number of seconds >= 0, not {latency!r}")
        self.seed = seed
        self.latency = float(latency)
        self.config = config if config is not None else TransportConfig()
        self._rng = random.Random(seed)
        self._nodes: dict[str, MemoryTransport] = {}
        self._crashed: set[str] = set()
        self._heap: list[tuple[float, int, _Frame]] = []
        self._heap_seq = 0
        self._frame_seq = 0
        self._running = False
        self._wake = trio.Event()
        self._next_wake = -math.inf
        self._reachability = ParkingLot()  # senders waiting to connect
        self._pending = 0  # frames scheduled, not yet handed to deliver nor lost
        self._idle = ParkingLot()  # wait_delivered()
        # plain tuples: a TraceEvent costs several times more to build on the hot path
        self._trace: deque[tuple[float, str, str, Traced, int]] | None = (
            None if trace_limit == 0 else deque(maxlen=trace_limit)
        )
        # fault plan
        self._drop_rate = 0.0
        self._drop_rules: list[tuple[_Group, _Group | None, float]] = []
        self._delay: tuple[float, float] | None = None
        self._delay_rules: list[tuple[_Group, _Group | None, tuple[float, float] | None]] = []
        self._duplicate = 0.0
        self._reorder = 0.0
        self._reorder_window = 0.1
        self._partitions: list[tuple[_Group, _Group | None, float]] = []
        # counters
        self._sent = self._arrived = self._dropped = self._partitioned = 0
        self._lost = self._duplicated = self._reordered = 0

    # -- nodes -----------------------------------------------------------------

    def transport(self, name: str, *, config: TransportConfig | None = None) -> MemoryTransport:
        """A new transport for node ``name``, reachable at ``memory://<name>``.

        Raises:
          LocalProtocolError: ``name`` has a transport that has not stopped
            yet, or it has crashed (use :meth:`restart`).
        """
        if name in self._crashed:
            raise LocalProtocolError(
                f"node {name!r} has crashed; network.restart({name!r}) gives it a fresh transport"
            )
        return MemoryTransport(self, name, config=config)

    def crash(self, name: str) -> None:
        """Crash node ``name`` now: its ``serve()`` raises :class:`NodeCrashed`.

        Its links close and frames to and from it are lost. It stays down (a
        new ``serve`` raises at once) until :meth:`restart`.
        """
        self._crashed.add(name)
        self._record(name, "", Traced.CRASHED, -1)
        node = self._nodes.get(name)
        if node is not None:
            node._shut_down(_State.CRASHED)

    def restart(self, name: str) -> MemoryTransport:
        """Bring crashed node ``name`` back: a fresh transport, with no peers, to serve.

        Raises:
          LocalProtocolError: ``name`` has not crashed.
        """
        if name not in self._crashed:
            raise LocalProtocolError(f"node {name!r} has not crashed; only crashed nodes restart")
        self._crashed.discard(name)
        old = self._nodes.get(name)
        self._record(name, "", Traced.RESTARTED, -1)
        return MemoryTransport(self, name, config=None if old is None else old.config)

    # -- fault plan --------------------------------------------------------------

    def drop(
        self, rate: float, *, between: tuple[Iterable[str], Iterable[str] | None] | None = None
    ) -> None:
        """Lose each frame sent from now on with probability ``rate``.

        Args:
          rate: Probability between 0 and 1.
          between: ``(group_a, group_b)``: apply ``rate`` only to frames from
            one group to the other (either way; ``group_b=None`` means every
            node not in ``group_a``). The latest matching rule wins. Without
            it, ``rate`` becomes the default and all group rules are removed.
        """
        rate = _check_rate(rate)
        if between is None:
            self._drop_rate = rate
            self._drop_rules.clear()
        else:
            self._drop_rules.append((*_groups(*between), rate))

    def delay(
        self,
        low: float,
        high: float | None = None,
        *,
        between: tuple[Iterable[str], Iterable[str] | None] | None = None,
    ) -> None:
        """Delay each frame sent from now on by an extra ``uniform(low, high)`` seconds.

        ``high`` defaults to ``low`` (a fixed delay); ``delay(0)`` turns it off.
        Frames on one link still arrive in order.

        Args:
          between: ``(group_a, group_b)``: delay only frames from one group to
            the other (either way; ``group_b=None`` means every node not in
            ``group_a``), e.g. to put some nodes farther away. The latest
            matching rule wins. Without it, the delay becomes the default and
            all group rules are removed.
        """
        high = low if high is None else high
        if not (0.0 <= low <= high < math.inf):
            raise ValueError(f"need 0 <= low <= high < inf, not low={low!r} high={high!r}")
        delay = None if high == 0 else (float(low), float(high))
        if between is None:
            self._delay = delay
            self._delay_rules.clear()
        else:
            self._delay_rules.append((*_groups(*between), delay))

    def duplicate(self, rate: float) -> None:
        """Deliver each frame sent from now on twice with probability ``rate``."""
        self._duplicate = _check_rate(rate)

    def reorder(self, rate: float, *, window: float = 0.1) -> None:
        """Let frames overtake each other.

        With probability ``rate`` a frame is held back an extra
        ``uniform(0, window)`` seconds without holding back later frames on
        its link, which may then arrive before it.
        """
        if not (0.0 < window < math.inf):
            raise ValueError(f"window must be a positive finite number of seconds, not {window!r}")
        self._reorder = _check_rate(rate)
        self._reorder_window = float(window)

    def partition(self, group_a: Iterable[str], group_b: Iterable[str] | None = None) -> None:
        """Cut every frame between the two groups (``None``: everyone else).

        Partitions add up until :meth:`heal`. See the module docstring for
        what senders see.
        """
        self._partitions.append((*_groups(group_a, group_b), trio.current_time()))

    def heal(self) -> None:
        """Remove every partition."""
        self._partitions.clear()
        self._reachability.unpark_all()

    def clear(self) -> None:
        """Remove every fault but crashes: drops, delays, duplicates, reordering, partitions."""
        self.drop(0.0)
        self.delay(0.0)
        self._duplicate = self._reorder = 0.0
        self.heal()

    # -- introspection -------------------------------------------------------------

    def statistics(self) -> MemoryNetworkStatistics:
        """A snapshot of the network's counters."""
        return MemoryNetworkStatistics(
            seed=self.seed,
            frames_sent=self._sent,
            frames_arrived=self._arrived,
            frames_dropped=self._dropped,
            frames_partitioned=self._partitioned,
            frames_lost=self._lost,
            frames_duplicated=self._duplicated,
            frames_reordered=self._reordered,
            frames_in_flight=self._pending,
            nodes_serving=sum(n._state is _State.SERVING for n in self._nodes.values()),
            nodes_crashed=len(self._crashed),
        )

    async def wait_delivered(self) -> None:
        """Wait until no frame is in flight: each was handed to ``deliver`` or lost.

        Frames sent meanwhile extend the wait. It is always a checkpoint.
        """
        if self._pending:
            await self._idle.park()
        else:
            await trio.lowlevel.checkpoint()

    def trace(self) -> list[TraceEvent]:
        """The most recent events, oldest first (see ``trace_limit``)."""
        return [] if self._trace is None else [TraceEvent._make(e) for e in self._trace]

    # -- the scheduler -------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryNetwork]:
        """Run the scheduler in a nursery of its own for the duration of the block."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            yield self
            nursery.cancel_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver frames when they are due, until cancelled.

        Raises:
          LocalProtocolError: the scheduler is already running.
        """
        if self._running:
            raise LocalProtocolError("this MemoryNetwork's scheduler is already running")
        self._running = True
        try:
            task_status.started()
            heap = self._heap
            while True:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    self._arrive(heapq.heappop(heap)[2], now)
                self._wake = trio.Event()
                self._next_wake = heap[0][0] if heap else math.inf
                with trio.move_on_at(self._next_wake):
                    await self._wake.wait()
        finally:
            self._running = False
            self._next_wake = -math.inf

    # -- internals ----------------------------------------------------------------

    def _record(
        self, src: str, dst: str, event: Traced, frame: int, now: float | None = None
    ) -> None:
        if self._trace is not None:
            now = trio.current_time() if now is None else now
            self._trace.append((now, src, dst, event, frame))

    def _partitioned_since(self, a: str, b: str) -> float | None:
        since: float | None = None
        for group_a, group_b, start in self._partitions:
            if _crosses(group_a, group_b, a, b) and (since is None or start < since):
                since = start
        return since

    def _reachable(self, src: str, dst: str) -> MemoryTransport | None:
        node = self._nodes.get(dst)
        if node is None or node._state is not _State.SERVING:
            return None
        if self._partitions and self._partitioned_since(src, dst) is not None:
            return None
        return node

    def _link_alive(self, link: _Link) -> bool:
        """Whether ``link`` still works; closes it if a partition has outlived the heartbeat."""
        if link.closed:
            return False
        if self._partitions:
            since = self._partitioned_since(link.src.name, link.dst.name)
            timeout = link.src.config.heartbeat_timeout
            if since is not None and trio.current_time() - since >= timeout:
                link.src._heartbeat_failures += 1
                _close(link)
                return False
        return True

    def _taken(self, link: _Link) -> None:
        """One frame on ``link`` left the network (delivered or lost)."""
        link.queued -= 1
        if link.lot is not None and link.lot:
            link.lot.unpark()
        self._pending -= 1
        if not self._pending and self._idle:
            self._idle.unpark_all()

    def _lose(self, frame: _Frame, why: Traced) -> None:
        link = frame.link
        self._taken(link)
        link.src._frames_lost += 1
        if why is Traced.PARTITIONED:
            self._partitioned += 1
        else:
            self._lost += 1
        self._record(link.src.name, link.dst.name, why, frame.id)

    def _submit(self, link: _Link, data: bytes) -> None:
        src, dst = link.src, link.dst
        now = trio.current_time()
        self._frame_seq += 1
        frame_id = self._frame_seq
        src._frames_sent += 1
        src._bytes_sent += len(data)
        self._sent += 1
        self._record(src.name, dst.name, Traced.SENT, frame_id, now)
        if self._partitions and self._partitioned_since(src.name, dst.name) is not None:
            src._frames_lost += 1
            self._partitioned += 1
            self._record(src.name, dst.name, Traced.PARTITIONED, frame_id, now)
            return
        rate = self._drop_rate
        for group_a, group_b, rule_rate in self._drop_rules:
            if _crosses(group_a, group_b, src.name, dst.name):
                rate = rule_rate
        if rate and self._rng.random() < rate:
            src._frames_lost += 1
            self._dropped += 1
            self._record(src.name, dst.name, Traced.DROPPED, frame_id, now)
            return
        self._schedule(link, data, frame_id, now)
        if self._duplicate and self._rng.random() < self._duplicate:
            self._duplicated += 1
            self._record(src.name, dst.name, Traced.DUPLICATED, frame_id, now)
            self._schedule(link, data, frame_id, now)

    def _schedule(self, link: _Link, data: bytes, frame_id: int, now: float) -> None:
        due = now + self.latency
        delay = self._delay
        for group_a, group_b, rule in self._delay_rules:
            if _crosses(group_a, group_b, link.src.name, link.dst.name):
                delay = rule
        if delay is not None:
            due += self._rng.uniform(*delay)
        if self._reorder and self._rng.random() < self._reorder:
            due += self._rng.uniform(0.0, self._reorder_window)
            self._reordered += 1
            self._record(link.src.name, link.dst.name, Traced.REORDERED, frame_id, now)
        else:
            if due < link.last_due:
                due = link.last_due
            link.last_due = due
        link.queued += 1
        self._pending += 1
        self._heap_seq += 1
        heapq.heappush(self._heap, (due, self._heap_seq, _Frame(link, data, frame_id)))
        if due < self._next_wake:
            self._next_wake = -math.inf
            self._wake.set()

    def _arrive(self, frame: _Frame, now: float) -> None:
        link = frame.link
        dst = link.dst
        if link.closed:
            self._lose(frame, Traced.LOST)
        elif self._partitions and self._partitioned_since(link.src.name, dst.name) is not None:
            self._lose(frame, Traced.PARTITIONED)
        elif len(frame.data) > dst.config.max_frame_size:
            dst._oversize_frames += 1
            self._lose(frame, Traced.LOST)
        else:
            dst._inbox.append(frame)
            self._arrived += 1
            if self._trace is not None:
                self._trace.append((now, link.src.name, dst.name, Traced.ARRIVED, frame.id))
            if dst._lot:
                dst._lot.unpark()


def _close(link: _Link) -> None:
    """Close ``link`` for both ends and wake everyone parked on it."""
    if link.closed:
        return
    link.closed = True
    src, dst = link.src, link.dst
    if src._links.get(dst.name) is link:
        del src._links[dst.name]
        src._connections_open -= 1
    dst._inbound.discard(link)
    if link.lot is not None:
        link.lot.unpark_all()


@final
class MemoryTransport(Transport):
    """One node's side of a :class:`MemoryNetwork`; get it from ``network.transport(name)``.

    It serves once. Peers are reached through :meth:`add_peer` with their
    ``memory://<name>`` address, as with a real transport. ``send`` does not
    yield when the link has room (it is still a cancellation point), like a
    trioactors mailbox; it parks when ``send_queue_size`` frames are queued.

    Args:
      network: The network it belongs to.
      name: The node's name; ``serve`` must be called with the same name.
      config: Its settings (default: the network's ``config``). Only
        ``max_frame_size``, ``send_queue_size``, ``connect_timeout`` and
        ``heartbeat_timeout`` matter here.

    .. versionadded:: 0.1
    """

    def __init__(
        self, network: MemoryNetwork, name: str, *, config: TransportConfig | None = None
    ) -> None:
        if not name:
            raise ValueError("a node needs a non-empty name")
        old = network._nodes.get(name)
        if old is not None and old._state in (_State.NEW, _State.SERVING):
            raise LocalProtocolError(
                f"node {name!r} already has a transport that has not stopped; serve that one"
            )
        self.network = network
        self.name = name
        self.address = SCHEME + name
        self.config = config if config is not None else network.config
        self._state: _State = _State.CRASHED if name in network._crashed else _State.NEW
        self._scope = trio.CancelScope()
        self._peers: dict[str, str] = {}  # peer name -> destination node name
        self._links: dict[str, _Link] = {}  # destination node name -> our link to it
        self._inbound: set[_Link] = set()
        self._inbox: deque[_Frame] = deque()
        self._lot = ParkingLot()  # the serve loop, waiting for frames
        self._frames_sent = self._frames_received = self._bytes_sent = self._bytes_received = 0
        self._connects = self._connect_failures = self._connections_open = 0
        self._frames_lost = self._oversize_frames = self._heartbeat_failures = 0
        network._nodes[name] = self

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.name!r} {self._state.value}>"

    async def serve(
        self,
        node: str,
        deliver: Deliver,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve node ``node`` until cancelled; report ``memory://<node>`` as the address.

        Raises:
          NodeCrashed: the fault plan crashed this node (now or before).
          LocalProtocolError: ``node`` is not this transport's name, it has
            already served, or the network's scheduler is not running.
        """
        if node != self.name:
            raise LocalProtocolError(
                f"this transport belongs to node {self.name!r}, not {node!r}; "
                f"use network.transport({node!r})"
            )
        if self._state is _State.CRASHED:
            raise NodeCrashed(node)
        if self._state is not _State.NEW:
            raise LocalProtocolError(
                "a MemoryTransport serves once; get a fresh one from network.transport()"
            )
        if not self.network._running:
            raise LocalProtocolError(
                "the network's scheduler is not running: use `async with network.running():` "
                "or `await nursery.start(network.run)` first"
            )
        self._state = _State.SERVING
        self.network._reachability.unpark_all()
        try:
            task_status.started(self.address)
            with self._scope:
                await self._deliver_loop(deliver)
        finally:
            self._shut_down(_State.STOPPED)
        # Only crash() cancels our own scope, so leaving it normally means a crash.
        raise NodeCrashed(node)

    async def _deliver_loop(self, deliver: Deliver) -> None:
        inbox = self._inbox
        network = self.network
        batch = 0
        while True:
            if not inbox:
                batch = 0
                await self._lot.park()
                continue
            frame = inbox.popleft()
            link = frame.link
            network._taken(link)
            self._frames_received += 1
            self._bytes_received += len(frame.data)
            await deliver(link.src.name, frame.data)
            batch += 1
            if batch >= _FAIRNESS:
                batch = 0
                await cancel_shielded_checkpoint()

    def _shut_down(self, state: _State) -> None:
        if self._state is not _State.SERVING and self._state is not _State.NEW:
            return
        self._state = state
        for link in [*self._links.values(), *self._inbound]:
            _close(link)
        for frame in self._inbox:
            self.network._lose(frame, Traced.LOST)
        self._inbox.clear()
        self._scope.cancel()
        self.network._reachability.unpark_all()

    async def send(self, peer: str, frame: bytes) -> None:
        """Queue ``frame`` for ``peer``; see :meth:`Transport.send`.

        Raises:
          FrameTooLarge: ``frame`` is longer than ``max_frame_size``.
          NodeUnreachable: ``peer`` is unknown (at once), this transport is not
            serving (at once), or no link could be made within
            ``connect_timeout`` (peer down, crashed or partitioned away).
        """
        await checkpoint_if_cancelled()
        if len(frame) > self.config.max_frame_size:
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes exceeds max_frame_size={self.config.max_frame_size}"
            )
        target = self._peers.get(peer)
        if target is None:
            raise NodeUnreachable(f"no address known for node {peer!r}; call add_peer() first")
        while True:
            link = self._links.get(target)
            if link is None or not self.network._link_alive(link):
                link = await self._connect(peer, target)
            if link.queued < self.config.send_queue_size:
                break
            if link.lot is None:
                link.lot = ParkingLot()
            await link.lot.park()
        self.network._submit(link, frame if type(frame) is bytes else bytes(frame))

    def send_nowait(self, peer: str, frame: bytes) -> bool:
        """Queue ``frame`` on a live link with room; see :meth:`Transport.send_nowait`."""
        if len(frame) > self.config.max_frame_size:
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes exceeds max_frame_size={self.config.max_frame_size}"
            )
        target = self._peers.get(peer)
        if target is None or self._state is not _State.SERVING:
            return False
        link = self._links.get(target)
        if link is None or not self.network._link_alive(link):
            # connecting takes no time here when the peer is reachable
            link = self._try_connect(peer, target)
        if link is None or link.queued >= self.config.send_queue_size:
            return False
        self.network._submit(link, frame if type(frame) is bytes else bytes(frame))
        return True

    async def _connect(self, peer: str, target: str) -> _Link:
        # The fast path enters no cancel scope: that would cost more than the send.
        link = self._try_connect(peer, target)
        if link is not None:
            return link
        timeout = self.config.connect_timeout
        with trio.move_on_after(timeout):
            while link is None:
                await self.network._reachability.park()
                link = self._try_connect(peer, target)
            return link
        self._connect_failures += 1
        raise NodeUnreachable(
            f"could not reach node {peer!r} at {SCHEME}{target} within {timeout} s "
            "(down, crashed, or partitioned away)"
        )

    def _try_connect(self, peer: str, target: str) -> _Link | None:
        if self._state is not _State.SERVING:
            raise NodeUnreachable(
                f"cannot send to {peer!r}: transport of {self.name!r} is {self._state.value}"
            )
        link = self._links.get(target)
        if link is not None and self.network._link_alive(link):
            return link
        dst = self.network._reachable(self.name, target)
        if dst is None:
            return None
        link = _Link(self, dst)
        self._links[target] = link
        dst._inbound.add(link)
        # like the network transports' handshake: the callee learns the caller's
        # address, so it can answer without being told
        dst._peers.setdefault(self.name, self.name)
        self._connects += 1
        self._connections_open += 1
        return link

    def add_peer(self, peer: str, address: str) -> None:
        """Remember that ``peer`` is reached at ``address`` (``memory://<name>``).

        Raises:
          ValueError: ``address`` is not a ``memory://`` address.
        """
        if not address.startswith(SCHEME) or len(address) == len(SCHEME):
            raise ValueError(f"not a memory transport address: {address!r} (memory://<name>)")
        target = address[len(SCHEME) :]
        old = self._peers.get(peer)
        self._peers[peer] = target
        if old is not None and old != target:
            self._drop_link(old)

    def remove_peer(self, peer: str) -> None:
        """Forget ``peer``; its link closes and frames on it are lost."""
        target = self._peers.pop(peer, None)
        if target is not None:
            self._drop_link(target)

    def _drop_link(self, target: str) -> None:
        if target not in self._peers.values() and (link := self._links.get(target)) is not None:
            _close(link)

    def peers(self) -> dict[str, str]:
        """The known peers and their ``memory://`` addresses."""
        return {peer: SCHEME + target for peer, target in self._peers.items()}

    def address_of(self, peer: str) -> str | None:
        target = self._peers.get(peer)
        return None if target is None else SCHEME + target

    def statistics(self) -> TransportStatistics:
        """This transport's counters.

        ``connections_open`` counts the links this node opened. Frames lost
        anywhere (drop, partition, closed link, oversize at the receiver) count
        in the *sender's* ``frames_lost``.
        """
        return TransportStatistics(
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            connections_open=self._connections_open,
            connects=self._connects,
            connect_failures=self._connect_failures,
            oversize_frames=self._oversize_frames,
            heartbeat_failures=self._heartbeat_failures,
            frames_lost=self._frames_lost,
        )
