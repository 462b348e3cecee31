"""The actor system: name registry, dead letters and lifecycle events."""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, TypeAlias, TypeVar, final

import attrs
import trio

from .._errors import ActorNotFound, NameTaken
from ._mailbox import Mailbox

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from ._actor import ActorRef, _Place
    from ._deadlines import AskTimer
    from ._supervisor import Supervisor

__all__ = [
    "ActorSystem",
    "ChildCrashed",
    "ChildRestarted",
    "ChildStarted",
    "ChildStopped",
    "DeadLetter",
    "Event",
    "EventsLost",
    "Subscription",
    "SupervisorEscalated",
    "SystemStatistics",
]

logger = logging.getLogger("trioactors")

DEFAULT_MAILBOX_SIZE = 1000
DEFAULT_DEAD_LETTER_LOG = 1000
DEFAULT_SUBSCRIPTION_SIZE = 1000


# -- events ----------------------------------------------------------------------


@final
@attrs.frozen
class ChildStarted:
    """A child (actor or supervisor) started for the first time."""

    path: str
    kind: str
    time: float


@final
@attrs.frozen
class ChildCrashed:
    """A child raised. ``message`` is the message it was handling, if any."""

    path: str
    exception: BaseException
    message: object
    time: float


@final
@attrs.frozen
class ChildRestarted:
    """A child was started again; ``restarts`` counts its restarts so far."""

    path: str
    restarts: int
    time: float


@final
@attrs.frozen
class ChildStopped:
    """A child ended and is not running now.

    ``reason``: ``"normal"`` (it returned and is not restarted), ``"shutdown"``
    (its supervisor stopped it), or ``"removed"`` (it ended and was removed).
    """

    path: str
    reason: str
    time: float


@final
@attrs.frozen
class SupervisorEscalated:
    """A supervisor exceeded its restart intensity and gave up."""

    path: str
    exception: BaseException
    time: float


@final
@attrs.frozen
class DeadLetter:
    """A message that could not be delivered or handled."""

    recipient: str
    message: object
    sender: str | None
    reason: str
    time: float


@final
@attrs.frozen
class EventsLost:
    """This subscription fell behind and ``count`` events were dropped for it."""

    count: int
    time: float


Event: TypeAlias = (
    ChildStarted
    | ChildCrashed
    | ChildRestarted
    | ChildStopped
    | SupervisorEscalated
    | DeadLetter
    | EventsLost
)

E = TypeVar("E", bound=Event)


@final
class Subscription:
    """A bounded feed of the system's events, from ``ActorSystem.subscribe()``.

    Publishing never waits: when the feed is full, events are dropped for this
    subscription only, and the next receive returns an :class:`EventsLost`.
    """

    def __init__(self, system: ActorSystem, capacity: int) -> None:
        self._system = system
        self._queue: Mailbox[Event] = Mailbox(capacity)
        self._lost = 0

    def _push(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except trio.WouldBlock:
            self._lost += 1

    async def receive(self) -> Event:
        """The next event, in publication order."""
        while True:
            event = self._queue.take()
            if event is not None:
                await trio.lowlevel.checkpoint()
                return event
            if self._lost:  # the lost events came after everything queued
                lost, self._lost = self._lost, 0
                await trio.lowlevel.checkpoint()
                return EventsLost(lost, trio.current_time())
            await self._queue.wait_nonempty()

    async def wait_for(
        self,
        kind: type[E],
        predicate: Callable[[E], bool] | None = None,
        *,
        path: str | None = None,
    ) -> E:
        """Skip events until one of ``kind`` (at ``path``, matching ``predicate``) arrives."""
        while True:
            event = await self.receive()
            if not isinstance(event, kind):
                continue
            if (
                path is not None
                and getattr(event, "path", getattr(event, "recipient", None)) != path
            ):
                continue
            if predicate is None or predicate(event):
                return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.receive()

    def close(self) -> None:
        """Stop receiving events (leaving a ``with`` block does it)."""
        self._system._subscriptions.discard(self)

    def __enter__(self) -> Subscription:
        return self

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@final
@attrs.frozen
class SystemStatistics:
    """A snapshot of an :class:`ActorSystem`'s counters."""

    actors: int
    dead_letters: int
    crashes: int
    restarts: int
    subscriptions: int


@final
class ActorSystem:
    """Registry of names, dead-letter log and event feed shared by a tree.

    ``open_supervisor()`` makes one for its tree unless you pass your own.

    Args:
      name: the system's name (later, the node's name in a cluster).
      mailbox_size: default mailbox capacity of actors (``math.inf`` for
        unbounded, which you should not need).
      dead_letter_log: how many recent dead letters are kept for inspection;
        the total count is in :meth:`statistics`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        name: str = "local",
        *,
        mailbox_size: float = DEFAULT_MAILBOX_SIZE,
        dead_letter_log: int = DEFAULT_DEAD_LETTER_LOG,
    ) -> None:
        if not (mailbox_size >= 1):
            raise ValueError(f"mailbox_size must be >= 1 (or math.inf), not {mailbox_size!r}")
        self.name = name
        self.mailbox_size = mailbox_size
        self._registry: dict[str, _Place] = {}
        self._dead: deque[DeadLetter] = deque(maxlen=dead_letter_log)
        self._dead_total = 0
        self._crashes = 0
        self._restarts = 0
        self._subscriptions: set[Subscription] = set()
        self._ids = itertools.count(1)
        self.root: Supervisor | None = None
        self._timer: AskTimer | None = None
        self.ask_observer: Callable[[float, bool], None] | None = None
        """Called after every ``ask`` made through this system's references with
        the seconds it took and whether it got a reply (metrics use it)."""

    def __repr__(self) -> str:
        return f"<ActorSystem {self.name!r} actors={len(self._registry)}>"

    # -- names -------------------------------------------------------------------

    def lookup(self, name: str) -> ActorRef[object]:
        """The actor registered as ``name``.

        Raises:
          ActorNotFound: nothing is registered under that name.
        """
        place = self._registry.get(name)
        if place is None:
            known = ", ".join(sorted(self._registry)[:10]) or "none"
            raise ActorNotFound(f"no actor named {name!r} in system {self.name!r} (known: {known})")
        return place.ref

    def whereis(self, name: str) -> ActorRef[object] | None:
        """The actor registered as ``name``, or ``None``."""
        place = self._registry.get(name)
        return None if place is None else place.ref

    def names(self) -> list[str]:
        """Every registered actor name, sorted."""
        return sorted(self._registry)

    def _auto_name(self, base: str) -> str:
        while True:
            name = f"{base}-{next(self._ids)}"
            if name not in self._registry:
                return name

    def _register(self, place: _Place) -> None:
        if place.name in self._registry:
            other = self._registry[place.name].path
            raise NameTaken(
                f"the name {place.name!r} is already taken by {other} in system "
                f"{self.name!r}; pick another name or stop that actor first"
            )
        self._registry[place.name] = place

    def _unregister(self, place: _Place) -> None:
        if self._registry.get(place.name) is place:
            del self._registry[place.name]

    # -- dead letters ------------------------------------------------------------

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters, oldest first."""
        return tuple(self._dead)

    def _dead_letter(
        self, recipient: str, message: object, sender: ActorRef[object] | None, reason: str
    ) -> None:
        letter = DeadLetter(
            recipient, message, None if sender is None else sender.path, reason, _now()
        )
        self._dead.append(letter)
        self._dead_total += 1
        logger.debug("dead letter to %s (%s): %r", recipient, reason, message)
        self._publish(letter)

    # -- events ------------------------------------------------------------------

    def subscribe(self, capacity: int = DEFAULT_SUBSCRIPTION_SIZE) -> Subscription:
        """Start receiving lifecycle events and dead letters from now on.

        Use it as a context manager so it stops when you are done::

            with system.subscribe() as events:
                ...
                await events.wait_for(ChildRestarted, path="/root/counter")
        """
        sub = Subscription(self, capacity)
        self._subscriptions.add(sub)
        return sub

    def _publish(self, event: Event) -> None:
        match event:
            case ChildCrashed():
                self._crashes += 1
            case ChildRestarted():
                self._restarts += 1
            case _:
                pass
        for sub in self._subscriptions:
            sub._push(event)

    # -- introspection -----------------------------------------------------------

    def statistics(self) -> SystemStatistics:
        """A snapshot of this system's counters (actors, dead letters, crashes, restarts)."""
        return SystemStatistics(
            actors=len(self._registry),
            dead_letters=self._dead_total,
            crashes=self._crashes,
            restarts=self._restarts,
            subscriptions=len(self._subscriptions),
        )

    def dump_tree(self) -> str:
        """A text picture of the supervision tree: states, restarts, mailboxes."""
        if self.root is None:
            return "(no supervisor running)"
        return self.root.dump()


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio.run (e.g. closing after the run)
        return math.nan
