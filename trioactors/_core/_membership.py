"""Cluster membership: what each node believes about every member.

Theory of operation
-------------------

A :class:`MembershipView` maps node names to :class:`Member` records. Each
record is a *claim* about one node: its state, at an incarnation number that
only that node itself may raise. Claims are ordered; when two claims about the
same node meet, the greater one wins:

1. the higher incarnation wins (a node refutes a suspicion about itself by
   gossiping ``ALIVE`` at a higher incarnation);
2. at the same incarnation, the more final state wins:
   ``JOINING < ALIVE < SUSPECT < DEAD < LEFT``;
3. at the same incarnation and state, the lexicographically greater address
   wins (only to make the order total; a node's address does not change
   within an incarnation in practice).

So merging two views (:meth:`MembershipView.merge`) takes, for every node,
the greater claim. That makes merge idempotent, commutative and associative
(a join-semilattice), which is what lets gossip converge whatever the order,
repetition or grouping of the messages that carry views. The tests check the
three laws with hypothesis.

The *local* facts a node keeps about others (when it last heard from them)
are not part of the claim and are never gossiped; :class:`MembershipView`
keeps them on the side (``last_seen``), and they never affect a merge.

Events (method calls) and what they return:

- ``merge(other_claims, now)`` -> the list of :class:`MemberChanged` for every
  node whose winning claim changed;
- ``join(node, address, now)``, ``mark_alive``, ``suspect``, ``declare_dead``,
  ``leave`` -> the same, for local decisions;
- ``refute(now)`` -> raises our own incarnation above any claim against us.

Invariants: a claim never gets smaller; a node's own record is never
``SUSPECT`` or ``DEAD`` for long: :meth:`merge` refutes such claims at once
by raising the incarnation.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import final

import attrs

__all__ = ["Member", "MemberChanged", "MemberState", "MembershipView", "merge_claims"]


class MemberState(enum.IntEnum):
    """A member's state, in increasing order of finality.

    .. versionadded:: 0.1
    """

    JOINING = 0
    """Announced itself; not yet confirmed alive by anyone."""
    ALIVE = 1
    """Answering."""
    SUSPECT = 2
    """Missed probes; others wait for it to refute before declaring it dead."""
    DEAD = 3
    """Declared dead: removed from routing until it rejoins at a higher incarnation."""
    LEFT = 4
    """Left the cluster gracefully."""


@final
@attrs.frozen(order=False)
class Member:
    """One claim about one node: the unit of gossip.

    .. versionadded:: 0.1
    """

    node: str
    address: str
    state: MemberState
    incarnation: int = 0

    def key(self) -> tuple[int, int, str]:
        """The order of claims (see the module docstring)."""
        return (self.incarnation, int(self.state), self.address)

    def supersedes(self, other: Member) -> bool:
        """True if this claim wins over ``other`` (a claim about the same node)."""
        return self.key() > other.key()

    @property
    def reachable(self) -> bool:
        """Whether messages should be routed to it (``JOINING``, ``ALIVE`` or ``SUSPECT``)."""
        return self.state <= MemberState.SUSPECT


@final
@attrs.frozen
class MemberChanged:
    """The winning claim about ``node`` changed from ``before`` to ``after``."""

    node: str
    before: Member | None
    after: Member


@final
class MembershipView:
    """What this node believes about every member, itself included.

    Args:
      me: this node's name.
      address: the address this node advertises.
      now: the current time (only used for ``last_seen``).
    """

    def __init__(self, me: str, address: str, *, now: float = 0.0, incarnation: int = 0) -> None:
        self.me = me
        self._members: dict[str, Member] = {me: Member(me, address, MemberState.ALIVE, incarnation)}
        self.last_seen: dict[str, float] = {me: now}
        self._reachable: list[str] | None = None

    # -- queries ------------------------------------------------------------------

    def __contains__(self, node: object) -> bool:
        return node in self._members

    def __len__(self) -> int:
        return len(self._members)

    def get(self, node: str) -> Member | None:
        return self._members.get(node)

    @property
    def myself(self) -> Member:
        return self._members[self.me]

    def members(self) -> list[Member]:
        """Every claim, sorted by node name."""
        return [self._members[n] for n in sorted(self._members)]

    def claims(self) -> dict[str, Member]:
        """A copy of the claims, ready to gossip."""
        return dict(self._members)

    def in_state(self, *states: MemberState) -> list[str]:
        """Names of the members in any of ``states``, sorted."""
        return sorted(n for n, m in self._members.items() if m.state in states)

    def reachable(self) -> list[str]:
        """Names of the other members messages may be routed to, sorted.

        Cached until the view changes: probing and gossip ask for it often.
        """
        if self._reachable is None:
            self._reachable = sorted(
                n for n, m in self._members.items() if n != self.me and m.reachable
            )
        return self._reachable

    # -- events -------------------------------------------------------------------

    def merge(
        self, claims: Mapping[str, Member] | Iterable[Member], *, now: float
    ) -> list[MemberChanged]:
        """Take the greater claim for every node; refute claims against ourselves."""
        items = claims.values() if isinstance(claims, Mapping) else claims
        changes = []
        for claim in items:
            change = self._about_me(claim) if claim.node == self.me else self._apply(claim)
            if change is not None:
                changes.append(change)
                if claim.node != self.me:
                    self.last_seen.setdefault(claim.node, now)
        return changes

    def join(self, node: str, address: str, *, now: float) -> list[MemberChanged]:
        """A node announced itself (or was named as a seed)."""
        current = self._members.get(node)
        incarnation = current.incarnation if current is not None else 0
        return self.merge([Member(node, address, MemberState.JOINING, incarnation)], now=now)

    def heard_from(self, node: str, *, now: float) -> list[MemberChanged]:
        """We got an answer from ``node``: it is alive at its current incarnation."""
        self.last_seen[node] = now
        current = self._members.get(node)
        if current is None or current.state >= MemberState.ALIVE:
            return []  # alive already, or a suspicion only it can refute
        return self.merge([attrs.evolve(current, state=MemberState.ALIVE)], now=now)

    def suspect(self, node: str, *, now: float) -> list[MemberChanged]:
        return self._escalate(node, MemberState.SUSPECT, now)

    def declare_dead(self, node: str, *, now: float) -> list[MemberChanged]:
        return self._escalate(node, MemberState.DEAD, now)

    def leave(self, *, now: float) -> list[MemberChanged]:
        """We are leaving: a claim nobody can override at this incarnation."""
        change = self._apply(attrs.evolve(self.myself, state=MemberState.LEFT))
        return [] if change is None else [change]

    def forget(self, node: str) -> None:
        """Drop a dead or departed member for good (after it has been gossiped)."""
        if node != self.me:
            self._members.pop(node, None)
            self.last_seen.pop(node, None)
            self._reachable = None

    # -- internals ------------------------------------------------------------------

    def _escalate(self, node: str, state: MemberState, now: float) -> list[MemberChanged]:
        current = self._members.get(node)
        if current is None or node == self.me:
            return []
        return self.merge([attrs.evolve(current, state=state)], now=now)

    def _apply(self, claim: Member) -> MemberChanged | None:
        current = self._members.get(claim.node)
        if current is not None and not claim.supersedes(current):
            return None
        self._members[claim.node] = claim
        if current is None or current.reachable != claim.reachable:
            self._reachable = None
        return MemberChanged(claim.node, current, claim)

    def _about_me(self, claim: Member) -> MemberChanged | None:
        me = self._members[self.me]
        if me.state is MemberState.LEFT:
            return self._apply(claim)
        if claim.state >= MemberState.SUSPECT and claim.incarnation >= me.incarnation:
            # Refute: we are alive, at a higher incarnation than the rumour.
            refuted = Member(self.me, me.address, MemberState.ALIVE, claim.incarnation + 1)
            return self._apply(refuted)
        if claim.supersedes(me) and claim.state is not MemberState.LEFT:
            return self._apply(attrs.evolve(claim, state=MemberState.ALIVE, address=me.address))
        return None


def merge_claims(*views: Mapping[str, Member]) -> dict[str, Member]:
    """The pure merge of claim maps: for each node, the greatest claim."""
    merged: dict[str, Member] = {}
    for view in views:
        for node, claim in view.items():
            current = merged.get(node)
            if current is None or claim.supersedes(current):
                merged[node] = claim
    return merged
