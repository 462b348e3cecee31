"""A small HTTP/1.1 server on Trio, for a node's metrics and health endpoints.

Theory of operation
-------------------

h11 speaks the protocol; this module only moves bytes between it and a
socket, as httpcore's ``http11.py`` does on the client side. What to answer
is decided elsewhere, by a plain function ``route(method, path) ->
HttpResponse`` with no I/O (``Metrics`` in ``_metrics.py`` supplies it).

Each accepted connection carries exactly one request and one response
(``Connection: close``; keep-alive is not needed by a scraper that asks every
few seconds). Its handler:

1. reads until h11 yields the request head, feeding it at most
   ``max_header_bytes`` of incomplete head (h11's ``max_incomplete_event_size``:
   more is refused with 431, as h11 suggests);
2. asks ``route`` for the response (an exception there is a 500), or answers
   a malformed request with 400 (h11's ``error_status_hint``);
3. writes the response, half-closes, and reads what the client still sends
   for a moment before closing, so that unread input does not turn the close
   into a reset that destroys the response on its way.

The whole exchange runs inside one cancel scope of ``request_timeout``
seconds: a client that sends nothing, or sends or reads too slowly, is cut
off. At most ``max_connections`` are served at once; more are closed at
once. A request body is never read (only ``GET`` and ``HEAD`` are served).

Failures of one connection (a reset, a timeout, a bad request, a bug in the
route) are counted in :meth:`HttpServer.statistics` and logged, and end that
connection only: the server, and the node it belongs to, go on.
"""

from __future__ import annotations

import http
import logging
from typing import TYPE_CHECKING, Final, TypeAlias, final

import attrs
import h11
import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "HttpResponse",
    "HttpServer",
    "HttpStatistics",
]

logger = logging.getLogger("trioactors.http")

DEFAULT_MAX_HEADER_BYTES: Final = 8 * 1024
"""Bytes of request line and headers accepted; more is answered with 431."""
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
"""Seconds one connection may take, from accept to close."""
DEFAULT_MAX_CONNECTIONS: Final = 64
"""Connections served at once; the next ones are closed at once."""
_READ_SIZE: Final = 4096
_LINGER: Final = 1.0
"""Longest wait, after the response, for the client to close its side."""
_LINGER_BYTES: Final = 64 * 1024
"""Most bytes read (and dropped) while waiting for that."""


@final
@attrs.frozen
class HttpResponse:
    """What a route answers: status, body, content type and extra headers.

    .. versionadded:: 0.1
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Route: TypeAlias = "Callable[[str, str], HttpResponse]"
"""``route(method, path)``: the response to a request (the path has no query)."""


@final
@attrs.frozen
class HttpStatistics:
    """Counters of an :class:`HttpServer` (``server.statistics()``).

    .. versionadded:: 0.1
    """

    connections: int
    """Connections accepted."""
    active: int
    """Connections being served now."""
    responses: dict[int, int]
    """Responses sent, by status code."""
    malformed: int
    """Requests h11 refused (answered 400, or 431 for a head that is too big)."""
    timeouts: int
    """Connections cut off after ``request_timeout`` seconds."""
    errors: int
    """Connections that failed otherwise (reset by the client, or a bug: see the log)."""
    rejected: int
    """Connections closed at once because ``max_connections`` were being served."""


@attrs.define
class _Counters:
    connections: int = 0
    malformed: int = 0
    timeouts: int = 0
    errors: int = 0
    rejected: int = 0


@final
class HttpServer:
    """Serves ``route`` over HTTP/1.1, one request per connection.

    Args:
      route: ``route(method, path)`` returns the :class:`HttpResponse`; it runs
        on the event loop, so it must be quick.
      max_header_bytes: the largest request head accepted (default 8 KiB).
      request_timeout: seconds a connection may take in all (default 10).
      max_connections: connections served at once (default 64).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        route: Route,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if max_header_bytes < 256:
            raise ValueError(f"max_header_bytes must be >= 256, not {max_header_bytes}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, not {request_timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {max_connections}")
        self.route = route
        self.max_header_bytes = max_header_bytes
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._n = _Counters()
        self._responses: dict[int, int] = {}
        self._active = 0

    def statistics(self) -> HttpStatistics:
        return HttpStatistics(
            connections=self._n.connections,
            active=self._active,
            responses=dict(self._responses),
            malformed=self._n.malformed,
            timeouts=self._n.timeouts,
            errors=self._n.errors,
            rejected=self._n.rejected,
        )

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``listeners`` until cancelled; closes them when it ends."""
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    # -- one connection ------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._n.connections += 1
        if self._active >= self.max_connections:
            self._n.rejected += 1
            logger.warning("http: %d connections open already; closing a new one", self._active)
            await trio.aclose_forcefully(stream)
            return
        self._active += 1
        try:
            responded = False
            with trio.move_on_after(self.request_timeout) as scope:
                responded = await self._exchange(stream)
            if scope.cancelled_caught:
                self._n.timeouts += 1
                logger.info("http: cut off a client after %s s", self.request_timeout)
            elif responded:
                await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._n.errors += 1
            logger.info("http: connection failed: %r", exc)
        except Exception as exc:
            self._n.errors += 1
            logger.warning("http: error serving a connection: %r", exc, exc_info=exc)
        finally:
            self._active -= 1
            await trio.aclose_forcefully(stream)

    async def _exchange(self, stream: trio.SocketStream) -> bool:
        """Read the request and send the response; False if there was nothing to answer."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        method = "GET"
        try:
            request = await _read_request(stream, conn)
        except h11.RemoteProtocolError as exc:
            self._n.malformed += 1
            logger.info("http: malformed request: %s", exc)
            response = HttpResponse(exc.error_status_hint, f"{exc}\n".encode())
        else:
            if request is None:
                return False  # the client closed without asking anything
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            try:
                response = self.route(method, target.partition("?")[0])
            except Exception as exc:
                self._n.errors += 1
                logger.warning("http: %s %s failed: %r", method, target, exc, exc_info=exc)
                response = HttpResponse(500, b"internal error (see the node's log)\n")
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False  # (h11 cannot answer in this state; nothing useful to send)
        await stream.send_all(_encode(conn, response, head=method == "HEAD"))
        self._responses[response.status] = self._responses.get(response.status, 0) + 1
        return True


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The request head; None if the client closed first.

    Raises:
      h11.RemoteProtocolError: the input is not an HTTP/1.1 request, or its
        head is larger than the connection accepts.
    """
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_READ_SIZE))  # b"": end of input
        elif isinstance(event, h11.Request):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:  # (nothing else comes before a request; h11 would have raised)
            raise h11.RemoteProtocolError(f"unexpected {event!r}", 400)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then drop what the client still sends until it closes (briefly)."""
    await stream.send_eof()
    with trio.move_on_after(_LINGER):
        read = 0
        while read < _LINGER_BYTES:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                break
            read += len(data)


def _encode(conn: h11.Connection, response: HttpResponse, *, head: bool) -> bytes:
    """The bytes of ``response`` on ``conn``: head, body (not for HEAD), end."""
    try:
        reason = http.HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        ("connection", "close"),
        *response.headers,
    ]
    out = conn.send(
        h11.Response(status_code=response.status, headers=headers, reason=reason.encode())
    )
    if not head and response.body:
        out = (out or b"") + (conn.send(h11.Data(data=response.body)) or b"")
    return (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
