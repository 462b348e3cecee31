"""Self-healing for a node: health probes, a latency monitor, and recovery.

Theory of operation
-------------------

:func:`start_health` starts the node's health monitor, the actor ``$health``
under ``node.root``, and returns its :class:`HealthMonitor`. The monitor
watches *targets*, each described by a :class:`Probe`: a name, an async
``check`` and, optionally, an async ``recover``. :func:`actor_probe` builds
one for an actor (healthy while it answers a message in time; recovered by
restarting it through its supervisor), :func:`dependency_probe` one for
anything else (a database ping, a disk check).

Each probe runs in its own background task of the actor
(``context.start_soon``), so a slow check never delays another probe, and
every task stops with the actor, hence with the node. One round of a probe:

1. *Check.* ``check()`` runs within ``timeout`` seconds (a cancel scope).
   The verdict is unhealthy when it returns False, raises, runs out of time,
   or returns something that is neither a bool nor a number. A number is a
   response time in seconds: an answer, so healthy, unless the latency rule
   below says otherwise.
2. *Latency.* A *latency probe* (``latency_threshold`` set) adds every number
   its check returns to a :class:`~trioactors.LatencyWindow` of the last
   ``window`` samples, and a check that timed out as the time waited. The
   target is unhealthy while the mean of the window is above the threshold
   (once the window holds ``min(LATENCY_MIN_SAMPLES, window)`` samples), even
   though every check answered: this flags a worker that is slow, not dead.
3. *Decide.* The verdict goes to the target's
   :class:`~trioactors.HealingMachine` (``observe(healthy, now, reason)``),
   which moves between idle, detecting, recovering and restored, and may
   return an action.
4. *Act.* :attr:`~trioactors.Action.RECOVER`: ``recover()`` runs within
   ``recover_timeout`` seconds and its outcome goes to
   ``machine.recovered(ok, now, reason)``; a recovery that returns anything
   but True, raises or times out has failed. If the machine asks for another
   one, it starts ``interval`` seconds later. The latency window is cleared
   after every recovery (its samples described what was just recovered).
   :attr:`~trioactors.Action.GIVE_UP`: the recovery budget is spent: it is
   logged (ERROR) and counted, and the machine waits, recovering, for a check
   that finds the target healthy. A probe without ``recover`` only reports:
   its machine gets no recovery budget (``max_recoveries=0``), so enough
   evidence leads straight to giving up.
5. *Wait.* The next check starts ``interval`` seconds after this one started
   (at once if the round took longer), or ``interval`` seconds after a
   recovery ended. The first check runs as soon as the probe is added.

Every change of state is logged on ``trioactors.health`` (INFO; WARNING for a
change into recovering), kept in a bounded history (the newest
``history_size``), and wakes :meth:`HealthMonitor.wait_state`.

The state (probes, machines, windows, history, counters) lives in the
:class:`HealthMonitor`, outside the actor, so that it survives a restart of
``$health``: the new instance starts every probe's task again, and a task
whose machine still waits for the outcome of a recovery (the restart
interrupted it) runs the recovery again before its next check.

A give-up is logged and, given a failure supervisor, reported to it as a
:class:`~trioactors.HealthGaveUp`.

Invariants: at most one task per probe, so a target's checks and recoveries
never overlap; ``recovered()`` follows every :attr:`~trioactors.Action.RECOVER`
unless the probe is removed or the node stops; changes of a removed probe
are neither recorded nor logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Final, TypeVar, final

import attrs
import trio

from .._core._healing import (
    Action,
    HealingChanged,
    HealingConfig,
    HealingMachine,
    HealingState,
    LatencyWindow,
)
from .._errors import LocalProtocolError
from .._runtime._actor import Actor
from ._failures import HealthGaveUp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from .._runtime._actor import ActorRef
    from .._runtime._node import Node
    from .._runtime._supervisor import Supervisor
    from ._failures import FailureSupervisor

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "LATENCY_MIN_SAMPLES",
    "HealthMonitor",
    "HealthStatistics",
    "Probe",
    "actor_probe",
    "dependency_probe",
    "start_health",
]

logger = logging.getLogger("trioactors.health")

M = TypeVar("M")

ACTOR: Final = "$health"
DEFAULT_HISTORY_SIZE: Final = 1000
"""Changes of state the monitor keeps, over all its probes; the oldest go first."""
LATENCY_MIN_SAMPLES: Final = 5
"""Samples a latency window needs (at most its size) before it can flag a target."""
DEFAULT_RECOVER_TIMEOUT: Final = 30.0
"""Seconds a ``recover()`` may take (a restart waits up to an actor's shutdown timeout)."""


# -- probes ----------------------------------------------------------------------------


def _positive_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number of seconds > 0, not {value!r}")


def _threshold(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{attribute.name} must be None or a finite number of seconds >= 0, not {value!r}"
        )


def _window(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a whole number >= 1, not {value!r}")


def _name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError("a probe needs a name: the target's (an actor name, 'database', ...)")


@final
@attrs.frozen
class Probe:
    """What to check about a target, how often, and how to heal it.

    Args:
      name: the target's name (an actor's name, ``"database"``); unique in a monitor.
      check: an async function: True (healthy), False (unhealthy), or a
        response time in seconds (an answer; judged by a latency window if
        ``latency_threshold`` is set). One that raises or takes longer than
        ``timeout`` finds the target unhealthy.
      recover: an async function that heals the target (drains it, restarts
        it) and returns True if that worked; ``None``: report only (log and
        count a give-up once the evidence suffices).
      interval: seconds from the start of one check to the start of the next.
      timeout: seconds a check may take.
      recover_timeout: seconds a recovery may take; one that takes longer failed.
      latency_threshold: for a latency probe, the mean response time in
        seconds above which the target is unhealthy; ``None``: no latency rule.
      window: how many of the latest response times the mean is taken over.
      healing: how much evidence starts a recovery, and the recovery budget.

    Raises:
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """

    name: str = attrs.field(validator=_name)
    check: Callable[[], Awaitable[bool | float]]
    recover: Callable[[], Awaitable[bool]] | None = None
    interval: float = attrs.field(default=5.0, kw_only=True, validator=_positive_seconds)
    timeout: float = attrs.field(default=2.0, kw_only=True, validator=_positive_seconds)
    recover_timeout: float = attrs.field(
        default=DEFAULT_RECOVER_TIMEOUT, kw_only=True, validator=_positive_seconds
    )
    latency_threshold: float | None = attrs.field(default=None, kw_only=True, validator=_threshold)
    window: int = attrs.field(default=20, kw_only=True, validator=_window)
    healing: HealingConfig = attrs.field(factory=HealingConfig, kw_only=True)


def actor_probe(
    ref: ActorRef[M],
    message: M,
    *,
    name: str | None = None,
    timeout: float = 2.0,
    restart_in: Supervisor | None = None,
    latency_threshold: float | None = None,
    interval: float = 5.0,
    window: int = 20,
    recover_timeout: float = DEFAULT_RECOVER_TIMEOUT,
    healing: HealingConfig | None = None,
) -> Probe:
    """A probe of an actor: healthy while it answers ``message`` within ``timeout``.

    Each check asks ``ref`` for ``message`` (any answer counts; an error, such
    as :class:`~trioactors.ActorCrashed` or
    :class:`~trioactors.UnhandledMessage`, does not). With
    ``latency_threshold``, each answer's round trip is a sample for the
    latency window, so an actor that answers ever more slowly is flagged
    before it stops answering.

    Args:
      name: the target's name (default: the actor's name).
      restart_in: the supervisor of the actor: a recovery restarts it there
        (``restart_in.restart_child(ref.name)``; its mailbox and references
        stay). ``None``: report only.
      interval, window, recover_timeout, healing: as for :class:`Probe`.

    Raises:
      LocalProtocolError: ``restart_in`` has no child named ``ref.name``.
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """
    target = ref.name

    async def check() -> bool | float:
        started = trio.current_time()
        # No deadline of the ask's own: the monitor's cancel scope (timeout) is the one.
        await ref.ask(message, timeout=None)
        return True if latency_threshold is None else trio.current_time() - started

    recover: Callable[[], Awaitable[bool]] | None = None
    if restart_in is not None:
        supervisor = restart_in
        if not any(child.name == target for child in supervisor.children()):
            raise LocalProtocolError(
                f"{supervisor.path} has no child named {target!r}; pass the supervisor "
                "that started the actor as restart_in (or None to only report)"
            )

        async def restart() -> bool:
            return await supervisor.restart_child(target)

        recover = restart

    return Probe(
        target if name is None else name,
        check,
        recover,
        interval=interval,
        timeout=timeout,
        recover_timeout=recover_timeout,
        latency_threshold=latency_threshold,
        window=window,
        healing=HealingConfig() if healing is None else healing,
    )


def dependency_probe(
    name: str,
    check: Callable[[], Awaitable[bool | float]],
    *,
    recover: Callable[[], Awaitable[bool]] | None = None,
    interval: float = 5.0,
    timeout: float = 2.0,
    recover_timeout: float = DEFAULT_RECOVER_TIMEOUT,
    latency_threshold: float | None = None,
    window: int = 20,
    healing: HealingConfig | None = None,
) -> Probe:
    """A probe of something outside the actors: a database ping, a disk check, a peer service.

    ``check`` is the user's async function (see :class:`Probe`); so is
    ``recover`` (reconnect, fail over to a standby, roll back a config).

    Raises:
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """
    return Probe(
        name,
        check,
        recover,
        interval=interval,
        timeout=timeout,
        recover_timeout=recover_timeout,
        latency_threshold=latency_threshold,
        window=window,
        healing=HealingConfig() if healing is None else healing,
    )


# -- the monitor -----------------------------------------------------------------------


@final
@attrs.frozen
class HealthStatistics:
    """A snapshot of a :class:`HealthMonitor`'s counters, over all its probes so far.

    ``checks`` counts the checks run (a removed probe's included) and
    ``unhealthy`` those that found their target unhealthy; ``recoveries``
    counts the recoveries started and ``recoveries_failed`` those that
    returned False, raised or timed out; ``gave_up`` counts the times a
    machine gave up (the recovery budget was spent, or the probe has no
    ``recover``).

    .. versionadded:: 0.1
    """

    checks: int
    unhealthy: int
    recoveries: int
    recoveries_failed: int
    gave_up: int


@attrs.define(eq=False)
class _Target:
    probe: Probe
    machine: HealingMachine
    window: LatencyWindow | None
    scope: trio.CancelScope | None = None  # its task's, to stop it


@attrs.define(eq=False)
class _Waiter:
    name: str
    states: frozenset[HealingState]
    event: trio.Event = attrs.Factory(trio.Event)
    reached: bool = False


@final
class HealthMonitor:
    """A node's health monitor; from :func:`start_health`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        *,
        name: str = ACTOR,
        failures: FailureSupervisor | None = None,
        history_size: int = DEFAULT_HISTORY_SIZE,
    ) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size must be a whole number >= 1, not {history_size!r}")
        self.node = node
        self.name = name
        self.address = f"{name}@{node.name}"
        self.failures = failures
        """The failure supervisor given to :func:`start_health` (no report type fits a give-up yet)."""
        self._targets: dict[str, _Target] = {}
        self._actor: _HealthActor | None = None  # the running instance, once started
        self._history: deque[HealingChanged] = deque(maxlen=history_size)
        self._waiters: set[_Waiter] = set()
        self._checks = 0
        self._unhealthy = 0
        self._recoveries = 0
        self._recoveries_failed = 0
        self._gave_up = 0

    def __repr__(self) -> str:
        return f"<HealthMonitor {self.address} probes={len(self._targets)}>"

    # -- public --------------------------------------------------------------------

    def add(self, probe: Probe) -> None:
        """Start watching ``probe.name``; its first check runs at once (if the monitor runs).

        Raises:
          ValueError: a probe of that name is watched already (remove it first).
        """
        if probe.name in self._targets:
            raise ValueError(
                f"{self.address} already watches {probe.name!r}; remove() it first to replace it"
            )
        config = probe.healing
        if probe.recover is None:
            config = attrs.evolve(config, max_recoveries=0)  # report only: give up at once
        window = None
        if probe.latency_threshold is not None:
            window = LatencyWindow(
                probe.window,
                threshold=probe.latency_threshold,
                min_samples=min(LATENCY_MIN_SAMPLES, probe.window),
            )
        target = _Target(probe, HealingMachine(probe.name, config), window)
        self._targets[probe.name] = target
        actor = self._actor
        if actor is not None:
            # RuntimeError: that instance has stopped; the next one starts every probe.
            with contextlib.suppress(RuntimeError):
                actor.context.start_soon(self._run, target)

    def remove(self, name: str) -> None:
        """Stop watching ``name``: its check or recovery is cancelled, its state forgotten.

        Its changes stay in the history. A :meth:`wait_state` for it raises ``LookupError``.

        Raises:
          LookupError: no probe of that name is watched.
        """
        target = self._targets.pop(name, None)
        if target is None:
            raise LookupError(f"{self.address} watches no probe named {name!r}")
        if target.scope is not None:
            target.scope.cancel()
        for waiter in [w for w in self._waiters if w.name == name]:
            waiter.event.set()  # (not reached: it raises)

    def probes(self) -> list[Probe]:
        """The probes watched, in the order they were added."""
        return [target.probe for target in self._targets.values()]

    def states(self) -> dict[str, HealingState]:
        """The state of every target, by name."""
        return {name: target.machine.state for name, target in self._targets.items()}

    def history(self, name: str | None = None) -> list[HealingChanged]:
        """The latest changes of state (of target ``name``, if given), oldest first.

        The monitor keeps the newest ``history_size`` changes over all targets.
        """
        if name is None:
            return list(self._history)
        return [change for change in self._history if change.target == name]

    def statistics(self) -> HealthStatistics:
        """A snapshot of the monitor's counters (checks, unhealthy verdicts, recoveries, ...)."""
        return HealthStatistics(
            checks=self._checks,
            unhealthy=self._unhealthy,
            recoveries=self._recoveries,
            recoveries_failed=self._recoveries_failed,
            gave_up=self._gave_up,
        )

    async def wait_state(self, name: str, *states: HealingState) -> None:
        """Wait until target ``name`` is in one of ``states``, or enters one.

        Returns at once (after a checkpoint) if it is in one now. A state the
        target only passes through (one observation can move it on twice)
        counts: the waiter is woken by the change into it.

        Raises:
          ValueError: no states were given.
          LookupError: no probe named ``name`` is watched, or it was removed
            while waited on.
        """
        if not states:
            raise ValueError("wait_state() needs one or more states to wait for")
        target = self._targets.get(name)
        if target is None:
            raise LookupError(f"{self.address} watches no probe named {name!r}")
        if target.machine.state in states:
            await trio.lowlevel.checkpoint()
            return
        waiter = _Waiter(name, frozenset(states))
        self._waiters.add(waiter)
        try:
            await waiter.event.wait()
        finally:
            self._waiters.discard(waiter)
        if not waiter.reached:
            raise LookupError(f"the probe {name!r} was removed from {self.address}")

    # -- a probe's task --------------------------------------------------------------

    async def _run(self, target: _Target) -> None:
        probe = target.probe
        with trio.CancelScope() as scope:
            if target.scope is not None:
                target.scope.cancel()  # (a task of an instance that is ending, if any)
            target.scope = scope
            if self._targets.get(probe.name) is not target:
                return  # removed before this task started
            if target.machine.recovering:  # a restart of the actor interrupted it
                await self._carry_out(target, Action.RECOVER)
                await trio.sleep(probe.interval)
            while True:
                started = trio.current_time()
                healthy, reason = await self._check(target)
                changes, action = target.machine.observe(healthy, trio.current_time(), reason)
                self._record(target, changes)
                next_check = started + probe.interval
                if action is not None and await self._carry_out(target, action):
                    next_check = trio.current_time() + probe.interval
                await trio.sleep_until(next_check)

    async def _check(self, target: _Target) -> tuple[bool, str]:
        """Run the probe's check: the verdict, and why if unhealthy."""
        probe = target.probe
        window = target.window
        self._checks += 1
        started = trio.current_time()
        result: object = None
        error = ""
        with trio.move_on_after(probe.timeout) as scope:
            try:
                result = await probe.check()
            except Exception as exc:
                logger.debug("%s: the check of %r raised", self.address, probe.name, exc_info=exc)
                error = f"check raised {exc!r}"
        healthy = False
        if scope.cancelled_caught:
            reason = f"no answer within {probe.timeout:g} s"
            if window is not None:
                window.add(trio.current_time() - started)  # a timeout counts as the time waited
        elif error:
            reason = error
        elif result is True:
            healthy, reason = True, ""
        elif result is False:
            reason = "check returned False"
        elif isinstance(result, int | float) and not isinstance(result, bool):
            healthy, reason = True, ""
            if window is not None:
                try:
                    window.add(result)
                except ValueError:
                    healthy = False
                    reason = f"check returned {result!r}, not a response time in seconds"
        else:
            reason = f"check returned {result!r}, not a bool or a response time"
        if healthy and window is not None and window.exceeded():
            healthy = False
            reason = (
                f"mean latency {window.mean():.3g} s over the last {len(window)} checks "
                f"exceeds {window.threshold:g} s"
            )
        if not healthy:
            self._unhealthy += 1
        return healthy, reason

    async def _carry_out(self, target: _Target, action: Action) -> bool:
        """Carry out ``action`` and what follows from it; whether a recovery ran."""
        recovered = False
        while action is Action.RECOVER:
            if recovered:
                await trio.sleep(target.probe.interval)  # (not in a tight loop)
            recovered = True
            changes, next_action = target.machine.recovered(*await self._recover(target))
            self._record(target, changes)
            if next_action is None:
                return True
            action = next_action
        if action is Action.GIVE_UP:
            self._give_up(target)
        return recovered

    async def _recover(self, target: _Target) -> tuple[bool, float, str]:
        """Run the probe's recovery: whether it worked, when it ended, and why if not."""
        probe = target.probe
        recover = probe.recover
        # (a machine without a budget never asks for a recovery)
        assert recover is not None, f"{probe.name}: RECOVER for a report-only probe"
        self._recoveries += 1
        result: object = None
        reason = ""
        with trio.move_on_after(probe.recover_timeout) as scope:
            try:
                result = await recover()
            except Exception as exc:
                logger.warning(
                    "%s: the recovery of %r raised", self.address, probe.name, exc_info=exc
                )
                reason = f"recover() raised {exc!r}"
        if scope.cancelled_caught:
            reason = f"recover() took longer than {probe.recover_timeout:g} s"
        elif not reason and result is not True:
            reason = f"recover() returned {result!r}"
        ok = not reason
        if not ok:
            self._recoveries_failed += 1
        if target.window is not None:
            target.window.clear()
        return ok, trio.current_time(), reason

    def _give_up(self, target: _Target) -> None:
        self._gave_up += 1
        if self._targets.get(target.probe.name) is not target:
            return
        config = target.machine.config
        if target.probe.recover is None:
            logger.error(
                "%s: %s is unhealthy (a report-only probe: no recover())",
                self.address,
                target.probe.name,
            )
        else:
            logger.error(
                "%s: gave up recovering %s: %d recoveries within %g s did not heal it; "
                "it is not recovered again until a check finds it healthy",
                self.address,
                target.probe.name,
                config.max_recoveries,
                config.recovery_window,
            )
        if self.failures is not None:
            recoveries = 0 if target.probe.recover is None else config.max_recoveries
            last = self._last_reason(target)
            self.failures.report(
                HealthGaveUp(target.probe.name, recoveries, config.recovery_window, last)
            )

    def _last_reason(self, target: _Target) -> str:
        for change in reversed(self._history):
            if change.target == target.probe.name:
                return change.reason
        return "unhealthy"

    def _record(self, target: _Target, changes: list[HealingChanged]) -> None:
        if not changes or self._targets.get(target.probe.name) is not target:
            return  # (a removed probe's task can resume once before its cancellation)
        for change in changes:
            self._history.append(change)
            level = logging.WARNING if change.after is HealingState.RECOVERING else logging.INFO
            logger.log(
                level,
                "%s: %s %s -> %s: %s",
                self.address,
                change.target,
                change.before.value,
                change.after.value,
                change.reason,
            )
            for waiter in self._waiters:
                if waiter.name == change.target and change.after in waiter.states:
                    waiter.reached = True
                    waiter.event.set()


# -- the actor -------------------------------------------------------------------------


class _HealthActor(Actor[object]):
    """Runs the probes' tasks; it handles no messages."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor

    async def on_start(self) -> None:
        monitor = self.monitor
        monitor._actor = self
        for target in list(monitor._targets.values()):
            self.context.start_soon(monitor._run, target)


async def start_health(
    node: Node,
    probes: Iterable[Probe] = (),
    *,
    failures: FailureSupervisor | None = None,
    name: str = ACTOR,
    history_size: int = DEFAULT_HISTORY_SIZE,
) -> HealthMonitor:
    """Start the node's health monitor, ``$health``, under ``node.root``.

    Every probe runs in its own task of the actor, from now until it is
    removed or the node stops (see the module documentation for a round).

    Args:
      probes: the probes to run from the start (:meth:`HealthMonitor.add`
        adds more later).
      failures: the node's failure supervisor: a give-up is logged (ERROR),
        counted and reported to it (:class:`~trioactors.HealthGaveUp`).
      name: the actor's name.
      history_size: how many changes of state are kept (over all probes).

    Returns:
      The :class:`HealthMonitor`: ``states()``, ``wait_state()``, ``add()``, ...

    Raises:
      NameTaken: the node already runs an actor called ``name``.
      ValueError: two probes have the same name, or ``history_size`` is not >= 1.

    .. versionadded:: 0.1
    """
    monitor = HealthMonitor(node, name=name, failures=failures, history_size=history_size)
    for probe in probes:
        monitor.add(probe)
    await node.root.start_actor(_HealthActor, monitor, name=name)
    return monitor
