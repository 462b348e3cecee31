"""Real nodes in real OS processes on 127.0.0.1, talking over real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

import trioactors as ta
from trioactors._nodecmd import Add, Echo, Relay, Sleep, Total, registry
from trioactors.transports import TcpTransport, TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SECRET = "integration-secret"
FAST = TransportConfig(
    secret=SECRET.encode(), connect_timeout=2.0, heartbeat_interval=0.2, heartbeat_timeout=1.0
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@asynccontextmanager
async def node_process(
    name: str, *peers: tuple[str, str], transport: str = "ws", secret: str = SECRET
) -> AsyncIterator[tuple[trio.Process, str]]:
    """Start ``trioactors node``; yield (process, advertised address)."""
    command = [sys.executable, "-m", "trioactors", "node", name, "--transport", transport]
    for peer, address in peers:
        command += ["--peer", f"{peer}={address}"]
    env = {**os.environ, "TRIOACTORS_SECRET": secret}
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    raise RuntimeError(f"node {name} exited before it was ready")
                line += chunk
        info = json.loads(line)
        assert info["name"] == name
        yield process, info["address"]
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            await process.stdin.aclose()  # asks it to stop
            with trio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def local_node(
    name: str, *peers: tuple[str, str], config: TransportConfig = FAST, transport: str = "ws"
) -> AsyncIterator[ta.Node]:
    carrier = (WebSocketTransport if transport == "ws" else TcpTransport)(config)
    async with ta.open_node(name, transport=carrier, peers=dict(peers), registry=registry) as node:
        yield node


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_processes_exchange_typed_messages_both_ways(transport: str) -> None:
    with trio.fail_after(60):
        async with (
            node_process("b", transport=transport) as (_, b_address),
            node_process("a", ("b", b_address), transport=transport) as (_, a_address),
            local_node("c", ("a", a_address), ("b", b_address), transport=transport) as c,
        ):
            await c.ref("account@a").tell(Add(5))
            assert await c.ref("account@a").ask(Total()) == 5
            assert await c.ref("echo@b").ask(Echo("hi")) == Echo("hi")  # typed round trip
            # a's relay asks b; the reply finds its way back to a, then to us
            await c.ref("account@b").tell(Add(3))
            assert await c.ref("relay@a").ask(Relay("account@b")) == 3
            # b learned a's address from a's handshake: now b can ask a
            assert await c.ref("relay@b").ask(Relay("account@a")) == 5


async def test_a_peer_killed_mid_ask_fails_the_ask_within_its_deadline() -> None:
    with trio.fail_after(60):
        async with (
            node_process("b") as (process, b_address),
            local_node("c", ("b", b_address)) as c,
        ):
            assert await c.ref("echo@b").ask(Echo("warm up")) == Echo("warm up")
            outcome: list[BaseException] = []

            async def ask_slowly() -> None:
                try:
                    await c.ref("slow@b").ask(Sleep(30), timeout=3)
                except (ta.AskTimeout, ta.NodeUnreachable) as exc:
                    outcome.append(exc)

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_slowly)
                while c.statistics().pending_asks == 0:  # the ask is in flight
                    await trio.sleep(0.01)
                process.send_signal(signal.SIGKILL)
            elapsed = trio.current_time() - start
            assert len(outcome) == 1, outcome
            assert elapsed < 3.5
            await process.wait()
            assert process.returncode == -signal.SIGKILL
            with pytest.raises(ta.NodeUnreachable):
                await c.ref("echo@b").ask(Echo("anyone?"), timeout=5)


async def test_an_unauthenticated_client_cannot_deliver() -> None:
    wrong = TransportConfig(secret=b"not the secret", connect_timeout=2.0)
    with trio.fail_after(60):
        async with node_process("b") as (_, b_address):
            async with local_node("mallory", ("b", b_address), config=wrong) as mallory:
                with pytest.raises(ta.NodeUnreachable):
                    await mallory.ref("account@b").tell(Add(1_000_000))
                with pytest.raises(ta.NodeUnreachable):
                    await mallory.ref("account@b").ask(Total())
            async with local_node("c", ("b", b_address)) as c:
                assert await c.ref("account@b").ask(Total()) == 0  # nothing got through
