"""``trioactors node``: run a node with a few example actors.

The actors and their messages are examples with a use: the integration tests,
the benchmarks and the demo talk to them across processes.

- ``echo`` returns what it gets (an :class:`Echo`).
- ``account`` keeps a running total (:class:`Add`, :class:`Total`).
- ``relay`` asks another address for its :class:`Total` (:class:`Relay`).
- ``slow`` sleeps, then answers (:class:`Sleep`).

The cluster secret comes from ``TRIOACTORS_SECRET`` or ``--secret-file``.
Once serving, the command prints one JSON line ``{"name": ..., "address": ...}``
and runs until its standard input closes, or until interrupted. With
``--events`` it then prints one JSON line per membership change::

    {"event": "member", "node": "node-3", "state": "dead", "incarnation": 0,
     "address": "ws://127.0.0.1:40113", "time": 12.5}

(``time`` is seconds since the node started.)
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import attrs
import trio

import trioactors as ta
from trioactors.transports import TcpTransport, TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    import argparse

__all__ = ["Add", "Echo", "Relay", "Sleep", "Total", "add_arguments", "registry", "run_node"]


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


class Account(ta.Actor[Add | Total]):
    """Keeps a running total."""

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


class EventPrinter(ta.Actor[ta.MemberChanged]):
    """Prints each membership change as a JSON line (``--events``)."""

    def __init__(self, started: float) -> None:
        self.started = started

    async def receive(self, message: ta.MemberChanged) -> None:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the node's name (actors are addressed actor@NAME)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on and advertise")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free)")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=ADDRESS",
        help="a known node (repeatable)",
    )
    parser.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="NAME=ADDRESS",
        help="a seed to join the cluster through (repeatable); membership always runs",
    )
    parser.add_argument("--transport", choices=["ws", "tcp"], default="ws")
    parser.add_argument("--wire-format", choices=["json", "msgpack"], default="json")
    parser.add_argument(
        "--events", action="store_true", help="print membership changes as JSON lines"
    )
    parser.add_argument(
        "--secret-file", help="file holding the cluster secret (else $TRIOACTORS_SECRET)"
    )


async def run_node(args: argparse.Namespace) -> None:
    """Serve until standard input closes (or the process is interrupted)."""
    if args.secret_file:
        secret = (await trio.Path(args.secret_file).read_bytes()).strip()
    else:
        secret = os.environ.get("TRIOACTORS_SECRET", "").encode()
    peers = _pairs(args.peer, "--peer")
    seeds = _pairs(args.join, "--join")
    config = TransportConfig(secret=secret)
    transport_class = WebSocketTransport if args.transport == "ws" else TcpTransport
    transport = transport_class(config, host=args.host, port=args.port)
    async with ta.open_node(
        args.name, transport=transport, peers=peers, registry=registry, wire_format=args.wire_format
    ) as node:
        await node.root.start_actor(Account, name="account")
        await node.root.start_actor(EchoActor, name="echo")
        await node.root.start_actor(RelayActor, node, name="relay")
        await node.root.start_actor(SlowActor, name="slow")
        membership = await ta.start_membership(node, seeds=seeds)
        printer = None
        if args.events:
            printer = await node.root.start_actor(
                EventPrinter, trio.current_time(), name="$events", mailbox_size=10_000
            )
            membership.subscribe(printer)
        print(json.dumps({"name": node.name, "address": node.address}), flush=True)
        if printer is not None:  # what we knew before subscribing, then every change
            for member in membership.members():
                if member.node != node.name:
                    printer.tell_nowait(ta.MemberChanged(member.node, None, member))
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            while await stdin.receive_some():
                pass


def _pairs(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, address = item.partition("=")
        if not sep:
            raise SystemExit(f"{option} expects NAME=ADDRESS, not {item!r}")
        pairs[name] = address
    return pairs
