"""``trioactors node``: run a node with a few example actors.

The actors and their messages are examples with a use: the integration tests,
the benchmarks and the demo talk to them across processes.

- ``echo`` returns what it gets (an :class:`Echo`).
- ``account`` keeps a running total (:class:`Add`, :class:`Total`); it is
  started through the node's reloader (``$reloader``), so an operator can
  give it new code (``$reloader.Reload``) and its total is carried over.
- ``relay`` asks another address for its :class:`Total` (:class:`Relay`).
- ``slow`` sleeps, then answers (:class:`Sleep`).

The cluster secret comes from ``--secret-file`` or ``TRIOACTORS_SECRET`` (the
file wins); the read-only secret, for operators' observer connections, from
``--read-only-secret-file`` or ``TRIOACTORS_READ_ONLY_SECRET``. Settings can
also come from a TOML file (``--config``; see :func:`load_settings`), which
options on the command line override.

The node runs the admin service (``$admin``: ``trioactors status``, ``drain``,
``shutdown``...), membership, a failure supervisor (``$failures``: members lost
and restart storms are logged and kept), and (unless ``--workers 0``) a worker pool,
``jobs:worker``, that runs the example jobs of :mod:`trioactors.examples`
(echo, sleep, digest, the word count's map and reduce) on ``--workers``
concurrent tasks, offering the ``--tag`` capabilities. With ``--metrics-port`` it serves
Prometheus metrics (``GET /metrics``) and its health (``GET /healthz``) over HTTP on
``--host`` at that port (see :func:`trioactors.start_metrics`). It keeps a
replica of the cluster's configuration (``$config``) and, with ``--files-dir``,
receives pushed files there (``$files``). Once serving, the command
prints one JSON line ``{"name": ..., "address": ...}`` and runs until its standard input
closes (unless ``--ignore-stdin``: the parent process is done with it), until
SIGTERM or SIGINT, or until an operator shuts it down. The last two leave the
cluster gracefully first (the members mark the node ``left`` at once). With
``--events`` it prints one JSON line per membership change (and one per
configuration change, ``{"event": "config", "key": ..., "value": ...}``)::

    {"event": "member", "node": "node-3", "state": "dead", "incarnation": 0,
     "address": "ws://127.0.0.1:40113", "time": 12.5}

(``time`` is seconds since the node started.)
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, cast

import attrs
import trio

import trioactors as ta
from trioactors import examples
from trioactors._services._admin import start_admin
from trioactors._services._metrics import start_metrics
from trioactors._wire._address import check_node_name
from trioactors.transports import TcpTransport, TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping

    from trioactors._wire._codec import Format

__all__ = [
    "Add",
    "Echo",
    "NodeSettings",
    "Relay",
    "SettingsError",
    "Sleep",
    "Total",
    "load_settings",
    "merge_settings",
    "read_secret",
    "read_secrets",
    "registry",
    "run_node",
]


registry = ta.MessageRegistry()


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Total(ta.Request[int]):
    pass


@attrs.frozen
class Echo:
    text: str


@attrs.frozen
class Relay:
    target: str


@attrs.frozen
class Sleep:
    seconds: float


for cls in (Add, Total, Echo, Relay, Sleep):
    registry.register(cls)


class Account(ta.Reloadable[Add | Total]):
    """Keeps a running total; reloadable (``$reloader``): the total survives new code."""

    def __init__(self) -> None:
        self.total = 0

    async def receive(self, message: Add | Total) -> object:
        match message:
            case Add(amount):
                self.total += amount
            case Total():
                return self.total
        return None


class EchoActor(ta.Actor[Echo]):
    """Returns what it gets."""

    async def receive(self, message: Echo) -> object:
        return message


class RelayActor(ta.Actor[Relay]):
    """Asks another address for its total."""

    def __init__(self, node: ta.Node) -> None:
        self.node = node

    async def receive(self, message: Relay) -> object:
        return await self.node.ref(message.target).ask(Total(), timeout=5)


class SlowActor(ta.Actor[Sleep]):
    """Sleeps, then answers."""

    async def receive(self, message: Sleep) -> object:
        await trio.sleep(message.seconds)
        return "slept"


class EventPrinter(ta.Actor[ta.MemberChanged | ta.ConfigChanged]):
    """Prints each membership and configuration change as a JSON line (``--events``)."""

    def __init__(self, started: float) -> None:
        self.started = started

    async def receive(self, message: ta.MemberChanged | ta.ConfigChanged) -> None:
        if isinstance(message, ta.ConfigChanged):
            change = {"event": "config", "key": message.key, "value": message.new}
            print(json.dumps(change), flush=True)
            return
        member = message.after
        line = {
            "event": "member",
            "node": member.node,
            "state": member.state.name.lower(),
            "incarnation": member.incarnation,
            "address": member.address,
            "time": round(trio.current_time() - self.started, 3),
        }
        print(json.dumps(line), flush=True)


TransportName: TypeAlias = Literal["ws", "tcp"]
_TRANSPORTS: Final = {"ws": WebSocketTransport, "tcp": TcpTransport}
LEAVE_TIMEOUT: Final = 2.0
"""Longest wait, when stopping, for telling a few members that we leave."""


class SettingsError(ValueError):
    """A setting (from the command line or the settings file) is unusable."""


@attrs.frozen
class NodeSettings:
    """What ``trioactors node`` runs with: options over the settings file over defaults.

    Raises:
      SettingsError: a value is unusable (an invalid node name, an address
        the transport cannot reach, ...); the message says which.
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    join: Mapping[str, str] = attrs.field(factory=dict)
    peer: Mapping[str, str] = attrs.field(factory=dict)
    transport: TransportName = "ws"
    wire_format: Format = "json"
    secret_file: str | None = None
    read_only_secret_file: str | None = None
    events: bool = False
    ignore_stdin: bool = False
    workers: int = 2
    tags: tuple[str, ...] = ()
    metrics_port: int | None = None
    files_dir: str | None = None
    raft: tuple[str, ...] = ()
    raft_dir: str = "."

    def __attrs_post_init__(self) -> None:
        try:
            check_node_name(self.name)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, not {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port must be 0-65535, not {self.metrics_port}")
        if not 0 <= self.workers <= 1024:
            raise SettingsError(f"workers must be 0-1024, not {self.workers}")
        for voter in self.raft:
            try:
                check_node_name(voter)
            except ValueError as exc:
                raise SettingsError(f"raft voter {voter!r}: {exc}") from None
        for tag in self.tags:
            if not tag or "," in tag or tag != tag.strip():
                raise SettingsError(f"invalid tag {tag!r}: a tag is a non-empty word")
        if self.transport not in _TRANSPORTS:
            raise SettingsError(f"transport must be 'ws' or 'tcp', not {self.transport!r}")
        if self.wire_format not in ("json", "msgpack"):
            raise SettingsError(
                f"wire_format must be 'json' or 'msgpack', not {self.wire_format!r}"
            )
        probe = _TRANSPORTS[self.transport](TransportConfig())
        for option, pairs in (("join", self.join), ("peer", self.peer)):
            for name, address in pairs.items():
                try:
                    check_node_name(name)
                    probe.check_address(address)
                except ValueError as exc:
                    raise SettingsError(f"{option} {name}={address}: {exc}") from None


# name -> (type, description) of every key a settings file may hold
_KEYS: Final[dict[str, tuple[type, str]]] = {
    "name": (str, "a string"),
    "host": (str, "a string"),
    "port": (int, "an integer"),
    "join": (dict, "a table of NAME = ADDRESS"),
    "peer": (dict, "a table of NAME = ADDRESS"),
    "transport": (str, "a string"),
    "wire_format": (str, "a string"),
    "secret_file": (str, "a string"),
    "read_only_secret_file": (str, "a string"),
    "events": (bool, "true or false"),
    "ignore_stdin": (bool, "true or false"),
    "workers": (int, "an integer"),
    "tags": (list, "a list of strings"),
    "metrics_port": (int, "an integer"),
    "files_dir": (str, "a string"),
    "raft": (list, "a list of node names"),
    "raft_dir": (str, "a string"),
}


def load_settings(path: str) -> dict[str, object]:
    """Read a node's settings file (TOML); return the settings it holds.

    Keys mirror the options of ``trioactors node``::

        name = "node-1"
        host = "10.0.0.1"
        port = 7000
        transport = "ws"            # or "tcp"
        wire_format = "json"        # or "msgpack"
        secret_file = "secret"      # relative to this file
        read_only_secret_file = "read-only-secret"
        events = false
        ignore_stdin = true
        workers = 2                 # jobs run at once (0: no worker pool)
        tags = ["gpu"]              # capabilities offered to jobs
        metrics_port = 9100         # serve /metrics and /healthz (default: off)
        files_dir = "files"         # receive pushed files here (default: off)
        [join]
        node-0 = "ws://10.0.0.2:7000"
        [peer]
        gateway = "ws://10.0.0.3:7000"

    Raises:
      SettingsError: the file cannot be read, is not TOML, or holds an
        unknown key or a value of the wrong type.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    settings: dict[str, object] = {}
    for key, value in data.items():
        if key not in _KEYS:
            known = ", ".join(_KEYS)
            raise SettingsError(f"{path}: unknown key {key!r} (known keys: {known})")
        kind, description = _KEYS[key]
        if type(value) is not kind:  # (bool is an int in Python, not in a settings file)
            raise SettingsError(
                f"{path}: {key} must be {description}, not {_toml_type(value)} {value!r:.40}"
            )
        if isinstance(value, list):
            if not all(type(item) is str for item in value):
                raise SettingsError(f"{path}: {key} must be {description}, not {value!r:.40}")
            value = tuple(value)
        if isinstance(value, dict):
            for name, address in value.items():
                if type(address) is not str:
                    raise SettingsError(
                        f"{path}: {key}.{name} must be an address string, "
                        f"not {_toml_type(address)} {address!r:.40}"
                    )
            value = dict(value)
        if key.endswith("secret_file") or key == "files_dir":
            assert isinstance(value, str)
            value = str(Path(path).parent / Path(value).expanduser())
        settings[key] = value
    return settings


def merge_settings(
    name: str | None,
    options: Mapping[str, object],
    given: Collection[str],
    file: Mapping[str, object],
) -> NodeSettings:
    """The settings of the options ``given`` on the command line, else the file's,
    else the options' defaults; ``join`` and ``peer`` from both (options win).

    Raises:
      SettingsError: no name anywhere, or as :class:`NodeSettings`.
    """

    def pick(key: str) -> object:
        return options[key] if key in given or key not in file else file[key]

    def pairs(key: str) -> dict[str, str]:
        return {**cast("dict[str, str]", file.get(key, {})), **cast("dict[str, str]", options[key])}

    chosen = name if name is not None else file.get("name")
    if not isinstance(chosen, str):
        raise SettingsError("missing NAME: give it, or set name in the settings file")
    return NodeSettings(
        name=chosen,
        host=cast("str", pick("host")),
        port=cast("int", pick("port")),
        join=pairs("join"),
        peer=pairs("peer"),
        transport=cast("TransportName", pick("transport")),
        wire_format=cast("Format", pick("wire_format")),
        secret_file=cast("str | None", pick("secret_file")),
        read_only_secret_file=cast("str | None", pick("read_only_secret_file")),
        events=cast("bool", pick("events")),
        ignore_stdin=cast("bool", pick("ignore_stdin")),
        workers=cast("int", pick("workers")),
        tags=tuple(cast("Collection[str]", pick("tags"))),
        metrics_port=cast("int | None", pick("metrics_port")),
        files_dir=cast("str | None", pick("files_dir")),
        raft=_voters(pick("raft") if "raft" in options or "raft" in file else ()),
        raft_dir=cast(
            "str", pick("raft_dir") if "raft_dir" in options or "raft_dir" in file else "."
        ),
    )


def _voters(value: object) -> tuple[str, ...]:
    """Raft voters from ``--raft a,b,c`` or a settings file's list."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return tuple(cast("Collection[str]", value))


def _toml_type(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def read_secrets(settings: NodeSettings) -> tuple[bytes, bytes | None]:
    """The cluster secret and the read-only secret (None: no observers accepted).

    Each comes from its file if one is set, else from ``TRIOACTORS_SECRET`` /
    ``TRIOACTORS_READ_ONLY_SECRET``. Surrounding whitespace is ignored.

    Raises:
      SettingsError: a secret file cannot be read.
    """
    secret = read_secret(settings.secret_file, "TRIOACTORS_SECRET") or b""
    read_only = read_secret(settings.read_only_secret_file, "TRIOACTORS_READ_ONLY_SECRET")
    return secret, read_only


def read_secret(path: str | None, variable: str) -> bytes | None:
    """A secret from the file at ``path`` if given, else from the environment ``variable``.

    Returns None when neither holds one. Surrounding whitespace is ignored.

    Raises:
      SettingsError: the file cannot be read.
    """
    if path is not None:
        try:
            return Path(path).read_bytes().strip()
        except OSError as exc:
            raise SettingsError(
                f"cannot read the secret file {path}: {exc.strerror or exc}"
            ) from None
    return os.environ.get(variable, "").strip().encode() or None


async def run_node(settings: NodeSettings, secret: bytes, read_only_secret: bytes | None) -> None:
    """Serve until standard input closes, a signal, or an operator's shutdown."""
    config = TransportConfig(secret=secret, read_only_secret=read_only_secret)
    transport = _TRANSPORTS[settings.transport](config, host=settings.host, port=settings.port)
    async with ta.open_node(
        settings.name,
        transport=transport,
        peers=settings.peer,
        registry=registry,
        wire_format=settings.wire_format,
    ) as node:
        reloader = await ta.start_reloader(node)  # new code for `account` ($reloader.Reload)
        await reloader.start_reloadable(node.root, Account, name="account")
        await node.root.start_actor(EchoActor, name="echo")
        await node.root.start_actor(RelayActor, node, name="relay")
        await node.root.start_actor(SlowActor, name="slow")
        membership = await ta.start_membership(node, seeds=settings.join)
        factories: dict[str, Callable[[], object]] = {  # (what Spawn may start, by name)
            "account": Account,
            "echo": EchoActor,
            "relay": functools.partial(RelayActor, node),
            "slow": SlowActor,
        }
        admin = await start_admin(node, membership=membership, factories=factories)
        # Failures (members lost, restart storms; reports from job queues that
        # use this node's supervisor) are logged, and kept for `trioactors ask
        # '$failures@NODE' '$failures.ListDeadLetters' '{}'`.
        await ta.start_failure_supervisor(node, membership=membership)
        replica = await ta.start_config(node, membership)  # the cluster's configuration ($config)
        if settings.files_dir is not None:  # files pushed to this node ($files)
            await ta.start_files(node, settings.files_dir, membership=membership)
        if settings.raft:  # a server of the replicated key-value store ($raft)
            store = ta.SqliteRaftStore(Path(settings.raft_dir) / f"{node.name}.raft.db")
            await ta.start_raft(node, settings.raft, ta.KvState(), store=store)
        pools = []
        if settings.workers:
            pool = await ta.start_worker_pool(
                node, examples.HANDLERS, concurrency=settings.workers, tags=settings.tags
            )
            pools.append(pool)
        if settings.metrics_port is not None:
            where = (settings.host, settings.metrics_port)
            try:
                await start_metrics(node, membership=membership, pools=pools, serve=where)
            except OSError as exc:  # (the command reports it as "cannot serve")
                raise OSError(
                    exc.errno, f"{exc.strerror or exc} (--metrics-port {settings.metrics_port})"
                ) from exc
        printer = None
        if settings.events:
            printer = await node.root.start_actor(
                EventPrinter, trio.current_time(), name="$events", mailbox_size=10_000
            )
            membership.subscribe(printer)
            replica.subscribe(printer)
        print(json.dumps({"name": node.name, "address": node.address}), flush=True)
        if printer is not None:  # what we knew before subscribing, then every change
            for member in membership.members():
                if member.node != node.name:
                    printer.tell_nowait(ta.MemberChanged(member.node, None, member))
        signalled = False
        async with trio.open_nursery() as waiting:  # the first way to stop ends the wait

            async def stop_after(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                waiting.cancel_scope.cancel()

            async def stop_on_signal() -> None:
                nonlocal signalled
                await _signalled()
                signalled = True
                waiting.cancel_scope.cancel()

            if not settings.ignore_stdin:
                waiting.start_soon(stop_after, _stdin_closed)
            waiting.start_soon(stop_on_signal)
            waiting.start_soon(stop_after, admin.wait_shutdown)  # (it has left the cluster)
        if signalled:
            # An operator stops this node alone: tell the cluster. (A closed
            # stdin usually means the parent stops every node at once.)
            with trio.move_on_after(LEAVE_TIMEOUT):
                await membership.leave()


async def _stdin_closed() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some():
            pass


async def _signalled() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return
