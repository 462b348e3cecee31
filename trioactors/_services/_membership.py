"""Cluster membership on a node: SWIM probing, push-pull gossip, name discovery.

The decisions live in two pure machines (``_core/_membership.py``: who is in
what state; ``_core/_swim.py``: whom to probe and when silence becomes
suspicion and death). This module is the shell: one system actor per node,
``$membership``, whose background tasks (supervised with it) run the probe
and gossip loops and carry the machines' actions over the node's transport.

Wire messages are registered attrs classes under ``$membership.*`` tags:

- ``Ping`` (tell): "are you there?"; answered with an ``Ack`` (tell) sent to
  ``origin``, or through ``via`` when the ping was relayed.
- ``PingReq`` (tell): "ping ``target`` for ``origin``"; the helper sends a
  ``Ping`` naming itself as ``via`` and forwards the ``Ack`` (it keeps no
  state). Probes are one-way messages rather than asks: the detector keeps
  the time, so a probe costs two frames and no task, timer or cancel scope.
- ``Gossip`` (tell): recent changes.
- ``Sync`` (ask): push-pull anti-entropy; carries our claims and actor names,
  the reply carries the receiver's.

Effects of a changed claim: a reachable member's address is given to the
transport (``add_peer``); a dead or departed one is removed from it
(``remove_peer``: routing and the connection pool); every subscriber actor is
told with a :class:`MemberChanged`.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import math
import random
from typing import TYPE_CHECKING, TypeAlias, TypeVar, final

import attrs
import trio

from .._core import _swim
from .._core._membership import Member, MemberChanged, MembershipView, MemberState
from .._core._swim import SwimConfig, SwimDetector
from .._errors import TrioactorsError
from .._runtime._actor import Actor, ActorRef
from .._wire._codec import _converter, _register_service_messages

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .._runtime._node import Node

__all__ = ["Membership", "MembershipConfig", "start_membership"]

ACTOR = "$membership"


@final
@attrs.frozen
class MembershipConfig:
    """Membership settings (failure detection, gossip).

    .. versionadded:: 0.1
    """

    swim: SwimConfig = attrs.field(factory=SwimConfig)
    gossip_interval: float = 0.2
    """Seconds between rounds that spread recent changes (memberlist ``GossipInterval``)."""
    gossip_fanout: int = 3
    """Members each round sends recent changes to (memberlist ``GossipNodes``)."""
    retransmit_mult: int = 4
    """Each change is sent ``retransmit_mult * ceil(log10(n + 1))`` times (``RetransmitMult``)."""
    push_pull_interval: float = 30.0
    """Seconds between full state exchanges with one random member (``PushPullInterval``)."""
    reconnect_interval: float = 30.0
    """Seconds between attempts to sync with one member held dead, so that the
    two sides of a healed partition find each other again (Serf's ``reconnect_interval``)."""
    seed: int | None = None
    """Seed for the random choices (None: from the OS); fix it for simulations."""

    def push_pull_period(self, cluster_size: int) -> float:
        """``push_pull_interval``, stretched in big clusters as memberlist does.

        A full exchange carries every member, so each node's exchanges cost
        ``O(n)`` and the cluster's ``O(n**2)``: above 32 members the interval
        is multiplied by ``ceil(log2(n) - 5) + 1`` (x2 up to 64 members, x6 at 1000).
        """
        if cluster_size <= 32:
            return self.push_pull_interval
        return (math.ceil(math.log2(cluster_size) - 5) + 1) * self.push_pull_interval

    def dissemination_time(self, cluster_size: int) -> float:
        """Seconds for a change to reach everyone by gossip: ``ceil(log_fanout(n))`` rounds."""
        rounds = math.ceil(math.log(max(2, cluster_size)) / math.log(max(2, self.gossip_fanout)))
        return rounds * self.gossip_interval

    def detection_time(self, cluster_size: int) -> float:
        """Seconds from a crash until every member has declared the member dead.

        With high probability: found silent within a few protocol periods and
        declared dead after the suspicion timeout (:meth:`SwimConfig.detection_time`),
        then that news gossiped to everyone (:meth:`dissemination_time`).
        """
        return self.swim.detection_time(cluster_size) + self.dissemination_time(cluster_size)


@attrs.frozen
class _Claim:
    node: str
    address: str
    state: int
    incarnation: int


@attrs.frozen
class _Names:
    node: str
    version: int
    names: list[str]


@attrs.frozen
class Ping:
    seq: int
    origin: str
    via: str | None = None


@attrs.frozen
class PingReq:
    target: str
    seq: int
    origin: str


@attrs.frozen
class Ack:
    seq: int
    node: str
    to: str


@attrs.frozen
class Sync:
    claims: list[_Claim]
    names: list[_Names]
    origin: str


@attrs.frozen
class Gossip:
    """Recent changes, told (no reply) to a few members each round."""

    claims: list[_Claim]
    names: list[_Names]
    origin: str


_STATES = frozenset(int(s) for s in MemberState)


def _claim_to_wire(claim: _Claim) -> list[object]:
    return [claim.node, claim.address, claim.state, claim.incarnation]


def _claim_from_wire(data: object, _: type) -> _Claim:
    if type(data) is list and len(data) == 4:
        node, address, state, incarnation = data
        if (
            type(node) is str
            and type(address) is str
            and type(state) is int
            and state in _STATES
            and type(incarnation) is int
            and incarnation >= 0
        ):
            return _Claim(node, address, state, incarnation)
    raise ValueError(f"a claim is [node, address, state, incarnation], not {data!r:.80}")


def _names_to_wire(names: _Names) -> list[object]:
    return [names.node, names.version, names.names]


def _names_from_wire(data: object, _: type) -> _Names:
    if type(data) is list and len(data) == 3:
        node, version, names = data
        if (
            type(node) is str
            and type(version) is int
            and type(names) is list
            and all(type(n) is str for n in names)
        ):
            return _Names(node, version, names)
    raise ValueError(f"a name list is [node, version, [names...]], not {data!r:.80}")


# Claims and name lists travel as short lists, not objects: a full-state sync
# carries one of each per member, and a generic converter costs several times
# more per item.
for _format in ("json", "msgpack"):
    _converter(_format).register_unstructure_hook(_Claim, _claim_to_wire)
    _converter(_format).register_structure_hook(_Claim, _claim_from_wire)
    _converter(_format).register_unstructure_hook(_Names, _names_to_wire)
    _converter(_format).register_structure_hook(_Names, _names_from_wire)


def _register(node: Node) -> None:
    registry = node.codec.registry
    _register_service_messages(registry, "$membership", (Ping, PingReq, Ack, Sync, Gossip))


def _wire(member: Member) -> _Claim:
    return _Claim(member.node, member.address, int(member.state), member.incarnation)


def _member(claim: _Claim) -> Member:
    return Member(claim.node, claim.address, MemberState(claim.state), claim.incarnation)


_Message: TypeAlias = Ping | PingReq | Ack | Sync | Gossip


class _MembershipActor(Actor[_Message]):
    def __init__(self, membership: Membership) -> None:
        self.m = membership

    async def on_start(self) -> None:
        self.context.start_soon(self.m._probe_loop)
        self.context.start_soon(self.m._gossip_loop)
        self.context.start_soon(self.m._push_pull_loop)
        self.context.start_soon(self.m._reconnect_loop)

    async def receive(self, message: _Message) -> object:
        m = self.m
        match message:
            case Ping(seq, origin, via):
                m._heard_from_the_dead(via or origin)
                m._tell(via or origin, Ack(seq, m.node.name, origin))
            case PingReq(target, seq, origin):
                m._heard_from_the_dead(origin)
                m._tell(target, Ping(seq, origin, m.node.name))
            case Ack(seq, node, to):
                m._heard_from_the_dead(node)
                if to == m.node.name:
                    m._apply(m.detector.on_ack(node, seq, now=trio.current_time()))
                else:
                    m._tell(to, message)  # we relayed the ping: relay the answer
            case Sync():
                m._heard_from_the_dead(message.origin)
                m._absorb(message.claims, message.names, synced_with=message.origin)
                return m._sync_message()
            case Gossip():
                stale = m._speaks_from_the_past(message.origin)
                m._heard_from_the_dead(message.origin)
                m._absorb(message.claims, message.names, stale=stale)
        return None


@final
class Membership:
    """This node's view of the cluster; from :func:`start_membership`.

    .. versionadded:: 0.1
    """

    def __init__(self, node: Node, config: MembershipConfig) -> None:
        self.node = node
        self.config = config
        now = trio.current_time()
        self._rng = random.Random(config.seed)
        self.view = MembershipView(node.name, node.address, now=now)
        self.detector = SwimDetector(self.view, config.swim, self._rng, now=now)
        self._names: dict[str, _Names] = {}
        self._my_names: list[str] = []
        self._names_version = 0
        self._announced: Callable[[str], bool] | None = None
        self._subscribers: list[ActorRef[MemberChanged]] = []
        self._seeds: dict[str, str] = {}
        self._nudged: dict[str, float] = {}  # dead member -> when we last tried it
        self._revived: dict[str, float] = {}  # member held dead, then back -> when
        self._reconnects: trio.Nursery | None = None  # (the reconnect loop's)
        # recent changes still to spread: node -> (claim, sends left)
        self._claims_out: dict[str, tuple[_Claim, int]] = {}
        self._names_out: dict[str, tuple[_Names, int]] = {}
        self._gossip_pending = trio.Event()  # set while anything waits to be spread
        self._changed = trio.Event()

    # -- public --------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member we know of (ourselves included), sorted by name."""
        return self.view.members()

    def alive(self) -> list[str]:
        """Names of the reachable members, ourselves included."""
        return sorted([self.node.name, *self.view.reachable()])

    def lookup(self, name: str) -> list[ActorRef[object]]:
        """References to every actor registered as ``name`` on a reachable member."""
        self._refresh_my_names()
        nodes = [self.node.name, *self.view.reachable()]
        return [
            self.node.ref(f"{name}@{n}")
            for n in sorted(nodes)
            if n in self._names and name in self._names[n].names
        ]

    def subscribe(self, ref: ActorRef[MemberChanged]) -> None:
        """Tell ``ref`` every :class:`MemberChanged` from now on."""
        self._subscribers.append(ref)

    def set_announced(self, announced: Callable[[str], bool] | None) -> None:
        """Choose which of this node's actor names the cluster learns.

        Only names for which ``announced(name)`` is true are gossiped (and
        returned by :meth:`lookup`, here and on other members); ``None``
        (the default) announces every name that does not start with ``$``.
        The change spreads at once, like any change of names. A draining node
        announces nothing, so that the cluster stops finding its actors.
        """
        self._announced = announced
        self._refresh_my_names()

    async def wait_changed(self) -> None:
        """Wait until the view or the known actor names change (no polling)."""
        await self._changed.wait()

    async def leave(self) -> None:
        """Leave gracefully: tell a few members, who gossip it on."""
        self._apply(self.view.leave(now=trio.current_time()))
        message = self._sync_message()
        async with trio.open_nursery() as nursery:
            for peer in self._pick(self.config.gossip_fanout):
                nursery.start_soon(self._sync_with, peer, message)

    # -- loops -------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        detector = self.detector
        me = self.node.name
        while True:
            await trio.sleep_until(detector.next_deadline())
            self._refresh_my_names()
            for action in detector.on_time(trio.current_time()):
                match action:
                    case _swim.Ping(target, seq):
                        self._tell(target, Ping(seq, me))
                    case _swim.PingReq(via, target, seq):
                        self._tell(via, PingReq(target, seq, me))
                    case MemberChanged():
                        self._apply([action])

    def _tell(self, node: str, message: Ping | PingReq | Ack | Gossip) -> None:
        """Send without waiting; a lost probe or rumour is what SWIM expects and handles."""
        with contextlib.suppress(TrioactorsError, trio.WouldBlock):
            self.node.ref(f"{ACTOR}@{node}").tell_nowait(message)

    async def _gossip_loop(self) -> None:
        """Spread recent changes to a few members each round (one-way tells).

        Rounds run on a grid of ``gossip_interval`` (so simulated nodes wake
        together) and only while there is something to spread (our own actor
        names are checked once a protocol period, by the probe loop).
        """
        interval = self.config.gossip_interval
        while True:
            await self._gossip_pending.wait()
            await trio.sleep_until(_next_tick(trio.current_time(), interval))
            self._refresh_my_names()
            message = self._take_gossip()
            if message is None:
                continue
            for peer in self._pick(self.config.gossip_fanout):
                # a lost rumour is sent again next round, or pulled by push-pull
                self._tell(peer, message)

    async def _push_pull_loop(self) -> None:
        """Exchange the whole state with one random member now and then."""
        async with trio.open_nursery() as exchanges:
            # a random first wait, so that nodes started together do not all sync together
            await trio.sleep(self._rng.random() * self.config.push_pull_period(len(self.view)))
            while True:
                for peer in self._pick(1):
                    exchanges.start_soon(self._sync_with, peer, self._sync_message())
                await trio.sleep(self.config.push_pull_period(len(self.view)))

    async def _reconnect_loop(self) -> None:
        """Now and then, try to sync with one member we hold dead (or with a seed).

        After a partition heals, each side holds the other dead and out of
        routing, and nothing else would ever contact it again. A member that
        answers refutes its death (a higher incarnation) and is back; one that
        does not is taken out of routing again. When no member is reachable
        at all, the seeds we joined through are candidates too.
        """
        async with trio.open_nursery() as attempts:
            self._reconnects = attempts
            await trio.sleep(self._rng.random() * self.config.reconnect_interval)  # (as above)
            while True:
                await trio.sleep(self.config.reconnect_interval)
                view = self.view
                candidates = {}
                for name in view.in_state(MemberState.DEAD):
                    member = view.get(name)
                    assert member is not None
                    candidates[name] = member.address
                alone = not view.reachable()
                if alone:
                    candidates.update(self._seeds)
                if candidates:
                    name = self._rng.choice(sorted(candidates))
                    attempts.start_soon(
                        functools.partial(self._reconnect, name, candidates[name], sync=alone)
                    )

    def _holds_alive(self, node: str) -> bool:
        """Whether we hold ``node`` reachable (alive, joining, or only suspected)."""
        member = self.view.get(node)
        return member is not None and member.reachable

    def _speaks_from_the_past(self, node: str) -> bool:
        """Whether ``node`` was cut off from us until a moment ago (we hold it
        dead, or did within ``REVIVAL_GRACE`` seconds): its verdicts about
        others are old news."""
        member = self.view.get(node)
        if member is not None and not member.reachable:
            return True
        revived = self._revived.get(node)
        return revived is not None and trio.current_time() - revived < REVIVAL_GRACE

    def _heard_from_the_dead(self, node: str) -> None:
        """A member we hold dead talks to us: sync with it, so it can refute.

        (It was cut off, say, and has not heard of its death: nobody gossips
        to a dead member. At most one attempt per member per protocol period.)
        """
        member = self.view.get(node)
        if member is None or member.state is not MemberState.DEAD or self._reconnects is None:
            return
        now = trio.current_time()
        if now < self._nudged.get(node, -math.inf) + self.config.swim.protocol_period:
            return
        self._nudged[node] = now
        self._reconnects.start_soon(self._reconnect, node, member.address)

    async def _reconnect(self, name: str, address: str, *, sync: bool = True) -> None:
        """Try a member held dead: a full sync, or (``sync=False``) a nudge.

        The nudge is a gossip message with our claim that it is dead: tiny, so
        trying every dead member now and then costs nothing when they are
        dead indeed. One that is alive refutes the claim, and if it holds us
        dead too, it hears from the dead and syncs with us in turn.
        """
        transport = self.node.transport
        if transport.address_of(name) is None:
            transport.add_peer(name, address)
        if sync:
            await self._sync_with(name, self._sync_message())
        else:
            member = self.view.get(name)
            if member is not None:
                self._tell(name, Gossip([_wire(member)], [], self.node.name))
            await trio.sleep(self.config.swim.protocol_period)
        member = self.view.get(name)
        if (member is None or not member.reachable) and transport.address_of(name) is not None:
            transport.remove_peer(name)

    def _retransmits(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(len(self.view) + 1)))

    def _take_gossip(self) -> Gossip | None:
        """The freshest pending changes (at most ``GOSSIP_ITEMS`` of each kind)."""
        if not self._claims_out and not self._names_out:
            self._gossip_pending = trio.Event()
            return None
        claims = _take(self._claims_out)
        names = _take(self._names_out)
        if not self._claims_out and not self._names_out:
            self._gossip_pending = trio.Event()
        return Gossip(claims, names, self.node.name)

    async def _sync_with(self, peer: str, message: Sync) -> None:
        try:
            reply = await self.node.ref(f"{ACTOR}@{peer}").ask(
                message, timeout=self.config.swim.protocol_period
            )
        except TrioactorsError:
            return
        if isinstance(reply, Sync):
            self._absorb(reply.claims, reply.names, synced_with=peer)

    def _know(self, members: Mapping[str, str]) -> None:
        now = trio.current_time()
        claims = [
            Member(name, address, MemberState.ALIVE, 0)
            for name, address in members.items()
            if name != self.node.name
        ]
        self._apply(self.view.merge(claims, now=now), spread=[])  # nothing new to anyone

    async def _join(self, seeds: Mapping[str, str]) -> None:
        self._seeds = {n: a for n, a in seeds.items() if n != self.node.name}
        for name, address in seeds.items():
            if name != self.node.name:
                self._apply(self.view.join(name, address, now=trio.current_time()))
        message = self._sync_message()
        async with trio.open_nursery() as nursery:
            for name in seeds:
                if name != self.node.name:
                    nursery.start_soon(self._sync_with, name, message)

    # -- state ---------------------------------------------------------------------------

    def _pick(self, k: int) -> list[str]:
        reachable = self.view.reachable()
        return self._rng.sample(reachable, min(k, len(reachable)))

    def _refresh_my_names(self) -> None:
        announced = self._announced
        names = [
            n
            for n in self.node.system.names()
            if not n.startswith("$") and (announced is None or announced(n))
        ]
        if names != self._my_names:  # (a node with no names has nothing to announce)
            self._my_names = names
            self._names_version += 1
            mine = self._names[self.node.name] = _Names(self.node.name, self._names_version, names)
            self._names_out[self.node.name] = (mine, self._retransmits())
            self._gossip_pending.set()

    def _sync_message(self) -> Sync:
        self._refresh_my_names()
        return Sync(
            [_wire(m) for m in self.view.members()],
            [n for node, n in self._names.items() if node in self.view],
            self.node.name,
        )

    def _absorb(
        self,
        claims: list[_Claim],
        names_list: list[_Names],
        *,
        synced_with: str | None = None,
        stale: bool = False,
    ) -> None:
        """Merge what a peer sent.

        From gossip (``synced_with=None``) every change is news and is spread
        on. From a full-state sync with ``synced_with``, only news about that
        peer itself is spread, and changes to members we knew: the rest (all
        the members a newcomer learns from its seed, say) the others know.
        """
        now = trio.current_time()
        known_before = set(self._names) if synced_with is not None else set()
        members = [_member(c) for c in claims]
        if synced_with is not None or stale:
            # A full state carries the peer's old verdicts too, and so does
            # gossip from a member we held dead: after a partition heals, the
            # side that was cut off holds the whole other side dead. Such a
            # verdict about a third node is taken as a suspicion (memberlist's
            # push-pull merge does the same): a member that is alive refutes
            # it, one that is dead is declared so by our own suspicion
            # timeout. (Other gossip is fresh news, taken as is.)
            # Only where it contradicts what we hold (the accused alive to us):
            # a newcomer, who knows nothing of the accused, takes it as is.
            sender = synced_with
            members = [
                attrs.evolve(m, state=MemberState.SUSPECT)
                if m.state is MemberState.DEAD
                and m.node not in (self.node.name, sender)
                and self._holds_alive(m.node)
                else m
                for m in members
            ]
        if synced_with is None:
            self._apply(self.view.merge(members, now=now))
        else:
            changes = self.view.merge(members, now=now)
            spread = [c for c in changes if c.node == synced_with or c.before is not None]
            self._apply(changes, spread=spread)
        for names in names_list:
            if names.node == self.node.name:
                continue
            known = self._names.get(names.node)
            if known is None or names.version > known.version:
                self._names[names.node] = names
                if synced_with is None or names.node == synced_with or names.node in known_before:
                    self._names_out[names.node] = (names, self._retransmits())
                    self._gossip_pending.set()
                self._notify()

    def _apply(
        self, changes: list[MemberChanged], *, spread: list[MemberChanged] | None = None
    ) -> None:
        """Carry out changed claims; gossip on those in ``spread`` (default: all)."""
        if not changes:
            return
        transport = self.node.transport
        now = trio.current_time()
        for change in changes if spread is None else spread:
            self._claims_out[change.node] = (_wire(change.after), self._retransmits())
            self._gossip_pending.set()
        for change in changes:
            after = change.after
            if after.node == self.node.name:
                before = change.before
                if before is not None and after.incarnation > before.incarnation:
                    self.detector.note_refuted()  # (Lifeguard: we may be the slow one)
                continue
            if after.reachable:
                if change.before is not None and not change.before.reachable:
                    self._revived[after.node] = now
                if transport.address_of(after.node) != after.address:
                    transport.add_peer(after.node, after.address)
                if change.before is None or not change.before.reachable:
                    self.detector.note_member(after.node)
                if after.state is MemberState.SUSPECT:
                    self.detector.note_suspect(after.node, now=now)
            elif transport.address_of(after.node) is not None:
                if after.state is MemberState.LEFT and self._reconnects is not None:
                    # Its goodbye may be a Sync that waits for our answer: let
                    # the answer go out before the connection is closed.
                    self._reconnects.start_soon(self._forget_later, after.node)
                else:
                    transport.remove_peer(after.node)  # out of routing and the connection pool
            for subscriber in self._subscribers:
                # a subscriber that cannot keep up misses events; it can read members()
                with contextlib.suppress(trio.WouldBlock, TrioactorsError):
                    subscriber.tell_nowait(change)
        self._notify()

    async def _forget_later(self, node: str) -> None:
        await trio.sleep(self.config.swim.protocol_period)
        member = self.view.get(node)
        if member is not None and not member.reachable:  # (unless it came back meanwhile)
            self.node.transport.remove_peer(node)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


REVIVAL_GRACE = 5.0
"""Seconds after a member we held dead is back during which its gossip's
verdicts of death about others count only as suspicions (they are from
before the partition healed; the accused refute them if alive)."""

GOSSIP_ITEMS = 32
"""Most claims (and name lists) one gossip message carries; the freshest go first."""

T = TypeVar("T")


def _take(pending: dict[str, tuple[T, int]]) -> list[T]:
    """Take the items with the most sends left, counting one send for each."""
    chosen = heapq.nlargest(GOSSIP_ITEMS, pending.items(), key=lambda kv: kv[1][1])
    for key, (item, left) in chosen:
        if left <= 1:
            del pending[key]
        else:
            pending[key] = (item, left - 1)
    return [item for _, (item, _) in chosen]


def _next_tick(now: float, interval: float) -> float:
    # (the epsilon: a clock a rounding error short of a tick must not wake twice)
    return (math.floor(now / interval + 1e-9) + 1) * interval


async def start_membership(
    node: Node,
    *,
    seeds: Mapping[str, str] | None = None,
    config: MembershipConfig | None = None,
    known: Mapping[str, str] | None = None,
) -> Membership:
    """Join the cluster through ``seeds`` and keep this node's view current.

    Starts the ``$membership`` actor under ``node.root`` (its probe and gossip
    loops run as its background tasks, supervised with it), then syncs with
    the seeds. Every member learns of this node by gossip.

    Args:
      seeds: some members' names and addresses (``{"node-a": "ws://..."}``);
        none for the first node.
      config: failure detection and gossip settings (defaults: memberlist's).
      known: members to put in the view as alive at once, without contacting
        them or gossiping about them (a static member list, or a simulation
        that starts from a formed cluster); probing checks them from then on.
    """
    _register(node)
    membership = Membership(node, config or MembershipConfig())
    membership._know(known or {})  # (first, so that the loops start knowing the cluster's size)
    await node.root.start_actor(_MembershipActor, membership, name=ACTOR)
    await membership._join(seeds or {})
    return membership
