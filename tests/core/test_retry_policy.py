"""Retry policies: full-jitter backoff bounds and which failures are retried."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioactors as ta


def test_defaults() -> None:
    policy = ta.RetryPolicy()
    assert (policy.max_attempts, policy.base, policy.factor, policy.cap) == (3, 1.0, 2.0, 30.0)
    assert policy.attempt_timeout is None
    assert not policy.retry_failed
    assert [policy.bound(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert ta.NO_RETRY.max_attempts == 1


@given(
    base=st.floats(0.001, 10),
    factor=st.floats(1, 10),
    cap=st.floats(0.001, 1000),
    attempt=st.integers(1, 5000),
    seed=st.integers(0, 2**32),
)
def test_delay_is_within_a_bound_that_never_shrinks(
    base: float, factor: float, cap: float, attempt: int, seed: int
) -> None:
    policy = ta.RetryPolicy(base=base, factor=factor, cap=cap)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0 <= delay <= policy.bound(attempt) <= cap
    assert policy.bound(attempt) <= policy.bound(attempt + 1)


def test_full_jitter_spreads_over_the_whole_interval() -> None:
    policy = ta.RetryPolicy(base=1.0, factor=2.0)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(20_000)]  # bound 4 s
    assert min(delays) < 0.01
    assert max(delays) > 3.99
    assert statistics.mean(delays) == pytest.approx(2.0, abs=0.05)
    assert statistics.quantiles(delays, n=4) == pytest.approx([1.0, 2.0, 3.0], abs=0.1)


def test_which_failures_are_retried() -> None:
    policy = ta.RetryPolicy(max_attempts=3)
    assert policy.retries(1, "WorkerLost")
    assert policy.retries(2, "AttemptTimeout")
    assert not policy.retries(3, "WorkerLost")  # the last attempt
    for error in ("JobFailed", "InvalidJobPayload", "UnknownJobKind", "JobTimeout"):
        assert not policy.retries(1, error)
    assert ta.RetryPolicy(retry_failed=True).retries(1, "JobFailed")
    assert not ta.NO_RETRY.retries(1, "WorkerLost")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_attempts", 0, "max_attempts must be >= 1"),
        ("base", 0, "base must be a finite number > 0"),
        ("cap", float("inf"), "cap must be a finite number > 0"),
        ("factor", 0.5, "factor must be >= 1"),
        ("attempt_timeout", -1, "attempt_timeout must be None or"),
    ],
)
def test_bad_settings(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ta.RetryPolicy(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts count from 1"):
        ta.RetryPolicy().bound(0)
