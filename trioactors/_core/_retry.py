"""Retry policies for jobs: how many attempts, and how long to wait between them.

Theory of operation
-------------------

A job's first attempt goes out as soon as a worker is free. When an attempt
fails in a way that another attempt might not (:meth:`RetryPolicy.retries`:
the worker's node died or could not be reached, no answer within the
attempt timeout, and, if asked for, the handler raised), the coordinator
waits :meth:`RetryPolicy.delay` seconds and places the job again, preferring
another node. After ``max_attempts`` attempts the job ends with
:exc:`~trioactors.JobExhausted`.

The delay is exponential backoff with *full jitter* (Brooker, "Exponential
Backoff And Jitter", AWS Architecture Blog, 2015): before attempt ``n + 1``
the coordinator waits a uniformly random time between 0 and
``min(cap, base * factor ** (n - 1))``. Spreading retries over the whole
interval, rather than around its end, keeps the jobs that one failure
threw back (every job that was on a node that died) from coming back in
step and hitting the survivors all at once.

Pure: the random generator is passed in, so a seeded one replays every delay.

Invariants (checked by the tests):

- ``0 <= delay(n, rng) <= min(cap, base * factor ** (n - 1))`` for every
  attempt ``n >= 1``, and the bound never decreases with ``n``;
- ``retries(n, error)`` is false for ``n >= max_attempts``, and for errors a
  new attempt cannot fix (a payload that does not fit, an unknown kind).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    import random

__all__ = ["NO_RETRY", "RETRYABLE", "RetryPolicy"]

RETRYABLE: frozenset[str] = frozenset({"WorkerLost", "AttemptTimeout"})
"""Why an attempt failed, for which another attempt is always worth making:
the worker went away, or did not answer within the attempt timeout."""


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, not {value!r}")


def _optional_positive(
    _: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be None or a number of seconds > 0, not {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, not {value!r}")


@final
@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a job is retried: attempts, backoff with full jitter, attempt timeout.

    The default makes 3 attempts, waiting up to 1 s then up to 2 s between
    them (``cap`` 30 s), and retries only failures of the worker's node.

    Args:
      max_attempts: attempts in all, the first included (1: never retry).
      base: the backoff's first bound, in seconds.
      factor: how much the bound grows per attempt.
      cap: the largest bound, in seconds.
      attempt_timeout: seconds an attempt may go without an answer before it
        counts as failed and the job is sent again (``None``: no limit but the
        job's own timeout). The first attempt may still answer later; the
        first answer wins and the other is counted as late.
      retry_failed: also retry a job whose handler raised (``JobFailed``).
        Off by default: a handler that raised on one worker usually raises
        on the next.

    .. versionadded:: 0.1
    """

    max_attempts: int = attrs.field(default=3, validator=_at_least_one)
    base: float = attrs.field(default=1.0, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    cap: float = attrs.field(default=30.0, validator=_positive)
    attempt_timeout: float | None = attrs.field(default=None, validator=_optional_positive)
    retry_failed: bool = False

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1 (the delays never shrink), not {self.factor!r}")

    def bound(self, attempt: int) -> float:
        """The longest wait after attempt number ``attempt`` (from 1) fails."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, not {attempt!r}")
        # (the exponent is capped so that large attempt numbers cannot overflow)
        exponent = min(attempt - 1, 1024)
        try:
            return min(self.cap, self.base * self.factor**exponent)
        except OverflowError:
            return self.cap

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after attempt ``attempt`` failed: uniform in ``[0, bound]``."""
        return rng.uniform(0.0, self.bound(attempt))

    def retries(self, attempt: int, error: str) -> bool:
        """Whether to make another attempt after attempt ``attempt`` failed with ``error``
        (the error's class name, or ``"AttemptTimeout"``)."""
        if attempt >= self.max_attempts:
            return False
        return error in RETRYABLE or (self.retry_failed and error == "JobFailed")


NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt, never retried: for work that must not run twice (not idempotent).

.. versionadded:: 0.1
"""
