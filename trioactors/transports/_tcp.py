"""TCP transport: length-prefixed frames over plain Trio TCP streams (optional TLS).

Wire format: every frame is a 5-byte header, ``!IB`` (payload length as a
4-byte big-endian unsigned integer, then a 1-byte kind), followed by the
payload. Kinds: ``0`` data (the handshake messages, then envelopes), ``1``
PING and ``2`` PONG (liveness; the payload is an 8-byte ping number that the
PONG echoes). A data frame whose announced length exceeds ``max_frame_size``
is rejected from its header, before its body is read.

Compared with the websocket transport there is no HTTP upgrade and no
per-frame masking, so round trips are shorter. Trio enables ``TCP_NODELAY``
on its TCP streams, and the writer coalesces queued frames into one
``send_all``. On a plain (non-TLS) socket, an idle connection's frame is
written by the sending task itself with one non-blocking ``os.write``
(``send_frame_nowait``): no task switch, no cancellation point, nothing that
can leave half a frame behind a cancellation. What the socket does not take
is kept and written, before anything else, by the writer task.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import struct
import urllib.parse
from typing import TYPE_CHECKING, Final, final

import trio

from .._errors import FrameTooLarge, MalformedFrame
from ._stream import FrameStream, StreamHandler, StreamTransport

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from ._base import TransportConfig

__all__ = ["TcpTransport"]

_HEADER: Final = struct.Struct("!IB")
_DATA: Final = 0
_PING: Final = 1
_PONG: Final = 2
_PING_SIZE: Final = 8
_RECEIVE_SIZE: Final = 64 * 1024
_MAX_RECEIVE: Final = 1024 * 1024
_LARGE: Final = 64 * 1024
"""Frames at least this big are written on their own rather than copied into a batch."""


def _remote_of(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "?"
    return _join(str(host), int(port))


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@final
class _TcpFrameStream(FrameStream):
    """Frames over one Trio byte stream (a ``SocketStream`` or an ``SSLStream``)."""

    def __init__(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        *,
        remote: str,
        max_frame_size: int,
    ) -> None:
        self.remote = remote
        self._stream = stream
        self._max_frame_size = max_frame_size
        self._send_lock = trio.StrictFIFOLock()  # writer, heartbeat and PONGs share the stream
        # A plain socket can be written without blocking (send_frame_nowait); TLS cannot.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._unsent = b""  # the rest of a frame that send_frame_nowait wrote in part
        self._buffer = bytearray()
        self._position = 0
        self._pings: dict[int, trio.Event] = {}
        self._ping_counter = 0
        self._broken: BaseException | None = None

    async def _lock(self) -> None:
        # Uncontended, take the lock without yielding: the write (which is a
        # checkpoint) then starts at once instead of one scheduler batch later.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()

    async def _send_all(self, data: bytes) -> None:
        await self._lock()
        try:
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            await self._stream.send_all(data)
        finally:
            self._send_lock.release()

    async def send_frame(self, frame: bytes) -> None:
        await self.send_frames((frame,))

    def send_frame_nowait(self, frame: bytes) -> bool:
        socket = self._socket
        if (
            socket is None
            or len(frame) >= _LARGE
            or self._unsent
            or self._send_lock.locked()
            or self._broken is not None
        ):
            return False
        fd = socket.fileno()
        if fd < 0:  # closed
            return False
        data = _HEADER.pack(len(frame), _DATA) + frame
        try:
            written = os.write(fd, data)
        except OSError:  # full (BlockingIOError), or broken: the writer task will see it
            return False
        if written < len(data):
            self._unsent = data[written:]
        return True

    @property
    def unsent(self) -> bool:
        return bool(self._unsent)

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        await self._lock()
        try:
            parts: list[bytes] = []
            if self._unsent:  # the rest of an earlier frame goes first
                parts.append(self._unsent)
                self._unsent = b""
            for frame in frames:
                parts.append(_HEADER.pack(len(frame), _DATA))
                if len(frame) < _LARGE:
                    parts.append(frame)
                else:
                    await self._stream.send_all(b"".join(parts))
                    await self._stream.send_all(frame)
                    parts = []
            if parts:
                await self._stream.send_all(b"".join(parts))
        finally:
            self._send_lock.release()

    async def receive_frame(self) -> bytes:
        while True:
            kind, body = await self._read_frame()
            if kind == _DATA:
                return body
            if kind == _PING:
                # Answered inline: if our own writes are stuck (the peer does not
                # read), the peer misses this pong, which is what liveness means.
                await self._send_all(_HEADER.pack(len(body), _PONG) + body)
            else:
                number = int.from_bytes(body, "big")
                # A pong answers its ping and every earlier one.
                for pending in [n for n in self._pings if n <= number]:
                    self._pings.pop(pending).set()

    async def _fill(self, needed: int) -> None:
        try:
            data = await self._stream.receive_some(min(max(needed, _RECEIVE_SIZE), _MAX_RECEIVE))
        except trio.BrokenResourceError as exc:
            self._break(exc)
            raise
        if not data:
            error = trio.BrokenResourceError(f"{self.remote} closed the connection")
            self._break(error)
            raise error
        self._buffer += data

    async def _read_frame(self) -> tuple[int, bytes]:
        buffer = self._buffer
        while len(buffer) - self._position < _HEADER.size:
            await self._fill(_HEADER.size)
        length, kind = _HEADER.unpack_from(buffer, self._position)
        if kind == _DATA:
            if length > self._max_frame_size:
                raise FrameTooLarge(
                    f"peer announced a frame of {length} bytes; "
                    f"max_frame_size is {self._max_frame_size}"
                )
        elif kind in (_PING, _PONG):
            if length != _PING_SIZE:
                raise MalformedFrame(f"a PING/PONG frame carries {_PING_SIZE} bytes, not {length}")
        else:
            raise MalformedFrame(f"unknown frame kind {kind}; is the peer a trioactors tcp node?")
        self._position += _HEADER.size
        while len(buffer) - self._position < length:
            await self._fill(length - (len(buffer) - self._position))
        start, end = self._position, self._position + length
        with memoryview(buffer) as view:
            body = bytes(view[start:end])  # one copy, straight out of the buffer
        if end == len(buffer):
            buffer.clear()
            self._position = 0
        elif end >= _RECEIVE_SIZE:
            del buffer[:end]
            self._position = 0
        else:
            self._position = end
        return kind, body

    def _break(self, error: BaseException) -> None:
        if self._broken is None:
            self._broken = error
        for event in self._pings.values():
            event.set()
        self._pings.clear()

    async def ping(self) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError(f"connection to {self.remote} is broken")
        self._ping_counter += 1
        number = self._ping_counter
        answered = trio.Event()
        self._pings[number] = answered
        try:
            await self._send_all(
                _HEADER.pack(_PING_SIZE, _PING) + number.to_bytes(_PING_SIZE, "big")
            )
            await answered.wait()
        finally:
            self._pings.pop(number, None)
        if self._broken is not None:
            raise trio.BrokenResourceError(
                f"connection to {self.remote} broke during a ping"
            ) from self._broken

    async def aclose(self) -> None:
        self._break(trio.ClosedResourceError("closed"))
        # SSLStream sends close_notify without waiting for the reply, and closes the
        # socket even when cancelled; a plain socket closes at once.
        with trio.move_on_after(1.0):
            await self._stream.aclose()


@final
class TcpTransport(StreamTransport):
    """Frames over plain TCP (``tcp://host:port``), or TLS (``tls://host:port``).

    TLS is on for accepted connections when ``config.server_ssl`` is set (the
    advertised address then starts with ``tls://``); connections to a
    ``tls://`` address use ``config.client_ssl`` (or the system's default
    context).

    Args:
      config: Limits, timeouts, the secret and TLS contexts.
      host: The interface to listen on.
      port: The port to listen on (0: any free port).
      advertise: The address peers should use, if not ``<scheme>://host:port``
        (needed when ``host`` is a wildcard such as ``0.0.0.0``).
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
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, advertise=advertise, rng=rng)
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return f"<TcpTransport {self._address or _join(self.host, self.port)}>"

    @staticmethod
    def _parse(address: str) -> tuple[str, int, bool]:
        try:
            parts = urllib.parse.urlsplit(address)
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ValueError(f"not a tcp transport address: {address!r}") from exc
        if parts.scheme not in ("tcp", "tls") or not host or port is None:
            raise ValueError(
                f"not a tcp transport address: {address!r} (tcp://host:port or tls://host:port)"
            )
        return host, port, parts.scheme == "tls"

    def check_address(self, address: str) -> None:
        """Raise :class:`ValueError` unless ``address`` is ``tcp://host:port`` or ``tls://...``."""
        self._parse(address)

    async def connect_stream(self, address: str, nursery: trio.Nursery) -> FrameStream:
        """Open a TCP (and TLS) connection to ``address``."""
        host, port, tls = self._parse(address)
        socket_stream = await trio.open_tcp_stream(host, port)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = socket_stream
        if tls:
            context = self.config.client_ssl or ssl.create_default_context()
            stream = trio.SSLStream(socket_stream, context, server_hostname=host)
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return _TcpFrameStream(
            stream, remote=_join(host, port), max_frame_size=self.config.max_frame_size
        )

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: trio.TaskStatus[str]
    ) -> None:
        """Listen on ``host:port`` and run ``handler`` for each accepted connection."""
        context = self.config.server_ssl

        async def on_connection(socket_stream: trio.SocketStream) -> None:
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = socket_stream
            if context is not None:
                # The TLS handshake happens on first use, under the handshake's timeout.
                stream = trio.SSLStream(socket_stream, context, server_side=True)
            frames = _TcpFrameStream(
                stream,
                remote=_remote_of(socket_stream),
                max_frame_size=self.config.max_frame_size,
            )
            try:
                await handler(frames)
            finally:
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await frames.aclose()

        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await nursery.start(
                functools.partial(trio.serve_tcp, on_connection, self.port, host=self.host)
            )
            host, port, *_ = listeners[0].socket.getsockname()
            scheme = "tls" if context is not None else "tcp"
            task_status.started(f"{scheme}://{_join(str(host), int(port))}")
