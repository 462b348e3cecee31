"""Management of a node: the ``$admin`` system actor and its wire messages.

Operators' tools (``trioactors status``, dashboards, scripts) manage a node by
asking its ``$admin`` actor. Every message is an ask, a registered attrs class
under a ``$admin.*`` tag; the replies are registered attrs classes or plain
values. Queries are marked :func:`~trioactors.read_only`, so a peer that
authenticated with the cluster's read-only secret may send them; the node
refuses everything else from such a peer.

- Queries: :class:`AdminPing`, :class:`GetInfo`, :class:`ListMembers`.
- Commands: :class:`Spawn`, :class:`StopActor`, :class:`RestartActor`,
  :class:`Broadcast`, :class:`Drain`, :class:`Shutdown`.

Queries are answered at once, from the actor's own task. Commands that wait
(starting or stopping actors, sending to other nodes, draining) run as the
actor's background tasks and answer through ``reply_later``, so that a
long drain never holds up a ping. A command that fails answers with the
error (the asker's ``ask`` raises it) instead of crashing the actor.

The state (draining or not, restart counts, the shutdown request) lives in
:class:`AdminService`, outside the actor, so that it survives restarts of
``$admin``, as :class:`~trioactors.Membership` does for ``$membership``.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, TypeAlias, TypeVarTuple, final

import attrs
import trio

from .._errors import ActorCrashed, LocalProtocolError, TrioactorsError, UnknownFactory
from .._runtime._actor import Actor, Request, read_only
from .._runtime._supervisor import ChildState
from .._runtime._system import ChildRestarted, ChildStarted, ChildStopped
from .._version import __version__
from .._wire._codec import Envelope, Kind, _converter, _register_service_messages

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from .._runtime._actor import ActorRef, ReplyTo
    from .._runtime._node import Node
    from .._runtime._supervisor import ChildInfo, Supervisor
    from .._wire._codec import MessageRegistry
    from ._membership import Membership

__all__ = [
    "ActorInfo",
    "AdminPing",
    "AdminService",
    "Broadcast",
    "Drain",
    "DrainReport",
    "GetInfo",
    "ListMembers",
    "MemberInfo",
    "MemberList",
    "NodeInfo",
    "Pong",
    "RestartActor",
    "Shutdown",
    "Spawn",
    "StopActor",
    "register_admin_messages",
    "start_admin",
]

ACTOR = "$admin"

DRAIN_CHECK_INTERVAL = 0.1
"""Seconds between checks of the mailboxes while draining (nothing signals "empty")."""
SHUTDOWN_LINGER = 0.5
"""Seconds at least between answering :class:`Shutdown` and stopping the node,
so that the answer is written to its connection before the connection closes."""

Ts = TypeVarTuple("Ts")


# -- replies -------------------------------------------------------------------------


@final
@attrs.frozen
class Pong:
    """The answer to :class:`AdminPing`: ``received`` is the node's clock.

    .. versionadded:: 0.1
    """

    node: str
    sent: float
    received: float


@final
@attrs.frozen
class ActorInfo:
    """One registered actor of a node, in :class:`NodeInfo`.

    ``capacity`` is 0 for an unbounded mailbox; ``restarts`` counts the
    restarts of the actor's place since it was started. System actors are
    those whose names start with ``$``.

    .. versionadded:: 0.1
    """

    name: str
    path: str
    mailbox: int
    capacity: int
    restarts: int


@final
@attrs.frozen
class NodeInfo:
    """The answer to :class:`GetInfo`.

    ``uptime`` counts seconds since the admin service started; ``load`` is
    the host's one-minute load average (0.0 where the platform has none);
    ``members`` counts the reachable members, this node included (1 without
    membership).

    .. versionadded:: 0.1
    """

    node: str
    address: str
    version: str
    uptime: float
    draining: bool
    load: float
    actors: list[ActorInfo]
    members: int


@final
@attrs.frozen
class MemberInfo:
    """One member of the cluster as this node sees it, in :class:`MemberList`.

    ``state`` is the lower-case name of its :class:`~trioactors.MemberState`
    (``"alive"``, ``"suspect"``, ``"dead"``, ...).

    .. versionadded:: 0.1
    """

    node: str
    address: str
    state: str
    incarnation: int


@final
@attrs.frozen
class MemberList:
    """The answer to :class:`ListMembers`: a sequence of :class:`MemberInfo`.

    (A wrapper, not a ``list``: only registered classes and plain JSON values
    cross the wire, and a list of attrs instances is neither.) It iterates,
    indexes and has a length like the list it holds.

    .. versionadded:: 0.1
    """

    members: list[MemberInfo]

    def __iter__(self) -> Iterator[MemberInfo]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> MemberInfo:
        return self.members[index]


@final
@attrs.frozen
class DrainReport:
    """The answer to :class:`Drain`.

    ``drained`` is true when every non-system actor was idle before the
    timeout; ``pending`` counts what was left: queued messages plus messages
    being handled.

    .. versionadded:: 0.1
    """

    node: str
    drained: bool
    pending: int


# -- queries (read-only) ----------------------------------------------------------


@read_only
@final
@attrs.frozen
class AdminPing(Request[Pong]):
    """Is the node there? ``sent`` is the caller's clock, echoed back.

    .. versionadded:: 0.1
    """

    sent: float


@read_only
@final
@attrs.frozen
class GetInfo(Request[NodeInfo]):
    """The node's name, address, version, uptime, load and actors.

    .. versionadded:: 0.1
    """


@read_only
@final
@attrs.frozen
class ListMembers(Request[MemberList]):
    """The cluster's members as this node sees them.

    .. versionadded:: 0.1
    """


# -- commands ------------------------------------------------------------------------


@final
@attrs.frozen
class Spawn(Request[str]):
    """Start the node's factory ``factory`` under ``node.root`` as ``name``.

    Answers the new actor's address (``name@node``).

    .. versionadded:: 0.1
    """

    factory: str
    name: str


@final
@attrs.frozen
class StopActor(Request[bool]):
    """Stop the supervised actor ``name`` and remove it; False if there is none.

    .. versionadded:: 0.1
    """

    name: str


@final
@attrs.frozen
class RestartActor(Request[bool]):
    """Restart the supervised actor ``name`` in place; False if there is none.

    .. versionadded:: 0.1
    """

    name: str


@final
@attrs.frozen
class Broadcast(Request[int]):
    """Tell every actor named ``actor`` in the cluster one message.

    The message is given as a registered ``tag`` and its unstructured
    ``data`` (plain JSON data, as the class unstructures to). Answers how
    many actors it was sent to.

    .. versionadded:: 0.1
    """

    actor: str
    tag: str
    data: object


@final
@attrs.frozen
class Drain(Request[DrainReport]):
    """Stop taking new work and finish what is queued, within ``timeout`` seconds.

    .. versionadded:: 0.1
    """

    timeout: float = 30.0


@final
@attrs.frozen
class Shutdown(Request[bool]):
    """Answer True, then (drain if asked,) leave the cluster and stop the node.

    .. versionadded:: 0.1
    """

    drain: bool = True
    timeout: float = 30.0


_CLASSES: tuple[type, ...] = (
    AdminPing,
    Pong,
    GetInfo,
    NodeInfo,
    ActorInfo,
    ListMembers,
    MemberList,
    MemberInfo,
    Spawn,
    StopActor,
    RestartActor,
    Broadcast,
    Drain,
    DrainReport,
    Shutdown,
)


def _broadcast_from_wire(data: object, _: type) -> Broadcast:
    # ``data`` is deliberately left unstructured (it is structured against
    # ``tag`` on the node), which cattrs cannot do for a field typed ``object``.
    if type(data) is dict and set(data) == {"actor", "tag", "data"}:
        actor, tag = data["actor"], data["tag"]
        if type(actor) is str and type(tag) is str:
            return Broadcast(actor, tag, data["data"])
    raise ValueError(f"a Broadcast is {{actor: str, tag: str, data}}, not {data!r:.80}")


for _format in ("json", "msgpack"):
    _converter(_format).register_structure_hook(Broadcast, _broadcast_from_wire)


def register_admin_messages(registry: MessageRegistry) -> None:
    """Register the admin messages and replies in ``registry`` (``$admin.*`` tags).

    :func:`start_admin` does it for the node's registry; a tool that talks to
    ``$admin`` with the classes registers them in its own node's registry.

    .. versionadded:: 0.1
    """
    _register_service_messages(registry, "$admin", _CLASSES)


# -- the actor -------------------------------------------------------------------------


_Message: TypeAlias = (
    AdminPing
    | GetInfo
    | ListMembers
    | Spawn
    | StopActor
    | RestartActor
    | Broadcast
    | Drain
    | Shutdown
)


_HANDLED = frozenset(_Message.__args__)


class _AdminActor(Actor[_Message]):
    def __init__(self, service: AdminService) -> None:
        self.service = service

    async def on_start(self) -> None:
        self.context.start_soon(self.service._watch_restarts)

    async def receive(self, message: _Message) -> object:
        s = self.service
        if type(message) not in _HANDLED:  # (a peer may send any registered type)
            return await super().receive(message)
        match message:
            case AdminPing(sent):
                return Pong(s.node.name, sent, trio.current_time())
            case GetInfo():
                return s.info()
            case ListMembers():
                return s.member_list()
            case Spawn(factory, name):
                self._later(s.spawn, factory, name)
            case StopActor(name):
                self._later(s.stop_actor, name)
            case RestartActor(name):
                self._later(s.restart_actor, name)
            case Broadcast(actor, tag, data):
                self._later(s.broadcast, actor, tag, data)
            case Drain(timeout):
                self._later(s.drain, timeout)
            case Shutdown(drain, timeout):
                reply = self.context.reply_later()
                if reply is not None:
                    reply.succeed(True)  # first: the node is about to go away
                self.context.start_soon(s._shut_down, drain, timeout)
        return None

    def _later(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> None:
        """Carry out a command in a background task and answer when it is done."""
        self.context.start_soon(_answer, self.context.reply_later(), fn, *args)


async def _answer(
    reply: ReplyTo | None, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts
) -> None:
    try:
        result = await fn(*args)
    except TrioactorsError as exc:
        if reply is not None:
            reply.fail(exc)  # the asker's ask raises it; the actor carries on
        return
    except Exception as exc:
        if reply is not None:
            reply.fail(ActorCrashed(f"{ACTOR} crashed carrying out a command: {exc!r}", exc))
        raise  # a bug: the actor crashes and its supervisor decides
    if reply is not None:
        reply.succeed(result)


# -- the service ---------------------------------------------------------------------


@final
class AdminService:
    """The management side of a node; from :func:`start_admin`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        membership: Membership | None,
        factories: Mapping[str, Callable[[], object]],
    ) -> None:
        self.node = node
        self.membership = membership
        self.factories = dict(factories)
        self.started = trio.current_time()
        self.shutdown_requested = trio.Event()
        """Set once a :class:`Shutdown` has drained (if asked) and left the cluster."""
        self._draining = False
        self._restarts: dict[str, int] = {}  # path -> restarts, from ChildRestarted events

    # -- public ------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True once a :class:`Drain` (or a draining :class:`Shutdown`) began."""
        return self._draining

    async def wait_shutdown(self) -> None:
        """Wait until a :class:`Shutdown` asks the node to stop.

        The program that runs the node waits on this and then leaves its
        ``async with open_node(...)`` block (the ``trioactors node`` command
        does); nothing else stops the node.
        """
        await self.shutdown_requested.wait()

    def info(self) -> NodeInfo:
        """What :class:`GetInfo` answers."""
        system = self.node.system
        tree = {info.path: info for _, info in _tree(self.node.root)}
        actors = []
        for name, place in sorted(system._registry.items()):
            capacity = place.mailbox.capacity
            child = tree.get(place.path)
            restarts = max(
                0 if child is None else child.restarts, self._restarts.get(place.path, 0)
            )
            actors.append(
                ActorInfo(
                    name,
                    place.path,
                    len(place.mailbox),
                    0 if capacity == math.inf else int(capacity),
                    restarts,
                )
            )
        return NodeInfo(
            node=self.node.name,
            address=self.node.address,
            version=__version__,
            uptime=trio.current_time() - self.started,
            draining=self._draining,
            load=_load(),
            actors=actors,
            members=1 if self.membership is None else len(self.membership.alive()),
        )

    def member_list(self) -> MemberList:
        """What :class:`ListMembers` answers."""
        if self.membership is None:
            return MemberList([MemberInfo(self.node.name, self.node.address, "alive", 0)])
        return MemberList(
            [
                MemberInfo(m.node, m.address, m.state.name.lower(), m.incarnation)
                for m in self.membership.members()
            ]
        )

    async def spawn(self, factory: str, name: str) -> str:
        """Start ``factories[factory]`` under ``node.root`` as ``name``; its address.

        Raises:
          UnknownFactory: no factory of that name was given to the node.
          NameTaken, StartFailed, LocalProtocolError: as ``start_actor``.
        """
        make = self.factories.get(factory)
        if make is None:
            known = ", ".join(sorted(self.factories)) or "none"
            raise UnknownFactory(
                f"unknown factory {factory!r} on node {self.node.name!r} (known: {known}); "
                "give it to start_admin(factories=...) on that node"
            )
        ref = await self.node.root.start_actor(_build, make, factory, name=name)
        return ref.address

    async def stop_actor(self, name: str) -> bool:
        """Stop and remove the supervised actor ``name``; False if there is none."""
        await trio.lowlevel.checkpoint()
        found = _find(self.node.root, name)
        if found is None:
            return False
        parent, _ = found
        await parent.stop_child(name)
        return True

    async def restart_actor(self, name: str) -> bool:
        """Restart the supervised actor ``name`` in place; False if there is none."""
        await trio.lowlevel.checkpoint()
        found = _find(self.node.root, name)
        if found is None:
            return False
        parent, info = found
        return await parent.restart_child(info.name)

    async def broadcast(self, actor: str, tag: str, data: object) -> int:
        """Tell every ``actor`` in the cluster the message ``tag``/``data``; how many.

        Raises:
          UnknownMessageType, InvalidPayload: ``tag`` is not registered here,
            or ``data`` does not fit its class.
        """
        node = self.node
        envelope = Envelope(Kind.TELL, f"{actor}@{node.name}", None, 0, None, tag, data)
        message = node.codec.structure(envelope)
        if self.membership is not None:
            targets = self.membership.lookup(actor)
        else:
            local = node.system.whereis(actor)
            targets = [] if local is None else [local]
        sent = 0

        async def tell(ref: ActorRef[object]) -> None:
            nonlocal sent
            try:
                await ref.tell(message)
            except TrioactorsError:
                return  # unreachable since the lookup: not counted
            sent += 1

        async with trio.open_nursery() as nursery:
            for ref in targets:
                nursery.start_soon(tell, ref)
        return sent

    async def drain(self, timeout: float) -> DrainReport:
        """Stop being found by the cluster and wait for the actors to finish their work."""
        await trio.lowlevel.checkpoint()
        self._draining = True
        if self.membership is not None:
            self.membership.set_announced(_nothing)
        with trio.move_on_after(timeout):
            # Nothing signals that a mailbox became empty or that a handler
            # returned, so the drain looks again every DRAIN_CHECK_INTERVAL.
            while self._pending():  # noqa: ASYNC110 (no event to wait for)
                await trio.sleep(DRAIN_CHECK_INTERVAL)
        pending = self._pending()
        return DrainReport(self.node.name, pending == 0, pending)

    # -- internals -----------------------------------------------------------------

    def _pending(self) -> int:
        """Messages queued for, or being handled by, actors not named ``$...``,
        and work that services hold outside mailboxes (a worker pool's jobs)."""
        handling = {
            info.path
            for sup, info in _tree(self.node.root)
            if info.kind == "actor" and _is_handling(sup, info.name)
        }
        return sum(
            len(place.mailbox) + (place.path in handling)
            for name, place in self.node.system._registry.items()
            if not name.startswith("$")
        ) + sum(count() for count in self.node._work_counters)

    async def _shut_down(self, drain: bool, timeout: float) -> None:
        linger_until = trio.current_time() + SHUTDOWN_LINGER
        if drain:
            await self.drain(timeout)
        if self.membership is not None:
            await self.membership.leave()
        await trio.sleep_until(linger_until)
        self.shutdown_requested.set()

    async def _watch_restarts(self) -> None:
        """Keep restart counts of actors outside the supervisors' tree (children of actors)."""
        with self.node.system.subscribe() as events:
            async for event in events:
                match event:
                    case ChildRestarted(path, restarts):
                        self._restarts[path] = restarts
                    case ChildStarted(path) | ChildStopped(path, "removed"):
                        self._restarts.pop(path, None)  # a new place may take the path
                    case _:
                        pass


def _nothing(_: str) -> bool:
    return False


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return 0.0


def _build(make: Callable[[], object], factory: str) -> Actor[object]:
    actor = make()
    if not isinstance(actor, Actor):
        raise LocalProtocolError(
            f"factory {factory!r} returned {type(actor).__qualname__}, not an Actor"
        )
    return actor


def _tree(sup: Supervisor) -> Iterator[tuple[Supervisor, ChildInfo]]:
    """Every child in the supervisors' tree below ``sup``, with its supervisor."""
    for info in sup.children():
        yield sup, info
        if info.supervisor is not None:
            yield from _tree(info.supervisor)


def _find(root: Supervisor, name: str) -> tuple[Supervisor, ChildInfo] | None:
    """The supervised actor ``name`` (not a system actor) and its supervisor."""
    if name.startswith("$"):
        return None  # system actors are managed by their services, not by hand
    for sup, info in _tree(root):
        if info.kind == "actor" and info.name == name:
            return sup, info
    return None


def _is_handling(sup: Supervisor, name: str) -> bool:
    slot = sup._slots.get(name)
    return (
        slot is not None
        and slot.state is ChildState.RUNNING
        and slot.instance is not None
        and slot.instance.current is not None
    )


async def start_admin(
    node: Node,
    *,
    membership: Membership | None = None,
    factories: Mapping[str, Callable[[], object]] | None = None,
) -> AdminService:
    """Start the node's management actor, ``$admin``, under ``node.root``.

    Registers the ``$admin.*`` messages in the node's registry (see
    :func:`register_admin_messages`).

    Args:
      membership: the node's membership, for :class:`ListMembers`,
        :class:`Broadcast` (to the actor on every member), draining (the
        cluster stops finding this node's actors) and leaving on
        :class:`Shutdown`. Without it the node acts alone.
      factories: what :class:`Spawn` may start: names mapped to callables
        that each return a new :class:`~trioactors.Actor` (a class, usually).

    Returns:
      The :class:`AdminService`: ``draining``, ``wait_shutdown()``.

    Raises:
      NameTaken: the node already runs an ``$admin`` actor.

    .. versionadded:: 0.1
    """
    register_admin_messages(node.codec.registry)
    service = AdminService(node, membership, factories or {})
    await node.root.start_actor(_AdminActor, service, name=ACTOR)
    return service
