"""Self-healing: the latency window against `statistics`, the healing machine by hand and at random."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioactors._core._healing import (
    Action,
    HealingChanged,
    HealingConfig,
    HealingMachine,
    HealingState,
    LatencyWindow,
)
from trioactors._errors import LocalProtocolError

IDLE, DETECTING, RECOVERING, RESTORED = (
    HealingState.IDLE,
    HealingState.DETECTING,
    HealingState.RECOVERING,
    HealingState.RESTORED,
)
RECOVER, GIVE_UP = Action.RECOVER, Action.GIVE_UP

# -- LatencyWindow ---------------------------------------------------------------------


def test_an_empty_window_has_no_statistics() -> None:
    window = LatencyWindow(threshold=1.0)
    assert (window.size, window.threshold, window.min_samples) == (20, 1.0, 5)
    assert len(window) == 0
    assert window.mean() is None
    assert window.percentile(50) is None
    assert not window.exceeded()
    assert window.samples() == ()


@pytest.mark.parametrize(
    ("size", "threshold", "min_samples", "match"),
    [
        (0, 1.0, 1, "size must be"),
        (5, -1.0, 1, "threshold must be"),
        (5, math.inf, 1, "threshold must be"),
        (5, math.nan, 1, "threshold must be"),
        (5, 1.0, 0, "min_samples must be"),
        (5, 1.0, 6, "min_samples must be"),
    ],
)
def test_window_rejects_bad_settings(
    size: int, threshold: float, min_samples: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        LatencyWindow(size, threshold=threshold, min_samples=min_samples)


@pytest.mark.parametrize("seconds", [-0.1, math.inf, math.nan])
def test_window_rejects_bad_samples(seconds: float) -> None:
    window = LatencyWindow(threshold=1.0)
    with pytest.raises(ValueError, match="response time must be"):
        window.add(seconds)
    assert len(window) == 0


@pytest.mark.parametrize("q", [-1, 100.5, math.nan])
def test_percentile_rejects_q_out_of_range(q: float) -> None:
    window = LatencyWindow(threshold=1.0)
    window.add(1.0)
    with pytest.raises(ValueError, match="q must be"):
        window.percentile(q)


def test_window_slides_and_clears() -> None:
    window = LatencyWindow(3, threshold=1.0, min_samples=2)
    for s in (1.0, 2.0, 3.0, 4.0):
        window.add(s)
    assert window.samples() == (2.0, 3.0, 4.0)
    assert len(window) == 3
    assert window.mean() == 3.0
    assert [window.percentile(q) for q in (0, 33, 34, 50, 66, 67, 100)] == [
        2.0,
        2.0,
        3.0,
        3.0,
        3.0,
        4.0,
        4.0,
    ]
    window.clear()
    assert (len(window), window.mean(), window.exceeded()) == (0, None, False)
    window.add(5.0)
    assert window.mean() == 5.0


def test_exceeded_waits_for_min_samples_and_needs_a_mean_above() -> None:
    window = LatencyWindow(10, threshold=0.5, min_samples=3)
    window.add(2.0)
    window.add(2.0)
    assert not window.exceeded()  # 2 samples < 3
    window.add(2.0)
    assert window.exceeded()
    for _ in range(10):
        window.add(0.1)
    assert not window.exceeded()


def test_a_steady_latency_equal_to_the_threshold_is_not_exceeded() -> None:
    # 3 * 0.1 rounds up in floats, so a float mean could read just above 0.1
    window = LatencyWindow(3, threshold=0.1, min_samples=3)
    for _ in range(3):
        window.add(0.1)
    assert window.mean() == 0.1
    assert not window.exceeded()


def test_nearest_rank_is_exact_where_float_products_are_not() -> None:
    # 28 / 100 * 25 == 7.000000000000001 in floats: the rank is 7, not 8
    window = LatencyWindow(25, threshold=1.0)
    for s in range(25):
        window.add(float(s))
    assert window.percentile(28) == 6.0


def exact_mean(samples: list[float]) -> Fraction:
    return sum(map(Fraction, samples), Fraction(0)) / len(samples)


latencies = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)


@given(
    size=st.integers(1, 12),
    samples=st.lists(latencies | st.sampled_from([0.1, 0.2, 0.3, 1.0]), max_size=40),
    threshold=st.floats(0, 1e6) | st.sampled_from([0.1, 0.2, 0.3, 1.0]),
    data=st.data(),
)
def test_window_statistics_match_the_last_samples(
    size: int, samples: list[float], threshold: float, data: st.DataObject
) -> None:
    min_samples = data.draw(st.integers(1, size), label="min_samples")
    window = LatencyWindow(size, threshold=threshold, min_samples=min_samples)
    for i, s in enumerate(samples, 1):
        window.add(s)
        last = samples[max(0, i - size) : i]
        assert window.samples() == tuple(last)
        assert len(window) == len(last) == min(i, size)
        # statistics.mean is exact, then rounded once: so is the window's
        assert window.mean() == statistics.mean(last)
        assert window.exceeded() == (
            len(last) >= min_samples and exact_mean(last) > Fraction(threshold)
        )
        assert window.percentile(0) == min(last)
        assert window.percentile(100) == max(last)
        assert window.percentile(50) in last


@given(
    samples=st.lists(latencies | st.integers(0, 5).map(float), min_size=1, max_size=30),
    q=st.floats(0, 100) | st.integers(0, 100),
)
def test_percentile_is_the_nearest_rank(samples: list[float], q: float) -> None:
    window = LatencyWindow(len(samples), threshold=1.0, min_samples=1)
    for s in samples:
        window.add(s)
    p = window.percentile(q)
    assert p is not None
    assert p in samples
    n = len(samples)
    # the definition: the smallest sample with at least q% of the samples <= it
    at_or_below = sum(1 for s in samples if s <= p)
    assert Fraction(at_or_below, n) * 100 >= Fraction(q)
    below = [s for s in samples if s < p]
    if below:
        assert Fraction(sum(1 for s in samples if s <= max(below)), n) * 100 < Fraction(q)
    if q in (25, 50, 75, 90, 95, 99):
        ordered = sorted(samples)
        assert p == ordered[max(1, -(-int(q) * n // 100)) - 1]


# -- HealingConfig ---------------------------------------------------------------------


def test_healing_config_defaults() -> None:
    assert attrs.astuple(HealingConfig()) == (3, 2, 3, 300.0)
    assert HealingMachine("t").config == HealingConfig()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failures_to_recover", 0),
        ("successes_to_restore", 0),
        ("max_recoveries", -1),
        ("recovery_window", 0.0),
        ("recovery_window", -5.0),
        ("recovery_window", math.inf),
        ("recovery_window", math.nan),
    ],
)
def test_healing_config_rejects_values_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be .*, not {value!r}$"):
        HealingConfig(**{field: value})  # type: ignore[arg-type]


# -- HealingMachine by hand ------------------------------------------------------------


def ch(before: HealingState, after: HealingState, at: float, reason: str) -> HealingChanged:
    return HealingChanged("t", before, after, at, reason)


def machine(**config: float) -> HealingMachine:
    return HealingMachine("t", HealingConfig(**config))  # type: ignore[arg-type]


def recovering(m: HealingMachine, now: float = 0.0) -> None:
    """Drive ``m`` from IDLE into RECOVERING, asserting the RECOVER."""
    for i in range(m.config.failures_to_recover):
        changes, action = m.observe(False, now)
        if i == m.config.failures_to_recover - 1:
            assert action is RECOVER
            assert changes[-1].after is RECOVERING
    assert m.recovering


def test_a_new_machine_is_idle_and_health_changes_nothing() -> None:
    m = machine()
    assert (m.state, m.recovering, m.gave_up) == (IDLE, False, False)
    assert m.observe(True, 0.0) == ([], None)
    assert m.state is IDLE
    assert m.healthy_streak == 1


def test_unhealthy_starts_detecting_and_a_blip_goes_back_to_idle() -> None:
    m = machine()
    assert m.observe(False, 1.0, "probe timed out") == (
        [ch(IDLE, DETECTING, 1.0, "probe timed out")],
        None,
    )
    assert m.observe(False, 2.0) == ([], None)
    assert m.observe(True, 3.0) == ([ch(DETECTING, IDLE, 3.0, "healthy again (a blip)")], None)
    # the count starts over
    m.observe(False, 4.0)
    m.observe(False, 5.0)
    assert m.state is DETECTING


def test_failures_to_recover_in_a_row_start_a_recovery() -> None:
    m = machine(failures_to_recover=3)
    m.observe(False, 1.0)
    assert m.observe(False, 2.0) == ([], None)
    assert m.observe(False, 3.0) == (
        [ch(DETECTING, RECOVERING, 3.0, "3 unhealthy observations in a row")],
        RECOVER,
    )
    assert m.recovering
    assert m.recovery_starts() == (3.0,)
    assert m.unhealthy_streak == 3


def test_one_failure_to_recover_goes_through_detecting_in_one_call() -> None:
    m = machine(failures_to_recover=1)
    assert m.observe(False, 1.0, "down") == (
        [ch(IDLE, DETECTING, 1.0, "down"), ch(DETECTING, RECOVERING, 1.0, "down")],
        RECOVER,
    )


def test_observations_while_recovering_start_nothing() -> None:
    m = machine()
    recovering(m)
    for healthy in (True, False, False, False, True, True):
        assert m.observe(healthy, 1.0) == ([], None)
    assert m.state is RECOVERING
    assert m.recovering
    assert m.healthy_streak == 2  # recorded all the same


def test_a_successful_recovery_restores_then_health_ends_the_probation() -> None:
    m = machine(successes_to_restore=2)
    recovering(m)
    assert m.recovered(True, 5.0) == ([ch(RECOVERING, RESTORED, 5.0, "recovered")], None)
    assert not m.recovering
    assert m.observe(True, 6.0) == ([], None)
    assert m.observe(True, 7.0) == (
        [ch(RESTORED, IDLE, 7.0, "2 healthy observations in a row")],
        None,
    )


def test_healthy_observations_made_while_recovering_do_not_count_for_restoring() -> None:
    m = machine(successes_to_restore=2)
    recovering(m)
    m.observe(True, 1.0)
    m.observe(True, 2.0)
    m.recovered(True, 3.0)
    assert m.observe(True, 4.0) == ([], None)
    assert m.state is RESTORED


def test_unhealthy_while_restored_detects_again() -> None:
    m = machine(failures_to_recover=2)
    recovering(m)
    m.recovered(True, 1.0)
    m.observe(True, 2.0)
    assert m.observe(False, 3.0) == (
        [ch(RESTORED, DETECTING, 3.0, "unhealthy again after recovering")],
        None,
    )
    assert m.observe(False, 4.0)[1] is RECOVER


def test_a_failed_recovery_recovers_again() -> None:
    m = machine()
    recovering(m, now=0.0)
    assert m.recovered(False, 1.0, "restart failed") == (
        [ch(RECOVERING, RECOVERING, 1.0, "restart failed")],
        RECOVER,
    )
    assert m.recovering
    assert m.recovery_starts() == (0.0, 1.0)


def test_recovered_without_a_recovery_is_a_local_protocol_error() -> None:
    m = machine()
    with pytest.raises(LocalProtocolError, match="no recovery runs"):
        m.recovered(True, 0.0)
    recovering(m)
    m.recovered(True, 1.0)
    with pytest.raises(LocalProtocolError, match=r"once for each Action\.RECOVER"):
        m.recovered(True, 1.0)


def test_gives_up_after_max_recoveries_within_the_window() -> None:
    m = machine(max_recoveries=3, recovery_window=60.0)
    recovering(m, now=0.0)
    assert m.recovered(False, 10.0)[1] is RECOVER
    assert m.recovered(False, 20.0)[1] is RECOVER
    # three started within 60 s (0, 10, 20): a fourth would be one too many
    assert m.recovered(False, 30.0) == ([], GIVE_UP)
    assert (m.state, m.recovering, m.gave_up) == (RECOVERING, False, True)
    # no further action, whatever the observations, until one is healthy
    for _ in range(5):
        assert m.observe(False, 40.0) == ([], None)
    with pytest.raises(LocalProtocolError):
        m.recovered(False, 41.0)
    assert m.observe(True, 50.0) == (
        [ch(RECOVERING, RESTORED, 50.0, "healthy again after giving up")],
        None,
    )
    assert not m.gave_up


def test_the_window_is_inclusive_and_slides() -> None:
    m = machine(max_recoveries=2, recovery_window=60.0)
    recovering(m, now=0.0)
    assert m.recovered(False, 10.0)[1] is RECOVER
    # at 60.0 the start at 0.0 is still within the window ([0, 60])
    assert m.recovered(False, 60.0)[1] is GIVE_UP
    m2 = machine(max_recoveries=2, recovery_window=60.0)
    recovering(m2, now=0.0)
    assert m2.recovered(False, 10.0)[1] is RECOVER
    # at 60.5 only the start at 10.0 is within it
    assert m2.recovered(False, 60.5)[1] is RECOVER
    assert m2.recovery_starts() == (10.0, 60.5)


def test_the_budget_counts_recoveries_started_from_detecting_too() -> None:
    m = machine(failures_to_recover=1, successes_to_restore=1, max_recoveries=2)
    for t in (0.0, 10.0):
        assert m.observe(False, t)[1] is RECOVER
        m.recovered(True, t + 1)
        assert m.observe(True, t + 2)[0][-1].after is IDLE
    # a third relapse within the window: the machine gives up, RECOVERING
    changes, action = m.observe(False, 20.0)
    assert [(c.before, c.after) for c in changes] == [(IDLE, DETECTING), (DETECTING, RECOVERING)]
    assert action is GIVE_UP
    assert m.gave_up
    assert not m.recovering
    # healthy again: through RESTORED to IDLE (successes_to_restore=1, this one counts)
    changes, action = m.observe(True, 21.0)
    assert [(c.before, c.after) for c in changes] == [(RECOVERING, RESTORED), (RESTORED, IDLE)]
    assert action is None
    # long after, the budget is there again
    assert m.observe(False, 1000.0)[1] is RECOVER


def test_max_recoveries_zero_only_gives_up() -> None:
    m = machine(failures_to_recover=1, max_recoveries=0)
    changes, action = m.observe(False, 0.0)
    assert changes[-1].after is RECOVERING
    assert action is GIVE_UP
    assert m.recovery_starts() == ()


def test_repr_names_target_and_state() -> None:
    m = machine()
    assert "'t'" in repr(m)
    assert "idle" in repr(m)
    assert "threshold=1.0" in repr(LatencyWindow(threshold=1.0))


# -- HealingMachine at random ----------------------------------------------------------


@attrs.define
class _Model:
    """The rules, restated: what the machine should do."""

    config: HealingConfig
    state: HealingState = IDLE
    count: int = 0
    running: bool = False
    gave_up: bool = False
    starts: list[float] = attrs.Factory(list)

    def start(self, now: float) -> Action:
        window = [t for t in self.starts if t >= now - self.config.recovery_window]
        if len(window) >= self.config.max_recoveries:
            self.gave_up = True
            return GIVE_UP
        self.starts.append(now)
        self.running = True
        return RECOVER

    def detect_more(self, now: float, path: list[HealingState]) -> Action | None:
        self.count += 1
        if self.count < self.config.failures_to_recover:
            return None
        self.state = RECOVERING
        path.append(RECOVERING)
        return self.start(now)

    def restore_more(self, path: list[HealingState]) -> None:
        self.count += 1
        if self.count >= self.config.successes_to_restore:
            self.state = IDLE
            path.append(IDLE)

    def observe(self, healthy: bool, now: float) -> tuple[list[HealingState], Action | None]:
        path: list[HealingState] = []
        action = None
        if self.state is RECOVERING:
            if healthy and self.gave_up:
                self.gave_up = False
                self.state, self.count = RESTORED, 0
                path.append(RESTORED)
                self.restore_more(path)
        elif healthy:
            if self.state is DETECTING:
                self.state = IDLE
                path.append(IDLE)
            elif self.state is RESTORED:
                self.restore_more(path)
        else:
            if self.state is not DETECTING:
                self.state, self.count = DETECTING, 0
                path.append(DETECTING)
            action = self.detect_more(now, path)
        return path, action

    def recovered(self, ok: bool, now: float) -> tuple[list[HealingState], Action | None]:
        self.running = False
        if ok:
            self.state, self.count = RESTORED, 0
            return [RESTORED], None
        action = self.start(now)
        return ([RECOVERING] if action is RECOVER else []), action


class HealingMachineTest(RuleBasedStateMachine):
    """Random observations and recovery outcomes, with a clock that moves forward."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = HealingMachine("t")
        self.model = _Model(HealingConfig())
        self.now = 0.0
        self.changes: list[HealingChanged] = []
        self.recovers: list[float] = []  # when RECOVER was returned
        self.waiting_for_health = False  # GIVE_UP returned, no healthy observation since

    @initialize(
        failures_to_recover=st.integers(1, 3),
        successes_to_restore=st.integers(1, 3),
        max_recoveries=st.integers(0, 3),
        recovery_window=st.sampled_from([5.0, 30.0, 300.0]),
    )
    def setup(
        self,
        failures_to_recover: int,
        successes_to_restore: int,
        max_recoveries: int,
        recovery_window: float,
    ) -> None:
        config = HealingConfig(
            failures_to_recover=failures_to_recover,
            successes_to_restore=successes_to_restore,
            max_recoveries=max_recoveries,
            recovery_window=recovery_window,
        )
        self.machine = HealingMachine("t", config)
        self.model = _Model(config)

    def check(
        self,
        changes: list[HealingChanged],
        action: Action | None,
        expected: tuple[list[HealingState], Action | None],
    ) -> None:
        assert ([c.after for c in changes], action) == expected
        for change in changes:
            previous = self.changes[-1].after if self.changes else IDLE
            assert change.before is previous
            assert change.before is not change.after or change.after is RECOVERING
            assert change.target == "t"
            assert change.at == self.now
            assert change.reason
            self.changes.append(change)
        # RECOVER comes only with a change into RECOVERING (entering or re-entering)
        if action is RECOVER:
            assert changes
            assert changes[-1].after is RECOVERING
            self.recovers.append(self.now)
        if changes and changes[-1].after is RECOVERING:
            assert action is not None
        if action is GIVE_UP:
            assert not self.waiting_for_health  # once per giving up
            self.waiting_for_health = True
        elif action is not None:
            assert not self.waiting_for_health

    @rule(dt=st.sampled_from([0.0, 1.0, 5.0, 30.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(healthy=st.booleans())
    def observe(self, healthy: bool) -> None:
        expected = self.model.observe(healthy, self.now)
        changes, action = self.machine.observe(healthy, self.now)
        if healthy:
            self.waiting_for_health = False
        self.check(changes, action, expected)

    @precondition(lambda self: self.model.running)
    @rule(ok=st.booleans())
    def recovered(self, ok: bool) -> None:
        expected = self.model.recovered(ok, self.now)
        changes, action = self.machine.recovered(ok, self.now)
        self.check(changes, action, expected)

    @precondition(lambda self: not self.model.running)
    @rule(ok=st.booleans())
    def recovered_unasked(self, ok: bool) -> None:
        state = self.machine.state
        with pytest.raises(LocalProtocolError):
            self.machine.recovered(ok, self.now)
        assert self.machine.state is state

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.machine.state is self.model.state
        assert self.machine.recovering == self.model.running
        assert self.machine.gave_up == self.model.gave_up
        if self.machine.recovering or self.machine.gave_up:
            assert self.machine.state is RECOVERING

    @invariant()
    def the_budget_holds(self) -> None:
        window = self.machine.config.recovery_window
        for t in self.recovers:
            within = [s for s in self.recovers if t - window <= s <= t]
            assert len(within) <= self.machine.config.max_recoveries
        assert len(self.machine.recovery_starts()) <= self.machine.config.max_recoveries
        assert (
            list(self.machine.recovery_starts())
            == self.recovers[len(self.recovers) - len(self.machine.recovery_starts()) :]
        )


TestHealingMachine = HealingMachineTest.TestCase


@given(
    events=st.lists(
        st.tuples(st.sampled_from(["healthy", "unhealthy", "ok", "failed"]), st.floats(0, 100)),
        max_size=80,
    ),
    config=st.builds(
        HealingConfig,
        failures_to_recover=st.integers(1, 4),
        successes_to_restore=st.integers(1, 4),
        max_recoveries=st.integers(0, 4),
        recovery_window=st.floats(1, 500),
    ),
)
def test_changes_chain_and_recover_only_enters_recovering(
    events: list[tuple[str, float]], config: HealingConfig
) -> None:
    m = HealingMachine("t", config)
    now = 0.0
    previous = IDLE
    for event, dt in events:
        now += dt
        if event in ("ok", "failed"):
            if not m.recovering:
                continue
            changes, action = m.recovered(event == "ok", now)
        else:
            changes, action = m.observe(event == "healthy", now)
        for change in changes:
            assert change.before is previous
            assert change.before is not change.after or change.after is RECOVERING
            previous = change.after
        assert m.state is previous
        if action is RECOVER:
            assert changes
            assert changes[-1].after is RECOVERING
            assert m.recovering
        assert (action is GIVE_UP) <= m.gave_up
