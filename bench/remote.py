"""Remote workloads: two OS processes on 127.0.0.1, against raw trio-websocket.

Our side runs a node in this process and talks to a ``trioactors node``
process; the baseline runs a bare trio-websocket client in this process
against a bare trio-websocket server process (``bench/_raw_ws.py``). Both
servers are started once per workload; every measurement is a fresh
``trio.run`` whose setup (connecting, warming up) is outside the timed region.

Also here: the codec, encode + decode per message, against ``json`` of an
equivalent plain dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import trio
from trio_websocket import open_websocket_url

import trioactors as ta
from trioactors._nodecmd import Add, Echo, Total, registry
from trioactors._wire._codec import Codec, Envelope, Kind
from trioactors.transports import TcpTransport, Transport, TransportConfig, WebSocketTransport

from ._common import Result, best_of, latency, throughput, timed_run

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

__all__ = ["WORKLOADS"]

ASKS: Final = 5_000
TELLS: Final = 20_000
PIPELINED: Final = 10_000
WINDOW: Final = 32
CODEC_COUNT: Final = 20_000
SECRET: Final = "bench-secret"
PAYLOAD: Final = "x" * 40  # an Echo envelope of about 100 bytes; the raw message is 64 bytes
RAW: Final = b"x" * 64


@contextmanager
def _process(*command: str) -> Iterator[str]:
    """Run a server process; yield the first line it prints (its address)."""
    env = {**os.environ, "TRIOACTORS_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"{' '.join(command)} exited before it was ready")
        yield line.strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _trioactors_node(transport: str) -> Iterator[str]:
    with _process("trioactors", "node", "server", "--transport", transport) as line:
        yield json.loads(line)["address"]


def _transport(kind: str) -> Transport:
    config = TransportConfig(secret=SECRET.encode())
    return WebSocketTransport(config) if kind == "ws" else TcpTransport(config)


# -- ours ----------------------------------------------------------------------------


async def _ours_asks(address: str, kind: str, count: int) -> float:
    async with ta.open_node(
        "client", transport=_transport(kind), peers={"server": address}, registry=registry
    ) as node:
        echo = node.ref("echo@server")
        message = Echo(PAYLOAD)
        if await echo.ask(message) != message:  # connects; checks the round trip
            raise RuntimeError("echo returned something else")
        start = time.perf_counter()
        for _ in range(count):
            await echo.ask(message)
        return time.perf_counter() - start


async def _ours_tells(address: str, count: int) -> float:
    async with ta.open_node(
        "client", transport=_transport("ws"), peers={"server": address}, registry=registry
    ) as node:
        account = node.ref("account@server")
        before = await account.ask(Total())
        start = time.perf_counter()
        for _ in range(count):
            await account.tell(Add(1))
        after = await account.ask(Total())  # the last tell has been handled
        elapsed = time.perf_counter() - start
        if after != before + count:
            raise RuntimeError(f"account grew by {after - before}, not {count}")
        return elapsed


async def _ours_pipelined(address: str, count: int) -> float:
    async with ta.open_node(
        "client", transport=_transport("ws"), peers={"server": address}, registry=registry
    ) as node:
        echo = node.ref("echo@server")
        message = Echo(PAYLOAD)
        await echo.ask(message)

        async def worker(n: int) -> None:
            for _ in range(n):
                await echo.ask(message)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(WINDOW):
                nursery.start_soon(worker, count // WINDOW)
        return time.perf_counter() - start


# -- raw trio-websocket ----------------------------------------------------------------


async def _raw_echo(port: str, count: int) -> float:
    async with open_websocket_url(f"ws://127.0.0.1:{port}", disconnect_timeout=1) as ws:
        await ws.send_message("echo")
        await ws.send_message(RAW)
        await ws.get_message()
        start = time.perf_counter()
        for _ in range(count):
            await ws.send_message(RAW)
            await ws.get_message()
        return time.perf_counter() - start


async def _raw_one_way(port: str, count: int) -> float:
    async with open_websocket_url(f"ws://127.0.0.1:{port}", disconnect_timeout=1) as ws:
        await ws.send_message(f"count {count}")
        start = time.perf_counter()
        for _ in range(count):
            await ws.send_message(RAW)
        if await ws.get_message() != "done":
            raise RuntimeError("the raw server did not count every message")
        return time.perf_counter() - start


async def _raw_pipelined(port: str, count: int) -> float:
    async with open_websocket_url(f"ws://127.0.0.1:{port}", disconnect_timeout=1) as ws:
        await ws.send_message("echo")
        window = trio.Semaphore(WINDOW)
        total = count // WINDOW * WINDOW

        async def receiver() -> None:
            for _ in range(total):
                await ws.get_message()
                window.release()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            for _ in range(total):
                await window.acquire()
                await ws.send_message(RAW)
        return time.perf_counter() - start


# -- workloads ---------------------------------------------------------------------------


def _versus(
    rounds: int,
    transport: str,
    ours: Callable[[str], Awaitable[float]],
    raw: Callable[[str], Awaitable[float]],
) -> tuple[float, float]:
    """Best times of ``ours(node address)`` and ``raw(port)``, servers started once."""
    with _trioactors_node(transport) as address, _process("bench._raw_ws") as port:
        best = best_of(
            rounds,
            {"ours": lambda: timed_run(ours, address), "raw": lambda: timed_run(raw, port)},
        )
    return best["ours"], best["raw"]


def remote_ask(rounds: int) -> list[Result]:
    ours, raw = _versus(
        rounds, "ws", lambda a: _ours_asks(a, "ws", ASKS), lambda p: _raw_echo(p, ASKS)
    )
    return [latency("remote_ask_roundtrip", ASKS, ours, raw)]


def remote_ask_tcp(rounds: int) -> list[Result]:
    ours, raw = _versus(
        rounds, "tcp", lambda a: _ours_asks(a, "tcp", ASKS), lambda p: _raw_echo(p, ASKS)
    )
    return [latency("remote_ask_roundtrip_tcp", ASKS, ours, raw)]


def remote_tell(rounds: int) -> list[Result]:
    ours, raw = _versus(
        rounds, "ws", lambda a: _ours_tells(a, TELLS), lambda p: _raw_one_way(p, TELLS)
    )
    return [throughput("remote_tell_throughput", TELLS, ours, raw, "msg/s")]


def remote_pipelined(rounds: int) -> list[Result]:
    ours, raw = _versus(
        rounds,
        "ws",
        lambda a: _ours_pipelined(a, PIPELINED),
        lambda p: _raw_pipelined(p, PIPELINED),
    )
    total = PIPELINED // WINDOW * WINDOW
    return [throughput(f"remote_ask_pipelined_{WINDOW}", total, ours, raw, "asks/s")]


def _codec_loop(fmt: str) -> float:
    codec = Codec(registry, fmt)  # type: ignore[arg-type]
    envelope = Envelope(Kind.ASK, "echo@server", "client@here", 1, None, "", Echo(PAYLOAD))
    start = time.perf_counter()
    for _ in range(CODEC_COUNT):
        codec.decode(codec.encode(envelope))
    return time.perf_counter() - start


def _plain_json_loop() -> float:
    header = [1, 1, "echo@server", "client@here", 1, None, 0, "Echo", {"text": PAYLOAD}]
    start = time.perf_counter()
    for _ in range(CODEC_COUNT):
        json.loads(json.dumps(header))
    return time.perf_counter() - start


def codec(rounds: int) -> list[Result]:
    best = best_of(
        rounds,
        {
            "json": lambda: _codec_loop("json"),
            "msgpack": lambda: _codec_loop("msgpack"),
            "plain": _plain_json_loop,
        },
    )
    return [
        latency("codec_json_encode_decode", CODEC_COUNT, best["json"], best["plain"]),
        latency("codec_msgpack_encode_decode", CODEC_COUNT, best["msgpack"], best["plain"]),
    ]


WORKLOADS: dict[str, Callable[[int], list[Result]]] = {
    "codec": codec,
    "remote_ask": remote_ask,
    "remote_tell": remote_tell,
    "remote_pipelined": remote_pipelined,
    "remote_ask_tcp": remote_ask_tcp,
}
"""The remote workloads, in the order ``python -m bench`` runs them."""
