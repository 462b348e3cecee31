"""The transport interface: frames between named nodes.

A transport carries opaque frames (``bytes``, one encoded envelope each)
between nodes identified by name. It knows nothing of actors or envelopes;
the node encodes, decodes and routes. One transport instance serves one node.

Guarantees every implementation gives (checked by
``trioactors.testing.check_transport``):

- Frames from one node to another arrive in the order they were sent, unless
  a fault plan says otherwise (in-memory transport only).
- ``deliver`` is called with the *authenticated* name of the sending node.
- ``send`` never hangs: it returns once the frame is queued on a live
  connection, or raises :class:`NodeUnreachable` within ``connect_timeout``.
  It waits while the connection's send queue is full (backpressure).
- Delivery is at most once: a frame accepted by ``send`` can still be lost if
  the connection breaks before the peer reads it. Nothing is ever duplicated
  (again, unless a fault plan says so).
- Bad input from peers (oversize frames, failed authentication, a protocol
  version mismatch) is rejected, counted in ``statistics()`` and logged with
  the peer's identity; the transport keeps serving everyone else.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

import attrs
import trio

from .._wire._handshake import Role

if TYPE_CHECKING:
    import ssl

__all__ = ["PROTOCOL_VERSION", "Deliver", "Transport", "TransportConfig", "TransportStatistics"]

PROTOCOL_VERSION = 1
"""Version of the trioactors wire protocol; peers must agree on it."""

Deliver: TypeAlias = Callable[[str, bytes], Awaitable[None]]
"""``await deliver(peer_node_name, frame)``: hand one received frame to the node."""


@attrs.frozen
class TransportConfig:
    """Settings shared by the network transports.

    .. versionadded:: 0.1
    """

    secret: bytes = attrs.field(repr=False, default=b"")
    """Shared cluster secret; both sides prove they know it (HMAC challenge-response).
    It never crosses the wire. Empty means no authentication (tests only)."""
    max_frame_size: int = 1024 * 1024
    """Largest frame accepted or sent, in bytes (trio-websocket's default: 1 MiB)."""
    send_queue_size: int = 1000
    """Frames queued per peer connection before ``send`` waits."""
    connect_timeout: float = 5.0
    """Seconds to connect and authenticate before ``send`` raises NodeUnreachable."""
    heartbeat_interval: float = 1.0
    """Seconds between liveness pings on each connection."""
    heartbeat_timeout: float = 5.0
    """A connection whose ping is not answered within this is closed as dead."""
    reconnect_initial: float = 0.1
    """First reconnect delay after a connection breaks (then exponential with full jitter)."""
    reconnect_max: float = 5.0
    """Longest reconnect delay."""
    read_only_secret: bytes | None = attrs.field(repr=False, default=None)
    """Second secret, for read-only peers (operators' tools): a peer that proves it
    connects as an *observer* and may only send messages marked
    :func:`~trioactors.read_only`. None (default): observers are refused."""
    role: Role = Role.MEMBER
    """What this transport connects as: ``Role.OBSERVER`` for a read-only tool,
    which proves ``read_only_secret`` on every connection."""
    server_ssl: ssl.SSLContext | None = None
    """TLS for accepted connections (optional)."""
    client_ssl: ssl.SSLContext | None = None
    """TLS for outgoing connections (optional)."""

    def __attrs_post_init__(self) -> None:
        if self.role is Role.OBSERVER and self.read_only_secret is None:
            raise ValueError("an observer (role=Role.OBSERVER) needs the read_only_secret")
        if self.max_frame_size < 1024:
            raise ValueError(f"max_frame_size must be >= 1024 bytes, not {self.max_frame_size}")
        for name in ("connect_timeout", "heartbeat_interval", "heartbeat_timeout"):
            value = getattr(self, name)
            if not (0 < value <= math.inf):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


@attrs.frozen
class TransportStatistics:
    """Counters of one transport (``Transport.statistics()``).

    .. versionadded:: 0.1
    """

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
    """Frames accepted by ``send`` but dropped (broken connection, or a fault plan)."""


class Transport(abc.ABC):
    """Carries frames between named nodes. Subclass it to add a transport.

    .. versionadded:: 0.1
    """

    @abc.abstractmethod
    async def serve(
        self,
        node: str,
        deliver: Deliver,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run this node's side of the transport until cancelled.

        Listens for peers, runs connections, readers, writers and liveness
        checks as tasks of its own nursery, and calls ``await deliver(peer,
        frame)`` for every frame received. Reports readiness with
        ``task_status.started(address)``, where ``address`` is how peers reach
        this node (e.g. ``ws://127.0.0.1:41234``).
        """

    @abc.abstractmethod
    async def send(self, peer: str, frame: bytes) -> None:
        """Send one frame to ``peer``, connecting on demand.

        Raises:
          NodeUnreachable: no address is known for ``peer``, or no connection
            could be made within ``connect_timeout``, or the transport is not
            serving.
          FrameTooLarge: the frame exceeds ``max_frame_size``.
        """

    def send_nowait(self, peer: str, frame: bytes) -> bool:
        """Queue ``frame`` without waiting, if a live connection has room.

        Returns False when it would have to wait or connect (then call
        :meth:`send`), or when the transport has no such fast path. Size
        limits apply as for :meth:`send`.
        """
        return False

    @abc.abstractmethod
    def add_peer(self, peer: str, address: str) -> None:
        """Remember where ``peer`` can be reached (replacing an older address)."""

    @abc.abstractmethod
    def remove_peer(self, peer: str) -> None:
        """Forget ``peer`` and close any connection to it."""

    @abc.abstractmethod
    def peers(self) -> dict[str, str]:
        """The known peers and their addresses."""

    def address_of(self, peer: str) -> str | None:
        """The address known for ``peer``, or ``None`` (override: called per send)."""
        return self.peers().get(peer)

    def role_of(self, peer: str) -> Role:
        """The role ``peer`` authenticated with (``Role.MEMBER`` unless it is an observer)."""
        del peer
        return Role.MEMBER

    @abc.abstractmethod
    def statistics(self) -> TransportStatistics:
        """A snapshot of this transport's counters."""
