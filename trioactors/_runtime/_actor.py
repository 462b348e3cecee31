"""Actors, references to them, and requests.

An :class:`ActorRef` points at a *place* in the supervision tree, not at an
actor instance: the place owns the mailbox, and each instance that the
supervisor starts there (the first one and every restart) reads from it. So a
reference stays valid across restarts, and messages queued during a crash are
handled by the next instance.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, final, overload

import trio
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from .._errors import ActorStopped, AskDeadlock, AskTimeout, UnhandledMessage
from ._mailbox import Mailbox

if TYPE_CHECKING:
    from ._instance import ActorContext
    from ._system import ActorSystem

__all__ = ["DEFAULT_ASK_TIMEOUT", "Actor", "ActorRef", "Request", "is_read_only", "read_only"]

M = TypeVar("M", contravariant=True)
MsgT = TypeVar("MsgT")
R = TypeVar("R")

DEFAULT_ASK_TIMEOUT = 5.0
"""Seconds an ``ask`` waits for its reply unless told otherwise (as OTP's ``gen_server:call``)."""


class Request(Generic[R]):
    """Base class for messages that expect a reply of type ``R``.

    Subclassing is optional; it lets type checkers infer what
    :meth:`ActorRef.ask` returns::

        @attrs.frozen
        class GetCount(trioactors.Request[int]):
            pass

        n = await counter.ask(GetCount())  # n: int

    .. versionadded:: 0.1
    """

    __slots__ = ()


_READ_ONLY = "__trioactors_read_only__"

T = TypeVar("T", bound=type)


def read_only(cls: T) -> T:
    """Class decorator: mark a message type that read-only peers may send.

    A peer that authenticated with the cluster's read-only secret (an
    operator's dashboard, ``trioactors status``) may only deliver messages of
    marked types; anything else it sends is refused with
    :class:`~trioactors.Unauthorized`. Mark queries, never commands.

    .. versionadded:: 0.1
    """
    setattr(cls, _READ_ONLY, True)
    return cls


def is_read_only(cls: type) -> bool:
    """Whether ``cls`` was marked with :func:`read_only`."""
    return cls.__dict__.get(_READ_ONLY, False) is True


# (the place of the actor running this task, the chain of places waiting on
# asks that led here). Set by the actor's loop; read by tell/ask to find the
# implicit sender and to detect ask cycles.
_frame: ContextVar[tuple[_Place | None, tuple[_Place, ...]]] = ContextVar(
    "trioactors_frame", default=(None, ())
)


class ReplyTo(Protocol):
    """Where the actor loop sends the outcome of a request."""

    def succeed(self, value: object) -> None: ...
    def fail(self, error: BaseException) -> None: ...


@final
class _Reply:
    """A one-shot slot that an ``ask`` waits on; the request's reply address."""

    __slots__ = (
        "_deadline",
        "_done",
        "_error",
        "_mailbox",
        "_message",
        "_target",
        "_task",
        "_timeout",
        "_value",
    )

    def __init__(
        self,
        target: str,
        message: object,
        timeout: float | None,
        mailbox: Mailbox[Letter] | None = None,
    ) -> None:
        self._done = False  # answered, or abandoned by the asker
        self._value: object = None
        self._error: BaseException | None = None
        self._task: Task | None = None
        self._target = target
        self._message = message
        self._timeout = timeout
        self._mailbox = mailbox
        self._deadline = math.inf

    def succeed(self, value: object) -> None:
        if not self._done:  # a second answer (duplicate) is ignored
            self._done = True
            self._value = value
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def timeout_error(self) -> AskTimeout:
        queued = (
            "" if self._mailbox is None else f" (its mailbox holds {len(self._mailbox)} messages)"
        )
        return AskTimeout(
            f"no reply from {self._target} to {type(self._message).__qualname__} within "
            f"{self._timeout} s; the actor may be busy or stuck{queued}, or the reply was "
            "lost. Raise the timeout or check the actor."
        )

    def time_out(self) -> None:
        self.fail(self.timeout_error())

    def _wake(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            reschedule(task)

    def _abort(self, _: object) -> Abort:
        self._task = None
        self._done = True  # abandoned: a late answer is dropped
        return Abort.SUCCEEDED

    async def wait(self) -> object:
        if self._done:
            await trio.lowlevel.checkpoint()
        else:
            self._task = current_task()
            await wait_task_rescheduled(self._abort)
        if self._error is not None:
            raise self._error
        return self._value


@final
class Letter:
    """What a mailbox holds: a message with its sender and reply address."""

    __slots__ = ("chain", "message", "reply", "sender")

    def __init__(
        self,
        message: object,
        sender: ActorRef[object] | None,
        reply: ReplyTo | None,
        chain: tuple[_Place, ...],
    ) -> None:
        self.message = message
        self.sender = sender
        self.reply = reply
        self.chain = chain


@final
class _Place:
    """A named spot in the tree that owns a mailbox; see the module docstring."""

    __slots__ = ("mailbox", "name", "path", "ref", "system")

    def __init__(self, system: ActorSystem, name: str, path: str, capacity: float) -> None:
        self.system = system
        self.name = name
        self.path = path
        self.mailbox: Mailbox[Letter] = Mailbox(capacity)
        self.ref: ActorRef[object] = _LocalRef(self)

    def close(self, reason: str) -> None:
        """Close the mailbox; everything still queued becomes a dead letter."""
        for letter in self.mailbox.close():
            self.reject(letter, reason)

    def reject(self, letter: Letter, reason: str) -> None:
        if letter.reply is not None:
            letter.reply.fail(
                ActorStopped(
                    f"{self.path} stopped ({reason}) before handling "
                    f"{type(letter.message).__qualname__}"
                )
            )
        self.system._dead_letter(self.path, letter.message, letter.sender, reason)


class ActorRef(Generic[M]):
    """A handle used to send messages to an actor, local or on another node.

    Cheap to copy and safe to share between tasks; a reference stays valid
    across restarts of the actor. Obtain one from ``Supervisor.start_actor``,
    ``ActorContext.start_actor``, ``ActorSystem.lookup`` or ``Node.ref``.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self) -> None:
        raise TypeError("ActorRef cannot be created directly; start an actor or look one up")

    @property
    def name(self) -> str:
        """The name the actor is registered under."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """``name@node``: how other nodes address this actor."""
        raise NotImplementedError

    @property
    def path(self) -> str:
        """The position in the supervision tree (``/root/workers/w1``); the address if remote."""
        raise NotImplementedError

    @property
    def is_local(self) -> bool:
        """True if the actor runs in this process's actor system."""
        raise NotImplementedError

    @property
    def stopped(self) -> bool:
        """True once a local actor is gone for good (always False for a remote one)."""
        return False

    def mailbox_length(self) -> int:
        """Messages waiting in a local actor's mailbox (0 for a remote one)."""
        return 0

    def __repr__(self) -> str:
        return f"<ActorRef {self.address}>"

    async def tell(self, message: M) -> None:
        """Send ``message`` without waiting for it to be handled.

        Waits while the mailbox (or, for a remote actor, the connection's send
        queue) is full: backpressure. Returns once the message is queued.
        Delivery is at most once: a message to a local actor that has stopped
        for good is recorded as a dead letter instead.

        Inside an actor the sender is that actor (``context.sender`` on the
        receiving side); elsewhere there is no sender.

        Raises:
          NodeUnreachable: (remote only) the actor's node cannot be reached.
          NotSerializable: (remote only) the message type is not registered.
        """
        raise NotImplementedError

    def tell_nowait(self, message: M) -> None:
        """Like :meth:`tell`, but raise ``trio.WouldBlock`` if it would wait.

        For a remote actor it never waits and never raises ``trio.WouldBlock``:
        a frame the connection has no room for waits in the node's queue for
        that node (unbounded; dropped and counted as ``replies_lost`` if the
        node cannot be reached). Prefer ``await tell()`` for remote actors.

        Raises:
          trio.WouldBlock: (local only) the mailbox is full.
          NodeUnreachable: (remote only) no address or route for the node.
          NotSerializable: (remote only) the message type is not registered.
        """
        raise NotImplementedError

    @overload
    async def ask(self, message: Request[R], *, timeout: float | None = ...) -> R: ...
    @overload
    async def ask(self, message: M, *, timeout: float | None = ...) -> object: ...
    async def ask(self, message: object, *, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> object:
        """Send ``message`` and wait for the value the handler returns.

        The whole exchange, including waiting for mailbox room, runs under one
        deadline: ``timeout`` seconds (default 5; ``None`` waits forever).

        Raises:
          AskTimeout: no reply in time. The request may still be handled later.
          AskDeadlock: the target is already waiting on the caller (an actor
            asking itself, or a cycle of asks); raised at once.
          ActorStopped: the actor stopped for good before it handled the request.
          ActorCrashed: the handler raised; the actor's supervisor was told.
          UnhandledMessage: the actor does not handle this message type.
          ActorNotFound: (remote only) no actor of that name on its node.
          NodeUnreachable: (remote only) the actor's node cannot be reached.
        """
        observer = self._system().ask_observer
        if observer is None:
            return await self._ask(message, timeout)
        start = trio.current_time()
        ok = False
        try:
            reply = await self._ask(message, timeout)
            ok = True
            return reply
        finally:
            observer(trio.current_time() - start, ok)

    def _system(self) -> ActorSystem:
        raise NotImplementedError

    async def _ask(self, message: object, timeout: float | None) -> object:
        raise NotImplementedError


@final
class _LocalRef(ActorRef[M]):
    """A reference to an actor of this process: it points at the actor's place."""

    __slots__ = ("_place",)

    def __init__(self, place: _Place) -> None:
        self._place = place

    @property
    def name(self) -> str:
        return self._place.name

    @property
    def address(self) -> str:
        return f"{self._place.name}@{self._place.system.name}"

    @property
    def path(self) -> str:
        return self._place.path

    @property
    def is_local(self) -> bool:
        return True

    @property
    def stopped(self) -> bool:
        return self._place.mailbox.closed

    def mailbox_length(self) -> int:
        return len(self._place.mailbox)

    def __repr__(self) -> str:
        return f"<ActorRef {self._place.path}>"

    def _system(self) -> ActorSystem:
        return self._place.system

    async def tell(self, message: M) -> None:
        place = self._place
        letter = Letter(message, _sender(), None, ())
        await checkpoint_if_cancelled()
        if place.mailbox.try_put(letter):  # the fast path: room, no scheduling
            return
        try:
            await place.mailbox.put(letter)
        except trio.ClosedResourceError:
            place.reject(letter, "stopped")

    def tell_nowait(self, message: M) -> None:
        place = self._place
        letter = Letter(message, _sender(), None, ())
        try:
            place.mailbox.put_nowait(letter)
        except trio.ClosedResourceError:
            place.reject(letter, "stopped")

    async def _ask(self, message: object, timeout: float | None) -> object:
        place = self._place
        current, chain = _frame.get()
        if place in chain:
            who = "itself" if place is current else "an actor that is waiting on it"
            raise AskDeadlock(
                f"{current.path if current else 'caller'} asks {place.path}, which is {who}: "
                "this would hang until the timeout. Use tell() and handle the reply as a "
                "message, or move the work into a background task (context.start_soon)."
            )
        reply = _Reply(place.path, message, timeout, place.mailbox)
        letter = Letter(message, current.ref if current else None, reply, chain)
        # The common path is inlined (no nested coroutines): this is the hot
        # path of every request/response exchange.
        await checkpoint_if_cancelled()
        sent = place.mailbox.try_put(letter)
        if timeout is None:
            if not sent:
                await _send_request(place, letter)
            return await reply.wait()
        timer = place.system._timer
        if sent and timer is not None and timer.watch(reply, timeout):
            # The system's timer enforces the deadline (see _deadlines.py).
            try:
                return await reply.wait()
            finally:
                timer.trim(timeout)
        with trio.CancelScope(deadline=trio.current_time() + timeout):
            if not sent:
                await _send_request(place, letter)
            return await reply.wait()
        raise reply.timeout_error()


async def _send_request(place: _Place, letter: Letter) -> None:
    """The slow path of sending a request: wait for room, or reject it."""
    try:
        await place.mailbox.put(letter)
    except trio.ClosedResourceError:
        place.reject(letter, "stopped")  # fails the reply: the ask raises ActorStopped


def _sender() -> ActorRef[object] | None:
    current = _frame.get()[0]
    return None if current is None else current.ref


class Actor(Generic[MsgT]):
    """Base class for actors; subclass it and override :meth:`receive`.

    An actor handles one message at a time, in the order they arrived, and
    keeps its state in ordinary attributes: nothing else can touch them. The
    supervisor creates a fresh instance on every (re)start by calling the
    factory it was given (usually the class) with the same arguments.

    ``MsgT`` is the type of message the actor accepts (often a union of attrs
    classes); references returned for it are ``ActorRef[MsgT]``.

    .. versionadded:: 0.1
    """

    _context: ActorContext

    @property
    def context(self) -> ActorContext:
        """Who this actor is and what it can do (name, ref, sender, children)."""
        try:
            return self._context
        except AttributeError:
            raise RuntimeError(
                "context is only available once the actor has been started by a supervisor"
            ) from None

    async def on_start(self) -> None:
        """Called before the first message. An exception here fails the start."""

    async def on_stop(self) -> None:
        """Called after the last message of this instance.

        It runs on a graceful stop and after a crash, but not when the instance
        is cancelled (its shutdown timeout ran out, or an outer cancel scope).
        """

    async def receive(self, message: MsgT) -> object:
        """Handle one message; the return value is the reply to an ``ask``.

        The default raises :class:`UnhandledMessage`; do the same (or call
        ``super().receive(message)``) for messages you do not handle. Any other
        exception crashes this instance and its supervisor takes over.
        """
        raise UnhandledMessage(message, self.context.path)
