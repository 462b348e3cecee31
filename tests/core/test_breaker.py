"""Circuit breakers: every transition by hand, then random histories under hypothesis."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioactors._core._breaker import (
    BreakerChanged,
    BreakerConfig,
    Breakers,
    BreakerState,
    CircuitBreaker,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def changed(before: BreakerState, after: BreakerState, at: float, failures: int) -> BreakerChanged:
    return BreakerChanged("n1", before, after, at, failures)


def opened(
    *,
    failure_threshold: int = 2,
    reset_timeout: float = 10.0,
    half_open_trials: int = 1,
    success_threshold: int = 1,
    at: float = 0.0,
) -> CircuitBreaker:
    """A breaker opened at ``at`` by ``failure_threshold`` failures."""
    config = BreakerConfig(
        failure_threshold=failure_threshold,
        reset_timeout=reset_timeout,
        half_open_trials=half_open_trials,
        success_threshold=success_threshold,
    )
    breaker = CircuitBreaker("n1", config)
    for _ in range(failure_threshold - 1):
        assert breaker.on_failure(at) == []
    assert breaker.on_failure(at) == [changed(CLOSED, OPEN, at, failure_threshold)]
    return breaker


# -- config ----------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = BreakerConfig()
    assert attrs.astuple(config) == (5, 30.0, 1, 1)
    assert CircuitBreaker("n1").config == config
    assert Breakers().config == config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("reset_timeout", 0.0),
        ("reset_timeout", -1.0),
        ("reset_timeout", math.inf),
        ("reset_timeout", math.nan),
        ("half_open_trials", 0),
        ("success_threshold", 0),
    ],
)
def test_config_rejects_values_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be .*, not {value!r}$"):
        BreakerConfig(**{field: value})  # type: ignore[arg-type]


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        BreakerConfig(3)  # type: ignore[call-arg]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        BreakerConfig().reset_timeout = 1.0  # type: ignore[misc]


# -- closed ----------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_allows() -> None:
    breaker = CircuitBreaker("n1")
    assert breaker.state(0.0) is CLOSED
    assert breaker.allow(0.0)
    assert (breaker.failures, breaker.opened_at, breaker.reopens_at()) == (0, None, None)
    assert breaker.trials_in_flight == 0
    assert breaker.poll(1e9) == []


def test_closed_opens_at_the_threshold_of_consecutive_failures() -> None:
    breaker = CircuitBreaker("n1", BreakerConfig(failure_threshold=3, reset_timeout=5.0))
    assert breaker.on_sent(0.0) == []
    assert breaker.on_failure(1.0) == []
    assert breaker.on_failure(2.0) == []
    assert (breaker.failures, breaker.state(2.0)) == (2, CLOSED)
    assert breaker.on_failure(3.0) == [changed(CLOSED, OPEN, 3.0, 3)]
    assert (breaker.failures, breaker.opened_at, breaker.reopens_at()) == (3, 3.0, 8.0)
    assert breaker.state(3.0) is OPEN
    assert not breaker.allow(3.0)


def test_a_success_resets_the_consecutive_failures() -> None:
    breaker = CircuitBreaker("n1", BreakerConfig(failure_threshold=3))
    breaker.on_failure(0.0)
    breaker.on_failure(0.0)
    assert breaker.on_success(0.0) == []
    assert breaker.failures == 0
    assert breaker.on_failure(0.0) == []
    assert breaker.on_failure(0.0) == []
    assert breaker.state(0.0) is CLOSED
    assert breaker.on_failure(0.0) == [changed(CLOSED, OPEN, 0.0, 3)]


def test_abandoned_and_sent_jobs_count_neither_way_while_closed() -> None:
    breaker = CircuitBreaker("n1", BreakerConfig(failure_threshold=2))
    breaker.on_failure(0.0)
    for _ in range(5):
        assert breaker.on_sent(0.0) == []
        breaker.on_abandoned(0.0)
    assert breaker.failures == 1
    assert breaker.on_failure(0.0) == [changed(CLOSED, OPEN, 0.0, 2)]


def test_a_threshold_of_one_opens_at_the_first_failure() -> None:
    breaker = CircuitBreaker("n1", BreakerConfig(failure_threshold=1))
    assert breaker.on_failure(4.0) == [changed(CLOSED, OPEN, 4.0, 1)]


# -- open ------------------------------------------------------------------------------


def test_open_allows_nothing_until_the_reset_timeout() -> None:
    breaker = opened(reset_timeout=10.0, at=5.0)
    for now in (5.0, 10.0, 14.999):
        assert breaker.state(now) is OPEN
        assert not breaker.allow(now)
        assert breaker.poll(now) == []
    assert breaker.state(15.0) is HALF_OPEN
    assert breaker.allow(15.0)


def test_late_successes_while_open_do_not_close_it() -> None:
    breaker = opened(at=0.0)
    assert breaker.on_success(1.0) == []
    assert breaker.on_success(2.0) == []
    assert breaker.state(2.0) is OPEN
    assert breaker.failures == 0  # the streak of failures is broken all the same
    assert breaker.reopens_at() == 10.0


def test_failures_while_open_do_not_extend_the_timeout() -> None:
    breaker = opened(at=0.0)
    assert breaker.on_failure(9.0) == []
    assert breaker.on_failure(9.5) == []
    assert (breaker.failures, breaker.opened_at, breaker.reopens_at()) == (4, 0.0, 10.0)
    assert breaker.state(10.0) is HALF_OPEN


def test_sending_while_open_anyway_counts_no_trial() -> None:
    breaker = opened(at=0.0)
    assert breaker.on_sent(1.0) == []
    assert breaker.trials_in_flight == 0
    assert breaker.on_sent(10.0) == [changed(OPEN, HALF_OPEN, 10.0, 2)]
    assert breaker.trials_in_flight == 1


# -- the half-open change, reported once ------------------------------------------------


def test_state_and_allow_record_nothing_poll_reports_the_change_once() -> None:
    breaker = opened(at=0.0)
    assert breaker.state(12.0) is HALF_OPEN
    assert breaker.allow(12.0)
    assert breaker.allow(13.0)
    # at: when the timeout passed, not when someone noticed
    assert breaker.poll(13.0) == [changed(OPEN, HALF_OPEN, 10.0, 2)]
    assert breaker.poll(14.0) == []
    assert breaker.state(14.0) is HALF_OPEN
    assert breaker.reopens_at() is None
    assert breaker.opened_at == 0.0  # still set while half-open


@pytest.mark.parametrize("event", ["on_sent", "on_success", "on_failure"])
def test_the_first_event_after_the_timeout_reports_the_half_open(event: str) -> None:
    breaker = opened(at=0.0)
    changes = getattr(breaker, event)(11.0)
    assert changes[0] == changed(OPEN, HALF_OPEN, 10.0, 2)
    assert breaker.poll(11.0) == []
    assert all(c.before is not OPEN for c in changes[1:])


def test_abandoned_leaves_the_half_open_change_to_the_next_call() -> None:
    breaker = opened(at=0.0)
    breaker.on_abandoned(11.0)
    assert breaker.state(11.0) is HALF_OPEN
    assert breaker.poll(11.0) == [changed(OPEN, HALF_OPEN, 10.0, 2)]


# -- half-open -------------------------------------------------------------------------


def test_half_open_lets_one_trial_through_and_a_success_closes_it() -> None:
    breaker = opened(at=0.0)
    assert breaker.on_sent(10.0) == [changed(OPEN, HALF_OPEN, 10.0, 2)]
    assert breaker.trials_in_flight == 1
    assert not breaker.allow(10.0)
    assert breaker.on_success(11.0) == [changed(HALF_OPEN, CLOSED, 11.0, 0)]
    assert breaker.state(11.0) is CLOSED
    assert breaker.allow(11.0)
    assert (breaker.failures, breaker.opened_at, breaker.reopens_at()) == (0, None, None)
    assert breaker.trials_in_flight == 0


def test_a_failed_trial_reopens_with_a_fresh_timeout() -> None:
    breaker = opened(at=0.0)
    breaker.on_sent(10.0)
    assert breaker.on_failure(12.0) == [changed(HALF_OPEN, OPEN, 12.0, 3)]
    assert (breaker.opened_at, breaker.reopens_at()) == (12.0, 22.0)
    assert breaker.trials_in_flight == 0
    assert not breaker.allow(21.9)
    assert breaker.state(22.0) is HALF_OPEN
    assert breaker.on_sent(30.0) == [changed(OPEN, HALF_OPEN, 22.0, 3)]


def test_a_failure_reported_late_reopens_in_one_call() -> None:
    breaker = opened(at=0.0)
    assert breaker.on_failure(15.0) == [
        changed(OPEN, HALF_OPEN, 10.0, 2),
        changed(HALF_OPEN, OPEN, 15.0, 3),
    ]
    assert breaker.reopens_at() == 25.0


def test_a_success_reported_late_closes_in_one_call() -> None:
    breaker = opened(at=0.0)
    assert breaker.on_success(15.0) == [
        changed(OPEN, HALF_OPEN, 10.0, 2),
        changed(HALF_OPEN, CLOSED, 15.0, 0),
    ]


def test_half_open_trials_limits_the_trials_in_flight() -> None:
    breaker = opened(at=0.0, half_open_trials=3, success_threshold=5)
    sent = 0
    while breaker.allow(10.0):
        breaker.on_sent(10.0)
        sent += 1
    assert sent == 3
    assert breaker.trials_in_flight == 3
    assert breaker.on_success(11.0) == []
    assert breaker.trials_in_flight == 2
    assert breaker.allow(11.0)
    breaker.on_abandoned(11.0)
    assert breaker.trials_in_flight == 1
    breaker.on_sent(11.0)
    breaker.on_sent(11.0)
    assert not breaker.allow(11.0)


def test_success_threshold_counts_successful_trials() -> None:
    breaker = opened(at=0.0, success_threshold=3)
    for i in range(2):
        breaker.on_sent(10.0 + i)
        assert breaker.on_success(10.5 + i) == []
        assert breaker.state(10.5 + i) is HALF_OPEN
    breaker.on_sent(12.0)
    assert breaker.on_success(12.5) == [changed(HALF_OPEN, CLOSED, 12.5, 0)]


def test_successes_count_again_from_zero_after_a_reopen() -> None:
    breaker = opened(at=0.0, success_threshold=2)
    breaker.on_sent(10.0)
    breaker.on_success(10.0)
    breaker.on_sent(10.0)
    breaker.on_failure(11.0)  # reopened at 11
    breaker.on_sent(21.0)
    assert breaker.on_success(21.0) == []  # 1 of 2, not 2 of 2
    breaker.on_sent(21.0)
    assert breaker.on_success(21.0) == [changed(HALF_OPEN, CLOSED, 21.0, 0)]


def test_an_abandoned_trial_frees_its_slot_and_counts_neither_way() -> None:
    breaker = opened(at=0.0)
    breaker.on_sent(10.0)
    assert not breaker.allow(10.0)
    breaker.on_abandoned(10.5)
    assert breaker.allow(10.5)
    assert breaker.state(10.5) is HALF_OPEN
    assert breaker.failures == 2


def test_more_results_than_trials_do_not_make_room_for_extra_trials() -> None:
    breaker = opened(at=0.0, success_threshold=3)
    breaker.poll(10.0)
    # results of jobs sent before the breaker half-opened
    breaker.on_abandoned(10.0)
    breaker.on_abandoned(10.0)
    assert breaker.trials_in_flight == 0
    assert breaker.on_sent(10.0) == []
    assert not breaker.allow(10.0)


def test_a_closed_breaker_opens_again_after_threshold_failures() -> None:
    breaker = opened(at=0.0)
    breaker.on_sent(10.0)
    breaker.on_success(10.0)
    assert breaker.on_failure(11.0) == []
    assert breaker.on_failure(12.0) == [changed(CLOSED, OPEN, 12.0, 2)]
    assert breaker.reopens_at() == 22.0


# -- Breakers --------------------------------------------------------------------------


def test_breakers_create_a_breaker_per_key_on_first_event() -> None:
    breakers = Breakers(BreakerConfig(failure_threshold=1, reset_timeout=5.0))
    assert "a" not in breakers
    assert breakers.allow("a", 0.0)
    assert breakers.state("a", 0.0) is CLOSED
    breakers.on_abandoned("a", 0.0)
    assert breakers.states(0.0) == {}
    assert "a" not in breakers  # queries and on_abandoned create nothing
    assert breakers.get("a") is None

    assert breakers.on_sent("a", 0.0) == []
    assert breakers.on_success("b", 0.0) == []
    assert breakers.on_failure("c", 1.0) == [BreakerChanged("c", CLOSED, OPEN, 1.0, 1)]
    assert list(breakers) == ["a", "b", "c"]
    assert len(breakers) == 3
    assert "c" in breakers
    assert 3 not in breakers
    assert breakers.states(1.0) == {"a": CLOSED, "b": CLOSED, "c": OPEN}
    assert not breakers.allow("c", 1.0)
    assert breakers.allow("a", 1.0)
    breaker = breakers.get("c")
    assert breaker is not None
    assert breaker is breakers.breaker("c")
    assert breaker.config is breakers.config
    assert breakers.breaker("d").state(0.0) is CLOSED
    assert "d" in breakers


def test_breakers_keep_their_keys_apart() -> None:
    breakers = Breakers(BreakerConfig(failure_threshold=2, reset_timeout=5.0))
    breakers.on_failure("a", 0.0)
    breakers.on_failure("b", 0.0)
    assert breakers.states(0.0) == {"a": CLOSED, "b": CLOSED}
    assert breakers.on_failure("a", 1.0) == [BreakerChanged("a", CLOSED, OPEN, 1.0, 2)]
    assert breakers.state("b", 1.0) is CLOSED


def test_breakers_poll_and_reopens_at() -> None:
    breakers = Breakers(BreakerConfig(failure_threshold=1, reset_timeout=5.0))
    assert breakers.reopens_at() is None
    breakers.on_failure("a", 0.0)
    breakers.on_failure("b", 2.0)
    assert breakers.reopens_at() == 5.0
    assert breakers.poll(4.0) == []
    assert breakers.states(6.0) == {"a": HALF_OPEN, "b": OPEN}
    assert breakers.poll(6.0) == [BreakerChanged("a", OPEN, HALF_OPEN, 5.0, 1)]
    assert breakers.reopens_at() == 7.0
    assert breakers.poll(9.0) == [BreakerChanged("b", OPEN, HALF_OPEN, 7.0, 1)]
    assert breakers.poll(9.0) == []
    assert breakers.reopens_at() is None


def test_forget_drops_a_breaker_and_a_new_one_starts_closed() -> None:
    breakers = Breakers(BreakerConfig(failure_threshold=1))
    breakers.on_failure("a", 0.0)
    breakers.forget("a")
    breakers.forget("never-seen")
    assert "a" not in breakers
    assert breakers.allow("a", 0.0)
    assert breakers.on_failure("a", 1.0) == [BreakerChanged("a", CLOSED, OPEN, 1.0, 1)]


def test_reprs_name_the_state() -> None:
    breaker = opened(at=0.0)
    assert "'n1'" in repr(breaker)
    assert "open" in repr(breaker)
    assert "1 keys" in repr(Breakers()) or "0 keys" in repr(Breakers())


# -- random histories -------------------------------------------------------------------


@attrs.define
class _Job:
    key: str
    trial_of: int | None  # the half-open episode it was sent in, if any


@attrs.define
class _Model:
    """What the test knows of one key, from the changes reported and its own bookkeeping."""

    changes: list[BreakerChanged] = attrs.Factory(list)
    episode: int = 0  # half-open episodes so far
    stale_results: int = 0  # results of jobs from before the episode, received in it
    successes: int = 0  # trial successes in the episode
    streak: int = 0  # consecutive failures while closed

    @property
    def recorded(self) -> BreakerState:
        return self.changes[-1].after if self.changes else CLOSED


class BreakerMachine(RuleBasedStateMachine):
    """Random sends, results and polls on two keys, with a clock that moves forward.

    The caller behaves: it sends a job only when ``allow`` says so, and reports
    each job it sent exactly once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = BreakerConfig()
        self.breakers = Breakers(self.config)
        self.now = 0.0
        self.models: dict[str, _Model] = {"a": _Model(), "b": _Model()}
        self.jobs: list[_Job] = []

    @initialize(
        failure_threshold=st.integers(1, 4),
        reset_timeout=st.sampled_from([1.0, 2.5, 10.0]),
        half_open_trials=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
    )
    def setup(
        self,
        failure_threshold: int,
        reset_timeout: float,
        half_open_trials: int,
        success_threshold: int,
    ) -> None:
        self.config = BreakerConfig(
            failure_threshold=failure_threshold,
            reset_timeout=reset_timeout,
            half_open_trials=half_open_trials,
            success_threshold=success_threshold,
        )
        self.breakers = Breakers(self.config)

    # -- helpers --

    def take(self, key: str, changes: list[BreakerChanged]) -> None:
        """Check ``changes`` against the chain so far and append them."""
        model = self.models[key]
        for change in changes:
            assert change.key == key
            assert change.before is model.recorded, (model.changes, change)
            assert change.before is not change.after
            assert change.at <= self.now
            if model.changes:
                assert change.at >= model.changes[-1].at
            if change.after is HALF_OPEN:
                assert change.before is OPEN
                assert change.at == model.changes[-1].at + self.config.reset_timeout
                model.episode += 1
                model.stale_results = 0
                model.successes = 0
            if change.after is CLOSED:
                model.streak = 0
            model.changes.append(change)

    def report(self, key: str, job: _Job | None, outcome: str) -> None:
        breaker = self.breakers.breaker(key)
        model = self.models[key]
        applied = breaker.state(self.now)  # the state the result meets
        if outcome == "abandoned":
            applied = model.recorded  # on_abandoned catches up nothing
        reopens_at = breaker.reopens_at()
        failures = breaker.failures
        changes: list[BreakerChanged]
        match outcome:
            case "success":
                changes = self.breakers.on_success(key, self.now)
            case "failure":
                changes = self.breakers.on_failure(key, self.now)
            case _:
                self.breakers.on_abandoned(key, self.now)
                changes = []
        # the half-open change, if due, comes first
        rest = changes
        if changes and changes[0].after is HALF_OPEN:
            self.take(key, changes[:1])
            rest = changes[1:]
        if applied is HALF_OPEN and (job is None or job.trial_of != model.episode):
            model.stale_results += 1
        match applied, outcome:
            case BreakerState.CLOSED, "failure":
                model.streak += 1
                assert failures + 1 == model.streak == breaker.failures
                # opens exactly when the consecutive failures reach the threshold
                if model.streak == self.config.failure_threshold:
                    assert [(c.before, c.after) for c in rest] == [(CLOSED, OPEN)]
                    assert rest[0].failures == self.config.failure_threshold
                    assert breaker.opened_at == self.now
                else:
                    assert model.streak < self.config.failure_threshold
                    assert rest == []
            case BreakerState.CLOSED, "success":
                model.streak = 0
                assert rest == []
            case BreakerState.OPEN, _:
                # late results change nothing, and failures do not extend the timeout
                assert rest == []
                assert breaker.reopens_at() == reopens_at
            case BreakerState.HALF_OPEN, "failure":
                assert [(c.before, c.after, c.at) for c in rest] == [(HALF_OPEN, OPEN, self.now)]
                assert breaker.reopens_at() == self.now + self.config.reset_timeout
            case BreakerState.HALF_OPEN, "success":
                model.successes += 1
                if model.successes == self.config.success_threshold:
                    assert [(c.before, c.after) for c in rest] == [(HALF_OPEN, CLOSED)]
                else:
                    assert rest == []
            case _:
                assert rest == []
        self.take(key, rest)

    # -- rules --

    @rule(dt=st.sampled_from([0.0, 0.25, 1.0, 2.5, 10.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(key=st.sampled_from("ab"))
    def send(self, key: str) -> None:
        if not self.breakers.allow(key, self.now):
            assert self.breakers.state(key, self.now) is not CLOSED
            return
        self.take(key, self.breakers.on_sent(key, self.now))
        model = self.models[key]
        trial = model.episode if model.recorded is HALF_OPEN else None
        self.jobs.append(_Job(key, trial))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "abandoned"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        job = self.jobs.pop(data.draw(st.integers(0, len(self.jobs) - 1), label="job"))
        self.report(job.key, job, outcome)

    @rule(key=st.sampled_from("ab"), outcome=st.sampled_from(["success", "failure"]))
    def report_unsent(self, key: str, outcome: str) -> None:
        # A result the breaker cannot match to a job it was told of (e.g. a job
        # sent before the key was forgotten).
        self.report(key, None, outcome)

    @rule(key=st.sampled_from("ab"))
    def poll(self, key: str) -> None:
        breaker = self.breakers.breaker(key)
        due = breaker.state(self.now) is HALF_OPEN and self.models[key].recorded is OPEN
        changes = breaker.poll(self.now)
        assert len(changes) == due
        self.take(key, changes)

    @rule()
    def poll_all(self) -> None:
        for change in self.breakers.poll(self.now):
            self.take(change.key, [change])

    # -- invariants --

    @invariant()
    def state_follows_the_chain(self) -> None:
        for key, model in self.models.items():
            state = self.breakers.state(key, self.now)
            assert self.breakers.state(key, self.now) is state  # pure
            breaker = self.breakers.get(key)
            if model.recorded is OPEN:
                assert breaker is not None
                reopens_at = model.changes[-1].at + self.config.reset_timeout
                assert breaker.reopens_at() == reopens_at
                if self.now < reopens_at:
                    assert state is OPEN
                    assert not self.breakers.allow(key, self.now)
                else:
                    assert state is HALF_OPEN
            else:
                assert state is model.recorded
                assert breaker is None or breaker.reopens_at() is None

    @invariant()
    def closed_counts_consecutive_failures(self) -> None:
        for key, model in self.models.items():
            if model.recorded is CLOSED:
                breaker = self.breakers.get(key)
                failures = 0 if breaker is None else breaker.failures
                assert failures == model.streak < self.config.failure_threshold

    @invariant()
    def half_open_limits_trials(self) -> None:
        for key, model in self.models.items():
            breaker = self.breakers.get(key)
            if breaker is None or model.recorded is not HALF_OPEN:
                continue
            assert breaker.trials_in_flight <= self.config.half_open_trials
            trials = sum(1 for j in self.jobs if j.key == key and j.trial_of == model.episode)
            # Exact when no result of an older job arrived in the episode; each
            # such result frees a slot that the breaker cannot tell apart.
            assert trials <= self.config.half_open_trials + model.stale_results
            if breaker.allow(self.now):
                assert breaker.trials_in_flight < self.config.half_open_trials


TestBreakerMachine = BreakerMachine.TestCase


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["sent", "success", "failure", "abandoned", "poll", "state"]),
            st.floats(0, 20),
        ),
        max_size=60,
    ),
    threshold=st.integers(1, 4),
)
def test_changes_chain_under_any_sequence_of_calls(
    events: list[tuple[str, float]], threshold: int
) -> None:
    """Even a careless caller (sending when not allowed) gets a valid chain."""
    breaker = CircuitBreaker("k", BreakerConfig(failure_threshold=threshold, reset_timeout=3.0))
    now = 0.0
    chain: list[BreakerChanged] = []
    for event, dt in events:
        now += dt
        match event:
            case "sent":
                chain += breaker.on_sent(now)
            case "success":
                chain += breaker.on_success(now)
            case "failure":
                chain += breaker.on_failure(now)
            case "abandoned":
                breaker.on_abandoned(now)
            case "poll":
                chain += breaker.poll(now)
            case _:
                breaker.state(now)
                breaker.allow(now)
    chain += breaker.poll(now)
    previous = CLOSED
    for change in chain:
        assert change.before is previous
        assert change.after is not previous
        previous = change.after
    assert breaker.state(now) is previous
    assert [c.at for c in chain] == sorted(c.at for c in chain)
