"""One actor instance: its context, its start, its mailbox loop, its stop."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, final

import attrs
import trio

from .._core._supervision import Restart, Strategy
from .._errors import ActorCrashed, ActorStopped, UnhandledMessage
from ._actor import Actor, ActorRef, Letter, ReplyTo, _frame, _Place

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._supervisor import Supervisor, _Slot
    from ._system import ActorSystem

__all__ = ["DEFAULT_SHUTDOWN", "DEFAULT_START_TIMEOUT", "ActorContext"]

M = TypeVar("M")
Ts = TypeVarTuple("Ts")

DEFAULT_SHUTDOWN = 5.0
"""Seconds a worker gets to stop gracefully before it is cancelled (OTP's default)."""
DEFAULT_START_TIMEOUT = 5.0
"""Seconds an actor's ``on_start`` may take before the start counts as failed."""
FAIRNESS_BATCH = 128
"""An actor yields to the scheduler at least once per this many messages."""


@attrs.define(eq=False)
class _Instance:
    """Per-instance state of a running actor, read by the supervisor."""

    stopping: bool = False
    current: object = None  # message being handled, for crash reports and dumps
    place: _Place | None = None
    tasks: set[trio.CancelScope] = attrs.Factory(set)  # its background tasks
    tasks_done: trio.Event | None = None
    ended: bool = False

    def request_stop(self) -> None:
        self.stopping = True
        if self.place is not None:
            self.place.mailbox.wake()

    async def end_tasks(self) -> None:
        """Cancel this instance's background tasks and wait until they have exited."""
        self.ended = True
        if self.tasks:
            self.tasks_done = trio.Event()
            for scope in self.tasks:
                scope.cancel()
            await self.tasks_done.wait()


@final
class ActorContext:
    """What an actor knows about itself; available as ``self.context``.

    .. versionadded:: 0.1
    """

    def __init__(
        self, slot: _Slot, place: _Place, instance: _Instance, nursery: trio.Nursery
    ) -> None:
        self._slot = slot
        self._place = place
        self._instance = instance
        self._nursery = nursery
        self._children: Supervisor | None = None
        self.sender: ActorRef[object] | None = None
        """The sender of the message being handled (``None`` if sent from outside an actor)."""
        self._reply: ReplyTo | None = None

    def reply_later(self) -> ReplyTo | None:
        """Take over the reply to the request being handled.

        The handler's return value is then ignored; answer with
        ``handle.succeed(value)`` or ``handle.fail(exception)`` later, e.g.
        from a background task (``start_soon``), so that a slow answer does not
        hold up the actor's other messages. Returns ``None`` for a ``tell``
        (nobody waits) or if the reply was already taken. An asker whose
        deadline passes first gets ``AskTimeout``; a late answer is dropped.
        """
        reply, self._reply = self._reply, None
        return reply

    @property
    def name(self) -> str:
        """The name this actor is registered under."""
        return self._place.name

    @property
    def path(self) -> str:
        """The actor's position in the supervision tree (``/root/workers/w1``)."""
        return self._place.path

    @property
    def ref(self) -> ActorRef[object]:
        """A reference to this actor, to hand to others."""
        return self._place.ref

    @property
    def system(self) -> ActorSystem:
        """The actor system (for a node: ``node.system``) this actor runs in."""
        return self._place.system

    @property
    def restarts(self) -> int:
        """How many times this actor has been restarted before this instance."""
        return self._slot.restarts

    def stop(self) -> None:
        """Stop after the current message: a normal exit.

        Whether it comes back depends on its restart type: a ``PERMANENT``
        actor is restarted even after a normal exit (as in OTP).
        """
        self._instance.stopping = True

    def start_soon(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> None:
        """Run a background task that lives as long as this actor instance.

        It is cancelled when the instance stops; if it raises, the actor crashes.
        """
        place = self._place
        instance = self._instance
        if instance.ended:
            raise RuntimeError(f"{self.path}: this actor instance has stopped")

        async def run() -> None:
            _frame.set((place, ()))
            with trio.CancelScope() as scope:
                instance.tasks.add(scope)
                try:
                    if not instance.ended:
                        await fn(*args)
                finally:
                    instance.tasks.discard(scope)
                    if not instance.tasks and instance.tasks_done is not None:
                        instance.tasks_done.set()

        # The slot's nursery outlives this instance; the instance cancels and
        # awaits its own tasks when it ends (see _Instance.end_tasks).
        self._nursery.start_soon(run, name=f"{self.path}:task")

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
        """Start a child actor, supervised one-for-one under this actor.

        Children live as long as this actor instance: they are stopped (and
        their names freed) when it stops or restarts. If they exceed the
        default restart intensity, this actor crashes.
        """
        if self._children is None:
            from ._supervisor import Supervisor, _serve_started  # (cycle: they run us)

            child = Supervisor(
                self.system,
                f"{self.name}.children",
                self.path,
                strategy=Strategy.ONE_FOR_ONE,
                intensity=1,
                period=5.0,
                backoff=None,
            )
            await self._nursery.start(_serve_started, child)
            self._children = child
        return await self._children.start_actor(
            factory,
            *args,
            name=name,
            restart=restart,
            shutdown=shutdown,
            mailbox_size=mailbox_size,
            start_timeout=start_timeout,
        )


async def _run_actor(
    slot: _Slot, instance: _Instance, nursery: trio.Nursery, ready: Callable[[], None]
) -> Exception | None:
    """Run one instance to its end; return its crash (None for a normal exit).

    ``nursery`` belongs to the slot's task and outlives the instance: the
    instance's background tasks and children run there, and are stopped here
    before the instance counts as ended. A cancellation propagates.
    """
    place = slot.place
    assert place is not None
    assert slot.factory is not None
    crash: Exception | None = None
    started = False
    context: ActorContext | None = None
    try:
        try:
            actor = slot.factory()
            context = ActorContext(slot, place, instance, nursery)
            actor._context = context
            _frame.set((place, (place,)))
            # A cancel scope costs microseconds: skip it when there is nothing to time.
            if type(actor).on_start is not Actor.on_start:
                with trio.fail_after(slot.start_timeout):
                    await actor.on_start()
            started = True
            ready()
            await _serve_mailbox(actor, context, place, instance)
        except Exception as exc:
            crash = exc
        if context is not None:
            if context._children is not None:
                await context._children._shutdown()
            if started:
                try:
                    await actor.on_stop()
                except Exception as exc:
                    if crash is None:
                        crash = exc
            await instance.end_tasks()
    finally:
        # Children live as long as this instance, even when it is cancelled.
        if context is not None and context._children is not None:
            context._children._close("stopped")
    return crash


async def _serve_mailbox(
    actor: Actor[object], context: ActorContext, place: _Place, instance: _Instance
) -> None:
    mailbox = place.mailbox
    receive = actor.receive
    handled = 0
    while not instance.stopping:
        letter: Letter | None = mailbox.take()
        if letter is None:
            await mailbox.wait_nonempty()
            continue
        message = letter.message
        context.sender = letter.sender
        context._reply = letter.reply
        instance.current = message
        token = _frame.set((place, (*letter.chain, place))) if letter.chain else None
        try:
            result = await receive(message)
        except UnhandledMessage as exc:
            if exc.message is not message:
                _crashed(place, letter, exc)
                raise
            if letter.reply is not None:
                letter.reply.fail(exc)
            else:
                place.system._dead_letter(place.path, message, letter.sender, "unhandled")
        except Exception as exc:
            _crashed(place, letter, exc)
            raise
        except trio.Cancelled:
            if letter.reply is not None:
                letter.reply.fail(
                    ActorStopped(f"{place.path} was cancelled while handling the request")
                )
            raise
        else:
            if context._reply is not None:  # (None: a tell, or reply_later() took it)
                context._reply.succeed(result)
        finally:
            if token is not None:
                _frame.reset(token)
        instance.current = None
        handled += 1
        if handled >= FAIRNESS_BATCH:
            handled = 0
            await trio.lowlevel.checkpoint()


def _crashed(place: _Place, letter: Letter, exc: Exception) -> None:
    if letter.reply is not None:
        letter.reply.fail(
            ActorCrashed(
                f"{place.path} crashed handling {type(letter.message).__qualname__}: {exc!r}",
                exc,
            )
        )
