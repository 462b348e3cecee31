"""SWIM failure detection as a pure state machine (with memberlist's defaults).

Theory of operation
-------------------

Time is divided into protocol periods. In each period the detector probes one
member, taken round-robin from a freshly shuffled list (so every member is
probed within two passes, a bound on detection time that pure random choice
lacks):

1. at the start of the period: ``Ping(target)``;
2. ``probe_timeout`` later, if no ack came: ``PingReq(via, target)`` through
   up to ``indirect_checks`` other reachable members, who ping the target and
   relay its ack;
3. at the end of the period, if still no ack: the target becomes ``SUSPECT``.

A suspect is declared ``DEAD`` after the suspicion timeout unless it refutes
the suspicion first (by gossiping ``ALIVE`` at a higher incarnation, which
the :class:`MembershipView` merge accepts). The timeout grows with the cluster
as in memberlist: ``suspicion_mult * max(1, log10(n)) * protocol_period``,
since a rumour needs more rounds to reach everyone in a bigger cluster.

Local health (Lifeguard's LHM): a node that is itself slow (a saturated CPU,
a long pause) misses acks that did come, and would suspect healthy members.
So the detector keeps an *awareness* score, 0 to ``max_awareness``: a probe
that gets no ack by the end of its period adds one, an acked probe takes one
off, and :meth:`SwimDetector.note_refuted` (we had to refute a suspicion about
ourselves) adds one. Its probe period and probe timeout are multiplied by
``awareness + 1``: a node in trouble probes less often and waits longer, so
it suspects others less, until its probes succeed again.

The machine does no I/O and reads no clock. The runtime asks
:meth:`SwimDetector.next_deadline`, sleeps until then (or until an ack
arrives), and feeds :meth:`on_time` / :meth:`on_ack`; each returns actions:
:class:`Ping`, :class:`PingReq`, and the view's :class:`MemberChanged` events
for suspicions and deaths.

Invariants: at most one probe is outstanding; only reachable members other
than ourselves are probed; a member is declared dead only after being suspect
for the whole suspicion timeout at the incarnation it was suspected at.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeAlias, final

import attrs

from ._membership import MemberChanged, MemberState

if TYPE_CHECKING:
    import random

    from ._membership import MembershipView

__all__ = ["Ping", "PingReq", "SwimAction", "SwimConfig", "SwimDetector"]


@final
@attrs.frozen
class SwimConfig:
    """Failure detection settings; the defaults are memberlist's LAN defaults.

    .. versionadded:: 0.1
    """

    protocol_period: float = 1.0
    """Seconds between probes (memberlist ``ProbeInterval``)."""
    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking others (``ProbeTimeout``)."""
    indirect_checks: int = 3
    """Members asked to probe indirectly (``IndirectChecks``)."""
    suspicion_mult: float = 4.0
    """Suspicion timeout multiplier (``SuspicionMult``)."""
    max_awareness: int = 8
    """Most the local health score slows probing by: up to ``max_awareness + 1``
    times the period and timeout (``AwarenessMaxMultiplier``); 0 turns it off."""

    def __attrs_post_init__(self) -> None:
        if not 0 < self.probe_timeout < self.protocol_period:
            raise ValueError("probe_timeout must be positive and shorter than protocol_period")
        if self.indirect_checks < 0 or self.suspicion_mult <= 0:
            raise ValueError("indirect_checks must be >= 0 and suspicion_mult > 0")
        if self.max_awareness < 0:
            raise ValueError("max_awareness must be >= 0")

    def suspicion_timeout(self, cluster_size: int) -> float:
        """Seconds a suspect has to refute before it is declared dead."""
        return (
            self.suspicion_mult * max(1.0, math.log10(max(1, cluster_size))) * self.protocol_period
        )

    def detection_time(self, cluster_size: int) -> float:
        """Seconds from a crash until a member declares it dead, with high probability.

        Every member probes one member per period, so in a cluster a crashed
        member escapes all probes of a period with probability about
        ``1/e``; it is found within five periods except with probability about
        ``e**-5`` (0.7%), suspected by the end of the next one, and declared
        dead after the suspicion timeout. (A single detector on its own reaches
        every member within two round-robin passes.)
        """
        return 6 * self.protocol_period + self.suspicion_timeout(cluster_size)


@final
@attrs.frozen
class Ping:
    target: str
    seq: int


@final
@attrs.frozen
class PingReq:
    via: str
    target: str
    seq: int


SwimAction: TypeAlias = Ping | PingReq | MemberChanged


@attrs.define
class _Probe:
    target: str
    seq: int
    started: float
    acked: bool = False
    indirect_sent: bool = False


@final
class SwimDetector:
    """Decides whom to probe, and when a silent member becomes suspect or dead."""

    def __init__(
        self, view: MembershipView, config: SwimConfig, rng: random.Random, *, now: float
    ) -> None:
        self.view = view
        self.config = config
        self._rng = rng
        self._seq = 0
        self._order: list[str] = []  # this pass's members still to probe, popped from the end
        self._queued: set[str] = set()  # the same, for O(1) membership tests
        self._probe: _Probe | None = None
        # Periods start on a grid of protocol_period: in a simulation every
        # node then wakes at the same instants (and a real clock loses nothing).
        self._period_start = math.floor(now / config.protocol_period) * config.protocol_period
        self._suspects: dict[str, tuple[float, int]] = {}  # node -> (deadline, incarnation)
        self.awareness = 0
        """Local health score: 0 is healthy; see the module docstring."""

    @property
    def period(self) -> float:
        """The current protocol period: ``protocol_period * (awareness + 1)``."""
        return self.config.protocol_period * (self.awareness + 1)

    @property
    def probe_timeout(self) -> float:
        """The current probe timeout: ``probe_timeout * (awareness + 1)``."""
        return self.config.probe_timeout * (self.awareness + 1)

    def note_refuted(self) -> None:
        """We refuted a suspicion about ourselves: a sign we may be the slow one."""
        self._health(+1)

    def _health(self, delta: int) -> None:
        self.awareness = min(self.config.max_awareness, max(0, self.awareness + delta))

    def next_deadline(self) -> float:
        """When :meth:`on_time` must be called next."""
        deadline = self._period_start + self.period
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent:
            deadline = min(deadline, probe.started + self.probe_timeout)
        for suspect_deadline, _ in self._suspects.values():
            deadline = min(deadline, suspect_deadline)
        return deadline

    def on_ack(self, target: str, seq: int, *, now: float) -> list[MemberChanged]:
        """An ack (direct or relayed) for probe ``seq`` of ``target`` arrived."""
        probe = self._probe
        if probe is not None and probe.seq == seq and probe.target == target and not probe.acked:
            probe.acked = True
            self._health(-1)
        return self.view.heard_from(target, now=now)

    def on_time(self, now: float) -> list[SwimAction]:
        actions: list[SwimAction] = []
        actions += self._expire_suspicions(now)
        probe = self._probe
        config = self.config
        period = self.period
        if now >= self._period_start + period:
            if probe is not None and not probe.acked:
                changes = self.view.suspect(probe.target, now=now)
                actions += changes
                self._watch(probe.target, now)
                self._health(+1)
            self._probe = probe = None
            periods = math.floor((now - self._period_start) / period)
            self._period_start += periods * period  # (skips any missed)
        if probe is None:
            target = self._next_target()
            if target is not None:
                self._seq += 1
                self._probe = probe = _Probe(target, self._seq, now)
                actions.append(Ping(target, self._seq))
        elif (
            not probe.acked
            and not probe.indirect_sent
            and now >= probe.started + self.probe_timeout
        ):
            probe.indirect_sent = True
            helpers = [n for n in self.view.reachable() if n != probe.target]
            for via in self._rng.sample(helpers, min(config.indirect_checks, len(helpers))):
                actions.append(PingReq(via, probe.target, probe.seq))
        return actions

    def suspects(self) -> dict[str, float]:
        """Current suspects and when each will be declared dead."""
        return {node: deadline for node, (deadline, _) in self._suspects.items()}

    def _watch(self, node: str, now: float) -> None:
        member = self.view.get(node)
        if (
            member is not None
            and member.state is MemberState.SUSPECT
            and node not in self._suspects
        ):
            timeout = self.config.suspicion_timeout(len(self.view))
            self._suspects[node] = (now + timeout, member.incarnation)

    def _expire_suspicions(self, now: float) -> list[SwimAction]:
        actions: list[SwimAction] = []
        for node, (deadline, incarnation) in list(self._suspects.items()):
            member = self.view.get(node)
            if (
                member is None
                or member.state is not MemberState.SUSPECT
                or member.incarnation != incarnation
            ):
                del self._suspects[node]  # refuted, or settled by gossip
            elif now >= deadline:
                del self._suspects[node]
                actions += self.view.declare_dead(node, now=now)
        return actions

    def note_member(self, node: str) -> None:
        """A member became reachable: put it at a random place in this pass.

        (As memberlist does: otherwise a member that joins just after a pass
        was shuffled would wait for the whole pass before its first probe.)
        """
        if node != self.view.me and node not in self._queued:
            self._order.insert(self._rng.randint(0, len(self._order)), node)
            self._queued.add(node)

    def note_suspect(self, node: str, *, now: float) -> None:
        """Gossip told us ``node`` is suspect: time its suspicion here too."""
        self._watch(node, now)

    def _next_target(self) -> str | None:
        view = self.view
        while self._order:
            candidate = self._order.pop()
            self._queued.discard(candidate)
            member = view.get(candidate)
            if member is not None and member.reachable:
                return candidate
        reachable = view.reachable()
        if not reachable:
            return None
        self._order = list(reachable)  # (a copy: the view caches its list)
        self._rng.shuffle(self._order)
        target = self._order.pop()
        self._queued = set(self._order)
        return target
