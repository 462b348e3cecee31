"""The failure supervisor: typed failure reports, pluggable handlers, a dead-letter log.

Theory of operation
-------------------

Parts of a node that meet a failure they cannot fix themselves *report* it
to one actor per node, ``$failures`` (:func:`start_failure_supervisor`),
which runs the application's handlers: log, alert, fall back, scale. Reports
are registered attrs classes under ``$failures.*`` tags, so a peer can tell
them to ``$failures@node`` as well:

- :class:`JobGaveUp`: a job failed on every attempt its retry policy allows
  (the submitter's ``await`` raised :class:`~trioactors.JobExhausted`);
- :class:`NodeDown`: a member was declared dead, or left;
- :class:`RestartStorm`: an actor restarted too often, or a supervisor gave up;
- :class:`CircuitOpened` / :class:`CircuitClosed`: the job queue stopped /
  resumed sending jobs to a node.

A report goes through three steps:

1. :meth:`FailureSupervisor.report` tells it to the actor with
   ``tell_nowait``: it never waits and never raises. When the mailbox is
   full the report is *dropped*: counted, and logged (the first of a run of
   drops, then the run's length when a report gets through again).
2. The actor *records* every report it receives, at once: counted by type,
   appended to the recent reports and, for a :class:`JobGaveUp`, to the
   dead-letter log (both keep the newest ``capacity``: the oldest fall off),
   then queued for the handlers (at most ``HANDLER_QUEUE_SIZE`` waiting;
   beyond that the handlers skip it: it is dropped as in 1, though it stays
   recorded, since the log is what an operator reads after an outage).
3. One background task of the actor runs the handlers, one report at a time
   and each handler in the order given. A handler that returns an awaitable
   (an ``async def``) is awaited within ``handler_timeout`` seconds (a cancel
   scope), so a hung alert hook holds up the others for that long at most. A
   handler that raises is logged with its traceback and counted, and one that
   times out is counted; either way the next one runs. Synchronous handlers
   cannot be interrupted: keep them short.

The read-only queries (:class:`ListDeadLetters`, :class:`FailureInfo`) are
answered by the actor at once, never behind a slow handler. The state
(counts, logs, handlers, reports waiting for them) lives in
:class:`FailureSupervisor`, outside the actor, so that it survives restarts of
``$failures``, as :class:`~trioactors.AdminService` does for ``$admin``.

Two sources are watched by the supervisor itself:

- ``membership=``: it subscribes to :class:`~trioactors.MemberChanged` and
  reports a :class:`NodeDown` whenever a member it knew as reachable becomes
  dead or leaves (a member first heard of already dead is not news).
- ``restart_storm=(n, window)``: it follows the node's system events through
  :class:`RestartStormDetector`, a pure machine fed with the events' times.
  A path that restarts more than ``n`` times within ``window`` seconds starts
  a storm, reported once: not again until ``window`` seconds have passed
  without a restart that keeps it above the limit. A supervisor that gives
  up (it exceeded its own intensity) is a storm at its path too, reported
  with its intensity and period.

Invariants: handlers see reports in the order the actor recorded them, each
at most once (reports still waiting when the node stops are lost); every
report recorded is handled, being handled, waiting, or counted as dropped.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias, assert_never, final

import attrs
import cattrs
import trio
from cattrs.gen import make_dict_structure_fn

from .._core._membership import MemberChanged
from .._errors import TrioactorsError
from .._runtime._actor import Actor, Request, read_only
from .._runtime._mailbox import Mailbox
from .._runtime._system import ChildRestarted, ChildStopped, SupervisorEscalated
from .._wire._codec import _converter, _register_service_messages

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from .._runtime._actor import ActorRef
    from .._runtime._node import Node
    from .._runtime._supervisor import Supervisor
    from .._wire._codec import MessageRegistry
    from ._membership import Membership

__all__ = [
    "AlertHook",
    "CircuitClosed",
    "CircuitOpened",
    "DeadLetterList",
    "FailureHandler",
    "FailureInfo",
    "FailureReport",
    "FailureStatistics",
    "FailureSupervisor",
    "HealthGaveUp",
    "JobGaveUp",
    "ListDeadLetters",
    "NodeDown",
    "RestartStorm",
    "RestartStormDetector",
    "default_alert_key",
    "describe_failure",
    "log_failures",
    "register_failure_messages",
    "start_failure_supervisor",
]

logger = logging.getLogger("trioactors.failures")

ACTOR = "$failures"
DEFAULT_CAPACITY = 1000
DEFAULT_HANDLER_TIMEOUT = 5.0
"""Seconds an async handler may take for one report before it is cancelled."""
HANDLER_QUEUE_SIZE = 1000
"""Reports waiting for the handlers, at most; more are recorded but not handled."""

# -- reports ---------------------------------------------------------------------------


@final
@attrs.frozen
class JobGaveUp:
    """A job ended with an error: its attempts ran out (``JobExhausted``), or
    it failed in a way no retry could help (``WorkerLost`` under ``NO_RETRY``,
    ``JobFailed``, ``JobTimeout``, a payload that does not fit, ...).

    ``error`` is the class name of the last attempt's error and ``message``
    the job's error text; ``worker`` the address of the pool that ran the
    last attempt, if any; ``submitter`` the address of the coordinator that
    submitted the job; ``payload`` the job's
    payload as plain data (what its class unstructures to: dicts, lists,
    strings, numbers, ...), so that it crosses the wire as it is. ``at`` is
    the wall-clock time (``time.time()``) of the give-up.

    .. versionadded:: 0.1
    """

    job_id: str
    kind: str
    attempts: int
    error: str
    message: str
    worker: str | None
    submitter: str
    payload: object
    at: float = attrs.field(factory=time.time)


@final
@attrs.frozen
class NodeDown:
    """Member ``node`` (last seen at ``address``) is ``"dead"`` or ``"left"``.

    .. versionadded:: 0.1
    """

    node: str
    address: str
    state: str
    at: float = attrs.field(factory=time.time)


@final
@attrs.frozen
class RestartStorm:
    """The actor (or supervisor) at ``path`` restarted ``restarts`` times within ``window`` seconds.

    .. versionadded:: 0.1
    """

    path: str
    restarts: int
    window: float
    at: float = attrs.field(factory=time.time)


@final
@attrs.frozen
class CircuitOpened:
    """Node ``node`` failed ``failures`` times in a row: no jobs go to it for
    ``reset_timeout`` seconds (then one trial job).

    .. versionadded:: 0.1
    """

    node: str
    failures: int
    reset_timeout: float
    at: float = attrs.field(factory=time.time)


@final
@attrs.frozen
class CircuitClosed:
    """Node ``node`` passed its trial: jobs go to it again.

    .. versionadded:: 0.1
    """

    node: str
    at: float = attrs.field(factory=time.time)


@final
@attrs.frozen
class HealthGaveUp:
    """The health monitor could not heal ``target``: ``recoveries`` recoveries
    within ``window`` seconds failed (0 for a probe that only reports).

    .. versionadded:: 0.1
    """

    target: str
    recoveries: int
    window: float
    reason: str
    at: float = attrs.field(factory=time.time)


FailureReport: TypeAlias = (
    JobGaveUp | NodeDown | RestartStorm | CircuitOpened | CircuitClosed | HealthGaveUp
)
"""Any failure report."""

FailureHandler: TypeAlias = Callable[[FailureReport], object]
"""A report handler: a function of the report; if it returns an awaitable
(an ``async def``), the supervisor awaits it, within its handler timeout."""

_REPORTS: frozenset[type] = frozenset(FailureReport.__args__)


# -- queries and replies (read-only) ----------------------------------------------------


@final
@attrs.frozen
class FailureStatistics:
    """A snapshot of a :class:`FailureSupervisor`'s counters; the answer to :class:`FailureInfo`.

    ``received`` counts the reports recorded, by class name (every type is
    there, 0 included); ``handled`` those all handlers have run for;
    ``handler_errors`` and ``handler_timeouts`` count handler calls that
    raised or ran out of time; ``dropped`` counts reports the handlers never
    saw (a full mailbox or handler queue); ``dead_letters`` is the length of
    the dead-letter log now (at most its capacity; ``received["JobGaveUp"]``
    is the total); ``pending`` counts reports waiting for the handlers.

    .. versionadded:: 0.1
    """

    received: dict[str, int]
    handled: int
    handler_errors: int
    handler_timeouts: int
    dropped: int
    dead_letters: int
    pending: int


@final
@attrs.frozen
class DeadLetterList:
    """The answer to :class:`ListDeadLetters`: a sequence of :class:`JobGaveUp`, oldest first.

    (A wrapper, not a ``list``: only registered classes and plain JSON values
    cross the wire.) It iterates, indexes and has a length like the list it holds.

    .. versionadded:: 0.1
    """

    items: list[JobGaveUp]

    def __iter__(self) -> Iterator[JobGaveUp]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> JobGaveUp:
        return self.items[index]


@read_only
@final
@attrs.frozen
class ListDeadLetters(Request[DeadLetterList]):
    """The newest ``limit`` entries of the dead-letter log (of job kind ``kind``, if given).

    .. versionadded:: 0.1
    """

    kind: str | None = None
    limit: int = 100


@read_only
@final
@attrs.frozen
class FailureInfo(Request[FailureStatistics]):
    """The failure supervisor's counters.

    .. versionadded:: 0.1
    """


_CLASSES: tuple[type, ...] = (
    JobGaveUp,
    NodeDown,
    RestartStorm,
    CircuitOpened,
    CircuitClosed,
    HealthGaveUp,
    ListDeadLetters,
    DeadLetterList,
    FailureInfo,
    FailureStatistics,
)


def _as_is(value: object, _: type) -> object:
    return value


# ``payload`` is plain data, which cattrs cannot structure for a field typed
# ``object``: it is taken as it came, and every other field as strictly as ever.
for _format in ("json", "msgpack"):
    _c = _converter(_format)
    _c.register_structure_hook(
        JobGaveUp,
        make_dict_structure_fn(
            JobGaveUp,
            _c,
            _cattrs_forbid_extra_keys=True,
            payload=cattrs.override(struct_hook=_as_is),
        ),
    )


def register_failure_messages(registry: MessageRegistry) -> None:
    """Register the reports, queries and replies in ``registry`` (``$failures.*`` tags).

    :func:`start_failure_supervisor` does it for the node's registry; a node
    that reports to another node's supervisor, or queries it, registers them
    in its own.

    .. versionadded:: 0.1
    """
    _register_service_messages(registry, "$failures", _CLASSES)


# -- restart storms (pure) ---------------------------------------------------------------


@final
class RestartStormDetector:
    """Which restarts make a storm: a pure machine (no clock, no I/O).

    Feed it the restarts it should watch, with their times; it says when a
    storm begins. A path storms when it restarted more than ``restarts``
    times within ``window`` seconds. Each storm is reported once: while a
    path keeps restarting above the limit, or within ``window`` seconds of
    the last restart that did, the storm goes on.

    Memory: the times of a path's last ``restarts + 1`` restarts; paths quiet
    for longer than ``window`` are forgotten now and then.

    .. versionadded:: 0.1
    """

    def __init__(self, restarts: int, window: float) -> None:
        if restarts < 0:
            raise ValueError(f"restart_storm: restarts must be >= 0, not {restarts!r}")
        if not window > 0:
            raise ValueError(f"restart_storm: window must be > 0 seconds, not {window!r}")
        self.restarts = restarts
        self.window = window
        self._times: dict[str, deque[float]] = {}
        self._quiet_from: dict[str, float] = {}  # path -> when its storm is over
        self._prune_above = 1024

    def on_restart(self, path: str, *, now: float) -> int | None:
        """``path`` restarted at ``now``: the restarts within the window if a storm begins."""
        times = self._times.get(path)
        if times is None:
            times = self._times[path] = deque(maxlen=self.restarts + 1)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(self._times) > self._prune_above:
            self._prune(now)
        if len(times) <= self.restarts:
            return None
        return len(times) if self._storms(path, now) else None

    def on_gave_up(self, path: str, *, now: float) -> bool:
        """The supervisor at ``path`` exceeded its intensity at ``now``: a new storm?"""
        return self._storms(path, now)

    def forget(self, path: str) -> None:
        """``path`` was removed (a new child may take it later)."""
        self._times.pop(path, None)
        self._quiet_from.pop(path, None)

    def _storms(self, path: str, now: float) -> bool:
        quiet_from = self._quiet_from.get(path, -math.inf)
        self._quiet_from[path] = now + self.window
        return now >= quiet_from

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for path in [p for p, t in self._times.items() if not t or t[-1] <= horizon]:
            if self._quiet_from.get(path, -math.inf) <= now:
                self.forget(path)
        self._prune_above = max(1024, 2 * len(self._times))


# -- built-in handlers ---------------------------------------------------------------


def describe_failure(report: FailureReport) -> str:
    """One line about ``report``, as :func:`log_failures` writes it.

    .. versionadded:: 0.1
    """
    match report:
        case JobGaveUp():
            tries = f"{report.attempts} attempt{'s' if report.attempts != 1 else ''}"
            where = f" (last on {report.worker})" if report.worker else ""
            return (
                f"job {report.job_id} ({report.kind}) from {report.submitter} gave up after "
                f"{tries}{where}: {report.error}: {report.message}"
            )
        case NodeDown():
            return f"node {report.node} ({report.address}) is {report.state}"
        case RestartStorm():
            return (
                f"restart storm: {report.path} restarted {report.restarts} times "
                f"within {report.window:g} s"
            )
        case CircuitOpened():
            return (
                f"circuit to node {report.node} opened after {report.failures} failures; "
                f"a trial job in {report.reset_timeout:g} s"
            )
        case CircuitClosed():
            return f"circuit to node {report.node} closed"
        case HealthGaveUp():
            return (
                f"gave up healing {report.target} after {report.recoveries} recoveries "
                f"within {report.window:g} s: {report.reason}"
            )
        case _:
            assert_never(report)


def log_failures(level: int = logging.WARNING) -> FailureHandler:
    """A handler that logs one line per report at ``level`` on the logger ``trioactors.failures``.

    .. versionadded:: 0.1
    """

    def log_failure(report: FailureReport) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, "%s", describe_failure(report))

    return log_failure


def default_alert_key(report: FailureReport) -> str:
    """The report's type and its subject: ``"NodeDown:n3"``, ``"JobGaveUp:resize"``, ...

    The subject is the node (:class:`NodeDown`, circuits), the job kind
    (:class:`JobGaveUp`) or the path (:class:`RestartStorm`).

    .. versionadded:: 0.1
    """
    match report:
        case JobGaveUp():
            subject = report.kind
        case NodeDown() | CircuitOpened() | CircuitClosed():
            subject = report.node
        case RestartStorm():
            subject = report.path
        case HealthGaveUp():
            subject = report.target
        case _:
            assert_never(report)
    return f"{type(report).__name__}:{subject}"


def _always(_: FailureReport) -> bool:
    return True


@final
class AlertHook:
    """A handler that calls ``alert(report)`` at most once per ``cooldown`` seconds per key.

    Reports for which ``predicate(report)`` is false are ignored. Reports
    are grouped by ``key(report)`` (default :func:`default_alert_key`: one
    group per type and node, job kind or path), so an outage that brings a
    thousand reports pages once, while another node going down still pages
    at once. ``alert`` may be ``async`` (the supervisor awaits it, within its
    handler timeout). The cooldown runs on Trio's clock, from the call that
    alerted (even if ``alert`` then failed: a broken pager is not retried in
    a loop).

    ``alerts`` and ``suppressed`` count the reports passed on and held back.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        alert: Callable[[FailureReport], object],
        *,
        predicate: Callable[[FailureReport], bool] = _always,
        cooldown: float = 60.0,
        key: Callable[[FailureReport], str] = default_alert_key,
    ) -> None:
        if not cooldown >= 0:
            raise ValueError(f"cooldown must be >= 0 seconds, not {cooldown!r}")
        self.alert = alert
        self.predicate = predicate
        self.cooldown = cooldown
        self.key = key
        self.alerts = 0
        self.suppressed = 0
        self._last: dict[str, float] = {}  # key -> when it last alerted

    def __repr__(self) -> str:
        return f"<AlertHook {getattr(self.alert, '__qualname__', self.alert)!r}>"

    def __call__(self, report: FailureReport) -> object:
        if not self.predicate(report):
            return None
        now = trio.current_time()
        key = self.key(report)
        if now < self._last.get(key, -math.inf) + self.cooldown:
            self.suppressed += 1
            return None
        if len(self._last) >= 1024:  # forget keys whose cooldown is over
            self._last = {k: t for k, t in self._last.items() if now < t + self.cooldown}
        self._last[key] = now
        self.alerts += 1
        return self.alert(report)


# -- the actor -------------------------------------------------------------------------


_Message: TypeAlias = FailureReport | ListDeadLetters | FailureInfo | MemberChanged

_HANDLED = frozenset(_Message.__args__)


class _FailuresActor(Actor[_Message]):
    def __init__(self, service: FailureSupervisor) -> None:
        self.service = service

    async def on_start(self) -> None:
        self.context.start_soon(self.service._run_handlers)
        if self.service._storms is not None:
            self.context.start_soon(self.service._watch_restarts)

    async def receive(self, message: _Message) -> object:
        s = self.service
        if type(message) not in _HANDLED:  # (a peer may send any registered type)
            return await super().receive(message)
        match message:
            case (
                JobGaveUp()
                | NodeDown()
                | RestartStorm()
                | CircuitOpened()
                | CircuitClosed()
                | HealthGaveUp()
            ):
                s._record(message)
            case ListDeadLetters(kind, limit):
                return DeadLetterList(s.dead_letters(kind)[-limit:] if limit > 0 else [])
            case FailureInfo():
                return s.statistics()
            case MemberChanged():
                s._member_changed(message)
            case _:
                assert_never(message)
        return None


# -- the service -------------------------------------------------------------------------


@final
class FailureSupervisor:
    """A node's failure supervisor; from :func:`start_failure_supervisor`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        *,
        name: str,
        handlers: Iterable[FailureHandler],
        capacity: int,
        handler_timeout: float,
        restart_storm: tuple[int, float] | None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a whole number >= 1, not {capacity!r}")
        if not handler_timeout > 0:
            raise ValueError(f"handler_timeout must be > 0 seconds, not {handler_timeout!r}")
        self.node = node
        self.name = name
        self.address = f"{name}@{node.name}"
        """How peers address the supervisor: ``$failures@node``."""
        self.capacity = capacity
        self.handler_timeout = handler_timeout
        self._storms = None if restart_storm is None else RestartStormDetector(*restart_storm)
        self._handlers: list[FailureHandler] = list(handlers)
        self._ref: ActorRef[_Message] | None = None
        self._recent: deque[FailureReport] = deque(maxlen=capacity)
        self._dead: deque[JobGaveUp] = deque(maxlen=capacity)
        self._pending: Mailbox[FailureReport] = Mailbox(HANDLER_QUEUE_SIZE)  # for the handlers
        self._received = {cls.__name__: 0 for cls in FailureReport.__args__}
        self._handled = 0
        self._errors = 0
        self._timeouts = 0
        self._dropped = 0
        self._dropping = 0  # drops since a report last got through

    def __repr__(self) -> str:
        return f"<FailureSupervisor {self.address} handlers={len(self._handlers)}>"

    # -- public --------------------------------------------------------------------

    def report(self, report: FailureReport) -> None:
        """Send ``report`` to the supervisor; never waits, never raises.

        Callable from any task on this node. If the actor's mailbox is full
        the report is dropped: counted in ``statistics().dropped`` and logged.

        Raises:
          TypeError: ``report`` is not one of the report classes (a bug).
        """
        if type(report) not in _REPORTS:
            raise TypeError(
                f"{type(report).__qualname__} is not a failure report; send a JobGaveUp, "
                "NodeDown, RestartStorm, CircuitOpened or CircuitClosed"
            )
        ref = self._ref
        try:
            if ref is None:  # (not started yet: only before start_failure_supervisor returns)
                raise trio.WouldBlock
            ref.tell_nowait(report)
        except (trio.WouldBlock, TrioactorsError):
            self._drop(report, "its mailbox is full")
        else:
            self._got_through()

    def add_handler(self, handler: FailureHandler) -> None:
        """Run ``handler`` after the others for every report from now on."""
        self._handlers.append(handler)

    def dead_letters(self, kind: str | None = None) -> list[JobGaveUp]:
        """The jobs that gave up (of job kind ``kind``, if given), oldest first.

        The log keeps the newest ``capacity`` of them.
        """
        if kind is None:
            return list(self._dead)
        return [letter for letter in self._dead if letter.kind == kind]

    def reports(self) -> list[FailureReport]:
        """The newest ``capacity`` reports of every type, oldest first."""
        return list(self._recent)

    def statistics(self) -> FailureStatistics:
        """A snapshot of the supervisor's counters: reports by type, handled, errors, dropped."""
        return FailureStatistics(
            received=dict(self._received),
            handled=self._handled,
            handler_errors=self._errors,
            handler_timeouts=self._timeouts,
            dropped=self._dropped,
            dead_letters=len(self._dead),
            pending=len(self._pending),
        )

    # -- internals -------------------------------------------------------------------

    def _record(self, report: FailureReport) -> None:
        self._received[type(report).__name__] += 1
        self._recent.append(report)
        if isinstance(report, JobGaveUp):
            self._dead.append(report)
        try:
            self._pending.put_nowait(report)
        except trio.WouldBlock:
            self._drop(report, "its handlers are behind")
        else:
            self._got_through()

    def _drop(self, report: FailureReport, why: str) -> None:
        self._dropped += 1
        self._dropping += 1
        if self._dropping == 1:
            logger.warning(
                "%s dropped a report (%s); more drops are counted until one gets through: %s",
                self.address,
                why,
                describe_failure(report),
            )
        else:
            logger.debug(
                "%s dropped a report (%s): %s", self.address, why, describe_failure(report)
            )

    def _got_through(self) -> None:
        if self._dropping:
            logger.warning("%s dropped %d reports in a row", self.address, self._dropping)
            self._dropping = 0

    def _member_changed(self, change: MemberChanged) -> None:
        before, after = change.before, change.after
        if after.reachable or before is None or not before.reachable:
            return  # only news of a member we could reach going away
        self._record(NodeDown(after.node, after.address, after.state.name.lower()))

    async def _run_handlers(self) -> None:
        pending = self._pending
        while True:
            await pending.wait_nonempty()
            report = pending.take()
            if report is None:
                continue
            for handler in tuple(self._handlers):
                await self._call(handler, report)
            self._handled += 1

    async def _call(self, handler: FailureHandler, report: FailureReport) -> None:
        try:
            result = handler(report)
            if inspect.isawaitable(result):
                with trio.move_on_after(self.handler_timeout) as scope:
                    await result
                if scope.cancelled_caught:
                    self._timeouts += 1
                    logger.warning(
                        "%s: handler %s took longer than %g s on: %s",
                        self.address,
                        _name(handler),
                        self.handler_timeout,
                        describe_failure(report),
                    )
        except Exception:
            self._errors += 1
            logger.exception(
                "%s: handler %s raised on: %s",
                self.address,
                _name(handler),
                describe_failure(report),
            )

    async def _watch_restarts(self) -> None:
        detector = self._storms
        assert detector is not None
        with self.node.system.subscribe() as events:
            async for event in events:
                match event:
                    case ChildRestarted(path, _, now):
                        restarts = detector.on_restart(path, now=now)
                        if restarts is not None:
                            self._record(RestartStorm(path, restarts, detector.window))
                    case SupervisorEscalated(path, _, now):
                        if detector.on_gave_up(path, now=now):
                            sup = _supervisor_at(self.node.root, path)
                            intensity, period = (
                                (detector.restarts, detector.window)
                                if sup is None
                                else (sup.intensity, sup.period)
                            )
                            self._record(RestartStorm(path, intensity + 1, period))
                    case ChildStopped(path, "removed"):
                        detector.forget(path)
                    case _:
                        pass


def _name(handler: FailureHandler) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))


def _supervisor_at(root: Supervisor, path: str) -> Supervisor | None:
    if root.path == path:
        return root
    for info in root.children():
        if info.supervisor is not None and path.startswith(info.supervisor.path):
            found = _supervisor_at(info.supervisor, path)
            if found is not None:
                return found
    return None


async def start_failure_supervisor(
    node: Node,
    *,
    handlers: Iterable[FailureHandler] | None = None,
    membership: Membership | None = None,
    restart_storm: tuple[int, float] | None = (5, 10.0),
    capacity: int = DEFAULT_CAPACITY,
    handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    name: str = ACTOR,
) -> FailureSupervisor:
    """Start the node's failure supervisor, ``$failures``, under ``node.root``.

    Registers the ``$failures.*`` messages in the node's registry (see
    :func:`register_failure_messages`).

    Args:
      handlers: what to run for every report, in order. ``None`` (the
        default) means ``[log_failures()]``; pass a list (empty for none) to
        choose, and include :func:`log_failures` to keep the log lines.
      membership: the node's membership: report a :class:`NodeDown` for
        every member that becomes dead or leaves.
      restart_storm: ``(n, window)``: report a :class:`RestartStorm` when an
        actor of this node restarts more than ``n`` times within ``window``
        seconds, or a supervisor gives up; ``None`` to watch nothing.
      capacity: how many recent reports, and how many dead letters, are
        kept; the oldest go first.
      handler_timeout: seconds an async handler may take for one report.
      name: the actor's name.

    Returns:
      The :class:`FailureSupervisor`: ``report()``, ``dead_letters()``, ...

    Raises:
      NameTaken: the node already runs an actor called ``name``.
      ValueError: a bad ``capacity``, ``handler_timeout`` or ``restart_storm``.

    .. versionadded:: 0.1
    """
    service = FailureSupervisor(
        node,
        name=name,
        handlers=[log_failures()] if handlers is None else handlers,
        capacity=capacity,
        handler_timeout=handler_timeout,
        restart_storm=restart_storm,
    )
    register_failure_messages(node.codec.registry)
    ref: ActorRef[_Message] = await node.root.start_actor(_FailuresActor, service, name=name)
    service._ref = ref
    if membership is not None:
        membership.subscribe(ref)  # (the place's reference: it outlives restarts)
    return service
