"""SupervisionPolicy: OTP's restart rules, fed events by hand (no trio, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trioactors._core._supervision import (
    Action,
    Backoff,
    GiveUp,
    RemoveChildren,
    Restart,
    StartChildren,
    StopChildren,
    Strategy,
    SupervisionPolicy,
)

P, T, X = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY


def make(
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    children: str = "abcd",
    restart: Restart | dict[str, Restart] = P,
    *,
    intensity: int = 1,
    period: float = 5.0,
    backoff: Backoff | None = None,
) -> SupervisionPolicy:
    policy = SupervisionPolicy(strategy, intensity=intensity, period=period, backoff=backoff)
    for name in children:
        policy.child_started(name, restart if isinstance(restart, Restart) else restart[name])
    return policy


# -- construction ----------------------------------------------------------------------


def test_defaults_are_otps() -> None:
    policy = SupervisionPolicy()
    assert policy.strategy is Strategy.ONE_FOR_ONE
    assert (policy.intensity, policy.period, policy.backoff) == (1, 5.0, None)


@pytest.mark.parametrize(("intensity", "period"), [(-1, 5.0), (1, 0.0), (1, -1.0)])
def test_rejects_bad_limits(intensity: int, period: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        SupervisionPolicy(intensity=intensity, period=period)


def test_children_are_kept_in_start_order() -> None:
    policy = make(children="cab")
    assert policy.names == ("c", "a", "b")
    assert policy.running() == ("c", "a", "b")
    policy.child_removed("a")
    policy.child_removed("zzz")  # unknown: ignored
    assert policy.names == ("c", "b")


# -- strategies ------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_exited_child() -> None:
    policy = make(Strategy.ONE_FOR_ONE)
    assert policy.child_exited("b", crashed=True, now=1.0) == [StartChildren(("b",), 0.0)]
    assert policy.running() == ("a", "b", "c", "d")


def test_one_for_all_stops_the_others_in_reverse_then_starts_all_in_order() -> None:
    policy = make(Strategy.ONE_FOR_ALL)
    assert policy.child_exited("b", crashed=True, now=1.0) == [
        StopChildren(("d", "c", "a")),
        StartChildren(("a", "b", "c", "d"), 0.0),
    ]
    assert policy.running() == ("a", "b", "c", "d")


def test_rest_for_one_restarts_the_child_and_those_started_after_it() -> None:
    policy = make(Strategy.REST_FOR_ONE)
    assert policy.child_exited("b", crashed=True, now=1.0) == [
        StopChildren(("d", "c")),
        StartChildren(("b", "c", "d"), 0.0),
    ]
    assert policy.running() == ("a", "b", "c", "d")


def test_rest_for_one_of_the_last_child_stops_nobody() -> None:
    policy = make(Strategy.REST_FOR_ONE)
    assert policy.child_exited("d", crashed=True, now=1.0) == [StartChildren(("d",), 0.0)]


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_siblings_that_are_not_running_are_left_alone(strategy: Strategy) -> None:
    policy = make(strategy, restart={"a": P, "b": P, "c": T, "d": P})
    assert policy.child_exited("c", crashed=False, now=0.0) == []  # transient, finished
    actions = policy.child_exited("a", crashed=True, now=1.0)
    assert actions == [StopChildren(("d", "b")), StartChildren(("a", "b", "d"), 0.0)]
    assert policy.names == ("a", "b", "c", "d")
    assert policy.running() == ("a", "b", "d")


def test_a_stopped_child_is_kept_but_not_restarted_with_its_siblings() -> None:
    policy = make(Strategy.ONE_FOR_ALL)
    policy.child_stopped("c")
    assert not policy.is_running("c")
    assert policy.child_exited("a", crashed=True, now=1.0) == [
        StopChildren(("d", "b")),
        StartChildren(("a", "b", "d"), 0.0),
    ]
    policy.child_started("c", P)  # started again by the runtime: same place in the order
    assert policy.running() == ("a", "b", "c", "d")


# -- restart types ---------------------------------------------------------------------


@pytest.mark.parametrize("crashed", [True, False])
def test_permanent_is_always_restarted(crashed: bool) -> None:
    policy = make(children="a", restart=P, intensity=5)
    assert policy.child_exited("a", crashed=crashed, now=1.0) == [StartChildren(("a",), 0.0)]
    assert policy.restart_times() == (1.0,)


def test_transient_is_restarted_after_a_crash() -> None:
    policy = make(children="a", restart=T)
    assert policy.child_exited("a", crashed=True, now=1.0) == [StartChildren(("a",), 0.0)]
    assert policy.is_running("a")


def test_transient_normal_exit_is_kept_as_stopped_and_counts_no_restart() -> None:
    policy = make(children="ab", restart=T)
    assert policy.child_exited("a", crashed=False, now=1.0) == []
    assert policy.names == ("a", "b")
    assert policy.running() == ("b",)
    assert policy.restart_times() == ()


@pytest.mark.parametrize("crashed", [True, False])
def test_temporary_is_removed_and_counts_no_restart(crashed: bool) -> None:
    policy = make(Strategy.ONE_FOR_ALL, children="ab", restart=X)
    assert policy.child_exited("a", crashed=crashed, now=1.0) == [RemoveChildren(("a",))]
    assert policy.names == ("b",)
    assert policy.running() == ("b",)
    assert policy.restart_times() == ()


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_temporary_sibling_stopped_by_a_restart_is_removed_not_restarted(
    strategy: Strategy,
) -> None:
    policy = make(strategy, restart={"a": P, "b": X, "c": P, "d": X})
    assert policy.child_exited("a", crashed=True, now=1.0) == [
        StopChildren(("d", "c", "b")),
        RemoveChildren(("b", "d")),
        StartChildren(("a", "c"), 0.0),
    ]
    assert policy.names == ("a", "c")
    assert policy.running() == ("a", "c")


# -- intensity -------------------------------------------------------------------------


def test_default_intensity_allows_one_restart_in_five_seconds() -> None:
    policy = make(Strategy.ONE_FOR_ONE, children="abc")
    assert policy.child_exited("a", crashed=True, now=10.0) == [StartChildren(("a",), 0.0)]
    actions = policy.child_exited("c", crashed=True, now=14.0)
    # The exited child is already down; the others stop in reverse start order.
    assert actions == [StopChildren(("b", "a")), GiveUp(2, 5.0)]
    assert policy.running() == ()
    assert policy.names == ("a", "b", "c")


def test_the_window_is_inclusive_as_in_otp() -> None:
    # OTP keeps restarts R with R >= Now - Period: exactly `period` ago still counts.
    policy = make(children="a", period=5.0)
    policy.child_exited("a", crashed=True, now=10.0)
    assert policy.child_exited("a", crashed=True, now=15.0) == [GiveUp(2, 5.0)]


def test_restarts_older_than_the_window_are_forgotten() -> None:
    policy = make(children="a", period=5.0)
    policy.child_exited("a", crashed=True, now=10.0)
    assert policy.child_exited("a", crashed=True, now=15.5) == [StartChildren(("a",), 0.0)]
    assert policy.restart_times() == (15.5,)


def test_intensity_zero_gives_up_on_the_first_restart() -> None:
    policy = make(children="ab", intensity=0)
    assert policy.child_exited("b", crashed=False, now=0.0) == [
        StopChildren(("a",)),
        GiveUp(1, 5.0),
    ]


def test_normal_exits_that_are_not_restarted_do_not_count() -> None:
    policy = make(children="abc", restart={"a": P, "b": T, "c": X})
    assert policy.child_exited("b", crashed=False, now=1.0) == []
    assert policy.child_exited("c", crashed=True, now=1.0) == [RemoveChildren(("c",))]
    assert policy.child_exited("a", crashed=True, now=1.0) == [StartChildren(("a",), 0.0)]


def test_higher_intensity() -> None:
    policy = make(children="a", intensity=3, period=10.0)
    for now in (0.0, 1.0, 2.0):
        assert policy.child_exited("a", crashed=True, now=now) == [StartChildren(("a",), 0.0)]
    assert policy.child_exited("a", crashed=True, now=10.0) == [GiveUp(4, 10.0)]


def test_sliding_window() -> None:
    policy = make(children="a", intensity=2, period=10.0)
    for now in (0.0, 5.0, 10.5, 15.5):
        assert policy.child_exited("a", crashed=True, now=now)[-1] == StartChildren(("a",), 0.0)
    assert policy.restart_times() == (10.5, 15.5)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_give_up_stops_every_running_child_in_reverse_start_order(strategy: Strategy) -> None:
    policy = make(strategy, children="abcde", restart={"a": P, "b": T, "c": P, "d": X, "e": P})
    policy.child_exited("b", crashed=False, now=0.0)  # finished: not running
    policy.child_exited("a", crashed=True, now=1.0)
    running = policy.running()
    actions = policy.child_exited("c", crashed=True, now=2.0)
    expected = tuple(n for n in running if n != "c")[::-1]
    assert actions == [StopChildren(expected), GiveUp(2, 5.0)]
    assert policy.running() == ()


def test_give_up_with_nothing_else_running() -> None:
    policy = make(children="a")
    policy.child_exited("a", crashed=True, now=0.0)
    assert policy.child_exited("a", crashed=True, now=0.0) == [GiveUp(2, 5.0)]


# -- backoff ---------------------------------------------------------------------------


def test_backoff_formula() -> None:
    backoff = Backoff(initial=0.5, factor=3.0, maximum=10.0)
    assert [backoff.delay(n) for n in (0, 1, 2, 3, 4)] == [0.5, 0.5, 1.5, 4.5, 10.0]
    assert Backoff().delay(1) == 0.1


def test_backoff_grows_with_restarts_in_the_window_and_resets_after_it() -> None:
    policy = make(children="a", intensity=10, period=100.0, backoff=Backoff(0.1, 2.0, maximum=1.0))
    delays = []
    for now in range(6):
        [start] = policy.child_exited("a", crashed=True, now=float(now))
        assert isinstance(start, StartChildren)
        delays.append(start.delay)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    # Once the window holds only this restart, the delay is back to `initial`.
    [start] = policy.child_exited("a", crashed=True, now=500.0)
    assert start == StartChildren(("a",), pytest.approx(0.1))


def test_backoff_applies_to_a_group_restart() -> None:
    policy = make(Strategy.ONE_FOR_ALL, children="ab", intensity=5, backoff=Backoff(1.0, 2.0))
    assert policy.child_exited("b", crashed=True, now=0.0)[-1] == StartChildren(("a", "b"), 1.0)
    assert policy.child_exited("a", crashed=True, now=1.0)[-1] == StartChildren(("a", "b"), 2.0)


# -- stateful --------------------------------------------------------------------------

NAMES = st.sampled_from([f"c{i}" for i in range(6)])


class PolicyMachine(RuleBasedStateMachine):
    """Random add/exit/remove events with a clock that only moves forward."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = SupervisionPolicy()
        self.now = 0.0
        self.gave_up = False
        self.order: list[str] = []  # every name ever added, in first-start order
        self.temporary: set[str] = set()  # current children added as TEMPORARY
        self.restart_of: dict[str, Restart] = {}

    @initialize(
        strategy=st.sampled_from(Strategy),
        intensity=st.integers(0, 3),
        period=st.sampled_from([1.0, 2.0, 5.0]),
        backoff=st.none() | st.builds(Backoff, st.sampled_from([0.1, 1.0]), st.just(2.0)),
    )
    def setup(
        self, strategy: Strategy, intensity: int, period: float, backoff: Backoff | None
    ) -> None:
        self.policy = SupervisionPolicy(
            strategy, intensity=intensity, period=period, backoff=backoff
        )

    # -- helpers --

    def position(self, name: str) -> int:
        return self.order.index(name)

    def check_actions(self, exited: str, before: tuple[str, ...], actions: list[Action]) -> None:
        stopped_or_removed: set[str] = set()
        for i, action in enumerate(actions):
            match action:
                case StopChildren(names):
                    assert names, "empty StopChildren"
                    positions = [self.position(n) for n in names]
                    assert positions == sorted(positions, reverse=True), actions
                    assert set(names) <= set(before) - {exited}, actions
                    assert not stopped_or_removed & set(names), actions
                    stopped_or_removed |= set(names)
                case RemoveChildren(names):
                    # the exited temporary child, or temporary siblings just stopped
                    assert set(names) <= stopped_or_removed | {exited}, actions
                    assert set(names) <= self.temporary, actions
                    assert not set(names) & set(self.policy.names), actions
                    self.temporary -= set(names)
                case StartChildren(names, delay):
                    assert i == len(actions) - 1, actions
                    assert exited in names, actions
                    positions = [self.position(n) for n in names]
                    assert positions == sorted(positions), actions
                    assert delay >= 0
                    for n in names:
                        assert n not in self.temporary, f"temporary {n} started again"
                case GiveUp(restarts, period):
                    assert i == len(actions) - 1, actions
                    assert restarts == self.policy.intensity + 1
                    assert period == self.policy.period
                    self.gave_up = True

    def expected_actions(
        self, exited: str, crashed: bool, before: tuple[str, ...], history: tuple[float, ...]
    ) -> list[Action]:
        """OTP's rules, restated independently of the policy's code."""
        policy, restart = self.policy, self.restart_of[exited]
        if restart is Restart.TEMPORARY:
            return [RemoveChildren((exited,))]
        if restart is Restart.TRANSIENT and not crashed:
            return []
        window = [t for t in (*history, self.now) if self.now - t <= policy.period]
        others = [n for n in before if n != exited]
        if len(window) > policy.intensity:
            stop = [StopChildren(tuple(reversed(others)))] if others else []
            return [*stop, GiveUp(len(window), policy.period)]
        match policy.strategy:
            case Strategy.ONE_FOR_ONE:
                siblings = []
            case Strategy.ONE_FOR_ALL:
                siblings = others
            case Strategy.REST_FOR_ONE:
                siblings = [n for n in others if self.position(n) > self.position(exited)]
        actions: list[Action] = []
        if siblings:
            actions.append(StopChildren(tuple(reversed(siblings))))
        temporary = [n for n in siblings if self.restart_of[n] is Restart.TEMPORARY]
        if temporary:
            actions.append(RemoveChildren(tuple(temporary)))
        again = sorted({exited, *siblings} - set(temporary), key=self.position)
        delay = policy.backoff.delay(len(window)) if policy.backoff else 0.0
        actions.append(StartChildren(tuple(again), delay))
        return actions

    # -- rules --

    @precondition(lambda self: not self.gave_up)
    @rule(name=NAMES, restart=st.sampled_from(Restart))
    def add(self, name: str, restart: Restart) -> None:
        if name in self.policy.names:
            return
        if name in self.order:
            self.order.remove(name)
        self.order.append(name)
        self.temporary.discard(name)
        self.restart_of[name] = restart
        self.policy.child_started(name, restart)
        if restart is Restart.TEMPORARY:
            self.temporary.add(name)
        assert self.policy.names[-1] == name

    @precondition(lambda self: not self.gave_up and self.policy.running())
    @rule(data=st.data(), crashed=st.booleans(), dt=st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]))
    def exit(self, data: st.DataObject, crashed: bool, dt: float) -> None:
        self.now += dt
        name = data.draw(st.sampled_from(self.policy.running()), label="exited")
        before = self.policy.running()
        history = self.policy.restart_times()
        expected = self.expected_actions(name, crashed, before, history)
        actions = self.policy.child_exited(name, crashed=crashed, now=self.now)
        self.check_actions(name, before, actions)
        assert actions == expected
        # the window is inclusive: what is kept is exactly what lies within `period`
        if self.policy.restart_times() != history:
            kept = [t for t in (*history, self.now) if t >= self.now - self.policy.period]
            assert list(self.policy.restart_times()) == kept

    @precondition(lambda self: not self.gave_up and self.policy.names)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.policy.names), label="removed")
        self.policy.child_removed(name)
        self.temporary.discard(name)
        assert name not in self.policy.names

    @precondition(lambda self: self.gave_up)
    @rule()
    def restart_supervisor(self) -> None:
        # What the runtime does when the parent restarts this supervisor: a fresh
        # policy (empty history) that knows every child again, running.
        old = self.policy
        self.policy = SupervisionPolicy(
            old.strategy, intensity=old.intensity, period=old.period, backoff=old.backoff
        )
        for name in old.names:
            self.policy.child_started(name, self.restart_of[name])
        self.gave_up = False

    # -- invariants --

    @invariant()
    def history_is_bounded(self) -> None:
        times = self.policy.restart_times()
        if not self.gave_up:
            assert len(times) <= self.policy.intensity
        assert len(times) <= self.policy.intensity + 1
        assert list(times) == sorted(times)

    @invariant()
    def names_keep_start_order(self) -> None:
        positions = [self.position(n) for n in self.policy.names]
        assert positions == sorted(positions)

    @invariant()
    def nothing_runs_after_giving_up(self) -> None:
        if self.gave_up:
            assert self.policy.running() == ()


TestPolicyMachine = PolicyMachine.TestCase
