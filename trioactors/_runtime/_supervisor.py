"""Supervisors: a Trio nursery whose children are actors and other supervisors.

Each supervisor instance runs one *manager* task. Child tasks never decide
anything: when one ends on its own it posts an exit to the manager's control
channel, and the manager asks the pure :class:`SupervisionPolicy` what to do
and carries out the actions one after another. Stop requests travel through
the same channel, so decisions are strictly sequential.

A child's *slot* outlives its instances: it owns the actor's mailbox (through
its place) or the nested :class:`Supervisor` object, its restart count, and
its state. Restarting a nested supervisor restarts the children in its slots,
dynamically added ones included, and their mailboxes stay as they were.
"""

from __future__ import annotations

import enum
import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, final

import attrs
import trio

from .._core._supervision import (
    Action,
    Backoff,
    GiveUp,
    RemoveChildren,
    Restart,
    StartChildren,
    StopChildren,
    Strategy,
    SupervisionPolicy,
)
from .._errors import (
    LocalProtocolError,
    NameTaken,
    StartFailed,
    SupervisorGaveUp,
)
from ._actor import Actor, ActorRef, _Place
from ._instance import DEFAULT_SHUTDOWN, DEFAULT_START_TIMEOUT, _Instance, _run_actor
from ._system import (
    ActorSystem,
    ChildCrashed,
    ChildRestarted,
    ChildStarted,
    ChildStopped,
    EventsLost,
    SupervisorEscalated,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

__all__ = [
    "DEFAULT_SHUTDOWN",
    "DEFAULT_START_TIMEOUT",
    "ChildInfo",
    "ChildState",
    "Supervisor",
]

logger = logging.getLogger("trioactors")

M = TypeVar("M")
Ts = TypeVarTuple("Ts")


class ChildState(enum.Enum):
    """Where a child is in its life.

    .. versionadded:: 0.1
    """

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


@final
@attrs.frozen
class ChildInfo:
    """A snapshot of one child of a supervisor (see ``Supervisor.children()``)."""

    name: str
    path: str
    kind: str  # "actor" or "supervisor"
    state: ChildState
    restart: Restart
    restarts: int
    mailbox_length: int
    ref: ActorRef[object] | None
    supervisor: Supervisor | None


@attrs.define(eq=False)
class _Slot:
    name: str
    path: str
    restart: Restart
    shutdown: float
    start_timeout: float
    factory: Callable[[], Actor[object]] | None = None
    place: _Place | None = None
    supervisor: Supervisor | None = None
    state: ChildState = ChildState.STARTING
    finished: bool = False  # ended normally and is not to be restarted
    restarts: int = 0
    generation: int = 0
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None
    instance: _Instance | None = None

    @property
    def kind(self) -> str:
        return "actor" if self.place is not None else "supervisor"


@attrs.frozen
class _Exited:
    slot: _Slot
    generation: int
    exception: Exception | None
    message: object


@attrs.frozen
class _Decided:
    """A decision made in the child's task (see _decide_in_place), to carry out."""

    slot: _Slot
    exception: Exception | None
    actions: list[Action]


@attrs.frozen
class _StopRequested:
    pass


_Control = _Exited | _Decided | _StopRequested


@final
class Supervisor:
    """A node of the supervision tree: starts children, restarts them, gives up.

    Do not construct it: use :func:`open_supervisor` for a root,
    :meth:`start_supervisor` for a nested one.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        system: ActorSystem,
        name: str,
        path: str,
        *,
        strategy: Strategy,
        intensity: int,
        period: float,
        backoff: Backoff | None,
    ) -> None:
        SupervisionPolicy(strategy, intensity=intensity, period=period)  # validate early
        self.system = system
        self.name = name
        self.path = path
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.backoff = backoff
        self._slots: dict[str, _Slot] = {}
        self._policy = SupervisionPolicy(strategy, intensity=intensity, period=period)
        self._control: trio.MemorySendChannel[_Control] | None = None
        self._nursery: trio.Nursery | None = None
        self._finished: trio.Event | None = None
        self._stopping = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<Supervisor {self.path} {self.strategy.value} children={len(self._slots)}>"

    # -- public API ----------------------------------------------------------------

    async def start_actor(
        self,
        factory: Callable[[*Ts], Actor[M]],
        *args: *Ts,
        name: str | None = None,
        restart: Restart = Restart.PERMANENT,
        shutdown: float = DEFAULT_SHUTDOWN,
        mailbox_size: float | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> ActorRef[M]:
        """Start an actor as the last child and return a reference to it.

        ``factory(*args)`` must return a new :class:`Actor`; it is called again
        for every restart. Returns once the actor's ``on_start`` has finished.

        Args:
          name: registered name, unique in the system (default: generated).
          restart: when to restart it (default ``PERMANENT``).
          shutdown: seconds it gets to stop gracefully before being cancelled
            (default 5; 0 cancels at once; ``math.inf`` waits forever).
          mailbox_size: capacity of its mailbox (default: the system's, 1000).
          start_timeout: seconds ``on_start`` may take (default 5).

        Raises:
          StartFailed: ``on_start`` raised or timed out; nothing was added.
          NameTaken: ``name`` is already registered.
        """
        self._check_open()
        if name is None:
            base = getattr(factory, "__name__", "actor").lower()
            name = self.system._auto_name(base)
        self._check_new_child(name)
        place = _Place(
            self.system,
            name,
            self._child_path(name),
            self.system.mailbox_size if mailbox_size is None else mailbox_size,
        )
        self.system._register(place)
        slot = _Slot(
            name,
            place.path,
            restart,
            shutdown,
            start_timeout,
            factory=_bind(factory, args),
            place=place,
        )
        try:
            await self._start_new(slot)
        except BaseException:
            self.system._unregister(place)
            raise
        ref: ActorRef[M] = place.ref  # contravariant: ActorRef[object] accepts any M
        return ref

    async def start_supervisor(
        self,
        *,
        name: str,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 1,
        period: float = 5.0,
        backoff: Backoff | None = None,
        restart: Restart = Restart.PERMANENT,
        shutdown: float = math.inf,
    ) -> Supervisor:
        """Start a nested supervisor as the last child and return it.

        Add children to it with its own :meth:`start_actor`. The returned
        object stays valid across its restarts; a restart starts its children
        again in order (as they were, including those added later).
        """
        self._check_open()
        self._check_new_child(name)
        child = Supervisor(
            self.system,
            name,
            self._child_path(name),
            strategy=strategy,
            intensity=intensity,
            period=period,
            backoff=backoff,
        )
        slot = _Slot(name, child.path, restart, shutdown, math.inf, supervisor=child)
        await self._start_new(slot)
        return child

    async def stop_child(self, name: str) -> None:
        """Stop a child gracefully and remove it (its name becomes free)."""
        slot = self._slots.get(name)
        if slot is None:
            raise LocalProtocolError(f"{self.path} has no child named {name!r}")
        await self._stop_slot(slot)
        self._policy.child_removed(name)
        self._remove(slot, "removed")

    async def restart_child(self, name: str) -> bool:
        """Stop child ``name`` gracefully and start it again in its place.

        As OTP's ``terminate_child`` followed by ``restart_child``, carried out
        by this supervisor in order with its own decisions; an operator's
        restart does not count against the restart intensity. The mailbox,
        what is queued in it and every reference stay. Returns once the child
        runs again; False if there is no such child, it is stopped, or it was
        removed before its turn.

        .. versionadded:: 0.1
        """
        slot = self._slots.get(name)
        control = self._control
        if slot is None or control is None or self._stopping or slot.state is ChildState.STOPPED:
            await trio.lowlevel.checkpoint()
            return False
        generation = slot.generation
        with self.system.subscribe() as events:
            actions: list[Action] = [StopChildren((slot.name,)), StartChildren((slot.name,))]
            control.send_nowait(_Decided(slot, None, actions))
            async for event in events:
                match event:
                    case ChildRestarted(path) if path == slot.path:
                        return True
                    case ChildStopped(path, "removed") if path == slot.path:
                        return False
                    case EventsLost() if slot.generation > generation:
                        return slot.state is ChildState.RUNNING  # (the event may be lost)
                    case _:
                        pass
        raise AssertionError("unreachable: a subscription never ends")

    def children(self) -> list[ChildInfo]:
        """Every child in start order, with its state and restart count."""
        return [
            ChildInfo(
                name=s.name,
                path=s.path,
                kind=s.kind,
                state=s.state,
                restart=s.restart,
                restarts=s.restarts,
                mailbox_length=0 if s.place is None else len(s.place.mailbox),
                ref=None if s.place is None else s.place.ref,
                supervisor=s.supervisor,
            )
            for s in self._slots.values()
        ]

    def child(self, name: str) -> ChildInfo:
        """The :class:`ChildInfo` of one child by name."""
        for info in self.children():
            if info.name == name:
                return info
        raise LookupError(f"{self.path} has no child named {name!r}")

    def dump(self, indent: str = "") -> str:
        """A text picture of this subtree (for debugging a stuck tree)."""
        lines = [
            f"{indent}{self.path} [{self.strategy.value}, intensity {self.intensity}/{self.period}s]"
        ]
        for s in self._slots.values():
            head = f"{indent}  {s.name} ({s.kind}) {s.state.value}, restarts={s.restarts}"
            if s.place is not None:
                current = s.instance.current if s.instance is not None else None
                head += f", mailbox={len(s.place.mailbox)}"
                if current is not None:
                    head += f", handling {current!r}"
                lines.append(head)
            else:
                lines.append(head)
                assert s.supervisor is not None
                lines.append(s.supervisor.dump(indent + "    "))
        return "\n".join(lines)

    # -- helpers -------------------------------------------------------------------

    def _child_path(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _check_open(self) -> None:
        if self._nursery is None or self._control is None or self._closed:
            raise LocalProtocolError(
                f"{self.path} is not running; start children inside its "
                "'async with open_supervisor()' block or while its parent runs it"
            )

    def _check_new_child(self, name: str) -> None:
        if not name or "/" in name or "@" in name:
            raise LocalProtocolError(
                f"invalid child name {name!r}: use a non-empty name without '/' or '@'"
            )
        if name in self._slots:
            raise NameTaken(f"{self.path} already has a child named {name!r}")

    async def _start_new(self, slot: _Slot) -> None:
        """First start of a new child (caller's task); raises if it fails."""
        self._slots[slot.name] = slot
        # Known to the policy before it runs: it may exit before we resume.
        self._policy.child_started(slot.name, slot.restart)
        try:
            await self._start_slot(slot, initial=True)
        except BaseException:
            del self._slots[slot.name]
            self._policy.child_removed(slot.name)
            raise
        self.system._publish(ChildStarted(slot.path, slot.kind, trio.current_time()))

    async def _start_slot(self, slot: _Slot, *, initial: bool) -> None:
        assert self._nursery is not None
        slot.generation += 1
        slot.state = ChildState.STARTING if initial else ChildState.RESTARTING
        if slot.place is not None:
            slot.place.mailbox.reopen()
        await self._nursery.start(self._child_task, slot, slot.generation, initial)

    async def _child_task(
        self,
        slot: _Slot,
        generation: int,
        initial: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scope = trio.CancelScope()
        done = trio.Event()
        slot.scope, slot.done = scope, done
        ready = False  # the current instance finished starting
        reported = False  # task_status.started() was called
        restarted_in_place = False

        def on_ready() -> None:
            nonlocal ready, reported, restarted_in_place
            ready = True
            slot.state = ChildState.RUNNING
            if restarted_in_place:
                restarted_in_place = False
                self.system._publish(ChildRestarted(slot.path, slot.restarts, trio.current_time()))
            if not reported:
                reported = True
                task_status.started()

        error: Exception | None = None
        message: object = None
        decided = False
        try:
            with scope:
                if slot.supervisor is not None:
                    await slot.supervisor._serve(on_ready)
                else:
                    async with _unwrapping_nursery() as nursery:
                        while True:
                            instance = _Instance(place=slot.place)
                            slot.instance = instance
                            ready = False
                            error = await _run_actor(slot, instance, nursery, on_ready)
                            message = instance.current
                            if error is None or not ready:
                                break
                            verdict = self._decide_in_place(slot, generation, error, message)
                            if verdict is None:
                                break
                            if not verdict:
                                decided = True
                                break
                            restarted_in_place = True
                            generation = slot.generation
        except Exception as exc:
            error = exc
        finally:
            done.set()
        if not reported:
            if initial:
                if error is None:
                    raise StartFailed(f"{slot.path} did not start: it was cancelled")
                raise StartFailed(f"{slot.path} did not start: {error!r}") from error
            task_status.started()
        if decided or slot.generation != generation or slot.state is ChildState.STOPPING:
            return  # decided already, or we stopped it ourselves (the manager waits on `done`)
        if self._control is not None:
            self._control.send_nowait(_Exited(slot, generation, error, message))

    def _decide_in_place(
        self, slot: _Slot, generation: int, error: Exception, message: object
    ) -> bool | None:
        """Fast path for a crash, decided in the child's own task.

        Taken only when the decision cannot interleave with the manager's work:
        one-for-one, no backoff, nothing queued for the manager, not stopping.
        The policy is consulted exactly as the manager would. Returns True to
        restart in this task at once (the common case, without a trip through
        the manager and a new task), False when the decision went to the
        manager to carry out, None when the fast path does not apply.
        """
        control = self._control
        if (
            control is None
            or self._stopping
            or self.strategy is not Strategy.ONE_FOR_ONE
            or self.backoff is not None
            or slot.generation != generation
            or slot.state is not ChildState.RUNNING
            or control.statistics().current_buffer_used
        ):
            return None
        actions = self._decide(slot, error, message)
        if actions == [StartChildren((slot.name,))]:
            slot.restarts += 1
            slot.generation += 1
            slot.state = ChildState.RESTARTING
            return True
        control.send_nowait(_Decided(slot, error, actions))
        return False

    async def _serve(self, ready: Callable[[], None]) -> None:
        """Run one instance of this supervisor until stopped; raise if it gives up."""
        self._policy = SupervisionPolicy(
            self.strategy, intensity=self.intensity, period=self.period, backoff=self.backoff
        )
        send, receive = trio.open_memory_channel[_Control](math.inf)
        self._finished = finished = trio.Event()
        self._stopping = False
        try:
            async with _unwrapping_nursery() as nursery:
                self._nursery = nursery
                self._control = send
                # A restart of this supervisor: its children start again in order.
                for slot in list(self._slots.values()):
                    self._policy.child_started(slot.name, slot.restart)
                    if slot.finished:
                        self._policy.child_stopped(slot.name)
                        continue
                    slot.restarts += 1
                    await self._start_slot(slot, initial=False)
                    self.system._publish(
                        ChildRestarted(slot.path, slot.restarts, trio.current_time())
                    )
                ready()
                await self._manage(receive)
                nursery.cancel_scope.cancel()
        finally:
            self._control = None
            self._nursery = None
            finished.set()

    async def _manage(self, control: trio.MemoryReceiveChannel[_Control]) -> None:
        async for event in control:
            match event:
                case _StopRequested():
                    for name in self._policy.running()[::-1]:
                        await self._stop_slot(self._slots[name])
                        self._policy.child_stopped(name)
                    return
                case _Exited(slot, generation, error, message):
                    if slot.generation != generation or self._slots.get(slot.name) is not slot:
                        continue  # stale: already restarted or removed
                    await self._carry_out(slot, error, self._decide(slot, error, message))
                case _Decided(slot, error, actions):
                    if self._slots.get(slot.name) is slot:
                        await self._carry_out(slot, error, actions)

    def _decide(self, slot: _Slot, error: Exception | None, message: object) -> list[Action]:
        now = trio.current_time()
        if error is not None:
            logger.warning("%s crashed: %r", slot.path, error, exc_info=error)
            self.system._publish(ChildCrashed(slot.path, error, message, now))
        slot.state = ChildState.STOPPED
        return self._policy.child_exited(slot.name, crashed=error is not None, now=now)

    async def _carry_out(self, slot: _Slot, error: Exception | None, actions: list[Action]) -> None:
        now = trio.current_time()
        if not actions:  # transient after a normal exit: kept, but stopped
            slot.finished = True
            if slot.place is not None:
                slot.place.close("stopped")
            self.system._publish(ChildStopped(slot.path, "normal", now))
        for action in actions:
            match action:
                case StopChildren(names):
                    for name in names:
                        await self._stop_slot(self._slots[name])
                case RemoveChildren(names):
                    for name in names:
                        self._remove(self._slots[name], "removed")
                case StartChildren(names, delay):
                    for name in names:
                        self._slots[name].state = ChildState.RESTARTING
                    if delay > 0:
                        await trio.sleep(delay)
                    for name in names:
                        target = self._slots[name]
                        target.restarts += 1
                        await self._start_slot(target, initial=False)
                        self.system._publish(
                            ChildRestarted(target.path, target.restarts, trio.current_time())
                        )
                case GiveUp(restarts, period):
                    last = (
                        f"{slot.path} gave up"
                        if isinstance(error, SupervisorGaveUp)
                        else f"{slot.path}: {error!r}"
                    )
                    gave_up = SupervisorGaveUp(
                        f"{self.path} gave up: {restarts} restarts within {period} s exceed "
                        f"its intensity of {self.intensity}; last failure: {last}. "
                        "Fix the failure or raise intensity/period.",
                        self.path,
                    )
                    gave_up.__cause__ = error
                    self.system._publish(
                        SupervisorEscalated(self.path, gave_up, trio.current_time())
                    )
                    raise gave_up

    async def _stop_slot(self, slot: _Slot) -> None:
        """Graceful stop, then cancellation after the slot's shutdown timeout."""
        done = slot.done
        if done is None or done.is_set() or slot.scope is None:
            slot.state = ChildState.STOPPED
            return
        slot.state = ChildState.STOPPING
        if slot.supervisor is not None:
            slot.supervisor._request_stop()
        elif slot.instance is not None:
            slot.instance.request_stop()
        if slot.shutdown <= 0:
            slot.scope.cancel()
        elif slot.shutdown != math.inf:
            slot.scope.deadline = min(slot.scope.deadline, trio.current_time() + slot.shutdown)
        await done.wait()
        slot.state = ChildState.STOPPED
        self.system._publish(ChildStopped(slot.path, "shutdown", trio.current_time()))

    def _remove(self, slot: _Slot, reason: str) -> None:
        del self._slots[slot.name]
        slot.state = ChildState.STOPPED
        _close_slot(slot, reason)
        if reason == "removed":
            self.system._publish(ChildStopped(slot.path, reason, trio.current_time()))

    def _request_stop(self) -> None:
        self._stopping = True
        if self._control is not None:
            self._control.send_nowait(_StopRequested())

    async def _shutdown(self) -> None:
        """Stop every child (reverse order) and wait for this instance to end."""
        finished = self._finished
        self._request_stop()
        if finished is not None:
            await finished.wait()

    def _close(self, reason: str) -> None:
        """For good: close every mailbox in the subtree, free every name."""
        self._closed = True
        for slot in reversed(list(self._slots.values())):
            _close_slot(slot, reason)


def _close_slot(slot: _Slot, reason: str) -> None:
    if slot.place is not None:
        slot.place.close(reason)
        slot.place.system._unregister(slot.place)
    if slot.supervisor is not None:
        slot.supervisor._close(reason)


def _bind(factory: Callable[[*Ts], Actor[M]], args: tuple[*Ts]) -> Callable[[], Actor[object]]:
    def make() -> Actor[object]:
        actor = factory(*args)
        if not isinstance(actor, Actor):
            raise LocalProtocolError(
                f"{factory!r} returned {type(actor).__qualname__}, not an Actor; "
                "pass an Actor subclass (or a function returning a new instance)"
            )
        return actor  # type: ignore[return-value]

    return make


@asynccontextmanager
async def _unwrapping_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery that raises a lone failure as itself, not in an ExceptionGroup.

    A supervisor has one task that can fail on its own (the manager, with
    ``SupervisorGaveUp``) and a body that fails with the user's exception;
    callers should be able to ``except SupervisorGaveUp:``.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            leaf = group.exceptions[0]
            raise leaf from leaf.__cause__
        raise


async def _serve_started(
    sup: Supervisor, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    await sup._serve(task_status.started)
