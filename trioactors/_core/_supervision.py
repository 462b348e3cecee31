"""Supervision policy: OTP's restart rules as a pure state machine.

Theory of operation
-------------------

A :class:`SupervisionPolicy` knows a supervisor's children in start order,
each with its :class:`Restart` type and whether it is running, plus the times
of the restarts it has made. It does no I/O and reads no clock: the runtime
feeds it events with ``now`` and carries out the actions it returns, in order.

Events (method calls):

- ``child_started(name, restart)``: a new child was added and is running.
- ``child_removed(name)``: the runtime removed a child (e.g. ``stop_child``).
- ``child_exited(name, crashed, now)``: a running child ended by itself.

Actions (returned lists, executed in order):

- :class:`StopChildren`: stop these running children, in the given order
  (already reversed start order), and wait for each.
- :class:`RemoveChildren`: forget these children; they are not restarted.
- :class:`StartChildren`: start these children, in the given (start) order,
  after ``delay`` seconds.
- :class:`GiveUp`: the restart intensity was exceeded; all children have
  been stopped by the preceding :class:`StopChildren`.

Rules, as in OTP's ``supervisor`` module:

- ``PERMANENT`` children are always restarted, ``TRANSIENT`` ones only after a
  crash, ``TEMPORARY`` ones never. A child that is not restarted after a normal
  exit stays in the list as stopped (``TRANSIENT``) or is removed
  (``TEMPORARY``).
- A restart affects the exited child (``ONE_FOR_ONE``), every running child
  (``ONE_FOR_ALL``), or the exited child and the running children started after
  it (``REST_FOR_ONE``). The affected siblings are stopped in reverse start
  order, then all affected non-temporary children start again in start order.
  Temporary siblings stopped this way are removed.
- Every restart decision adds ``now`` to the restart history. If more than
  ``intensity`` restarts happened in the last ``period`` seconds (inclusive),
  the supervisor stops every running child in reverse start order and gives up.

Invariants: names are unique; a child appears at most once in each action,
and is stopped before it is removed or started again;
the restart history holds at most ``intensity + 1`` entries.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TypeAlias, final

import attrs

__all__ = [
    "Action",
    "Backoff",
    "GiveUp",
    "RemoveChildren",
    "Restart",
    "StartChildren",
    "StopChildren",
    "Strategy",
    "SupervisionPolicy",
]


class Strategy(enum.Enum):
    """Which children restart when one of them exits.

    .. versionadded:: 0.1
    """

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """Every running child: the others are stopped, then all start again."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and the running children started after it."""


class Restart(enum.Enum):
    """When a child is restarted after it exits.

    .. versionadded:: 0.1
    """

    PERMANENT = "permanent"
    """Always, even after a normal exit."""
    TRANSIENT = "transient"
    """Only after a crash (an exception)."""
    TEMPORARY = "temporary"
    """Never; the child is removed when it exits."""


@final
@attrs.frozen
class Backoff:
    """Delay before a restart: ``min(maximum, initial * factor ** (n - 1))``.

    ``n`` counts the restarts in the current intensity window, including this
    one, so a child that keeps crashing waits longer each time and the delay
    resets once the window has emptied.

    .. versionadded:: 0.1
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 10.0

    def delay(self, n: int) -> float:
        """The delay before the ``n``-th restart in the window (``n >= 1``)."""
        return min(self.maximum, self.initial * self.factor ** max(0, n - 1))


@final
@attrs.frozen
class StopChildren:
    names: tuple[str, ...]


@final
@attrs.frozen
class RemoveChildren:
    names: tuple[str, ...]


@final
@attrs.frozen
class StartChildren:
    names: tuple[str, ...]
    delay: float = 0.0


@final
@attrs.frozen
class GiveUp:
    restarts: int
    period: float


Action: TypeAlias = StopChildren | RemoveChildren | StartChildren | GiveUp


@attrs.define
class _Child:
    name: str
    restart: Restart
    running: bool = True


@final
class SupervisionPolicy:
    """The decisions of one supervisor instance (see the module docstring)."""

    def __init__(
        self,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        *,
        intensity: int = 1,
        period: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, not {intensity}")
        if period <= 0:
            raise ValueError(f"period must be > 0 seconds, not {period}")
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.backoff = backoff
        self._children: dict[str, _Child] = {}
        self._restarts: deque[float] = deque()

    # -- queries -------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Every child, running or not, in start order."""
        return tuple(self._children)

    def running(self) -> tuple[str, ...]:
        """The running children, in start order."""
        return tuple(c.name for c in self._children.values() if c.running)

    def is_running(self, name: str) -> bool:
        return self._children[name].running

    def restart_times(self) -> tuple[float, ...]:
        return tuple(self._restarts)

    # -- events --------------------------------------------------------------

    def child_started(self, name: str, restart: Restart) -> None:
        """A child was added (appended in start order) or started again."""
        child = self._children.get(name)
        if child is None:
            self._children[name] = _Child(name, restart)
        else:
            child.running = True

    def child_removed(self, name: str) -> None:
        self._children.pop(name, None)

    def child_stopped(self, name: str) -> None:
        """The runtime stopped a child on request; it is kept, not running."""
        self._children[name].running = False

    def child_exited(self, name: str, *, crashed: bool, now: float) -> list[Action]:
        """A running child ended on its own (``crashed``: by an exception)."""
        child = self._children[name]
        child.running = False
        if not _should_restart(child.restart, crashed=crashed):
            if child.restart is Restart.TEMPORARY:
                del self._children[name]
                return [RemoveChildren((name,))]
            return []

        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self.period:
            self._restarts.popleft()
        if len(self._restarts) > self.intensity:
            everyone = self.running()
            for other in everyone:
                self._children[other].running = False
            actions: list[Action] = []
            if everyone:
                actions.append(StopChildren(everyone[::-1]))
            actions.append(GiveUp(len(self._restarts), self.period))
            return actions

        order = list(self._children)
        match self.strategy:
            case Strategy.ONE_FOR_ONE:
                siblings: list[str] = []
            case Strategy.ONE_FOR_ALL:
                siblings = [n for n in order if n != name and self._children[n].running]
            case Strategy.REST_FOR_ONE:
                after = order[order.index(name) + 1 :]
                siblings = [n for n in after if self._children[n].running]
        actions = []
        if siblings:
            actions.append(StopChildren(tuple(siblings[::-1])))
        temporary = tuple(n for n in siblings if self._children[n].restart is Restart.TEMPORARY)
        if temporary:
            actions.append(RemoveChildren(temporary))
        for n in temporary:
            del self._children[n]
        restart = {name, *siblings} - set(temporary)
        to_start = tuple(n for n in self._children if n in restart)
        for n in to_start:
            self._children[n].running = True
        delay = self.backoff.delay(len(self._restarts)) if self.backoff else 0.0
        actions.append(StartChildren(to_start, delay))
        return actions


def _should_restart(restart: Restart, *, crashed: bool) -> bool:
    match restart:
        case Restart.PERMANENT:
            return True
        case Restart.TRANSIENT:
            return crashed
        case Restart.TEMPORARY:
            return False
