"""Shared machinery of the connection-based transports (websocket and tcp).

Theory of operation
-------------------

A subclass supplies a *frame stream* (:class:`FrameStream`: whole frames in,
whole frames out, a liveness ping) through two hooks: :meth:`connect_stream`
opens one to an address, :meth:`serve_streams` accepts them and hands each
to a callback. Everything else lives here, all of it as tasks of the
nursery that :meth:`~StreamTransport.serve` owns:

- **Two connections per pair.** A connection we open is used to *send* only;
  one we accept is used to *receive* only. The client's hello carries its
  advertised address, so the accepting side learns where to send replies
  (``add_peer``) and opens its own connection back on demand.
- **Per peer**: a task that connects, authenticates (the handshake of
  :mod:`trioactors._wire._handshake`), then runs a writer, a reader and a
  heartbeat until the connection ends, and reconnects after a break with
  exponential backoff and full jitter
  (``uniform(0, min(reconnect_max, reconnect_initial * 2**n))``). It starts on
  the first ``send`` and runs until the peer is removed or serving stops (so
  an idle connection is re-established eagerly after a break). A peer that
  is removed but still alive connects again, and its hello adds it back.
- **Sending**: each live connection has a bounded queue
  (``send_queue_size``); ``send`` puts the frame there (waiting while it is
  full: backpressure) and returns. If the peer is down or connecting, ``send``
  waits for the connection at most ``connect_timeout``, then raises
  :class:`NodeUnreachable`. A per-connection writer task writes queued
  frames in batches. When it is parked on an empty queue, the sending task
  may write its frame itself, if the stream can do that without blocking
  (:meth:`FrameStream.send_frame_nowait`; plain TCP only): one task switch
  less per message, and FIFO order kept (see :class:`_Link`). Frames still
  queued or being written when a connection breaks are lost and counted
  (``frames_lost``): delivery is at most once. Frames already handed to the
  operating system count as sent (as does one written in part, whose rest the
  writer sends), even if the break then loses them.
- **Receiving**: every connection, in either direction, has a reader that
  always drains the stream and calls ``deliver`` for each data frame, so
  liveness pings are answered (a reader that stops would make the peer
  declare us dead). ``deliver`` may apply backpressure, but for less than
  ``heartbeat_timeout``, or the sender's heartbeat closes the connection.
- **Liveness**: every ``heartbeat_interval`` each side pings, under
  ``trio.fail_after(heartbeat_timeout)``; a missed pong closes the connection
  (``heartbeat_failures``). This is what detects a half-open peer.
- **Bad peers** (oversize frames, failed authentication, version mismatch,
  malformed handshakes) are counted (on either side of the connection),
  logged with the claimed name and the remote address, and disconnected; the
  transport keeps serving everyone else.

Invariants: ``connections_open`` counts connections past their handshake;
``send`` never waits for a connection longer than ``connect_timeout``; every
task ends when ``serve`` ends.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias, final

import attrs
import trio

from .._errors import (
    AuthenticationFailed,
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    NodeUnreachable,
    ProtocolVersionMismatch,
    RemoteProtocolError,
    Unauthorized,
)
from .._wire._handshake import (
    MAX_NAME_LENGTH,
    ClientHandshake,
    Established,
    Failed,
    PeerInfo,
    Role,
    Send,
    ServerHandshake,
)
from ._base import PROTOCOL_VERSION, Deliver, Transport, TransportConfig, TransportStatistics

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["FrameStream", "StreamHandler", "StreamTransport"]

logger = logging.getLogger("trioactors.transports")

_BATCH_FRAMES = 64
_BATCH_BYTES = 256 * 1024
_MAX_BACKOFF_EXPONENT = 30
_CONNECT_ERRORS = (
    OSError,  # includes NodeUnreachable and ssl.SSLError
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    RemoteProtocolError,
)
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError)


class FrameStream(abc.ABC):
    """One connection carrying whole frames, as the transports' hooks provide it.

    Error contract of every method: :class:`trio.BrokenResourceError` when the
    peer or the network ended the connection (translated ``from`` the library's
    own exception), :class:`trio.ClosedResourceError` after :meth:`aclose`.
    :meth:`receive_frame` also raises :class:`FrameTooLarge` for an incoming
    frame over the limit (before reading it) and :class:`MalformedFrame` for
    input that is not a frame at all.
    """

    remote: str
    """The peer's network address, for logs (``"127.0.0.1:52341"``)."""

    @abc.abstractmethod
    async def send_frame(self, frame: bytes) -> None:
        """Send one data frame."""

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send several data frames in order (override to coalesce writes)."""
        for frame in frames:
            await self.send_frame(frame)

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Write one data frame now, without blocking and without a checkpoint, if possible.

        Returns False, having written nothing, when that would block (or when
        the stream has no such path: the default); then call :meth:`send_frames`.
        Returns True once the frame is written, or once part of it is and the
        stream keeps the rest (:attr:`unsent`), which the next send writes first.
        The transport calls it only while no other write of its own is in progress.
        """
        return False

    @property
    def unsent(self) -> bool:
        """Whether part of a frame awaits the next send (see :meth:`send_frame_nowait`)."""
        return False

    @abc.abstractmethod
    async def receive_frame(self) -> bytes:
        """Receive the next data frame (answering liveness pings on the way)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return once the peer has answered a liveness ping.

        It may rely on a concurrent :meth:`receive_frame` call to see the
        answer; the transport always runs one.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection, waiting only briefly for a graceful goodbye."""


StreamHandler: TypeAlias = Callable[[FrameStream], Awaitable[None]]
"""``await handler(stream)``: run one accepted connection until it ends."""


@attrs.define
class _Counters:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connections_open: int = 0
    connects: int = 0
    connect_failures: int = 0
    auth_failures: int = 0
    version_mismatches: int = 0
    oversize_frames: int = 0
    heartbeat_failures: int = 0
    frames_lost: int = 0


@final
class _Peer:
    """What we know about one peer, and its outgoing connection."""

    def __init__(self, name: str, address: str, role: Role = Role.MEMBER) -> None:
        self.name = name
        self.address = address
        self.role = role
        """How the peer authenticated (an observer: a read-only tool)."""
        self.link: _Link | None = None
        """The outgoing connection while it is up: where ``send`` puts frames."""
        self.task: trio.CancelScope | None = None
        self.removed = False
        self.last_error: BaseException | None = None
        self.changed = trio.Event()

    def notify(self) -> None:
        """Wake every ``send`` waiting for this peer's connection to change."""
        self.changed.set()
        self.changed = trio.Event()


@final
class _Link:
    """The sending side of one outgoing connection.

    Frames wait in a memory channel (``send_queue_size`` of them at most) for
    the writer task, which takes them in batches. A sender may instead write
    its frame itself with :meth:`FrameStream.send_frame_nowait`, which never
    blocks, but only while ``idle``: the writer is parked on an empty channel
    with nothing handed to it. The writer sets ``idle`` just before it parks
    (in the step that found the channel empty); every put clears it. So a
    direct write never overtakes a queued frame, never interleaves with the
    writer's writes, and the channel's FIFO keeps blocked senders in order.
    ``None`` in the channel asks the writer to write the rest of a frame that
    ``send_frame_nowait`` wrote in part.
    """

    __slots__ = ("idle", "outbox", "queue", "stream")

    def __init__(self, stream: FrameStream, capacity: int) -> None:
        self.stream = stream
        self.outbox, self.queue = trio.open_memory_channel[bytes | None](capacity)
        self.idle = False


@final
class _Ending:
    """How a connection's tasks end it: the first one to finish records why."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.reason = ""

    def end(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.scope.cancel()


async def _close_quietly(stream: FrameStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.aclose()


async def _drive(stream: FrameStream, machine: ClientHandshake | ServerHandshake) -> PeerInfo:
    """Run a handshake machine over ``stream`` until it establishes or fails."""
    if isinstance(machine, ClientHandshake):
        await stream.send_frame(machine.start())
    while True:
        actions = machine.receive(await stream.receive_frame())
        failure = next((a.error for a in actions if isinstance(a, Failed)), None)
        for action in actions:
            match action:
                case Send(message):
                    try:
                        await stream.send_frame(message)
                    except _LOST:
                        if failure is None:
                            raise
                        raise failure from None
                case Established(peer):
                    return peer
                case Failed(error):
                    raise error


class StreamTransport(Transport):
    """A :class:`Transport` over connections; subclasses supply the frame streams.

    Args:
      config: Limits, timeouts, the secret and TLS contexts.
      advertise: The address peers should use to reach this node, if not the
        one :meth:`serve_streams` reports (e.g. when listening on ``0.0.0.0``).
      rng: Source of reconnect jitter (seed it for reproducible tests).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        advertise: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        if advertise is not None:
            self.check_address(advertise)
            if len(advertise) > MAX_NAME_LENGTH:
                raise ValueError(f"advertise must be at most {MAX_NAME_LENGTH} characters")
        self._advertise = advertise
        self._random = rng if rng is not None else random.Random()
        self._counters = _Counters()
        self._peers: dict[str, _Peer] = {}
        self._incoming: dict[str, set[trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None  # set while serving, once listening
        self._serving = False
        self._ready = trio.Event()
        self._node = ""
        self._address = ""
        self._deliver: Deliver | None = None

    # -- hooks ----------------------------------------------------------------------

    @abc.abstractmethod
    def check_address(self, address: str) -> None:
        """Raise :class:`ValueError` unless ``address`` is one this transport can reach."""

    @abc.abstractmethod
    async def connect_stream(self, address: str, nursery: trio.Nursery) -> FrameStream:
        """Open a client stream to ``address``.

        Args:
          address: A peer's address (already checked by :meth:`check_address`).
          nursery: Where the stream may run background tasks; it is cancelled
            after the stream has been closed.

        Raises:
          OSError: the connection could not be made.
          trio.BrokenResourceError: the connection broke while being set up.
        """

    @abc.abstractmethod
    async def serve_streams(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[str],
    ) -> None:
        """Accept connections until cancelled, calling ``await handler(stream)`` for each.

        Close each stream after its handler returns. Report readiness with
        ``task_status.started(address)``, the address at which peers reach us.
        """

    # -- Transport ------------------------------------------------------------------

    async def serve(
        self,
        node: str,
        deliver: Deliver,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, connect, read, write and check liveness until cancelled.

        See :meth:`Transport.serve`.

        Raises:
          LocalProtocolError: this transport is already serving.
        """
        if self._serving:
            raise LocalProtocolError("this transport is already serving; create one per node")
        if not 0 < len(node) <= MAX_NAME_LENGTH:
            raise ValueError(f"a node name has 1 to {MAX_NAME_LENGTH} characters, not {node!r:.40}")
        self._node = node
        self._deliver = deliver
        self._ready = trio.Event()
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                address: str = await nursery.start(self.serve_streams, self._handle_incoming)
                self._address = self._advertise or address
                self._nursery = nursery
                self._ready.set()
                logger.debug("%s serving at %s", node, self._address)
                task_status.started(self._address)
        finally:
            self._serving = False
            self._nursery = None
            for peer in self._peers.values():
                peer.task = None
                peer.link = None
                peer.notify()

    def _check_size(self, frame: bytes) -> None:
        if len(frame) > self.config.max_frame_size:
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes exceeds max_frame_size={self.config.max_frame_size}; "
                "send smaller messages or raise the limit on every node"
            )

    def send_nowait(self, peer: str, frame: bytes) -> bool:
        """Queue ``frame`` if ``peer``'s connection is up and has room. See :meth:`Transport.send_nowait`."""
        self._check_size(frame)
        entry = self._peers.get(peer)
        if entry is None or entry.link is None:
            return False
        return self._put_nowait(entry.link, frame)

    def _put_nowait(self, link: _Link, frame: bytes) -> bool:
        """Write ``frame`` now if the link is idle and the stream can, else queue it if there is room."""
        stream = link.stream
        if link.idle and stream.send_frame_nowait(frame):
            counters = self._counters
            counters.frames_sent += 1
            counters.bytes_sent += len(frame)
            if stream.unsent:  # the writer writes the rest
                link.idle = False
                link.outbox.send_nowait(None)  # (handed to the parked writer: never full)
            return True
        try:
            link.outbox.send_nowait(frame)
        except (trio.WouldBlock, trio.BrokenResourceError):
            return False
        link.idle = False
        return True

    async def send(self, peer: str, frame: bytes) -> None:
        """Queue ``frame`` for ``peer`` on a live connection. See :meth:`Transport.send`.

        Raises:
          FrameTooLarge: ``frame`` exceeds ``max_frame_size``.
          NodeUnreachable: no address is known for ``peer``, the transport is not
            serving, or no connection came up within ``connect_timeout``.
        """
        self._check_size(frame)
        if self._nursery is None:
            raise NodeUnreachable(f"cannot send to {peer!r}: this transport is not serving")
        entry = self._peers.get(peer)
        if entry is None:
            raise NodeUnreachable(f"no address known for node {peer!r}; call add_peer() first")
        link = entry.link
        if link is not None:  # fast path: a live connection with room, no scheduling
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._put_nowait(link, frame):
                return
        deadline: float | None = None
        while True:
            link = entry.link
            if link is not None:
                link.idle = False  # (if we wait, the channel is full: not idle anyway)
                try:
                    await link.outbox.send(frame)
                except trio.BrokenResourceError:
                    continue  # that connection ended while we waited for room
                return
            if entry.removed or self._nursery is None:
                raise NodeUnreachable(f"node {peer!r} was removed or this transport stopped")
            self._ensure_task(entry)
            if deadline is None:
                deadline = trio.current_time() + self.config.connect_timeout
            with trio.move_on_at(deadline) as waiting:
                while entry.link is None and not entry.removed and self._nursery is not None:
                    # a new address (add_peer) stops the connecting task: start the next
                    self._ensure_task(entry)
                    await entry.changed.wait()
            if waiting.cancelled_caught:
                error = entry.last_error
                detail = f" (last error: {error!r})" if error is not None else ""
                raise NodeUnreachable(
                    f"no connection to node {peer!r} at {entry.address} within "
                    f"connect_timeout={self.config.connect_timeout} s{detail}"
                ) from error

    def add_peer(self, peer: str, address: str) -> None:
        """Remember where ``peer`` is; a new address closes the connection to the old one.

        Raises:
          ValueError: this transport cannot reach ``address``.
        """
        self._add_peer(peer, address, Role.MEMBER)

    def _add_peer(self, peer: str, address: str, role: Role) -> None:
        self.check_address(address)
        entry = self._peers.get(peer)
        if entry is None:
            self._peers[peer] = _Peer(peer, address, role)
            return
        if entry.role is not role:
            entry.role = role
            entry.address = address
            self._stop_task(entry)  # (its connection was made for the other role)
        elif entry.address != address:
            entry.address = address
            self._stop_task(entry)

    def remove_peer(self, peer: str) -> None:
        """Forget ``peer`` and close our connections with it, both directions.

        If the peer is alive it may connect again, which adds it back.
        """
        entry = self._peers.pop(peer, None)
        if entry is not None:
            entry.removed = True
            self._stop_task(entry)
        for scope in list(self._incoming.get(peer, ())):
            scope.cancel()

    def peers(self) -> dict[str, str]:
        """The known peers and their addresses."""
        return {name: entry.address for name, entry in self._peers.items()}

    def address_of(self, peer: str) -> str | None:
        entry = self._peers.get(peer)
        return None if entry is None else entry.address

    def role_of(self, peer: str) -> Role:
        entry = self._peers.get(peer)
        return Role.MEMBER if entry is None else entry.role

    def statistics(self) -> TransportStatistics:
        """A snapshot of this transport's counters."""
        return TransportStatistics(**attrs.asdict(self._counters))

    # -- outgoing -------------------------------------------------------------------

    def _ensure_task(self, entry: _Peer) -> None:
        if entry.task is None and self._nursery is not None:
            entry.task = trio.CancelScope()
            self._nursery.start_soon(self._run_peer, entry, entry.task, name=f"peer {entry.name}")

    def _stop_task(self, entry: _Peer) -> None:
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None
        entry.link = None  # frames queued on it are lost, counted as its connection ends
        entry.notify()

    async def _run_peer(self, entry: _Peer, scope: trio.CancelScope) -> None:
        """Keep one outgoing connection to ``entry`` up, reconnecting with backoff."""
        config = self.config
        attempt = 0
        try:
            with scope:
                while True:
                    if await self._connect_and_run(entry):
                        attempt = 0
                    ceiling = min(config.reconnect_max, config.reconnect_initial * 2**attempt)
                    attempt = min(attempt + 1, _MAX_BACKOFF_EXPONENT)
                    await trio.sleep(self._random.uniform(0, ceiling))
        finally:
            if entry.task is scope:
                entry.task = None
            entry.notify()

    async def _connect_and_run(self, entry: _Peer) -> bool:
        """Connect once and run the connection; return whether it came up."""
        async with trio.open_nursery() as nursery:  # owns the stream's background tasks
            try:
                return await self._outgoing(entry, nursery)
            finally:
                nursery.cancel_scope.cancel()

    def _client_handshake(self, peer_role: Role = Role.MEMBER) -> ClientHandshake:
        """The handshake for connecting out: as an observer if we are one or the peer is."""
        config = self.config
        observer = config.role is Role.OBSERVER or peer_role is Role.OBSERVER
        key = config.read_only_secret if observer else config.secret
        return ClientHandshake(
            node=self._node,
            address=self._address,
            secret=b"" if key is None else key,
            version=PROTOCOL_VERSION,
            role=Role.OBSERVER if observer else Role.MEMBER,
        )

    async def identify(self, address: str) -> PeerInfo:
        """Connect to ``address``, authenticate, hang up: who is there.

        For tools that are given an address, not a name (connections are
        made by name). Raises what a connection attempt raises (OSError,
        AuthenticationFailed, ...); bound it with a timeout.
        """
        async with trio.open_nursery() as nursery:  # (the stream's background tasks)
            stream = await self.connect_stream(address, nursery)
            try:
                return await _drive(stream, self._client_handshake())
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await _close_quietly(stream)
                nursery.cancel_scope.cancel()

    async def _outgoing(self, entry: _Peer, nursery: trio.Nursery) -> bool:
        address = entry.address
        machine = self._client_handshake(entry.role)
        stream: FrameStream | None = None
        try:
            try:
                with trio.fail_after(self.config.connect_timeout):
                    stream = await self.connect_stream(address, nursery)
                    info = await _drive(stream, machine)
                if info.node != entry.name:
                    raise NodeUnreachable(
                        f"{address} is node {info.node!r}, not {entry.name!r}; "
                        "update the address with add_peer()"
                    )
            except BaseException:
                if stream is not None:
                    await _close_quietly(stream)
                raise
        except _CONNECT_ERRORS as exc:
            self._connect_failed(entry, address, exc)
            return False

        assert stream is not None
        link = _Link(stream, self.config.send_queue_size)
        counters = self._counters
        if entry.address == address and not entry.removed:
            entry.link = link
            entry.last_error = None
            entry.notify()
        counters.connects += 1
        counters.connections_open += 1
        logger.debug("%s connected to %s at %s", self._node, entry.name, address)
        try:
            reason = await self._run_connection(stream, entry.name, link)
            logger.info("connection to %s at %s ended: %s", entry.name, address, reason)
        finally:
            if entry.link is link:
                entry.link = None
                entry.notify()
            counters.connections_open -= 1
            link.idle = False
            queue = link.queue
            queue.close()  # wakes senders waiting for room
            while True:
                try:
                    counters.frames_lost += queue.receive_nowait() is not None
                except (trio.WouldBlock, trio.ClosedResourceError):
                    break
            await _close_quietly(stream)
        return True

    def _count_rejection(self, exc: BaseException) -> None:
        counters = self._counters
        if isinstance(exc, AuthenticationFailed | Unauthorized):
            counters.auth_failures += 1
        elif isinstance(exc, ProtocolVersionMismatch):
            counters.version_mismatches += 1
        elif isinstance(exc, FrameTooLarge):
            counters.oversize_frames += 1

    def _connect_failed(self, entry: _Peer, address: str, exc: BaseException) -> None:
        self._counters.connect_failures += 1
        self._count_rejection(exc)
        entry.last_error = exc
        if isinstance(exc, RemoteProtocolError | NodeUnreachable):
            logger.warning(
                "%s: connecting to %s at %s failed: %s", self._node, entry.name, address, exc
            )
        else:
            logger.debug("%s: cannot connect to %s at %s: %r", self._node, entry.name, address, exc)

    # -- incoming -------------------------------------------------------------------

    async def _handle_incoming(self, stream: FrameStream) -> None:
        """Authenticate an accepted connection, then read it until it ends."""
        counters = self._counters
        machine: ServerHandshake | None = None
        try:
            with trio.fail_after(self.config.connect_timeout):
                await self._ready.wait()
                machine = ServerHandshake(
                    node=self._node,
                    address=self._address,
                    secret=self.config.secret,
                    version=PROTOCOL_VERSION,
                    read_only_secret=self.config.read_only_secret,
                )
                info = await _drive(stream, machine)
            role = info.role
            if self.config.role is Role.OBSERVER:
                role = Role.MEMBER  # (we are the tool: the cluster answers us as observers)
            known = self._peers.get(info.node)
            if role is Role.OBSERVER and known is not None and known.role is Role.MEMBER:
                raise Unauthorized(
                    f"observer {info.node!r} refused: a member of that name is known here"
                )
            self._add_peer(info.node, info.address, role)
        except (*_CONNECT_ERRORS, ValueError) as exc:
            claimed = machine.claimed if machine is not None else None
            who = repr(claimed.node) if claimed is not None else "an unknown node"
            self._count_rejection(exc)
            if isinstance(exc, RemoteProtocolError | ValueError):
                logger.warning(
                    "%s: rejected connection from %s at %s: %s", self._node, who, stream.remote, exc
                )
            else:
                logger.debug(
                    "%s: handshake with %s at %s failed: %r", self._node, who, stream.remote, exc
                )
            return

        scope = trio.CancelScope()
        scopes = self._incoming.setdefault(info.node, set())
        scopes.add(scope)
        counters.connections_open += 1
        try:
            with scope:
                reason = await self._run_connection(stream, info.node, None)
                logger.info("connection from %s at %s ended: %s", info.node, stream.remote, reason)
        finally:
            counters.connections_open -= 1
            scopes.discard(scope)
            if not scopes and self._incoming.get(info.node) is scopes:
                del self._incoming[info.node]

    # -- one connection -------------------------------------------------------------

    async def _run_connection(
        self,
        stream: FrameStream,
        peer: str,
        link: _Link | None,
    ) -> str:
        """Run reader, heartbeat and (outgoing) writer until one ends; return why."""
        async with trio.open_nursery() as nursery:
            ending = _Ending(nursery.cancel_scope)
            nursery.start_soon(self._reader, stream, peer, ending)
            nursery.start_soon(self._heartbeat, stream, peer, ending)
            if link is not None:
                nursery.start_soon(self._writer, link, ending)
        return ending.reason

    async def _reader(self, stream: FrameStream, peer: str, ending: _Ending) -> None:
        deliver = self._deliver
        assert deliver is not None
        counters = self._counters
        try:
            while True:
                frame = await stream.receive_frame()
                counters.frames_received += 1
                counters.bytes_received += len(frame)
                await deliver(peer, frame)
        except FrameTooLarge as exc:
            counters.oversize_frames += 1
            logger.warning(
                "%s: closing connection with %s at %s: %s", self._node, peer, stream.remote, exc
            )
            ending.end(f"oversize frame: {exc}")
        except MalformedFrame as exc:
            logger.warning(
                "%s: closing connection with %s at %s: %s", self._node, peer, stream.remote, exc
            )
            ending.end(f"malformed input: {exc}")
        except _LOST as exc:
            ending.end(f"connection lost: {exc}")

    async def _writer(self, link: _Link, ending: _Ending) -> None:
        counters = self._counters
        stream, queue = link.stream, link.queue
        batch: list[bytes] = []
        try:
            while True:
                try:
                    first = queue.receive_nowait()
                except trio.WouldBlock:
                    link.idle = True  # senders may write directly until a put clears it
                    try:
                        first = await queue.receive()
                    finally:
                        link.idle = False
                # Coalesce what is already queued into one write: fewer syscalls.
                size = 0
                if first is not None:
                    batch.append(first)
                    size = len(first)
                while len(batch) < _BATCH_FRAMES and size < _BATCH_BYTES:
                    try:
                        frame = queue.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if frame is not None:
                        batch.append(frame)
                        size += len(frame)
                # Counted when handed to the stream (the peer may see the frame
                # before this task resumes); if the write fails they also count
                # as lost.
                counters.frames_sent += len(batch)
                counters.bytes_sent += size
                if batch or stream.unsent:  # (the rest of a partly written frame goes first)
                    await stream.send_frames(batch)
                batch = []
        except _LOST as exc:
            ending.end(f"connection lost while sending: {exc}")
        finally:
            counters.frames_lost += len(batch)

    async def _heartbeat(self, stream: FrameStream, peer: str, ending: _Ending) -> None:
        config = self.config
        try:
            while True:
                await trio.sleep(config.heartbeat_interval)
                with trio.fail_after(config.heartbeat_timeout):
                    await stream.ping()
        except trio.TooSlowError:
            self._counters.heartbeat_failures += 1
            logger.warning(
                "%s: %s at %s did not answer a ping within %s s; closing the connection",
                self._node,
                peer,
                stream.remote,
                config.heartbeat_timeout,
            )
            ending.end("heartbeat missed")
        except _LOST as exc:
            ending.end(f"connection lost: {exc}")
