"""SWIM failure detection, driven by hand: no trio, no clock."""

from __future__ import annotations

import random

import pytest

from trioactors._core._membership import Member, MemberChanged, MembershipView, MemberState
from trioactors._core._swim import Ping, PingReq, SwimConfig, SwimDetector


def cluster(n: int) -> MembershipView:
    view = MembershipView("me", "me:0")
    view.merge([Member(f"n{i}", f"n{i}:0", MemberState.ALIVE) for i in range(n)], now=0.0)
    return view


def run(
    detector: SwimDetector,
    until: float,
    *,
    dead: set[str] = frozenset(),
    relay: bool = True,  # type: ignore[assignment]
) -> list[tuple[float, object]]:
    """Drive the detector; live members ack pings at once (and relay ping-reqs)."""
    log: list[tuple[float, object]] = []
    while (now := detector.next_deadline()) <= until:
        for action in detector.on_time(now):
            log.append((now, action))
            match action:
                case Ping(target, seq) if target not in dead:
                    log += [(now, a) for a in detector.on_ack(target, seq, now=now)]
                case PingReq(via, target, seq) if relay and target not in dead and via not in dead:
                    log += [(now, a) for a in detector.on_ack(target, seq, now=now)]
                case _:
                    pass
    return log


def changes(log: list[tuple[float, object]]) -> list[tuple[float, str, MemberState]]:
    return [(t, a.node, a.after.state) for t, a in log if isinstance(a, MemberChanged)]


def test_defaults_are_memberlists() -> None:
    config = SwimConfig()
    assert (config.protocol_period, config.probe_timeout, config.indirect_checks) == (1.0, 0.5, 3)
    assert config.suspicion_timeout(5) == 4.0
    assert config.suspicion_timeout(100) == 8.0
    assert config.suspicion_timeout(1000) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="probe_timeout"):
        SwimConfig(probe_timeout=2.0)


def test_healthy_members_are_all_probed_and_never_suspected() -> None:
    view = cluster(6)
    detector = SwimDetector(view, SwimConfig(), random.Random(1), now=0.0)
    log = run(detector, until=12.0)
    pinged = [a.target for _, a in log if isinstance(a, Ping)]
    for start in range(0, len(pinged) - 11):
        assert set(pinged[start : start + 12]) == {f"n{i}" for i in range(6)}  # two passes
    assert changes(log) == []
    assert not any(isinstance(a, PingReq) for _, a in log)


def test_a_silent_member_is_suspected_then_declared_dead_within_the_detection_time() -> None:
    view = cluster(6)
    config = SwimConfig()
    detector = SwimDetector(view, config, random.Random(2), now=0.0)
    log = run(detector, until=30.0, dead={"n3"})
    [(suspected_at, _, _), (dead_at, _, _)] = changes(log)
    assert changes(log) == [
        (suspected_at, "n3", MemberState.SUSPECT),
        (dead_at, "n3", MemberState.DEAD),
    ]
    assert dead_at - suspected_at == pytest.approx(config.suspicion_timeout(7))
    first_probe = min(t for t, a in log if isinstance(a, Ping) and a.target == "n3")
    # one period to become suspect, then the suspicion timeout
    assert dead_at <= first_probe + config.protocol_period + config.suspicion_timeout(7)
    asked = [a for _, a in log if isinstance(a, PingReq)]
    assert {a.target for a in asked} == {"n3"}
    assert len({a.via for a in asked}) == 3  # indirect_checks helpers
    assert view.reachable() == ["n0", "n1", "n2", "n4", "n5"]
    assert "n3" not in [a.target for t, a in log if isinstance(a, Ping) and t > dead_at]


def test_an_indirect_ack_prevents_a_suspicion() -> None:
    view = cluster(4)
    detector = SwimDetector(view, SwimConfig(), random.Random(3), now=0.0)
    # every direct ping is lost, but relayed acks get through
    log: list[tuple[float, object]] = []
    while (now := detector.next_deadline()) <= 10.0:
        for action in detector.on_time(now):
            log.append((now, action))
            if isinstance(action, PingReq):
                detector.on_ack(action.target, action.seq, now=now)
    assert changes(log) == []
    assert any(isinstance(a, PingReq) for _, a in log)


def test_a_refuted_suspicion_is_not_declared_dead() -> None:
    view = cluster(3)
    config = SwimConfig()
    detector = SwimDetector(view, config, random.Random(4), now=0.0)
    log = run(detector, until=3.0, dead={"n1"})
    assert (view.get("n1") or Member("", "", MemberState.ALIVE)).state is MemberState.SUSPECT
    # n1 comes back and refutes through gossip
    view.merge([Member("n1", "n1:0", MemberState.ALIVE, 1)], now=3.5)
    log = run(detector, until=30.0)
    assert view.get("n1") == Member("n1", "n1:0", MemberState.ALIVE, 1)
    assert changes(log) == []


def test_a_lone_node_probes_nobody() -> None:
    detector = SwimDetector(MembershipView("me", "me:0"), SwimConfig(), random.Random(5), now=0.0)
    assert run(detector, until=10.0) == []


def test_local_health_slows_probing_after_failed_probes_and_recovers() -> None:
    config = SwimConfig()
    detector = SwimDetector(cluster(5), config, random.Random(1), now=0.0)
    assert (detector.period, detector.probe_timeout) == (1.0, 0.5)
    # every probe fails (we cannot hear anyone): each failed period adds one
    run(detector, 6.0, dead={f"n{i}" for i in range(5)})
    assert detector.awareness >= 2
    assert detector.period == config.protocol_period * (detector.awareness + 1)
    assert detector.probe_timeout == config.probe_timeout * (detector.awareness + 1)
    # never beyond the cap
    for _ in range(2 * config.max_awareness):
        detector.note_refuted()
    assert detector.awareness == config.max_awareness
    # answered probes take it back down to healthy
    healthy = SwimDetector(cluster(5), config, random.Random(1), now=0.0)
    for _ in range(config.max_awareness):
        healthy.note_refuted()
    run(healthy, 400.0)
    assert healthy.awareness == 0
    assert healthy.period == config.protocol_period


def test_a_refuted_suspicion_about_ourselves_counts_against_our_health() -> None:
    detector = SwimDetector(cluster(3), SwimConfig(), random.Random(1), now=0.0)
    detector.note_refuted()
    assert detector.awareness == 1
    assert (
        SwimDetector(cluster(3), SwimConfig(max_awareness=0), random.Random(1), now=0.0).period
        == 1.0
    )


def test_a_slow_node_probes_less_often() -> None:
    # with the score at its cap, a period is (max_awareness + 1) times as long
    config = SwimConfig()
    detector = SwimDetector(cluster(5), config, random.Random(1), now=0.0)
    for _ in range(config.max_awareness):
        detector.note_refuted()
    pings = [
        t for t, a in run(detector, 90.0, dead={f"n{i}" for i in range(5)}) if isinstance(a, Ping)
    ]
    assert len(pings) <= 90 / (config.protocol_period * (config.max_awareness + 1)) + 1
