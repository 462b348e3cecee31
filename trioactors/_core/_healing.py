"""Self-healing: notice that a target is unwell, recover it, and watch it get better.

Theory of operation
-------------------

A health service probes its targets (an actor, a worker pool, a node) and
feeds each probe's verdict to the target's :class:`HealingMachine` with
:meth:`~HealingMachine.observe`. A verdict may come from a
:class:`LatencyWindow`: the target is unhealthy while the mean of its last
response times exceeds a threshold. When the machine has seen enough
evidence it returns :attr:`Action.RECOVER`; the caller then recovers the
target (drains it, restarts it) and reports the outcome with
:meth:`~HealingMachine.recovered`. The machine does no I/O and reads no
clock: every call takes ``now``, in seconds.

The states::

                unhealthy               failures_to_recover unhealthy
        IDLE -------------> DETECTING ------------------------------> RECOVERING --+
         ^   <-------------     ^       in a row: RECOVER (or GIVE_UP)   |   ^      |
         |   healthy (a blip)   |                                        |   +------+
         |                      | unhealthy                              |  recovered(ok=False):
         |                      |                                        |  RECOVER (or GIVE_UP,
         |                      |           recovered(ok=True), or       |  staying without a change)
         +----------------- RESTORED <----- healthy after GIVE_UP -------+
          successes_to_restore
          healthy in a row

Events and their rules:

- ``IDLE``: a healthy observation changes nothing; an unhealthy one moves to
  ``DETECTING``.
- ``DETECTING``: a healthy observation moves back to ``IDLE`` (it was a blip);
  ``failures_to_recover`` unhealthy observations in a row (the one that left
  ``IDLE`` or ``RESTORED`` included) start a recovery: ``RECOVERING``, with
  :attr:`Action.RECOVER`.
- ``RECOVERING``: while a recovery runs, observations are recorded
  (:attr:`~HealingMachine.healthy_streak`, :attr:`~HealingMachine.unhealthy_streak`)
  but start nothing. ``recovered(ok=True)`` moves to ``RESTORED``;
  ``recovered(ok=False)`` starts another recovery, reported as the change
  ``RECOVERING -> RECOVERING`` with :attr:`Action.RECOVER`.
- ``RESTORED``: ``successes_to_restore`` healthy observations in a row move to
  ``IDLE``; an unhealthy one moves to ``DETECTING`` (where it counts as the
  first failure).

The recovery budget, like a supervisor's restart intensity: at most
``max_recoveries`` recoveries start within any ``recovery_window`` seconds
(inclusive). The budget applies to every start, the first from ``DETECTING``
as well as the retries after a failed recovery, so a target that keeps
relapsing is not recovered forever either. When a start would exceed it, the
machine returns :attr:`Action.GIVE_UP` instead of :attr:`Action.RECOVER`:
from ``DETECTING`` it still moves to ``RECOVERING``; after a failed recovery
it stays ``RECOVERING`` and reports no change. Having given up
(:attr:`~HealingMachine.gave_up`), it returns no action at all until a
healthy observation, which moves it to ``RESTORED`` (the target healed by
itself, or someone fixed it; that observation counts as the first of the
``successes_to_restore``). Then the rules above apply again, and the budget
may run out again.

A :class:`HealingChanged` reports every change, its ``reason`` the caller's
or, if the caller gave none, the rule that fired. One call reports at most
two changes: an unhealthy observation with ``failures_to_recover == 1`` goes
through ``DETECTING`` to ``RECOVERING``, and a healthy one after giving up
with ``successes_to_restore == 1`` goes through ``RESTORED`` to ``IDLE``.

Invariants (checked by the tests with hypothesis):

- the changes form a chain: the first ``before`` is ``IDLE`` and each
  ``before`` is the previous ``after``; only ``RECOVERING -> RECOVERING``
  repeats a state;
- :attr:`Action.RECOVER` is returned exactly when the call reports a change
  into ``RECOVERING``, unless it returns :attr:`Action.GIVE_UP` instead;
  :attr:`Action.GIVE_UP` is returned once per giving up;
- :meth:`~HealingMachine.recovered` is accepted exactly when a recovery is
  running (one per :attr:`Action.RECOVER`);
- no more than ``max_recoveries`` recoveries start within any
  ``recovery_window`` seconds;
- a :class:`LatencyWindow` holds the last ``size`` samples; its mean is
  ``statistics.mean`` of them (an exact sum, rounded once), its percentile
  one of them by nearest rank, and :meth:`~LatencyWindow.exceeded` compares
  the exact mean with the threshold.

Time should not go backwards between calls; the machine does not check.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from fractions import Fraction
from typing import TYPE_CHECKING, final

import attrs

from .._errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Action",
    "HealingChanged",
    "HealingConfig",
    "HealingMachine",
    "HealingState",
    "LatencyWindow",
]


# -- latency window ---------------------------------------------------------------------


@final
class LatencyWindow:
    """A sliding window over the last ``size`` response times, in seconds.

    Args:
      size: how many samples it keeps, ``>= 1``; adding one more drops the oldest.
      threshold: the mean above which the target counts as slow, in seconds (``>= 0``).
      min_samples: how many samples :meth:`exceeded` waits for, from 1 to ``size``.

    Raises:
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """

    def __init__(self, size: int = 20, *, threshold: float, min_samples: int = 5) -> None:
        if size < 1:
            raise ValueError(f"size must be an integer >= 1, not {size!r}")
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(
                f"threshold must be a finite number of seconds >= 0, not {threshold!r}"
            )
        if not 1 <= min_samples <= size:
            raise ValueError(
                f"min_samples must be between 1 and size ({size}), not {min_samples!r}; "
                f"a window of {size} samples never holds more"
            )
        self.size = size
        self.threshold = threshold
        self.min_samples = min_samples
        self._samples: deque[float] = deque(maxlen=size)
        # The exact sum of the samples: no rounding error builds up as samples
        # come and go, and a steady latency equal to the threshold does not
        # read as above it.
        self._total = Fraction(0)

    def __repr__(self) -> str:
        return (
            f"LatencyWindow({self.size}, threshold={self.threshold}, "
            f"min_samples={self.min_samples}, samples={len(self._samples)})"
        )

    def __len__(self) -> int:
        """How many samples the window holds (at most ``size``)."""
        return len(self._samples)

    def add(self, seconds: float) -> None:
        """Add a response time; the oldest one goes if the window is full.

        Raises:
          ValueError: if ``seconds`` is negative or not finite (record a
            timeout as the time waited).
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a response time must be a finite number >= 0, not {seconds!r}")
        if len(self._samples) == self.size:
            self._total -= Fraction(self._samples[0])
        self._samples.append(seconds)
        self._total += Fraction(seconds)

    def clear(self) -> None:
        """Drop every sample (e.g. after the target was restarted)."""
        self._samples.clear()
        self._total = Fraction(0)

    def samples(self) -> tuple[float, ...]:
        """The samples, oldest first."""
        return tuple(self._samples)

    def mean(self) -> float | None:
        """The mean of the samples (correctly rounded), or ``None`` if there are none."""
        if not self._samples:
            return None
        return float(self._total / len(self._samples))

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile of the samples by nearest rank, or ``None`` if there are none.

        The smallest sample that at least ``q`` percent of the samples are not
        above: the ``ceil(q / 100 * n)``-th smallest of ``n`` (the smallest for
        ``q == 0``, the largest for ``q == 100``). It is always one of the samples.

        Raises:
          ValueError: if ``q`` is not between 0 and 100.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"q must be a percentage between 0 and 100, not {q!r}")
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        # exact: q / 100 * n in floats can land just above an integer (28 / 100 * 25)
        rank = max(1, math.ceil(Fraction(q) * len(ordered) / 100))
        return ordered[rank - 1]

    def exceeded(self) -> bool:
        """Whether the window holds ``min_samples`` samples or more, and their mean is above ``threshold``.

        The mean is compared exactly, before rounding: samples all equal to the
        threshold do not exceed it.
        """
        n = len(self._samples)
        return n >= self.min_samples and self._total > Fraction(self.threshold) * n


# -- the healing machine ----------------------------------------------------------------


class HealingState(enum.Enum):
    """Where a target is in its cycle of detection and recovery.

    .. versionadded:: 0.1
    """

    IDLE = "idle"
    """Healthy, as far as anyone knows."""
    DETECTING = "detecting"
    """Seen unhealthy; waiting for more evidence before acting."""
    RECOVERING = "recovering"
    """A recovery runs (or the machine gave up and waits for a sign of health)."""
    RESTORED = "restored"
    """Recovered; on probation until it has been healthy a few times in a row."""


class Action(enum.Enum):
    """What the caller should do for the target.

    .. versionadded:: 0.1
    """

    RECOVER = "recover"
    """Recover the target (drain it, restart it), then call :meth:`HealingMachine.recovered`."""
    GIVE_UP = "give_up"
    """The recovery budget is spent: stop trying, and tell someone (escalate, alert)."""


def _at_least(least: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(_: object, attribute: attrs.Attribute[int], value: int) -> None:
        if value < least:
            raise ValueError(f"{attribute.name} must be an integer >= {least}, not {value!r}")

    return check


def _positive_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number of seconds > 0, not {value!r}")


@final
@attrs.frozen(kw_only=True)
class HealingConfig:
    """How much evidence a :class:`HealingMachine` needs, and its recovery budget.

    Args:
      failures_to_recover: unhealthy observations in a row that start a recovery, ``>= 1``.
      successes_to_restore: healthy observations in a row that end the
        probation after a recovery, ``>= 1``.
      max_recoveries: recoveries that may start within ``recovery_window``,
        ``>= 0`` (0: never recover, give up at once, e.g. to only alert).
      recovery_window: the budget's window, in seconds, ``> 0``.

    Raises:
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """

    failures_to_recover: int = attrs.field(default=3, validator=_at_least(1))
    successes_to_restore: int = attrs.field(default=2, validator=_at_least(1))
    max_recoveries: int = attrs.field(default=3, validator=_at_least(0))
    recovery_window: float = attrs.field(default=300.0, validator=_positive_seconds)


@final
@attrs.frozen
class HealingChanged:
    """The machine of ``target`` went from ``before`` to ``after`` at ``at``, because of ``reason``.

    .. versionadded:: 0.1
    """

    target: str
    before: HealingState
    after: HealingState
    at: float
    reason: str
    """The caller's reason, or the rule that fired if the caller gave none."""


@final
class HealingMachine:
    """Detection and recovery of one monitored target (see the module docstring).

    Args:
      target: what is monitored (an actor or node name); copied into every change.
      config: thresholds and budget (default :class:`HealingConfig()`).

    .. versionadded:: 0.1
    """

    def __init__(self, target: str, config: HealingConfig | None = None) -> None:
        self.target = target
        self.config = config if config is not None else HealingConfig()
        self._state = HealingState.IDLE
        self._count = 0  # the state's streak: unhealthy in DETECTING, healthy in RESTORED
        self._healthy_streak = 0
        self._unhealthy_streak = 0
        self._running = False  # a recovery runs (RECOVERING only)
        self._gave_up = False  # RECOVERING only
        # Start times of the latest recoveries; the older ones cannot matter.
        self._starts: deque[float] = deque(maxlen=self.config.max_recoveries)

    def __repr__(self) -> str:
        return (
            f"HealingMachine({self.target!r}, state={self._state.value}, "
            f"recovering={self._running}, gave_up={self._gave_up})"
        )

    # -- queries ---------------------------------------------------------------------

    @property
    def state(self) -> HealingState:
        """The current state."""
        return self._state

    @property
    def recovering(self) -> bool:
        """Whether a recovery runs: :meth:`recovered` is expected."""
        return self._running

    @property
    def gave_up(self) -> bool:
        """Whether the machine gave up and waits, ``RECOVERING``, for a healthy observation."""
        return self._gave_up

    @property
    def healthy_streak(self) -> int:
        """Healthy observations in a row, the latest included (0 after an unhealthy one)."""
        return self._healthy_streak

    @property
    def unhealthy_streak(self) -> int:
        """Unhealthy observations in a row, the latest included (0 after a healthy one)."""
        return self._unhealthy_streak

    def recovery_starts(self) -> tuple[float, ...]:
        """When the latest recoveries started, oldest first (at most ``max_recoveries``)."""
        return tuple(self._starts)

    # -- events ----------------------------------------------------------------------

    def observe(
        self, healthy: bool, now: float, reason: str = ""
    ) -> tuple[list[HealingChanged], Action | None]:
        """A probe found the target ``healthy`` or not.

        Args:
          healthy: the probe's verdict.
          now: the time of the observation, in seconds.
          reason: why, for the changes (e.g. ``"mean latency 2.1 s > 1 s"``).

        Returns:
          the changes, in order, and what to do: :attr:`Action.RECOVER`,
          :attr:`Action.GIVE_UP` or nothing.
        """
        if healthy:
            self._healthy_streak += 1
            self._unhealthy_streak = 0
        else:
            self._unhealthy_streak += 1
            self._healthy_streak = 0
        changes: list[HealingChanged] = []
        action: Action | None = None
        match self._state:
            case HealingState.IDLE:
                if not healthy:
                    self._detect(now, reason or "unhealthy", changes)
                    action = self._maybe_recover(now, reason, changes)
            case HealingState.DETECTING:
                if healthy:
                    self._move(HealingState.IDLE, now, reason or "healthy again (a blip)", changes)
                else:
                    self._count += 1
                    action = self._maybe_recover(now, reason, changes)
            case HealingState.RECOVERING:
                if healthy and self._gave_up:
                    self._gave_up = False
                    self._restore(now, reason or "healthy again after giving up", changes)
                    self._count = 1
                    self._maybe_idle(now, reason, changes)
            case HealingState.RESTORED:
                if healthy:
                    self._count += 1
                    self._maybe_idle(now, reason, changes)
                else:
                    self._detect(now, reason or "unhealthy again after recovering", changes)
                    action = self._maybe_recover(now, reason, changes)
        return changes, action

    def recovered(
        self, ok: bool, now: float, reason: str = ""
    ) -> tuple[list[HealingChanged], Action | None]:
        """The recovery the machine asked for finished, successfully (``ok``) or not.

        Args:
          ok: whether the recovery worked.
          now: when it finished, in seconds.
          reason: why, for the changes (e.g. the recovery's error).

        Returns:
          the changes and what to do next: for ``ok``, ``RECOVERING -> RESTORED``
          and nothing; otherwise ``RECOVERING -> RECOVERING`` and
          :attr:`Action.RECOVER`, or no change and :attr:`Action.GIVE_UP` when
          the budget is spent.

        Raises:
          LocalProtocolError: if no recovery runs (the machine did not ask for
            one, or it was already reported).
        """
        if not self._running:
            raise LocalProtocolError(
                f"recovered() was called for {self.target!r} but no recovery runs "
                f"(state {self._state.value}); call it once for each Action.RECOVER"
            )
        self._running = False
        changes: list[HealingChanged] = []
        if ok:
            self._restore(now, reason or "recovered", changes)
            return changes, None
        action = self._start_recovery(now)
        if action is Action.RECOVER:
            self._move(
                HealingState.RECOVERING, now, reason or "recovery failed; recovering again", changes
            )
        return changes, action

    # -- internals -------------------------------------------------------------------

    def _detect(self, now: float, reason: str, changes: list[HealingChanged]) -> None:
        self._count = 1
        self._move(HealingState.DETECTING, now, reason, changes)

    def _restore(self, now: float, reason: str, changes: list[HealingChanged]) -> None:
        self._count = 0
        self._move(HealingState.RESTORED, now, reason, changes)

    def _maybe_recover(
        self, now: float, reason: str, changes: list[HealingChanged]
    ) -> Action | None:
        # DETECTING: start a recovery once the evidence suffices.
        needed = self.config.failures_to_recover
        if self._count < needed:
            return None
        action = self._start_recovery(now)
        self._count = 0
        self._move(
            HealingState.RECOVERING,
            now,
            reason or f"{needed} unhealthy observations in a row",
            changes,
        )
        return action

    def _maybe_idle(self, now: float, reason: str, changes: list[HealingChanged]) -> None:
        # RESTORED: the probation ends after enough health in a row.
        needed = self.config.successes_to_restore
        if self._count >= needed:
            self._count = 0
            self._move(
                HealingState.IDLE, now, reason or f"{needed} healthy observations in a row", changes
            )

    def _start_recovery(self, now: float) -> Action:
        """RECOVER (recording the start) if the budget allows one more, else GIVE_UP."""
        window_start = now - self.config.recovery_window
        started = sum(1 for t in self._starts if t >= window_start)
        if started >= self.config.max_recoveries:
            self._gave_up = True
            return Action.GIVE_UP
        self._starts.append(now)
        self._running = True
        return Action.RECOVER

    def _move(
        self, after: HealingState, now: float, reason: str, changes: list[HealingChanged]
    ) -> None:
        changes.append(HealingChanged(self.target, self._state, after, now, reason))
        self._state = after
