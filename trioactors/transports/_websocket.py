"""WebSocket transport: frames in binary websocket messages, over trio-websocket.

Each message starts with one byte: 0 for a single frame (the rest of the
message), 1 for a batch (then, for each frame, a 4-byte big-endian length and
the frame). The writer sends a batch when several frames are queued, so a
busy connection pays wsproto's per-message cost once per batch, not once per
frame. A batch never exceeds ``max_frame_size`` bytes (nor 64 KiB).

Liveness uses websocket pings (answered by trio-websocket's own reader task);
closing waits at most ``disconnect_timeout`` for the peer's goodbye, instead
of trio-websocket's default 60 s. trio-websocket closes a connection that
receives a message over ``max_message_size`` (we set ``max_frame_size``) with
code 1009; the accepting side reports that as :class:`FrameTooLarge`.
trio-websocket's and wsproto's exceptions never leave this module: they are
translated into :class:`trio.BrokenResourceError` (``from`` the original).
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import urllib.parse
from collections import deque
from typing import TYPE_CHECKING, Final, final

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
    wrap_client_stream,
)

from .._errors import FrameTooLarge, MalformedFrame
from ._stream import FrameStream, StreamHandler, StreamTransport

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from trio_websocket import Endpoint

    from ._base import TransportConfig

__all__ = ["WebSocketTransport"]

_MESSAGE_TOO_BIG: Final = 1009
_RESOURCE: Final = "/"
_SINGLE: Final = b"\x00"
_BATCH: Final = b"\x01"
_BATCH_LIMIT: Final = 64 * 1024
_OVERHEAD: Final = 1
"""Bytes a message adds to the frame it carries (the kind byte)."""


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remote_of(endpoint: Endpoint | str) -> str:
    if isinstance(endpoint, str):
        return endpoint
    return _join(str(endpoint.address), endpoint.port)


@final
class _WebSocketFrameStream(FrameStream):
    """Frames as binary websocket messages."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        remote: str,
        close_timeout: float,
        max_frame_size: int,
        owned: trio.abc.AsyncResource | None = None,
    ) -> None:
        self.remote = remote
        self._ws = ws
        self._close_timeout = close_timeout
        self._owned = owned
        self._max_frame_size = max_frame_size
        self._batch_limit = min(max_frame_size, _BATCH_LIMIT)
        self._received: deque[bytes] = deque()  # the rest of a batch

    def _lost(self, exc: ConnectionClosed) -> trio.BrokenResourceError:
        reason = exc.reason
        if reason is not None and reason.code == _MESSAGE_TOO_BIG:
            return trio.BrokenResourceError(
                f"{self.remote} closed the connection: a frame we sent exceeds its "
                "max_frame_size; use the same limit on every node"
            )
        return trio.BrokenResourceError(f"websocket to {self.remote} closed: {reason}")

    async def send_frame(self, frame: bytes) -> None:
        await self._send_message(_SINGLE + frame)

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if len(frames) == 1:
            await self._send_message(_SINGLE + frames[0])
            return
        parts = [_BATCH]
        size = 1
        for frame in frames:
            if size + 4 + len(frame) > self._batch_limit and len(parts) > 1:
                await self._send_message(b"".join(parts))
                parts, size = [_BATCH], 1
            parts += (len(frame).to_bytes(4, "big"), frame)
            size += 4 + len(frame)
        await self._send_message(b"".join(parts))

    async def _send_message(self, message: bytes) -> None:
        try:
            await self._ws.send_message(message)
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc

    async def receive_frame(self) -> bytes:
        if self._received:
            return self._received.popleft()
        message = await self._receive_message()
        if not message:
            raise MalformedFrame("peer sent an empty websocket message")
        if message[0] == 0:
            return message[1:]
        if message[0] != 1:
            raise MalformedFrame(f"peer sent a message of unknown kind {message[0]}")
        view, offset, end = memoryview(message), 1, len(message)
        while offset < end:
            if offset + 4 > end:
                raise MalformedFrame("peer sent a truncated batch")
            size = int.from_bytes(view[offset : offset + 4], "big")
            if size > self._max_frame_size:
                raise FrameTooLarge(f"peer sent a frame of {size} bytes in a batch")
            offset += 4
            if offset + size > end:
                raise MalformedFrame("peer sent a truncated batch")
            self._received.append(bytes(view[offset : offset + size]))
            offset += size
        if not self._received:
            raise MalformedFrame("peer sent an empty batch")
        return self._received.popleft()

    async def _receive_message(self) -> bytes:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed as exc:
            reason = exc.reason
            # On an accepted connection a 1009 is ours: trio-websocket refused an
            # oversize message from the peer (we never send data that way).
            if self._ws.is_server and reason is not None and reason.code == _MESSAGE_TOO_BIG:
                raise FrameTooLarge(f"peer sent a frame too large: {reason.reason}") from exc
            raise self._lost(exc) from exc
        if isinstance(message, str):
            raise MalformedFrame("peer sent a text message; trioactors frames are binary")
        return message

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(self._close_timeout):
                await self._ws.aclose()
        finally:
            # A client websocket that the peer closed first leaves its socket open
            # (trio-websocket's open_websocket would close it; we close our own).
            if self._owned is not None:
                await trio.aclose_forcefully(self._owned)


@final
class WebSocketTransport(StreamTransport):
    """Frames as websocket messages (``ws://host:port``, or ``wss://`` with TLS).

    TLS is on for accepted connections when ``config.server_ssl`` is set (the
    advertised address then starts with ``wss://``); connections to a
    ``wss://`` address use ``config.client_ssl`` (or the system's default
    context).

    Args:
      config: Limits, timeouts, the secret and TLS contexts.
      host: The interface to listen on.
      port: The port to listen on (0: any free port).
      advertise: The address peers should use, if not ``ws://host:port``
        (needed when ``host`` is a wildcard such as ``0.0.0.0``).
      disconnect_timeout: Longest wait for the peer's close handshake.
      message_queue_size: Messages trio-websocket buffers per connection
        before its reader (and so the answering of pings) waits for ours.
      rng: Source of reconnect jitter.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        config: TransportConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        advertise: str | None = None,
        disconnect_timeout: float = 0.5,
        message_queue_size: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, advertise=advertise, rng=rng)
        self.host = host
        self.port = port
        self.disconnect_timeout = disconnect_timeout
        self.message_queue_size = message_queue_size

    def __repr__(self) -> str:
        return f"<WebSocketTransport {self._address or _join(self.host, self.port)}>"

    @staticmethod
    def _parse(address: str) -> tuple[str, int, str, bool]:
        try:
            parts = urllib.parse.urlsplit(address)
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ValueError(f"not a websocket address: {address!r}") from exc
        if parts.scheme not in ("ws", "wss") or not host or port is None:
            raise ValueError(f"not a websocket address: {address!r} (ws://host:port or wss://...)")
        return host, port, parts.path or _RESOURCE, parts.scheme == "wss"

    def check_address(self, address: str) -> None:
        """Raise :class:`ValueError` unless ``address`` is ``ws://host:port`` or ``wss://...``."""
        self._parse(address)

    async def connect_stream(self, address: str, nursery: trio.Nursery) -> FrameStream:
        """Open a websocket to ``address``; its reader task runs in ``nursery``."""
        host, port, resource, tls = self._parse(address)
        socket_stream = await trio.open_tcp_stream(host, port)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = socket_stream
        try:
            if tls:
                context = self.config.client_ssl or ssl.create_default_context()
                stream = trio.SSLStream(
                    socket_stream, context, server_hostname=host, https_compatible=True
                )
            ws: WebSocketConnection = await nursery.start(
                self._client_session, stream, _join(host, port), resource
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _WebSocketFrameStream(
            ws,
            remote=_join(host, port),
            close_timeout=self.disconnect_timeout,
            max_frame_size=self.config.max_frame_size,
            owned=stream,
        )

    async def _client_session(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        host: str,
        resource: str,
        *,
        task_status: trio.TaskStatus[WebSocketConnection],
    ) -> None:
        """Own a client websocket's reader task; return when it ends."""
        started = False
        try:
            async with trio.open_nursery() as inner:
                ws = await wrap_client_stream(
                    inner,
                    stream,
                    host,
                    resource,
                    message_queue_size=self.message_queue_size,
                    max_message_size=self.config.max_frame_size + _OVERHEAD,
                )
                started = True
                task_status.started(ws)
        except BaseExceptionGroup as group:
            # trio-websocket's reader raises ConnectionRejected (a HandshakeError) when
            # the server answers the upgrade with an HTTP error.
            rejected, rest = group.split(HandshakeError)
            if rest is not None:
                raise rest from None
            if not started:
                raise trio.BrokenResourceError(
                    f"websocket upgrade to {host} refused: {rejected!r}"
                ) from group

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: trio.TaskStatus[str]
    ) -> None:
        """Serve websockets on ``host:port`` and run ``handler`` for each connection."""
        close_timeout = self.disconnect_timeout

        async def on_request(request: WebSocketRequest) -> None:
            try:
                # (getpeername: fails once the client has reset the connection)
                remote = _remote_of(request.remote)
                ws = await request.accept()
            except (ConnectionClosed, trio.BrokenResourceError, OSError):
                return  # the client went away mid-upgrade: nothing to serve
            frames = _WebSocketFrameStream(
                ws,
                remote=remote,
                close_timeout=close_timeout,
                max_frame_size=self.config.max_frame_size,
            )
            try:
                await handler(frames)
            finally:
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await frames.aclose()

        context = self.config.server_ssl
        async with trio.open_nursery() as nursery:
            server: WebSocketServer = await nursery.start(
                functools.partial(
                    serve_websocket,
                    on_request,
                    self.host,
                    self.port,
                    context,
                    message_queue_size=self.message_queue_size,
                    max_message_size=self.config.max_frame_size + _OVERHEAD,
                    connect_timeout=self.config.connect_timeout,
                    disconnect_timeout=close_timeout,
                )
            )
            endpoint = server.listeners[0]
            if isinstance(endpoint, str):  # pragma: no cover - we always listen on TCP
                raise RuntimeError(f"unexpected listener {endpoint}")
            scheme = "wss" if context is not None else "ws"
            address = _join(str(endpoint.address), endpoint.port)
            task_status.started(f"{scheme}://{address}")
