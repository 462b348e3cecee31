"""The membership view: claims form a join-semilattice; refutation; local events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trioactors._core._membership import Member, MembershipView, MemberState, merge_claims

NODES = ["a", "b", "c", "d"]

claims = st.builds(
    Member,
    node=st.sampled_from(NODES),
    address=st.sampled_from(["x:1", "x:2"]),
    state=st.sampled_from(list(MemberState)),
    incarnation=st.integers(0, 3),
)
views = st.lists(claims, max_size=8).map(lambda cs: merge_claims(*({c.node: c} for c in cs)))


@given(views)
def test_merge_is_idempotent(v: dict[str, Member]) -> None:
    assert merge_claims(v, v) == v


@given(views, views)
def test_merge_is_commutative(v: dict[str, Member], w: dict[str, Member]) -> None:
    assert merge_claims(v, w) == merge_claims(w, v)


@given(views, views, views)
def test_merge_is_associative(
    u: dict[str, Member], v: dict[str, Member], w: dict[str, Member]
) -> None:
    assert merge_claims(merge_claims(u, v), w) == merge_claims(u, merge_claims(v, w))


@given(views, views)
def test_merge_never_loses_a_greater_claim(v: dict[str, Member], w: dict[str, Member]) -> None:
    merged = merge_claims(v, w)
    for node, claim in [*v.items(), *w.items()]:
        assert not claim.supersedes(merged[node])


@given(st.lists(st.tuples(st.integers(0, 2), claims), max_size=30), st.randoms())
def test_views_converge_whatever_the_gossip_order(
    rumours: list[tuple[int, Member]], rng: object
) -> None:
    # three observers (none of them a subject of the rumours) hear the same
    # rumours, each in its own order, some twice; then they gossip once
    observers = [MembershipView(f"observer-{i}", "o:0") for i in range(3)]
    for i, view in enumerate(observers):
        mine = [claim for _, claim in rumours]
        rng.shuffle(mine)  # type: ignore[attr-defined]
        view.merge(mine + mine[: len(mine) // 2], now=float(i))
    for view in observers:
        for other in observers:
            view.merge(other.claims(), now=1.0)
    subjects = {c.node for _, c in rumours}
    final = [{n: v.get(n) for n in subjects} for v in observers]
    assert final[0] == final[1] == final[2]


def test_a_node_refutes_a_suspicion_about_itself() -> None:
    view = MembershipView("a", "a:1", incarnation=2)
    changes = view.merge([Member("a", "a:1", MemberState.SUSPECT, 2)], now=1.0)
    assert view.myself == Member("a", "a:1", MemberState.ALIVE, 3)
    assert [c.after for c in changes] == [view.myself]
    # the refutation beats the rumour everywhere it meets it
    assert view.myself.supersedes(Member("a", "a:1", MemberState.DEAD, 2))
    # an old rumour changes nothing
    assert view.merge([Member("a", "a:1", MemberState.DEAD, 1)], now=2.0) == []


def test_local_events_follow_the_order() -> None:
    view = MembershipView("a", "a:1")
    assert [c.after.state for c in view.join("b", "b:1", now=0.0)] == [MemberState.JOINING]
    view.heard_from("b", now=1.0)
    assert view.get("b") == Member("b", "b:1", MemberState.ALIVE, 0)
    view.suspect("b", now=2.0)
    assert view.get("b").state is MemberState.SUSPECT  # type: ignore[union-attr]
    assert view.heard_from("b", now=3.0) == []  # only b can refute a suspicion
    view.merge([Member("b", "b:1", MemberState.ALIVE, 1)], now=4.0)  # b refuted
    assert view.get("b").state is MemberState.ALIVE  # type: ignore[union-attr]
    view.declare_dead("b", now=5.0)
    assert view.reachable() == []
    assert view.in_state(MemberState.DEAD) == ["b"]
    view.merge([Member("b", "b:2", MemberState.JOINING, 2)], now=6.0)  # b rejoins, new life
    assert view.reachable() == ["b"]
    view.leave(now=7.0)
    assert view.myself.state is MemberState.LEFT
