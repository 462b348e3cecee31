"""A node: an actor system reachable by name over a transport.

Theory of operation
-------------------

Outgoing: a :class:`_RemoteRef` encodes an envelope and hands the frame to the
transport for the next hop (the node itself, or the gateway named in
``routes``). An ``ask`` registers a pending reply under the envelope's id and
waits for a ``REPLY`` or ``ERROR`` envelope whose ``correlation`` is that id.

Incoming (``_deliver``, called by the transport's readers with the sender's
authenticated name): the header is decoded first. An envelope for another node
is forwarded (hop count + 1, at most ``max_hops``, never back to the node it
came from) or answered with an error. An envelope for this node is typed
(payload structured by the codec) and put in the target actor's mailbox, with
a remote reference to its sender, and for an ``ask`` a reply slot that sends
the handler's result back to the sender address.

Nothing is dropped silently: every refusal is counted in :meth:`Node.statistics`,
logged with the peer's name, answered with an ``ERROR`` envelope when there is
a sender to answer, and recorded as a dead letter when it concerns a message.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Protocol, TypeVar, final

import attrs
import trio
from trio.lowlevel import checkpoint_if_cancelled

from .._errors import (
    ActorCrashed,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    InvalidPayload,
    MalformedFrame,
    NameTaken,
    NodeUnreachable,
    NotSerializable,
    RemoteProtocolError,
    StartFailed,
    TrioactorsError,
    Unauthorized,
    UnhandledMessage,
    UnknownFactory,
    UnknownMessageType,
)
from .._wire._address import Address
from .._wire._codec import Codec, Envelope, Kind
from .._wire._handshake import Role
from ._actor import ActorRef, Letter, _frame, _Reply, is_read_only

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._supervisor import Supervisor
    from ._system import ActorSystem

__all__ = ["DEFAULT_MAX_HOPS", "FrameCarrier", "Node", "NodeStatistics"]

logger = logging.getLogger("trioactors.node")

M = TypeVar("M")

DEFAULT_MAX_HOPS = 3
"""Forwarding hops an envelope may take before it is refused."""
_SENDER_CACHE = 10_000


class FrameCarrier(Protocol):
    """What a node needs from its transport (see ``trioactors.transports.Transport``)."""

    async def send(self, peer: str, frame: bytes) -> None: ...
    def send_nowait(self, peer: str, frame: bytes) -> bool: ...
    def add_peer(self, peer: str, address: str) -> None: ...
    def remove_peer(self, peer: str) -> None: ...
    def peers(self) -> dict[str, str]: ...
    def address_of(self, peer: str) -> str | None: ...
    def role_of(self, peer: str) -> Role: ...


@final
@attrs.frozen
class NodeStatistics:
    """Counters of one node (``Node.statistics()``); see the node docs.

    .. versionadded:: 0.1
    """

    frames_in: int
    frames_out: int
    malformed_frames: int
    unknown_types: int
    invalid_payloads: int
    unknown_actors: int
    unknown_nodes: int
    forwarded: int
    hop_limit_exceeded: int
    late_replies: int
    error_replies_sent: int
    remote_errors: int
    replies_lost: int
    unauthorized: int
    pending_asks: int


@attrs.define
class _Counters:
    frames_in: int = 0
    frames_out: int = 0
    malformed_frames: int = 0
    unknown_types: int = 0
    invalid_payloads: int = 0
    unknown_actors: int = 0
    unknown_nodes: int = 0
    forwarded: int = 0
    hop_limit_exceeded: int = 0
    late_replies: int = 0
    error_replies_sent: int = 0
    remote_errors: int = 0
    replies_lost: int = 0
    unauthorized: int = 0


# Errors that travel as ERROR envelopes, by tag. Anything else arrives as a
# plain TrioactorsError with the remote message.
_REMOTE_ERRORS: dict[str, type[TrioactorsError]] = {
    cls.__name__: cls
    for cls in (
        ActorNotFound,
        ActorStopped,
        InvalidPayload,
        MalformedFrame,
        NodeUnreachable,
        NotSerializable,
        UnknownMessageType,
        Unauthorized,
        UnknownFactory,
        NameTaken,
        StartFailed,
        RemoteProtocolError,
    )
}


def _error_from(tag: str, text: str) -> TrioactorsError:
    if tag == "ActorCrashed":
        return ActorCrashed(text, None)
    if tag == "UnhandledMessage":
        error = UnhandledMessage.__new__(UnhandledMessage)
        Exception.__init__(error, text)
        error.message = None
        return error
    if tag == "AskTimeout":
        return AskTimeout(text)
    return _REMOTE_ERRORS.get(tag, TrioactorsError)(text)


_NO_ACTOR = "$ask"
_NO_ACTOR_PREFIX = f"{_NO_ACTOR}@"


@final
class Node:
    """An actor system with a name, reachable from other nodes.

    Created by :func:`trioactors.open_node`; use :meth:`ref` to reach actors
    anywhere in the cluster by address.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        system: ActorSystem,
        transport: FrameCarrier,
        codec: Codec,
        *,
        routes: dict[str, str] | None = None,
        max_hops: int = DEFAULT_MAX_HOPS,
    ) -> None:
        self.system = system
        self.transport = transport
        self.codec = codec
        self.routes = dict(routes or {})
        self.max_hops = max_hops
        self.address = ""
        """The address peers use to reach this node (set when it serves)."""
        self.root: Supervisor
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._senders: dict[str, ActorRef[object]] = {}
        # Work a service holds outside any mailbox (a worker pool's jobs):
        # counted by a drain, which waits for it to end.
        self._work_counters: list[Callable[[], int]] = []
        # Frames posted from synchronous code (replies, errors, forwards,
        # tell_nowait) that could not go straight onto a connection: one queue
        # and one sending task per destination, so an unreachable node only
        # holds up its own frames.
        self._outboxes: dict[str, deque[bytes]] = {}  # frames waiting, per destination
        self._nursery: trio.Nursery | None = None
        self._n = _Counters()

    @property
    def name(self) -> str:
        """The node's name: actors here are addressed ``actor@name``."""
        return self.system.name

    def __repr__(self) -> str:
        return f"<Node {self.name} at {self.address or '(not serving)'}>"

    # -- public ------------------------------------------------------------------

    def ref(self, address: str) -> ActorRef[object]:
        """A reference to the actor at ``address`` (``name@node``), here or remote.

        A remote reference is not checked until it is used: sending to an
        actor that does not exist fails the ``ask`` with ``ActorNotFound``.

        Raises:
          ValueError: ``address`` is not of the form ``name@node``.
          ActorNotFound: the address is on this node and no such actor exists.
        """
        parsed = Address.parse(address)
        if parsed.node == self.name:
            return self.system.lookup(parsed.name)
        return _RemoteRef(self, parsed)

    def add_peer(self, node: str, address: str) -> None:
        """Tell this node where ``node`` can be reached."""
        self.transport.add_peer(node, address)

    def statistics(self) -> NodeStatistics:
        """A snapshot of this node's counters (frames, refusals, late replies, ...)."""
        return NodeStatistics(**attrs.asdict(self._n), pending_asks=len(self._pending))

    # -- sending -----------------------------------------------------------------

    def _next_hop(self, node: str, *, came_from: str | None = None) -> str:
        if self.transport.address_of(node) is not None:
            return node
        via = self.routes.get(node)
        if via is not None and via != came_from and via != self.name:
            return via
        raise NodeUnreachable(
            f"no address or route for node {node!r} from {self.name!r}; add it with "
            "add_peer() (or let cluster membership find it), or configure routes"
        )

    def _send_nowait(self, node: str, frame: bytes) -> bool:
        """Hand a frame to a live connection with room; False if it would wait."""
        if self.transport.send_nowait(self._next_hop(node), frame):
            self._n.frames_out += 1
            return True
        return False

    async def _send(self, node: str, frame: bytes) -> None:
        await checkpoint_if_cancelled()
        if not self._send_nowait(node, frame):  # no room or no connection yet
            await self.transport.send(self._next_hop(node), frame)
            self._n.frames_out += 1

    def _post(self, node: str, envelope: Envelope, *, raw: bool = False) -> None:
        """Queue an envelope for the outbox task (replies, errors, forwards)."""
        try:
            frame = self.codec.encode(envelope, raw=raw)
        except NotSerializable as exc:
            if envelope.kind is not Kind.REPLY:
                raise
            logger.warning("%s: reply to %s is not serializable: %s", self.name, envelope.to, exc)
            error = Envelope(
                Kind.ERROR,
                envelope.to,
                envelope.sender,
                0,
                envelope.correlation,
                "NotSerializable",
                str(exc),
            )
            frame = self.codec.encode(error)
        try:  # straight onto a live connection: no trip through an outbox task
            self._send_or_queue(node, frame)
        except NodeUnreachable:
            self._queue(node, frame)  # the outbox task reports it

    def _send_or_queue(self, node: str, frame: bytes) -> None:
        """Send now if nothing waits for ``node`` and a connection has room; else queue."""
        if node not in self._outboxes and self._send_nowait(node, frame):
            return  # (frames already queued for the node must go first)
        self._queue(node, frame)

    def _queue(self, node: str, frame: bytes) -> None:
        outbox = self._outboxes.get(node)
        if outbox is None:
            if self._nursery is None:
                self._n.replies_lost += 1
                return
            outbox = self._outboxes[node] = deque()
            self._nursery.start_soon(self._pump, node, outbox)
        outbox.append(frame)  # its bound is the number of requests in flight

    async def _pump(self, node: str, outbox: deque[bytes]) -> None:
        """Send what was queued for ``node``, in order; retire once it is all sent.

        (A task per destination only while frames wait for a connection or for
        room in one: a node that talks to thousands of peers keeps no idle tasks.)
        """
        try:
            while outbox:
                try:
                    await self._send(node, outbox[0])
                    outbox.popleft()
                except NodeUnreachable as exc:
                    # what waits behind it would fail the same way: drop it too
                    lost = len(outbox)
                    outbox.clear()
                    self._n.replies_lost += lost
                    logger.warning("%s: dropped %d frame(s) for %s: %s", self.name, lost, node, exc)
        finally:
            del self._outboxes[node]

    def _reply_address(self) -> str:
        current = _frame.get()[0]
        return f"{current.name}@{self.name}" if current is not None else f"{_NO_ACTOR}@{self.name}"

    def _sender_ref(self, address: str | None) -> ActorRef[object] | None:
        # (System actors, named "$...", are senders like any other; "$ask" is
        # the reply address of an ask from outside any actor: no sender.)
        if address is None or address.startswith(_NO_ACTOR_PREFIX):
            return None
        ref = self._senders.get(address)
        if ref is None:
            try:
                parsed = Address.parse(address)
            except ValueError:
                return None
            if parsed.node == self.name:
                return self.system.whereis(parsed.name)
            if len(self._senders) >= _SENDER_CACHE:
                self._senders.clear()
            ref = self._senders[address] = _RemoteRef(self, parsed)
        return ref

    # -- receiving ---------------------------------------------------------------

    async def _deliver(self, peer: str, frame: bytes) -> None:
        """Called by the transport for every frame from ``peer``."""
        self._n.frames_in += 1
        try:
            envelope = self.codec.decode(frame, structure=False)
        except RemoteProtocolError as exc:
            self._n.malformed_frames += 1
            logger.warning("%s: malformed frame from %s: %s", self.name, peer, exc)
            return
        name, _, node = envelope.to.rpartition("@")  # (validated where it matters)
        if self.transport.role_of(peer) is Role.OBSERVER:
            if not self._observer_may(peer, envelope, node):
                return
            await self._on_request(peer, envelope, name, observer=True)
            return
        if node != self.name:
            try:
                target = Address.parse(envelope.to)
            except ValueError as exc:
                self._n.malformed_frames += 1
                logger.warning("%s: malformed frame from %s: %s", self.name, peer, exc)
                return
            self._forward(peer, envelope, target)
            return
        if envelope.kind in (Kind.REPLY, Kind.ERROR):
            self._on_reply(peer, envelope)
            return
        await self._on_request(peer, envelope, name)

    def _forward(self, peer: str, envelope: Envelope, target: Address) -> None:
        if envelope.hops + 1 > self.max_hops:
            self._n.hop_limit_exceeded += 1
            self._refuse(
                peer,
                envelope,
                "NodeUnreachable",
                f"hop limit {self.max_hops} exceeded at {self.name}",
            )
            return
        try:
            self._next_hop(target.node, came_from=peer)
        except NodeUnreachable as exc:
            self._n.unknown_nodes += 1
            self._refuse(peer, envelope, "NodeUnreachable", str(exc))
            return
        self._n.forwarded += 1
        self._post(target.node, attrs.evolve(envelope, hops=envelope.hops + 1), raw=True)

    def _on_reply(self, peer: str, envelope: Envelope) -> None:
        reply = (
            self._pending.get(envelope.correlation) if envelope.correlation is not None else None
        )
        if envelope.kind is Kind.ERROR:
            error = _error_from(envelope.tag, str(envelope.payload))
            if reply is not None:
                reply.fail(error)
                return
            # the answer to a tell: nobody waits, so it becomes a dead letter here
            self._n.remote_errors += 1
            logger.info("%s: %s from %s: %s", self.name, envelope.tag, peer, envelope.payload)
            self.system._dead_letter(
                envelope.sender or peer, None, None, f"{envelope.tag}: {envelope.payload}"
            )
            return
        if reply is None:
            self._n.late_replies += 1  # its ask timed out, or a duplicate
            return
        try:
            payload = self.codec.structure(envelope)
        except RemoteProtocolError as exc:
            self._count_payload_error(peer, exc)
            reply.fail(exc)
            return
        reply.succeed(payload)

    def _observer_may(self, peer: str, envelope: Envelope, node: str) -> bool:
        """Whether a read-only peer's envelope may go on (a request here, from itself)."""
        sender = envelope.sender
        if (
            envelope.kind in (Kind.ASK, Kind.TELL)
            and node == self.name
            and (sender is None or sender.rpartition("@")[2] == peer)
        ):
            return True
        self._n.unauthorized += 1
        logger.warning("%s: refused %s from observer %s", self.name, envelope.kind.name, peer)
        if sender is not None and sender.rpartition("@")[2] == peer:
            self._refuse(
                peer, envelope, "Unauthorized", f"a read-only peer may not send to {envelope.to}"
            )
        return False

    async def _on_request(
        self, peer: str, envelope: Envelope, name: str, *, observer: bool = False
    ) -> None:
        place = self.system._registry.get(name)
        if place is None:
            self._n.unknown_actors += 1
            try:  # record the message typed if we can, raw if we cannot
                message = self.codec.structure(envelope)
            except RemoteProtocolError:
                message = envelope.payload
            self.system._dead_letter(envelope.to, message, None, "unknown actor")
            self._refuse(
                peer,
                envelope,
                "ActorNotFound",
                f"no actor named {name!r} on node {self.name!r}",
            )
            return
        try:
            payload = self.codec.structure(envelope)
        except RemoteProtocolError as exc:
            self._count_payload_error(peer, exc)
            self._refuse(peer, envelope, type(exc).__name__, str(exc))
            return
        if observer and not is_read_only(type(payload)):
            self._n.unauthorized += 1
            logger.warning("%s: refused %s from observer %s", self.name, envelope.tag, peer)
            self._refuse(
                peer,
                envelope,
                "Unauthorized",
                f"{envelope.tag} is not a read-only query: a read-only peer may not send it",
            )
            return
        reply = _RemoteReply(self, envelope) if envelope.kind is Kind.ASK else None
        letter = Letter(payload, self._sender_ref(envelope.sender), reply, ())
        if place.mailbox.try_put(letter):
            return
        try:
            await place.mailbox.put(letter)  # backpressure reaches the connection
        except trio.ClosedResourceError:
            place.reject(letter, "stopped")

    def _count_payload_error(self, peer: str, exc: RemoteProtocolError) -> None:
        if isinstance(exc, UnknownMessageType):
            self._n.unknown_types += 1
        elif isinstance(exc, InvalidPayload):
            self._n.invalid_payloads += 1
        else:
            self._n.malformed_frames += 1
        logger.warning("%s: bad payload from %s: %s", self.name, peer, exc)

    def _refuse(self, peer: str, envelope: Envelope, tag: str, text: str) -> None:
        """Answer a request we cannot serve with an ERROR to its sender."""
        logger.info("%s: refusing %s from %s: %s", self.name, envelope.to, peer, text)
        if envelope.sender is None or envelope.kind in (Kind.REPLY, Kind.ERROR):
            return
        self._send_error(envelope, tag, text)

    def _send_error(self, envelope: Envelope, tag: str, text: str) -> None:
        assert envelope.sender is not None
        try:
            back = Address.parse(envelope.sender)
        except ValueError:
            return
        self._n.error_replies_sent += 1
        self._post(back.node, _error_envelope(envelope, tag, text))


def _error_envelope(request: Envelope, tag: str, text: str) -> Envelope:
    """The ERROR answering ``request``: to its sender, naming what failed."""
    assert request.sender is not None
    return Envelope(Kind.ERROR, request.sender, request.to, 0, request.id, tag, text)


@final
class _RemoteReply:
    """The reply slot of a request from another node: answers go back there."""

    __slots__ = ("_done", "_node", "_request")

    def __init__(self, node: Node, request: Envelope) -> None:
        self._node = node
        self._request = request
        self._done = False

    def succeed(self, value: object) -> None:
        if self._done or self._request.sender is None:
            return
        self._done = True
        request = self._request
        assert request.sender is not None
        reply = Envelope(Kind.REPLY, request.sender, request.to, 0, request.id, "", value)
        self._node._post(request.sender.rpartition("@")[2], reply)

    def fail(self, error: BaseException) -> None:
        if self._done or self._request.sender is None:
            return
        self._done = True
        self._node._send_error(self._request, type(error).__name__, str(error))


@final
class _RemoteRef(ActorRef[M]):
    """A reference to an actor on another node."""

    __slots__ = ("_address", "_node", "_text")

    def __init__(self, node: Node, address: Address) -> None:
        self._node = node
        self._address = address
        self._text = str(address)

    @property
    def name(self) -> str:
        return self._address.name

    @property
    def address(self) -> str:
        return self._text

    @property
    def path(self) -> str:
        return self._text

    @property
    def is_local(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RemoteRef) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)

    def _system(self) -> ActorSystem:
        return self._node.system

    def _envelope(self, kind: Kind, message: object, id_: int) -> bytes:
        node = self._node
        envelope = Envelope(kind, self._text, node._reply_address(), id_, None, "", message)
        return node.codec.encode(envelope)

    async def tell(self, message: M) -> None:
        node = self._node
        frame = self._envelope(Kind.TELL, message, next(node._ids))
        if self._address.node in node._outboxes:  # behind what is queued, in order
            await checkpoint_if_cancelled()
            node._queue(self._address.node, frame)
        else:
            await node._send(self._address.node, frame)

    def tell_nowait(self, message: M) -> None:
        """Queue the message for sending by the node; a send failure is logged."""
        node = self._node
        frame = self._envelope(Kind.TELL, message, next(node._ids))
        node._next_hop(self._address.node)  # unknown node: fail now, not later
        node._send_or_queue(self._address.node, frame)

    async def _ask(self, message: object, timeout: float | None) -> object:
        node = self._node
        id_ = next(node._ids)
        frame = self._envelope(Kind.ASK, message, id_)
        reply = _Reply(self._text, message, timeout)
        node._pending[id_] = reply
        timer = node.system._timer
        try:
            await checkpoint_if_cancelled()
            if self._address.node in node._outboxes:  # behind what is queued, in order
                node._queue(self._address.node, frame)
                sent = True
            else:
                sent = node._send_nowait(self._address.node, frame)
            if sent and timeout is not None and timer is not None and timer.watch(reply, timeout):
                # Sent without waiting: the system's timer bounds the wait for
                # the reply (see _deadlines.py), cheaper than a cancel scope.
                try:
                    return await reply.wait()
                finally:
                    timer.trim(timeout)
            deadline = math.inf if timeout is None else trio.current_time() + timeout
            with trio.CancelScope(deadline=deadline):
                if not sent:
                    await node._send(self._address.node, frame)
                return await reply.wait()
            raise reply.timeout_error()
        finally:
            del node._pending[id_]
