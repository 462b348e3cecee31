"""The command line's connection to a cluster: a short-lived node of its own.

A client command (``trioactors status``, ``ask``, ``drain``, ...) opens a
node named ``cli-<random hex>`` with the transport that matches the address
it was given (``ws://`` and ``wss://``: WebSocket; ``tcp://`` and ``tls://``:
TCP), learns the name of the node at that address from the connection
handshake, and then talks to that node's ``$admin`` actor, and to its other
actors, as any node would. Another member is reached directly, at the
address the first node lists for it.

Replies come back over a connection that the node opens to the client, so
the client listens too: on the local interface that routes to the node,
unless told otherwise (``--listen``).

The client has none of the cluster's message classes except the admin
service's: it sends :class:`RawMessage` values (a tag and JSON data) and its
codec decodes replies of types it does not know into them.

Every failure is a :class:`CommandError` carrying the exit status the
command line returns: 1 the operation failed, 2 bad input, 3 a node cannot be
reached or did not answer in time, 4 refused (authentication failed, or a
read-only client asked for more than a query).
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING, Final, final

import attrs
import trio

from ._errors import (
    ActorNotFound,
    AskTimeout,
    AuthenticationFailed,
    NodeUnreachable,
    ProtocolVersionMismatch,
    RemoteProtocolError,
    TrioactorsError,
    Unauthorized,
)
from ._open import open_node
from ._services._admin import (
    AdminPing,
    GetInfo,
    ListMembers,
    MemberInfo,
    NodeInfo,
    register_admin_messages,
)
from ._services._jobs import JobQueue, start_job_queue
from ._services._workers import POOL as JOBS_POOL
from ._wire._codec import MessageRegistry, RawMessage, _converter
from ._wire._handshake import Role
from .transports import TcpTransport, TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ._runtime._node import Node
    from ._wire._codec import Format
    from .transports._stream import StreamTransport

__all__ = [
    "ADMIN",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Client",
    "ClientSettings",
    "CommandError",
    "jsonable",
    "open_client",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The operation failed (a drain left work pending, an ask got an error reply, ...)."""
EXIT_USAGE: Final = 2
"""Bad usage or input: an unknown option, bad JSON, a bad settings file."""
EXIT_UNREACHABLE: Final = 3
"""A node cannot be reached, or did not answer within ``--timeout``."""
EXIT_REFUSED: Final = 4
"""Authentication failed (wrong secret), or a read-only client asked for more."""

ADMIN: Final = "$admin"
"""The name of the admin service's actor on every ``trioactors node``."""
_PROBED_STATES: Final = ("alive", "suspect", "joining")


class CommandError(Exception):
    """A command failed: ``str(error)`` is the one-line reason, ``code`` the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@final
@attrs.frozen
class ClientSettings:
    """How a client command connects (its common options)."""

    to: str
    """The address of the node to connect to (``ws://host:port``)."""
    secret: bytes = attrs.field(repr=False, default=b"")
    read_only: bool = False
    """Connect as an observer, with the read-only secret: queries only."""
    read_only_secret: bytes | None = attrs.field(repr=False, default=None)
    timeout: float = 5.0
    """Seconds to connect, and to wait for each answer."""
    wire_format: Format = "json"
    listen: str | None = None
    """The interface to listen on for replies (default: the one that routes to ``to``)."""


def _transport_class(address: str) -> type[WebSocketTransport] | type[TcpTransport]:
    scheme = urllib.parse.urlsplit(address).scheme
    if scheme in ("ws", "wss"):
        return WebSocketTransport
    if scheme in ("tcp", "tls"):
        return TcpTransport
    raise CommandError(
        f"cannot connect to {address!r}: give a node's address, ws://HOST:PORT "
        "(or wss://, tcp://, tls://)",
        EXIT_USAGE,
    )


async def _interface_towards(address: str) -> str:
    """The local address this host uses to reach ``address``'s host (no packet is sent)."""
    parts = urllib.parse.urlsplit(address)
    try:
        infos = await trio.socket.getaddrinfo(
            parts.hostname, parts.port, type=trio.socket.SOCK_DGRAM
        )
        family, kind, proto, _, where = infos[0]
        with trio.socket.socket(family, kind, proto) as sock:
            await sock.connect(where)
            local: str = sock.getsockname()[0]
            return local
    except (OSError, IndexError):
        return "127.0.0.1"  # (connecting will say what is wrong)


def _config(settings: ClientSettings) -> TransportConfig:
    timeout = settings.timeout
    if settings.read_only:
        if not settings.read_only_secret:
            raise CommandError(
                "--read-only needs the read-only secret: set TRIOACTORS_READ_ONLY_SECRET "
                "or pass --read-only-secret-file",
                EXIT_USAGE,
            )
        return TransportConfig(
            read_only_secret=settings.read_only_secret,
            role=Role.OBSERVER,
            connect_timeout=timeout,
        )
    return TransportConfig(secret=settings.secret, connect_timeout=timeout)


@final
class Client:
    """A connection to a cluster through one of its nodes; from :func:`open_client`."""

    def __init__(self, node: Node, transport: StreamTransport, settings: ClientSettings) -> None:
        self.node = node
        self.settings = settings
        self.target = ""
        """The name of the node at ``settings.to`` (learned when connecting)."""
        self._transport = transport
        self._addresses: dict[str, str] = {}

    # -- connecting ---------------------------------------------------------------

    async def _connect(self) -> None:
        to = self.settings.to
        self.target = await self._identify(to)
        self._reached(self.target, to)

    async def reach(self, node: str, address: str) -> None:
        """Connect to member ``node`` at ``address`` (once), checking who answers.

        Raises:
          CommandError: it cannot be reached (3) or refused us (4).
        """
        if node in self._addresses:
            return
        name = await self._identify(address)
        if name != node:
            raise CommandError(f"{address} is node {name!r}, not {node!r}", EXIT_UNREACHABLE)
        self._reached(node, address)

    def _reached(self, node: str, address: str) -> None:
        self._addresses[node] = address
        self.node.add_peer(node, address)

    async def _identify(self, address: str) -> str:
        """Authenticate once with the node at ``address``; return its name.

        (Node connections are made by name; an operator gives an address.)
        """
        settings = self.settings
        observer = self._transport.config.role is Role.OBSERVER
        outcome: str | BaseException
        try:
            with trio.fail_after(settings.timeout):
                outcome = (await self._transport.identify(address)).node
        except BaseExceptionGroup as group:  # (from the connection's nursery)
            leaf = _first_leaf(group)
            if not isinstance(leaf, Exception):
                raise
            outcome = leaf
        except Exception as exc:
            outcome = exc
        if isinstance(outcome, str):
            return outcome
        which = "read-only secret" if observer else "secret"
        match outcome:
            case AuthenticationFailed():
                message = f"authentication failed at {address}: {outcome} (check the {which})"
                raise CommandError(message, EXIT_REFUSED) from None
            case ProtocolVersionMismatch():
                raise CommandError(f"cannot talk to {address}: {outcome}", EXIT_FAILED) from None
            case RemoteProtocolError():
                message = f"cannot reach {address}: not a trioactors node? ({outcome})"
                raise CommandError(message, EXIT_UNREACHABLE) from None
            case trio.TooSlowError():
                message = f"cannot reach {address}: no answer within {settings.timeout:g} s"
                raise CommandError(message, EXIT_UNREACHABLE) from None
            case OSError() | trio.BrokenResourceError():
                message = f"cannot reach {address}: {_reason(outcome)}"
                raise CommandError(message, EXIT_UNREACHABLE) from None
        raise outcome

    async def locate(self, node: str | None) -> str:
        """Make sure ``node`` (default: the connected one) can be reached; return its name.

        Another member is reached directly, at the address in the connected
        node's member list.

        Raises:
          CommandError: no such member (exit 3), or as :meth:`reach` and :meth:`ask`.
        """
        if node is None or node in self._addresses:
            return node or self.target
        for member in await self.members():
            if member.node == node:
                await self.reach(node, member.address)
                return node
        raise CommandError(
            f"no member named {node!r} in the cluster of {self.target} "
            f"(see: trioactors status --to {self.settings.to})",
            EXIT_UNREACHABLE,
        )

    async def members(self) -> list[MemberInfo]:
        """The connected node's list of members, itself included."""
        reply = await self.ask(f"{ADMIN}@{self.target}", ListMembers())
        items = getattr(reply, "members", reply)  # (a MemberList, or a plain list)
        return [m for m in map(_member, _as_list(items)) if m is not None]

    async def job_queue(self, *, strategy: str, timeout: float) -> JobQueue:
        """A job queue on the client's node that uses every reachable member's pool.

        Raises:
          CommandError: read-only (4), or no member runs a worker pool (1).
        """
        if self.settings.read_only:
            raise CommandError(
                "submitting jobs needs the cluster secret, not read-only", EXIT_REFUSED
            )
        pools = []
        for member in await self.members():
            if member.state in _PROBED_STATES:
                with contextlib.suppress(CommandError):  # (unreachable: its pool is not used)
                    await self.reach(member.node, member.address)
                    pools.append(f"{JOBS_POOL}@{member.node}")
        queue = await start_job_queue(
            self.node,
            workers=pools,
            strategy=strategy,
            default_timeout=timeout,
            refresh_interval=max(1.0, self.settings.timeout),
        )
        if not queue.workers():
            raise CommandError(
                f"no worker pool in the cluster of {self.target} "
                "(start nodes with `trioactors node --workers N`)",
                EXIT_FAILED,
            )
        return queue

    async def status(self) -> list[dict[str, object]]:
        """One row per member, as :meth:`members` lists them, with how it answers.

        Each member the cluster counts as alive (or suspect, or joining) is
        reached directly: ``reachable``, ``rtt_ms`` (an admin ping's round
        trip, once connected), and from its :class:`NodeInfo` ``load``,
        ``actors`` (how many), ``draining``, ``version`` and ``uptime``; or
        ``reachable: False`` and the ``error``. The others are not tried
        (``reachable: None``).
        """
        members = await self.members()
        answers: dict[str, tuple[float, object] | CommandError] = {}

        async def probe(node: str, address: str) -> None:
            try:
                await self.reach(node, address)
                admin = f"{ADMIN}@{node}"
                await self.ask(admin, AdminPing(time.time()))  # (connects)
                start = trio.current_time()
                await self.ask(admin, AdminPing(time.time()))
                rtt = trio.current_time() - start
                answers[node] = (rtt, await self.ask(admin, GetInfo()))
            except CommandError as exc:
                answers[node] = exc

        async with trio.open_nursery() as nursery:
            for member in members:
                if member.state in _PROBED_STATES:
                    nursery.start_soon(probe, member.node, member.address)

        rows: list[dict[str, object]] = []
        for member in members:
            row: dict[str, object] = {
                "node": member.node,
                "address": member.address,
                "state": member.state,
                "incarnation": member.incarnation,
                "reachable": None,
                "rtt_ms": None,
                "load": None,
                "actors": None,
                "draining": None,
                "version": None,
                "uptime": None,
                "error": None,
            }
            answer = answers.get(member.node)
            if isinstance(answer, CommandError):
                row.update(reachable=False, error=str(answer))
            elif answer is not None:
                rtt, info = answer
                row.update(reachable=True, rtt_ms=round(rtt * 1000, 3))
                if isinstance(info, NodeInfo):
                    row.update(
                        load=round(info.load, 2),
                        actors=len(info.actors),
                        draining=info.draining,
                        version=info.version,
                        uptime=round(info.uptime, 3),
                    )
            rows.append(row)
        return rows

    # -- messages ------------------------------------------------------------------

    async def ask(self, address: str, message: object, *, timeout: float | None = None) -> object:
        """Ask the actor at ``address``; return its reply.

        Raises:
          CommandError: the ask failed; its ``code`` says how (see the module).
        """
        seconds = self.settings.timeout if timeout is None else timeout
        try:
            return await self.node.ref(address).ask(message, timeout=seconds)
        except TrioactorsError as exc:
            raise self._failure(exc, address, seconds) from None

    async def tell(self, address: str, message: object) -> None:
        """Send to the actor at ``address``, and wait until its node has read it.

        The node reads frames from one connection in order, so once it has
        answered an admin ping sent behind the message, it has the message.
        A message it refused (an unknown type, a bad payload, no such actor)
        has been answered with an error by then.

        Raises:
          CommandError: the node refused the message, or as :meth:`ask`.
        """
        node = address.rpartition("@")[2]
        seen = len(self.node.system.dead_letters)
        try:
            await self.node.ref(address).tell(message)
        except TrioactorsError as exc:
            raise self._failure(exc, address, self.settings.timeout) from None
        try:
            await self.ask(f"{ADMIN}@{node}", AdminPing(0.0))
        except CommandError as exc:
            if exc.code in (EXIT_UNREACHABLE, EXIT_REFUSED):
                raise
            # (no admin service there: its error answer came back all the same)
        refused = [
            letter for letter in self.node.system.dead_letters[seen:] if letter.recipient == address
        ]
        if refused:
            raise CommandError(f"{address} refused the message: {refused[0].reason}")

    def _failure(self, exc: TrioactorsError, address: str, timeout: float) -> CommandError:
        node = address.rpartition("@")[2]
        where = self._addresses.get(node, node)
        cause = _cause(exc)
        if isinstance(exc, Unauthorized) or isinstance(cause, Unauthorized):
            return CommandError(
                f"not allowed: {exc} (a read-only client may only send queries)", EXIT_REFUSED
            )
        if isinstance(cause, AuthenticationFailed):
            which = "read-only secret" if self.settings.read_only else "secret"
            return CommandError(
                f"authentication failed at {where}: {cause} (check the {which})", EXIT_REFUSED
            )
        if isinstance(exc, NodeUnreachable):
            return CommandError(f"cannot reach {node} at {where}: {exc}", EXIT_UNREACHABLE)
        if isinstance(exc, AskTimeout):
            return CommandError(f"no answer from {address} within {timeout:g} s", EXIT_UNREACHABLE)
        if isinstance(exc, ActorNotFound) and address.startswith(f"{ADMIN}@"):
            return CommandError(
                f"{node} has no admin service ({exc}); is it a `trioactors node`?", EXIT_FAILED
            )
        return CommandError(f"{address}: {type(exc).__name__}: {exc}", EXIT_FAILED)


@contextlib.asynccontextmanager
async def open_client(settings: ClientSettings) -> AsyncIterator[Client]:
    """Connect to the node at ``settings.to``; close everything on exit.

    Raises:
      CommandError: the node cannot be reached (3), refused us (4), or the
        settings cannot work (2).
    """
    transport_class = _transport_class(settings.to)
    config = _config(settings)
    try:
        transport_class(config).check_address(settings.to)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    listen = settings.listen or await _interface_towards(settings.to)
    transport = transport_class(config, host=listen)
    registry = MessageRegistry()
    register_admin_messages(registry)
    name = f"cli-{secrets.token_hex(4)}"
    serving = False
    try:
        async with open_node(
            name, transport=transport, registry=registry, wire_format=settings.wire_format
        ) as node:
            serving = True
            node.codec.unknown = "raw"  # replies of the cluster's own types, as tag + data
            client = Client(node, transport, settings)
            await client._connect()
            yield client
    except (OSError, ExceptionGroup) as exc:
        leaf = exc
        while isinstance(leaf, ExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if serving or not isinstance(leaf, OSError):
            raise
        raise CommandError(f"cannot listen on {listen}: {_reason(leaf)}", EXIT_USAGE) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__`` (a NodeUnreachable's cause is its last connect error)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):  # (trio's "all attempts to connect failed")
        cause = _first_leaf(cause)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{exc}: {cause.strerror}"
    return str(exc) or type(exc).__name__


def _member(value: object) -> MemberInfo | None:
    if isinstance(value, MemberInfo):
        return value
    try:  # (unstructured by the node)
        member: MemberInfo = _converter("json").structure(value, MemberInfo)
    except Exception:
        return None
    return member


def _as_list(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def jsonable(value: object) -> object:
    """``value`` as plain JSON data: attrs classes as objects, enums by name, bytes as hex.

    A :class:`RawMessage` (a reply of a type the client does not know)
    becomes ``{"type": tag, "data": data}``.
    """
    if isinstance(value, RawMessage):
        return {"type": value.tag, "data": jsonable(value.data)}
    fields = getattr(type(value), "__attrs_attrs__", None)  # (an attrs class)
    if fields is not None:
        return {field.name: jsonable(getattr(value, field.name)) for field in fields}
    if isinstance(value, enum.Enum):
        return value.name.lower() if not isinstance(value.value, str) else value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
