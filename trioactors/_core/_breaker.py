"""Circuit breakers: stop sending jobs to a node that keeps failing, then probe it.

Theory of operation
-------------------

The job coordinator keeps one :class:`CircuitBreaker` per node (a
:class:`Breakers` holds them, keyed by node name). Before it sends a job to a
node it asks :meth:`~CircuitBreaker.allow`; then it reports what happened to
every job it sent: :meth:`~CircuitBreaker.on_sent` when the job goes out, and
exactly one of :meth:`~CircuitBreaker.on_success` (the node answered),
:meth:`~CircuitBreaker.on_failure` (the node failed: unreachable, no answer in
time, gone) or :meth:`~CircuitBreaker.on_abandoned` (the job ended without
telling anything about the node, e.g. its submitter gave up). The breaker does
no I/O and reads no clock: every call takes ``now``, in seconds.

The states and their rules are the common ones (Nygard, "Release It!", 2007;
resilience4j's and pybreaker's ``CircuitBreaker``)::

                  failure_threshold failures in a row
        CLOSED ---------------------------------------> OPEN  <---+
          ^                                              |        |
          |                           reset_timeout      |        | a trial
          |                           has passed         v        | fails
          +------------------------------------------ HALF_OPEN --+
               success_threshold trials succeed

- ``CLOSED``: every job may be sent. A failure adds one to the count of
  consecutive failures and a success resets it to zero; the breaker opens when
  the count reaches ``failure_threshold``.
- ``OPEN``: nothing may be sent. Results that still arrive are for jobs sent
  before the breaker opened: a late success does not close it and a late
  failure does not extend the timeout (both only update :attr:`~CircuitBreaker.failures`).
  Once ``reset_timeout`` seconds have passed since it opened, the breaker is
  ``HALF_OPEN``.
- ``HALF_OPEN``: trial jobs may be sent, at most ``half_open_trials`` in flight
  at once. A failure reopens the breaker, with a fresh ``reset_timeout`` from
  then; ``success_threshold`` successes close it (and reset the count of
  failures). An abandoned trial frees its slot and counts neither way.

The breaker cannot tell which job a result belongs to, only which node: in
``HALF_OPEN`` every result counts as a trial's and frees a trial slot, even
for a job sent before the breaker half-opened (the node answered after the
reset timeout all the same, which is what a trial is meant to find out). The
trial limit therefore bounds the jobs sent while half-open minus the results
received while half-open (:attr:`~CircuitBreaker.trials_in_flight`). A job
sent while half-open without asking :meth:`~CircuitBreaker.allow` first still
counts as a trial; one sent while open counts as nothing.

Reporting the changes
---------------------

Every transition is reported exactly once, as a :class:`BreakerChanged`
returned by :meth:`~CircuitBreaker.on_sent`, :meth:`~CircuitBreaker.on_success`,
:meth:`~CircuitBreaker.on_failure` or :meth:`~CircuitBreaker.poll`. The queries
:meth:`~CircuitBreaker.state` and :meth:`~CircuitBreaker.allow` are pure: an
``OPEN`` breaker whose timeout has passed *reads* ``HALF_OPEN`` at once, but
the ``OPEN -> HALF_OPEN`` change is recorded, and reported, by the next of
those four calls (whichever comes first; :meth:`~CircuitBreaker.on_abandoned`
reports nothing and leaves it for the next). Its :attr:`BreakerChanged.at` is
the moment the timeout passed, ``opened_at + reset_timeout``, whoever reports
it and however late. So no change is lost or reported twice, and a caller that
wants to know of the half-open promptly (a metric, a log line) calls
:meth:`~CircuitBreaker.poll` at :meth:`~CircuitBreaker.reopens_at`.

Invariants (checked by the tests with hypothesis):

- the reported changes form a chain: the first ``before`` is ``CLOSED``, each
  ``before`` is the previous ``after``, ``before != after``, and their times
  do not decrease (while ``now`` does not);
- ``state(now)`` is the ``after`` of the last change reported, or ``HALF_OPEN``
  when that is ``OPEN`` and the timeout has passed;
- a ``CLOSED`` breaker opens exactly when the consecutive failures reach
  ``failure_threshold``;
- ``allow(now)`` is false while ``OPEN``, before ``opened_at + reset_timeout``;
- while ``HALF_OPEN``, a caller that sends only when allowed never has more
  than ``half_open_trials`` trials in flight as counted by
  :attr:`~CircuitBreaker.trials_in_flight`, nor more really in flight than
  that plus the results of older jobs received while half-open (so exactly
  that many when no older job answers meanwhile).

Time should not go backwards between calls; the breaker does not check.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["BreakerChanged", "BreakerConfig", "BreakerState", "Breakers", "CircuitBreaker"]


class BreakerState(enum.Enum):
    """The state of a circuit breaker.

    .. versionadded:: 0.1
    """

    CLOSED = "closed"
    """Jobs flow; failures in a row are counted."""
    OPEN = "open"
    """No job is sent until the reset timeout has passed."""
    HALF_OPEN = "half_open"
    """A few trial jobs are sent to find out whether the node works again."""


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, not {value!r}")


def _positive_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number of seconds > 0, not {value!r}")


@final
@attrs.frozen(kw_only=True)
class BreakerConfig:
    """When a circuit breaker opens, and how it tries again.

    The default opens after 5 failures in a row, waits 30 s, then sends one
    trial job and closes when it succeeds.

    Args:
      failure_threshold: consecutive failures that open a closed breaker, ``>= 1``.
      reset_timeout: seconds an open breaker waits before it lets a trial
        through (half-open), ``> 0``.
      half_open_trials: trials allowed in flight at once while half-open, ``>= 1``.
      success_threshold: successful trials that close a half-open breaker, ``>= 1``.

    Raises:
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """

    failure_threshold: int = attrs.field(default=5, validator=_at_least_one)
    reset_timeout: float = attrs.field(default=30.0, validator=_positive_seconds)
    half_open_trials: int = attrs.field(default=1, validator=_at_least_one)
    success_threshold: int = attrs.field(default=1, validator=_at_least_one)


@final
@attrs.frozen
class BreakerChanged:
    """The breaker for ``key`` went from ``before`` to ``after`` at time ``at``.

    .. versionadded:: 0.1
    """

    key: str
    """The breaker's key (a node name)."""
    before: BreakerState
    after: BreakerState
    at: float
    """When the change happened (for ``OPEN -> HALF_OPEN``: when the timeout passed)."""
    failures: int
    """The consecutive failures counted at the time."""


@final
class CircuitBreaker:
    """The circuit breaker of one key, e.g. a node (see the module docstring).

    Args:
      key: what the breaker guards, e.g. a node name; copied into every change.
      config: thresholds and timeout (default :class:`BreakerConfig()`).

    .. versionadded:: 0.1
    """

    def __init__(self, key: str, config: BreakerConfig | None = None) -> None:
        self.key = key
        self.config = config if config is not None else BreakerConfig()
        # The recorded state: OPEN may read HALF_OPEN (see `state`) until a
        # reporting call records the change.
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._trials = 0  # trials in flight, while HALF_OPEN
        self._successes = 0  # successful trials, while HALF_OPEN

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.key!r}, state={self._state.value}, "
            f"failures={self._failures}, opened_at={self._opened_at})"
        )

    # -- queries ---------------------------------------------------------------------

    @property
    def failures(self) -> int:
        """Consecutive failures reported, in any state; a success resets it to zero."""
        return self._failures

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened, or ``None`` while it is closed.

        It stays set while the breaker is half-open (a failed trial sets it anew).
        """
        return self._opened_at

    @property
    def trials_in_flight(self) -> int:
        """Trials sent while half-open and not yet reported (0 in other states)."""
        return self._trials if self._state is BreakerState.HALF_OPEN else 0

    def reopens_at(self) -> float | None:
        """When the open breaker lets trials through: ``opened_at + reset_timeout``.

        ``None`` unless the breaker is open as recorded: the time may be past
        while the ``OPEN -> HALF_OPEN`` change waits to be reported, so it is
        the time at which to :meth:`poll` (the shell sleeps until then).
        """
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self.config.reset_timeout

    def state(self, now: float) -> BreakerState:
        """The state at ``now``: an open breaker reads half-open once its timeout has passed.

        Pure: it records nothing (see "Reporting the changes").
        """
        if self._state is BreakerState.OPEN and self._due(now):
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self, now: float) -> bool:
        """Whether a job may be sent now.

        Closed: yes. Open: no. Half-open: while fewer than ``half_open_trials``
        trials are in flight. Pure, like :meth:`state`.
        """
        match self.state(now):
            case BreakerState.CLOSED:
                return True
            case BreakerState.OPEN:
                return False
            case BreakerState.HALF_OPEN:
                trials = self._trials if self._state is BreakerState.HALF_OPEN else 0
                return trials < self.config.half_open_trials

    # -- events ----------------------------------------------------------------------

    def poll(self, now: float) -> list[BreakerChanged]:
        """Record and report the ``OPEN -> HALF_OPEN`` change if its time has come.

        Returns:
          the change, or an empty list.
        """
        changes: list[BreakerChanged] = []
        self._catch_up(now, changes)
        return changes

    def on_sent(self, now: float) -> list[BreakerChanged]:
        """A job was sent to the key: while half-open, one more trial is in flight.

        Returns:
          the changes recorded (at most ``OPEN -> HALF_OPEN``).
        """
        changes: list[BreakerChanged] = []
        self._catch_up(now, changes)
        if self._state is BreakerState.HALF_OPEN:
            self._trials += 1
        return changes

    def on_success(self, now: float) -> list[BreakerChanged]:
        """A job sent to the key succeeded (the node answered).

        Closed: resets the failure count. Open: only that (a late result).
        Half-open: a successful trial; the breaker closes after ``success_threshold``.

        Returns:
          the changes recorded, in order.
        """
        changes: list[BreakerChanged] = []
        self._catch_up(now, changes)
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._opened_at = None
                self._move(BreakerState.CLOSED, now, changes)
        return changes

    def on_failure(self, now: float) -> list[BreakerChanged]:
        """A job sent to the key failed because of the node.

        Closed: counts it, and opens at ``failure_threshold`` in a row. Open:
        counts it, without extending the timeout. Half-open: reopens, with a
        fresh timeout from ``now``.

        Returns:
          the changes recorded, in order.
        """
        changes: list[BreakerChanged] = []
        self._catch_up(now, changes)
        self._failures += 1
        match self._state:
            case BreakerState.CLOSED:
                if self._failures >= self.config.failure_threshold:
                    self._open(now, changes)
            case BreakerState.OPEN:
                pass
            case BreakerState.HALF_OPEN:
                self._open(now, changes)
        return changes

    def on_abandoned(self, now: float) -> None:
        """A job sent to the key ended without telling anything about the node.

        Half-open: frees a trial slot. It counts neither as a success nor as a
        failure, and records no change (a due ``OPEN -> HALF_OPEN`` is left for
        the next reporting call).
        """
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)

    # -- internals -------------------------------------------------------------------

    def _due(self, now: float) -> bool:
        reopens_at = self.reopens_at()
        return reopens_at is not None and now >= reopens_at

    def _catch_up(self, now: float, changes: list[BreakerChanged]) -> None:
        at = self.reopens_at()
        if at is not None and now >= at:
            self._trials = 0
            self._successes = 0
            self._move(BreakerState.HALF_OPEN, at, changes)

    def _open(self, now: float, changes: list[BreakerChanged]) -> None:
        self._opened_at = now
        self._trials = 0
        self._successes = 0
        self._move(BreakerState.OPEN, now, changes)

    def _move(self, after: BreakerState, at: float, changes: list[BreakerChanged]) -> None:
        changes.append(BreakerChanged(self.key, self._state, after, at, self._failures))
        self._state = after


@final
class Breakers:
    """A circuit breaker per key (node), created on first use, all with one config.

    The queries (:meth:`allow`, :meth:`state`, :meth:`states`) create nothing:
    a key without a breaker is closed. :meth:`on_sent`, :meth:`on_success`
    and :meth:`on_failure` create the breaker of their key.

    Args:
      config: the config of every breaker (default :class:`BreakerConfig()`).

    .. versionadded:: 0.1
    """

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config if config is not None else BreakerConfig()
        self._breakers: dict[str, CircuitBreaker] = {}

    def __repr__(self) -> str:
        return f"Breakers({len(self._breakers)} keys, config={self.config!r})"

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a breaker (it has been used and not forgotten)."""
        return key in self._breakers

    def __len__(self) -> int:
        """How many keys have a breaker."""
        return len(self._breakers)

    def __iter__(self) -> Iterator[str]:
        """The keys that have a breaker, in the order they got it."""
        return iter(self._breakers)

    def get(self, key: str) -> CircuitBreaker | None:
        """The breaker of ``key``, or ``None`` if it has none (it is not created)."""
        return self._breakers.get(key)

    def breaker(self, key: str) -> CircuitBreaker:
        """The breaker of ``key``, created (closed) if it has none."""
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(key, self.config)
        return breaker

    def forget(self, key: str) -> None:
        """Drop the breaker of ``key`` (e.g. its node left); nothing if it has none.

        A change it had not reported yet is dropped with it; if the key is used
        again it starts a new chain, closed.
        """
        self._breakers.pop(key, None)

    def allow(self, key: str, now: float) -> bool:
        """Whether a job may be sent to ``key`` now (:meth:`CircuitBreaker.allow`)."""
        breaker = self._breakers.get(key)
        return breaker is None or breaker.allow(now)

    def state(self, key: str, now: float) -> BreakerState:
        """The state of ``key``'s breaker at ``now`` (``CLOSED`` if it has none)."""
        breaker = self._breakers.get(key)
        return BreakerState.CLOSED if breaker is None else breaker.state(now)

    def states(self, now: float) -> dict[str, BreakerState]:
        """The state at ``now`` of every key that has a breaker."""
        return {key: breaker.state(now) for key, breaker in self._breakers.items()}

    def poll(self, now: float) -> list[BreakerChanged]:
        """Every breaker's due ``OPEN -> HALF_OPEN`` change (:meth:`CircuitBreaker.poll`)."""
        return [change for b in self._breakers.values() for change in b.poll(now)]

    def reopens_at(self) -> float | None:
        """The earliest time an open breaker lets trials through, or ``None``.

        The time to :meth:`poll` next (see :meth:`CircuitBreaker.reopens_at`);
        it may be past.
        """
        times = [at for b in self._breakers.values() if (at := b.reopens_at()) is not None]
        return min(times, default=None)

    def on_sent(self, key: str, now: float) -> list[BreakerChanged]:
        """A job was sent to ``key`` (:meth:`CircuitBreaker.on_sent`)."""
        return self.breaker(key).on_sent(now)

    def on_success(self, key: str, now: float) -> list[BreakerChanged]:
        """A job sent to ``key`` succeeded (:meth:`CircuitBreaker.on_success`)."""
        return self.breaker(key).on_success(now)

    def on_failure(self, key: str, now: float) -> list[BreakerChanged]:
        """A job sent to ``key`` failed (:meth:`CircuitBreaker.on_failure`)."""
        return self.breaker(key).on_failure(now)

    def on_abandoned(self, key: str, now: float) -> None:
        """A job sent to ``key`` ended, telling nothing (:meth:`CircuitBreaker.on_abandoned`).

        Creates no breaker: a key without one has no trial slot to free.
        """
        breaker = self._breakers.get(key)
        if breaker is not None:
            breaker.on_abandoned(now)
