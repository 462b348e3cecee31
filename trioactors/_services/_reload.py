"""Hot reload: new code for a running actor, its mailbox and state kept, rolled back if it fails.

Theory of operation
-------------------

:func:`start_reloader` starts the node's reloader, the actor ``$reloader``
under ``node.root``, and returns its :class:`Reloader`. An actor that is to
be reloaded is started through it, :meth:`Reloader.start_reloadable`: the
supervisor is given, as the child's factory, a small *switch* owned by the
reloader. Every time the supervisor starts an instance at that place (the
first start, a restart after a crash, an operator's restart), it calls the
switch, and the switch builds the instance from the version it holds. A
reload is then: give the switch a new version and ask the supervisor to
restart the child in place (``Supervisor.restart_child``). The place owns the
mailbox (see ``_runtime/_actor.py``), so messages queued before and during
the reload stay queued and are handled by the new version; every reference
stays valid. The old instance gets the child's graceful shutdown timeout
(``shutdown``, 30 s by default here) to finish the message it is handling and
run ``on_stop``.

State. An actor that subclasses :class:`Reloadable` hands its state over as
plain data. When the switch builds the new version it takes
:meth:`~Reloadable.snapshot` of the old instance (which has stopped: the
state is final) and gives it to the new one's :meth:`~Reloadable.migrate`
with the old version's name. A plain :class:`~trioactors.Actor` has no state
to hand over: its new version starts fresh, as after any restart. A
restart after a crash starts fresh too (OTP's rule: a crash discards state).

One reload, :meth:`Reloader.reload`, step by step (each reload or rollback
of a name waits for the previous one; they run in the reloader's own task,
so a caller that is cancelled abandons the wait, never a reload half done):

1. *Resolve.* ``"package.module:Name"`` is imported; if the module was
   imported before and its file changed on disk (or the reloader never saw
   it loaded), it is reloaded with :func:`importlib.reload`, its stale
   bytecode cache removed first (a file rewritten within the same second
   with the same size would otherwise load the old code). A failed reload
   puts the module's namespace back as it was. ``"/path/to/file.py:Name"``
   is compiled from the file as it is now, into a fresh module. A callable
   is taken as it is. -> :class:`ReloadImportError`, :class:`InvalidReloadTarget`.
2. *Dry run*, while the old version keeps running: the new factory is called
   with the child's arguments, the result must be an actor, and the old
   instance's current snapshot must go through the new one's ``migrate``.
   -> :class:`ReloadStartFailed`, :class:`InvalidReloadTarget`,
   :class:`MigrationFailed`.
3. *Swap.* ``restart_child``: the old instance stops; the switch takes the
   final snapshot, builds the new version and migrates the state into it;
   the new instance's ``on_start`` runs.
4. *Settle.* If 3 failed (the factory or ``migrate`` raised now, or
   ``on_start`` raised), the switch builds the old version again and gives it
   back its own snapshot (:meth:`~Reloadable.restore`). A failure in the
   switch costs nothing, but an ``on_start`` that raises is a crash of that
   instance, and the supervisor's restart brings the old version back: it
   counts against the supervisor's restart intensity.

Every step 1-4 that fails is *rejected*: the previous version keeps (or
goes back to) running, the attempt is in the history, and ``reload`` raises
a :class:`ReloadError` whose ``record`` is that entry.

Probation. A new version is on probation for ``window`` seconds. Every
message it handles counts, and so does every one whose handler raised (a
crash) or that it did not handle (``UnhandledMessage``) as an error. As soon
as at least ``min_messages`` have counted and more than ``max_error_rate``
of them were errors, it is rolled back at once; at the end of the window it
is *confirmed*. Rollback is a reload to the previous version with the state
going the other way: the new version's :meth:`~Reloadable.downgrade` hands
it back in the previous version's shape, or, where it cannot, the previous
version restores the snapshot taken at the reload (the changes the new
version made are then lost). An automatic rollback is logged (WARNING) and,
given a failure supervisor, reported to it as a
:class:`~trioactors.HealthGaveUp` (``recoveries=0``).

The reloader's state (versions, snapshots, probation, history) lives in the
:class:`Reloader`, outside the ``$reloader`` actor, so that it survives a
restart of the actor, whose new instance takes up the probations again.

Invariants: every start of a reloadable place runs exactly one version, the
one :meth:`Reloader.current` names once the change settles; a rejected
change leaves ``current`` as it was; every reload, rollback, rejection and
confirmation is one :class:`ReloadRecord`, in order.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import importlib
import importlib.util
import logging
import math
import re
import sys
import types
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar, TypeVarTuple, final, overload

import attrs
import trio

from .._core._supervision import Restart
from .._errors import TrioactorsError
from .._runtime._actor import Actor, Request, read_only
from .._runtime._instance import DEFAULT_START_TIMEOUT
from .._runtime._system import ChildStopped, EventsLost, SupervisorEscalated
from .._wire._codec import _register_service_messages
from ._failures import HealthGaveUp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from .._runtime._actor import ActorRef, ReplyTo
    from .._runtime._node import Node
    from .._runtime._supervisor import Supervisor
    from .._runtime._system import Subscription
    from .._wire._codec import MessageRegistry
    from ._failures import FailureSupervisor

__all__ = [
    "InvalidReloadTarget",
    "ListReloads",
    "MigrationFailed",
    "NoPreviousVersion",
    "NotReloadable",
    "Reload",
    "ReloadError",
    "ReloadHistory",
    "ReloadImportError",
    "ReloadOutcome",
    "ReloadRecord",
    "ReloadStartFailed",
    "Reloadable",
    "Reloader",
    "ReloaderStatistics",
    "Rollback",
    "register_reload_messages",
    "start_reloader",
]

logger = logging.getLogger("trioactors.reload")

ACTOR = "$reloader"
DEFAULT_WINDOW = 60.0
"""Seconds a new version is on probation."""
DEFAULT_MAX_ERROR_RATE = 0.05
"""The share of failed messages above which a new version is rolled back."""
DEFAULT_MIN_MESSAGES = 20
"""Messages a new version must have handled before its error rate is judged."""
DEFAULT_RELOAD_SHUTDOWN = 30.0
"""Seconds the old instance gets to finish its message and run ``on_stop``."""
DEFAULT_HISTORY_SIZE = 1000

M = TypeVar("M")
MsgT = TypeVar("MsgT")
Ts = TypeVarTuple("Ts")


# -- errors ------------------------------------------------------------------------------


class ReloadError(TrioactorsError):
    """A reload or rollback was rejected; the version that ran before still runs.

    ``actor`` is the actor's name, ``version`` the version refused, and
    ``record`` its entry in :meth:`Reloader.history` (``None`` if the attempt
    never got that far).

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, actor: str = "", version: str = "") -> None:
        super().__init__(message)
        self.actor = actor
        self.version = version
        self.record: ReloadRecord | None = None


class ReloadImportError(ReloadError, ImportError):
    """The new version's module or file could not be loaded (missing, a syntax
    error, or its top level raised; the cause says which).

    .. versionadded:: 0.1
    """


class InvalidReloadTarget(ReloadError, TypeError):
    """What to load is malformed (not ``"module:Name"`` or ``"file.py:Name"``),
    names nothing, is not callable, or builds something that is not an actor.

    .. versionadded:: 0.1
    """


class MigrationFailed(ReloadError):
    """The state could not be handed over: ``snapshot``, ``migrate`` or
    ``restore`` raised, the snapshot cannot be copied, or a stateful actor's
    new version is not :class:`Reloadable`.

    .. versionadded:: 0.1
    """


class ReloadStartFailed(ReloadError):
    """The new version's factory or its ``on_start`` raised.

    .. versionadded:: 0.1
    """


class NotReloadable(ReloadError, LookupError):
    """No actor of that name was started with :meth:`Reloader.start_reloadable`,
    or it is not running any more.

    .. versionadded:: 0.1
    """


class NoPreviousVersion(ReloadError, LookupError):
    """A rollback was asked for, but there is no version to go back to (the
    actor was never reloaded, or was rolled back since).

    .. versionadded:: 0.1
    """


# -- records -----------------------------------------------------------------------------


class ReloadOutcome(enum.Enum):
    """What became of a reload (see :class:`ReloadRecord`).

    .. versionadded:: 0.1
    """

    RELOADED = "reloaded"
    CONFIRMED = "confirmed"
    ROLLED_BACK = "rolled back"
    REJECTED = "rejected"


@final
@attrs.frozen
class ReloadRecord:
    """One entry of the reload history.

    ``version`` is the version the entry is about: the one reloaded to
    (``RELOADED``, ``CONFIRMED``, a rejected reload) or the one rolled back
    (``ROLLED_BACK``, a rejected rollback). ``before`` and ``after`` are the
    versions running before and after. ``messages`` and ``errors`` count the
    probation (``CONFIRMED``, ``ROLLED_BACK``); ``time`` is on Trio's clock.

    .. versionadded:: 0.1
    """

    name: str
    outcome: ReloadOutcome
    version: str
    before: str
    after: str
    reason: str
    time: float
    messages: int = 0
    errors: int = 0

    @property
    def error_rate(self) -> float | None:
        """``errors / messages``, or ``None`` when no message was counted."""
        return self.errors / self.messages if self.messages else None


@final
@attrs.frozen
class ReloaderStatistics:
    """A snapshot of a :class:`Reloader`'s counters, by outcome.

    .. versionadded:: 0.1
    """

    actors: int
    reloaded: int
    confirmed: int
    rolled_back: int
    automatic_rollbacks: int
    rejected: int
    on_probation: int


# -- what reloadable actors implement ----------------------------------------------------


def _is_plain(value: object, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, bool | int | float | str | bytes | enum.Enum):
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


class Reloadable(Actor[MsgT]):
    """An actor whose state survives a reload to a new version of its code.

    The defaults carry the public attributes that hold plain data (``None``,
    numbers, strings, bytes, enum members, and lists, tuples, sets and dicts
    of them) as they are, which is right while the new version keeps the
    same attributes. Override :meth:`migrate` (and :meth:`downgrade`) when it
    does not. Attributes holding anything else (references, services) are
    not state: ``__init__`` builds them from the child's arguments, as for
    any restart.

    .. versionadded:: 0.1
    """

    def snapshot(self) -> object:
        """This instance's state as plain data (it is deep-copied before use).

        Called on the old instance once it has stopped, and on the running
        one for the dry run. Default: a dict of the public plain-data attributes.
        """
        return {
            k: copy.deepcopy(v)
            for k, v in getattr(self, "__dict__", {}).items()
            if not k.startswith("_") and _is_plain(v)
        }

    def restore(self, state: object) -> None:
        """Take back a snapshot of this same version (after a rejected change,
        or the snapshot taken at the reload when rolling back). Default: set
        the attributes of a dict snapshot."""
        if not isinstance(state, dict):
            raise TypeError(
                f"{type(self).__qualname__}.restore got {type(state).__qualname__}; the "
                "default restores a dict of attributes: override snapshot() and restore()"
            )
        for key, value in state.items():
            setattr(self, str(key), value)

    def migrate(self, state: object, from_version: str) -> None:
        """Take over the state of version ``from_version`` (the state-migration hook).

        Called on a new instance, built by the new version's factory with the
        child's arguments, before its ``on_start``. Raise to reject the reload.
        Default: :meth:`restore` (the same attributes, new code).
        """
        self.restore(state)

    def downgrade(self, to_version: str) -> object:
        """This instance's state in the shape version ``to_version`` expects (for a rollback).

        Raise ``NotImplementedError`` if you cannot: the previous version then
        gets back the snapshot taken at the reload. Default: :meth:`snapshot`
        if :meth:`migrate` is not overridden (the shape did not change), else
        ``NotImplementedError``.
        """
        if type(self).migrate is Reloadable.migrate:
            return self.snapshot()
        raise NotImplementedError


# -- loading code ------------------------------------------------------------------------


def _digest(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _drop_bytecode(path: str) -> None:
    # The bytecode cache is checked against the source's mtime in whole
    # seconds and its size: a file rewritten within a second with the same
    # size would load the old code.
    with contextlib.suppress(OSError, NotImplementedError, ValueError):
        Path(importlib.util.cache_from_source(path)).unlink(missing_ok=True)


def _describe(factory: object) -> str:
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None) or repr(factory)
    return f"{module}:{name}" if module else str(name)


# -- probation -----------------------------------------------------------------------------


@attrs.frozen(eq=False)
class _Version:
    version: str
    factory: object  # callable: called with the child's arguments
    source: str


@attrs.define(eq=False)
class _Watch:
    """The probation of one version: messages and errors, and whether it tripped."""

    version: _Version
    deadline: float
    min_messages: int
    max_error_rate: Fraction
    messages: int = 0
    errors: int = 0
    tripped: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope | None = None  # the probation's wait

    def end(self) -> None:
        """Another change replaced this version: its probation is over, without a verdict."""
        if self.scope is not None:
            self.scope.cancel()

    def count(self, *, failed: bool) -> None:
        if self.tripped.is_set():
            return  # judged: the numbers are those of the verdict
        self.messages += 1
        self.errors += failed
        if (
            self.messages >= self.min_messages
            and Fraction(self.errors, self.messages) > self.max_error_rate
        ):
            self.tripped.set()


# -- the switch: the factory the supervisor holds ------------------------------------------


class _Kind(enum.Enum):
    RELOAD = "reload"
    ROLLBACK = "rollback"


class _Phase(enum.Enum):
    WAITING = "waiting"  # set; the old instance still runs
    APPLIED = "applied"  # the target was built; its on_start runs
    FALLBACK = "fallback"  # the target failed; the version before comes back
    SETTLED = "settled"


@attrs.define(eq=False)
class _Change:
    kind: _Kind
    before: _Version
    target: _Version
    own_state: object  # the running version's snapshot: what a fallback restores
    saved: object = None  # (rollback) the snapshot taken at the reload
    reason: str = ""
    automatic: bool = False
    messages: int = 0
    errors: int = 0
    phase: _Phase = _Phase.WAITING
    notes: list[str] = attrs.Factory(list)
    error: ReloadError | None = None
    record: ReloadRecord | None = None
    settled: trio.Event = attrs.Factory(trio.Event)


@final
class _Switch:
    """The factory the supervisor calls for every start of a reloadable place."""

    def __init__(
        self,
        reloader: Reloader,
        supervisor: Supervisor,
        name: str,
        args: tuple[object, ...],
        current: _Version,
    ) -> None:
        self.reloader = reloader
        self.supervisor = supervisor
        self.name = name
        self.path = f"{supervisor.path}/{name}"
        self.args = args
        self.current = current
        self.previous: _Version | None = None
        self.saved: object = None  # the previous version's snapshot at the reload
        self.actor: Actor[object] | None = None  # the instance built last
        self.change: _Change | None = None
        self.watch: _Watch | None = None
        self.ref: ActorRef[object] | None = None
        self.lock = trio.Lock()
        self.busy = 0  # reloads and rollbacks asked for and not finished
        self.changed = trio.Event()

    def __call__(self) -> Actor[object]:
        change = self.change
        if change is None:  # an ordinary start or restart: fresh, as for any actor
            return self._guard(self._build(self.current), self.current, None)
        match change.phase:
            case _Phase.WAITING:
                return self._apply(change)
            case _Phase.FALLBACK:
                return self._fall_back(change)
            case _Phase.APPLIED | _Phase.SETTLED:
                # Started again before the reload finished (a crash raced it):
                # keep the state of the instance that just ended.
                version = change.target if change.phase is _Phase.APPLIED else self.current
                return self._guard(self._carry(version), version, change)

    def _build(self, version: _Version) -> Actor[object]:
        factory = version.factory
        assert callable(factory)  # (checked by _resolve)
        try:
            actor = factory(*self.args)
        except Exception as exc:
            raise ReloadStartFailed(
                f"{self.path}: building version {version.version!r} ({version.source}) "
                f"raised {exc!r}",
                actor=self.name,
                version=version.version,
            ) from exc
        if not isinstance(actor, Actor):
            raise InvalidReloadTarget(
                f"{self.path}: {version.source} returned {type(actor).__qualname__}, not an "
                "Actor; name an Actor subclass or a function returning a new instance",
                actor=self.name,
                version=version.version,
            )
        return actor

    def _guard(self, actor: Actor[object], version: _Version, change: _Change | None) -> _Guard:
        self.actor = actor
        return _Guard(self, actor, version, change)

    def _snapshot(self, change: _Change) -> None:
        old = self.actor
        if isinstance(old, Reloadable):
            try:
                change.own_state = copy.deepcopy(old.snapshot())
            except Exception as exc:
                change.notes.append(
                    f"the final snapshot raised {exc!r}: the one taken before the stop was used"
                )

    def _apply(self, change: _Change) -> _Guard:
        old = self.actor
        self._snapshot(change)
        try:
            new = self._build(change.target)
            if change.kind is _Kind.RELOAD:
                self._migrate(change, new)
            else:
                new = self._take_back(change, old, new)
        except ReloadError as exc:
            change.error = exc
            change.phase = _Phase.FALLBACK
            return self._fall_back(change)
        change.phase = _Phase.APPLIED
        return self._guard(new, change.target, change)

    def _migrate(self, change: _Change, new: Actor[object]) -> None:
        state, old, target = change.own_state, change.before.version, change.target.version
        if state is None:
            return
        if not isinstance(new, Reloadable):
            raise MigrationFailed(
                f"{self.path}: version {target!r} is not Reloadable, so it cannot take over "
                f"the state of version {old!r}; subclass trioactors.Reloadable",
                actor=self.name,
                version=target,
            )
        try:
            new.migrate(copy.deepcopy(state), old)
        except Exception as exc:
            raise MigrationFailed(
                f"{self.path}: version {target!r} could not migrate the state of version "
                f"{old!r}: {exc!r}",
                actor=self.name,
                version=target,
            ) from exc

    def _take_back(
        self, change: _Change, old: Actor[object] | None, new: Actor[object]
    ) -> Actor[object]:
        """(rollback) Give the previous version its state back; return the instance."""
        bad, target = change.before.version, change.target.version
        if not isinstance(new, Reloadable):
            change.notes.append(f"version {target!r} is not Reloadable: it starts fresh")
            return new
        candidates: list[tuple[str, object]] = []
        if isinstance(old, Reloadable):
            try:
                candidates.append(
                    (f"handed back by version {bad!r}", copy.deepcopy(old.downgrade(target)))
                )
            except NotImplementedError:
                pass
            except Exception as exc:
                change.notes.append(f"version {bad!r}'s downgrade raised {exc!r}")
        if change.saved is not None:
            candidates.append(("as it was at the reload", change.saved))
        if not candidates:
            change.notes.append("no state to take back: it starts fresh")
            return new
        for how, state in candidates:
            try:
                new.restore(copy.deepcopy(state))
            except Exception as exc:
                change.notes.append(f"restoring the state {how} raised {exc!r}")
                rebuilt = self._build(change.target)  # (restore may have half-done its work)
                if not isinstance(rebuilt, Reloadable):
                    return rebuilt
                new = rebuilt
            else:
                change.notes.append(f"state {how}")
                return new
        raise MigrationFailed(
            f"{self.path}: version {target!r} could not take back any state",
            actor=self.name,
            version=bad,
        )

    def _fall_back(self, change: _Change) -> _Guard:
        """The change failed: the version that ran before, with its own state."""
        actor = self._build(change.before)
        state = change.own_state
        if state is not None and isinstance(actor, Reloadable):
            try:
                actor.restore(copy.deepcopy(state))
            except Exception as exc:
                change.notes.append(f"it could not restore its own state ({exc!r}): fresh")
                actor = self._build(change.before)
        return self._guard(actor, change.before, change)

    def _carry(self, version: _Version) -> Actor[object]:
        actor, old = self._build(version), self.actor
        if isinstance(actor, Reloadable) and isinstance(old, Reloadable):
            try:
                actor.restore(copy.deepcopy(old.snapshot()))
            except Exception:
                logger.exception("%s: could not carry the state over a restart", self.path)
                actor = self._build(version)
        return actor

    # -- called by the guard, in the actor's task ---------------------------------------

    def _started(self, guard: _Guard) -> None:
        change = guard.change
        if change is not None and self.change is change and change.phase is not _Phase.SETTLED:
            self.reloader._settle(self, change)

    def _start_failed(self, guard: _Guard, exc: Exception) -> None:
        change = guard.change
        if change is None or self.change is not change:
            return
        if change.phase is _Phase.APPLIED and guard.version is change.target:
            error = ReloadStartFailed(
                f"{self.path}: version {change.target.version!r} failed to start: {exc!r}",
                actor=self.name,
                version=change.target.version,
            )
            error.__cause__ = exc
            change.error = error
            change.phase = _Phase.FALLBACK  # this crash's restart brings the old version back
        elif change.phase is _Phase.FALLBACK:
            change.notes.append(
                f"version {change.before.version!r} failed to start again too ({exc!r}); "
                "its supervisor restarts it"
            )
            self.reloader._settle(self, change)


class _Guard(Actor[object]):
    """The instance the runtime runs: one version's actor inside, its messages counted."""

    def __init__(
        self, switch: _Switch, inner: Actor[object], version: _Version, change: _Change | None
    ) -> None:
        self.switch = switch
        self.inner = inner
        self.version = version
        self.change = change

    def __repr__(self) -> str:
        return f"<{type(self.inner).__qualname__} version {self.version.version!r}>"

    async def on_start(self) -> None:
        self.inner._context = self.context
        try:
            await self.inner.on_start()
        except Exception as exc:
            self.switch._start_failed(self, exc)
            raise
        self.switch._started(self)

    async def on_stop(self) -> None:
        await self.inner.on_stop()

    async def receive(self, message: object) -> object:
        watch = self.switch.watch
        if watch is None or watch.version is not self.version:
            return await self.inner.receive(message)
        try:
            result = await self.inner.receive(message)
        except Exception:
            watch.count(failed=True)
            raise
        watch.count(failed=False)
        return result


# -- the service ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Operation:
    done: trio.Event = attrs.Factory(trio.Event)
    record: ReloadRecord | None = None
    error: Exception | None = None


@final
class Reloader:
    """A node's reloader; from :func:`start_reloader`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        *,
        name: str,
        failures: FailureSupervisor | None,
        window: float,
        max_error_rate: float,
        min_messages: int,
        history_size: int,
    ) -> None:
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a finite number of seconds > 0, not {window!r}")
        if not 0 <= max_error_rate < 1:
            raise ValueError(f"max_error_rate must be >= 0 and < 1, not {max_error_rate!r}")
        if isinstance(min_messages, bool) or not isinstance(min_messages, int) or min_messages < 1:
            raise ValueError(f"min_messages must be a whole number >= 1, not {min_messages!r}")
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, not {history_size!r}")
        self.node = node
        self.name = name
        self.failures = failures
        self.window = window
        self.max_error_rate = max_error_rate
        self.min_messages = min_messages
        self._switches: dict[str, _Switch] = {}
        self._history: deque[ReloadRecord] = deque(maxlen=history_size)
        self._counts = dict.fromkeys(ReloadOutcome, 0)
        self._automatic = 0
        self._actor: _ReloaderActor | None = None
        self._digests: dict[str, str | None] = {}  # module name -> source digest when loaded
        self._files: dict[str, tuple[str, types.ModuleType]] = {}  # path -> (digest, module)

    def __repr__(self) -> str:
        return f"<Reloader {self.name}@{self.node.name} actors={len(self._switches)}>"

    # -- public --------------------------------------------------------------------------

    @overload
    async def start_reloadable(
        self,
        supervisor: Supervisor,
        factory: Callable[[*Ts], Actor[M]],
        *args: *Ts,
        name: str,
        version: str = ...,
        restart: Restart = ...,
        shutdown: float = ...,
        mailbox_size: float | None = ...,
        start_timeout: float = ...,
    ) -> ActorRef[M]: ...
    @overload
    async def start_reloadable(
        self,
        supervisor: Supervisor,
        factory: str,
        *args: object,
        name: str,
        version: str = ...,
        restart: Restart = ...,
        shutdown: float = ...,
        mailbox_size: float | None = ...,
        start_timeout: float = ...,
    ) -> ActorRef[object]: ...
    async def start_reloadable(
        self,
        supervisor: Supervisor,
        factory: object,
        *args: object,
        name: str,
        version: str = "1",
        restart: Restart = Restart.PERMANENT,
        shutdown: float = DEFAULT_RELOAD_SHUTDOWN,
        mailbox_size: float | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> ActorRef[object]:
        """Start ``factory(*args)`` as child ``name`` of ``supervisor``, reloadable by name.

        As :meth:`Supervisor.start_actor`, except that ``factory`` may also be
        ``"package.module:Name"`` or ``"/path/to/file.py:Name"``, ``version``
        names what runs, and ``shutdown`` (the graceful stop of an old
        instance at a reload) defaults to 30 s. Every version is built with
        the same ``args``.

        Raises:
          StartFailed, NameTaken: as ``start_actor``.
          ReloadImportError, InvalidReloadTarget: ``factory`` cannot be loaded.
        """
        fn, source = self._resolve(factory, name, version)
        switch = _Switch(self, supervisor, name, args, _Version(version, fn, source))
        ref = await supervisor.start_actor(
            switch,
            name=name,
            restart=restart,
            shutdown=shutdown,
            mailbox_size=mailbox_size,
            start_timeout=start_timeout,
        )
        switch.ref = ref
        self._switches[name] = switch
        logger.info("%s: started version %r (%s)", switch.path, version, source)
        return ref

    async def reload(
        self, name: str, factory: Callable[[*Ts], Actor[M]] | str, *, version: str
    ) -> ReloadRecord:
        """Replace actor ``name``'s code with ``factory`` (see the module documentation).

        ``factory`` is ``"package.module:Name"`` (re-imported if its file
        changed), ``"/path/to/file.py:Name"``, or a callable; it is called
        with the arguments the actor was started with. Returns once the new
        version runs, with its ``RELOADED`` record; it is then on probation.

        Raises:
          ReloadError: rejected (a subclass says why); the old version runs.
        """
        switch = self._switch(name)

        async def work() -> ReloadRecord:
            return await self._reload(switch, factory, version)

        return await self._submit(switch, work)

    async def rollback(self, name: str) -> ReloadRecord:
        """Go back to the version that ran before the last reload of ``name``.

        Returns the ``ROLLED_BACK`` record.

        Raises:
          NoPreviousVersion: there is nothing to go back to.
          ReloadError: the rollback was rejected; the current version runs.
        """
        switch = self._switch(name)

        async def work() -> ReloadRecord:
            record = await self._rollback(switch, "rolled back on request")
            assert record is not None
            return record

        return await self._submit(switch, work)

    def current(self, name: str) -> str:
        """The version actor ``name`` runs.

        Raises:
          NotReloadable: no such reloadable actor.
        """
        return self._switch(name).current.version

    def previous(self, name: str) -> str | None:
        """The version a rollback of ``name`` would go back to, if any."""
        return None if (p := self._switch(name).previous) is None else p.version

    def on_probation(self, name: str) -> bool:
        """Whether ``name``'s current version is still on probation."""
        return self._switch(name).watch is not None

    def history(self, name: str | None = None) -> list[ReloadRecord]:
        """The reload records (of actor ``name``, if given), oldest first; the newest kept."""
        return [r for r in self._history if name is None or r.name == name]

    async def wait_settled(self, name: str) -> ReloadRecord | None:
        """Wait until no reload or rollback of ``name`` runs and its probation is over.

        Returns its newest record (``None`` if it has none).
        """
        switch = self._switch(name)
        await trio.lowlevel.checkpoint()
        while switch.watch is not None or switch.busy:
            await switch.changed.wait()
        found = self.history(name)
        return found[-1] if found else None

    def statistics(self) -> ReloaderStatistics:
        """A snapshot of the reloader's counters, by outcome."""
        return ReloaderStatistics(
            actors=len(self._switches),
            reloaded=self._counts[ReloadOutcome.RELOADED],
            confirmed=self._counts[ReloadOutcome.CONFIRMED],
            rolled_back=self._counts[ReloadOutcome.ROLLED_BACK],
            automatic_rollbacks=self._automatic,
            rejected=self._counts[ReloadOutcome.REJECTED],
            on_probation=sum(s.watch is not None for s in self._switches.values()),
        )

    # -- operations (in the reloader's task) ------------------------------------------------

    def _switch(self, name: str) -> _Switch:
        switch = self._switches.get(name)
        if switch is not None:
            try:
                alive = switch.supervisor.child(name).ref is switch.ref
            except LookupError:
                alive = False
            if alive:
                return switch
            del self._switches[name]
        raise NotReloadable(
            f"no running actor named {name!r} was started with this reloader; "
            "start it with Reloader.start_reloadable()",
            actor=name,
        )

    def _spawn(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> None:
        actor = self._actor
        if actor is None:
            raise RuntimeError(f"{self!r} is not running")
        actor.context.start_soon(fn, *args)

    async def _submit(
        self, switch: _Switch, work: Callable[[], Awaitable[ReloadRecord]]
    ) -> ReloadRecord:
        # The work runs in the reloader's task: a caller that gives up waiting
        # (cancelled) never leaves a reload half done.
        op = _Operation()

        async def run() -> None:
            try:
                op.record = await work()
            except Exception as exc:
                op.error = exc
            finally:
                if op.record is None and op.error is None:
                    op.error = ReloadError(
                        f"{switch.path}: the reloader stopped during the change", actor=switch.name
                    )
                switch.busy -= 1
                self._changed(switch)
                op.done.set()

        switch.busy += 1
        try:
            self._spawn(run)
        except BaseException:
            switch.busy -= 1
            raise
        await op.done.wait()
        if op.error is not None:
            raise op.error
        assert op.record is not None
        return op.record

    async def _reload(self, switch: _Switch, factory: object, version: str) -> ReloadRecord:
        async with switch.lock:
            before = switch.current
            try:
                if not version:
                    raise InvalidReloadTarget(
                        f"version must be a non-empty string, not {version!r}",
                        actor=switch.name,
                    )
                fn, source = self._resolve(factory, switch.name, version)
                target = _Version(version, fn, source)
                state = self._dry_run(switch, before, target)
            except ReloadError as exc:
                self._reject(switch, version, before, exc)
            change = _Change(_Kind.RELOAD, before, target, own_state=state)
            return await self._carry_out(switch, change)

    async def _rollback(
        self, switch: _Switch, reason: str, watch: _Watch | None = None
    ) -> ReloadRecord | None:
        """Roll back; ``watch``: automatically, for that probation (None if superseded)."""
        async with switch.lock:
            if watch is not None and switch.watch is not watch:
                return None  # superseded by another change meanwhile
            current, previous = switch.current, switch.previous
            if previous is None:
                raise NoPreviousVersion(
                    f"{switch.path} runs version {current.version!r} and has no previous "
                    "version to roll back to (it was never reloaded, or rolled back since)",
                    actor=switch.name,
                    version=current.version,
                )
            own: object = None
            if isinstance(switch.actor, Reloadable):
                try:
                    own = copy.deepcopy(switch.actor.snapshot())
                except Exception as exc:
                    logger.warning("%s: snapshot() raised %r", switch.path, exc)
            watched = switch.watch
            change = _Change(
                _Kind.ROLLBACK,
                current,
                previous,
                own_state=own,
                saved=switch.saved,
                reason=reason,
                automatic=watch is not None,
                messages=0 if watched is None else watched.messages,
                errors=0 if watched is None else watched.errors,
            )
            return await self._carry_out(switch, change)

    def _dry_run(self, switch: _Switch, before: _Version, target: _Version) -> object:
        """Build the new version and migrate the live state into it; return that state."""
        trial = switch._build(target)
        old = switch.actor
        if not isinstance(old, Reloadable):
            return None
        try:
            state = copy.deepcopy(old.snapshot())
        except Exception as exc:
            raise MigrationFailed(
                f"{switch.path}: version {before.version!r}'s snapshot() raised or is not "
                f"copyable: {exc!r}",
                actor=switch.name,
                version=target.version,
            ) from exc
        change = _Change(_Kind.RELOAD, before, target, own_state=state)
        switch._migrate(change, trial)
        return state

    async def _carry_out(self, switch: _Switch, change: _Change) -> ReloadRecord:
        switch.change = change
        try:
            with self.node.system.subscribe() as events:
                restarted = await switch.supervisor.restart_child(switch.name)
                if not restarted and change.phase is _Phase.WAITING:
                    subject = change.target if change.kind is _Kind.RELOAD else change.before
                    error = NotReloadable(
                        f"{switch.path} is not running", actor=switch.name, version=subject.version
                    )
                    self._reject(switch, subject.version, change.before, error)
                await self._wait_settled(change, events, switch)
        finally:
            if switch.change is change:
                switch.change = None
        if not change.settled.is_set():  # the actor is gone for good: it never will
            if change.error is None:
                change.error = NotReloadable(
                    f"{switch.path} stopped for good during the change",
                    actor=switch.name,
                    version=change.target.version,
                )
            change.notes.append("the actor is gone")
            self._settle(switch, change)
        if change.error is not None:
            raise change.error
        assert change.record is not None
        return change.record

    async def _wait_settled(self, change: _Change, events: Subscription, switch: _Switch) -> None:
        """Until the change settles, or the child is gone for good (then it never will)."""
        if change.settled.is_set():
            await trio.lowlevel.checkpoint()
            return
        path = switch.path

        async def until_gone(cancel: trio.CancelScope) -> None:
            async for event in events:
                match event:
                    case EventsLost():
                        try:
                            switch.supervisor.child(switch.name)
                        except LookupError:
                            break
                    case ChildStopped(p, reason) if reason != "shutdown" and (
                        p == path or path.startswith(p + "/")
                    ):
                        break
                    case SupervisorEscalated(p) if path.startswith(p + "/"):
                        break
                    case _:
                        pass
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_gone, nursery.cancel_scope)
            await change.settled.wait()
            nursery.cancel_scope.cancel()

    async def _probation(self, switch: _Switch, watch: _Watch) -> None:
        with trio.CancelScope(deadline=watch.deadline) as watch.scope:
            await watch.tripped.wait()
        if switch.watch is not watch:
            return  # superseded by another change
        if watch.tripped.is_set():
            reason = (
                f"error rate {watch.errors / watch.messages:.1%} > {self.max_error_rate:.1%} "
                f"over {watch.messages} messages within {self.window:g} s of the reload"
            )
            try:
                await self._rollback(switch, reason, watch)
            except ReloadError as exc:
                logger.error("%s: the automatic rollback failed: %s", switch.path, exc)
            if switch.watch is watch:  # (the rollback was rejected: the verdict stands)
                switch.watch = None
                self._changed(switch)
            return
        switch.watch = None
        judged = watch.messages >= self.min_messages
        self._add(
            switch,
            ReloadRecord(
                switch.name,
                ReloadOutcome.CONFIRMED,
                watch.version.version,
                watch.version.version,
                watch.version.version,
                f"probation of {self.window:g} s over"
                + ("" if judged else f" (only {watch.messages} messages: too few to judge)"),
                trio.current_time(),
                watch.messages,
                watch.errors,
            ),
        )

    # -- bookkeeping ---------------------------------------------------------------------------

    def _settle(self, switch: _Switch, change: _Change) -> None:
        """A change is over (in the actor's task): record it, start the probation."""
        change.phase = _Phase.SETTLED
        now = trio.current_time()
        notes = "".join(f"; {note}" for note in change.notes)
        before, target = change.before, change.target
        if change.error is not None:
            subject = target if change.kind is _Kind.RELOAD else before
            what = "reload" if change.kind is _Kind.RELOAD else f"rollback to {target.version!r}"
            record = ReloadRecord(
                switch.name,
                ReloadOutcome.REJECTED,
                subject.version,
                before.version,
                before.version,
                f"{what} failed: {change.error}{notes}",
                now,
            )
            change.error.record = record
        elif change.kind is _Kind.RELOAD:
            if switch.watch is not None:
                switch.watch.end()
            switch.previous, switch.saved, switch.current = before, change.own_state, target
            watch = _Watch(
                target, now + self.window, self.min_messages, Fraction(self.max_error_rate)
            )
            switch.watch = watch
            with contextlib.suppress(RuntimeError):  # (if restarting, $reloader takes it up)
                self._spawn(self._probation, switch, watch)
            state = "state migrated" if change.own_state is not None else "no state carried"
            record = ReloadRecord(
                switch.name,
                ReloadOutcome.RELOADED,
                target.version,
                before.version,
                target.version,
                f"{target.source}; {state}{notes}",
                now,
            )
        else:
            if switch.watch is not None and not change.automatic:
                switch.watch.end()
            switch.current, switch.previous, switch.saved, switch.watch = target, None, None, None
            record = ReloadRecord(
                switch.name,
                ReloadOutcome.ROLLED_BACK,
                before.version,
                before.version,
                target.version,
                f"{change.reason}{notes}",
                now,
                change.messages,
                change.errors,
            )
            if change.automatic:
                self._automatic += 1
                if self.failures is not None:
                    self.failures.report(
                        HealthGaveUp(
                            switch.path,
                            0,
                            self.window,
                            f"hot reload of version {before.version!r} rolled back to "
                            f"{target.version!r}: {record.reason}",
                        )
                    )
        change.record = record
        self._add(switch, record)
        change.settled.set()

    def _reject(
        self, switch: _Switch, version: str, before: _Version, error: ReloadError
    ) -> NoReturn:
        record = ReloadRecord(
            switch.name,
            ReloadOutcome.REJECTED,
            version,
            before.version,
            before.version,
            str(error),
            trio.current_time(),
        )
        error.record = record
        self._add(switch, record)
        raise error

    def _add(self, switch: _Switch, record: ReloadRecord) -> None:
        self._history.append(record)
        self._counts[record.outcome] += 1
        level = logging.INFO
        if record.outcome in (ReloadOutcome.REJECTED, ReloadOutcome.ROLLED_BACK):
            level = logging.WARNING
        logger.log(
            level,
            "%s: %s version %r (%s -> %s): %s",
            switch.path,
            record.outcome.value,
            record.version,
            record.before,
            record.after,
            record.reason,
        )
        self._changed(switch)

    def _changed(self, switch: _Switch) -> None:
        switch.changed.set()
        switch.changed = trio.Event()

    # -- loading -------------------------------------------------------------------------------

    def _resolve(self, target: object, actor: str, version: str) -> tuple[object, str]:
        if not isinstance(target, str):
            if not callable(target):
                raise InvalidReloadTarget(
                    f"{target!r} is neither callable nor a 'module:Name' string",
                    actor=actor,
                    version=version,
                )
            return target, _describe(target)
        where, _, attr = target.rpartition(":")
        if not where or not attr or not all(p.isidentifier() for p in attr.split(".")):
            raise InvalidReloadTarget(
                f"{target!r}: name what to load as 'package.module:Name' or "
                "'/path/to/file.py:Name'",
                actor=actor,
                version=version,
            )
        try:
            if where.endswith(".py") or "/" in where or "\\" in where:
                module = self._load_file(where)
            else:
                module = self._load_module(where)
        except ReloadImportError as exc:
            exc.actor, exc.version = actor, version
            raise
        obj: object = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise InvalidReloadTarget(
                    f"{target!r}: {where} has no {attr!r}", actor=actor, version=version
                ) from None
        if not callable(obj):
            raise InvalidReloadTarget(
                f"{target!r} is a {type(obj).__qualname__}, not an Actor class or a function "
                "returning one",
                actor=actor,
                version=version,
            )
        return obj, target

    def _load_module(self, name: str) -> types.ModuleType:
        importlib.invalidate_caches()
        module = sys.modules.get(name)
        if module is None:
            try:
                spec = importlib.util.find_spec(name)
                digest = _digest(None if spec is None else spec.origin)
                module = importlib.import_module(name)
            except Exception as exc:
                raise ReloadImportError(f"cannot import {name!r}: {exc!r}") from exc
            self._digests[name] = digest
            return module
        origin = getattr(module, "__file__", None)
        digest = _digest(origin)
        if origin is None or (name in self._digests and self._digests[name] == digest):
            return module  # unchanged (or not from a file)
        saved = dict(module.__dict__)
        _drop_bytecode(origin)
        try:
            module = importlib.reload(module)
        except Exception as exc:
            module.__dict__.clear()
            module.__dict__.update(saved)
            sys.modules[name] = module
            raise ReloadImportError(f"cannot reload {name!r}: {exc!r}") from exc
        self._digests[name] = digest
        return module

    def _load_file(self, where: str) -> types.ModuleType:
        path = Path(where).expanduser().resolve()
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise ReloadImportError(f"cannot read {str(path)!r}: {exc!r}") from exc
        digest = hashlib.sha256(source).hexdigest()
        known = self._files.get(str(path))
        if known is not None and known[0] == digest:
            return known[1]
        stem = re.sub(r"\W", "_", path.stem)
        name = f"trioactors_reload_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        module = types.ModuleType(name)
        module.__file__ = str(path)
        old = sys.modules.get(name)
        sys.modules[name] = module  # (attrs and typing look modules up by name)
        try:
            exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
        except Exception as exc:
            if old is None:
                del sys.modules[name]
            else:
                sys.modules[name] = old
            raise ReloadImportError(f"cannot load {str(path)!r}: {exc!r}") from exc
        self._files[str(path)] = (digest, module)
        return module


# -- the actor ---------------------------------------------------------------------------


@final
@attrs.frozen
class Reload(Request[ReloadRecord]):
    """Ask a node's ``$reloader`` to reload actor ``name`` from ``target``
    (``"package.module:Name"`` or ``"/path/to/file.py:Name"``) as ``version``.
    The answer is the ``RELOADED`` record; a rejected reload is an error.

    .. versionadded:: 0.1
    """

    name: str
    target: str
    version: str


@final
@attrs.frozen
class Rollback(Request[ReloadRecord]):
    """Ask a node's ``$reloader`` to roll actor ``name`` back.

    .. versionadded:: 0.1
    """

    name: str


@final
@attrs.frozen
class ReloadHistory:
    """The answer to :class:`ListReloads`: records, oldest first.

    .. versionadded:: 0.1
    """

    records: list[ReloadRecord]


@final
@read_only
@attrs.frozen
class ListReloads(Request[ReloadHistory]):
    """Ask a node's ``$reloader`` for its history (of ``name``, if given): a
    read-only query.

    .. versionadded:: 0.1
    """

    name: str | None = None


_CLASSES: tuple[type, ...] = (Reload, Rollback, ListReloads, ReloadRecord, ReloadHistory)


def register_reload_messages(registry: MessageRegistry) -> None:
    """Register the ``$reloader.*`` messages (done by :func:`start_reloader`).

    .. versionadded:: 0.1
    """
    _register_service_messages(registry, "$reloader", _CLASSES)


class _ReloaderActor(Actor[object]):
    """Owns the reloads, rollbacks and probations; answers the remote requests."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    async def receive(self, message: object) -> object:
        reloader = self.reloader
        match message:
            case ListReloads(name):
                return ReloadHistory(reloader.history(name))
            case Reload(name, target, version):
                self.context.start_soon(
                    _answer,
                    self.context.reply_later(),
                    reloader.reload(name, target, version=version),
                )
            case Rollback(name):
                self.context.start_soon(
                    _answer, self.context.reply_later(), reloader.rollback(name)
                )
            case _:
                return await super().receive(message)
        return None

    async def on_start(self) -> None:
        reloader = self.reloader
        reloader._actor = self
        for switch in list(reloader._switches.values()):
            if switch.watch is not None:  # (this actor restarted: take the probation up again)
                self.context.start_soon(reloader._probation, switch, switch.watch)


async def _answer(reply: ReplyTo | None, work: Coroutine[object, object, ReloadRecord]) -> None:
    try:
        record = await work
    except TrioactorsError as exc:
        if reply is not None:
            reply.fail(exc)  # (the asker gets the reason; the actor carries on)
        return
    if reply is not None:
        reply.succeed(record)


async def start_reloader(
    node: Node,
    *,
    failures: FailureSupervisor | None = None,
    window: float = DEFAULT_WINDOW,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    min_messages: int = DEFAULT_MIN_MESSAGES,
    history_size: int = DEFAULT_HISTORY_SIZE,
    name: str = ACTOR,
) -> Reloader:
    """Start the node's reloader, ``$reloader``, under ``node.root``.

    Args:
      failures: the node's failure supervisor: an automatic rollback is
        reported to it (:class:`~trioactors.HealthGaveUp`, ``recoveries=0``).
      window: seconds a new version is on probation.
      max_error_rate: the share of failed messages (0 to 1) above which a
        new version on probation is rolled back.
      min_messages: messages counted before the error rate is judged.
      history_size: how many records are kept.
      name: the actor's name.

    Returns:
      The :class:`Reloader`: ``start_reloadable()``, ``reload()``, ``rollback()``, ...

    Raises:
      NameTaken: the node already runs an actor called ``name``.
      ValueError: a parameter is out of range.

    .. versionadded:: 0.1
    """
    reloader = Reloader(
        node,
        name=name,
        failures=failures,
        window=window,
        max_error_rate=max_error_rate,
        min_messages=min_messages,
        history_size=history_size,
    )
    register_reload_messages(node.codec.registry)
    await node.root.start_actor(_ReloaderActor, reloader, name=name)
    return reloader
