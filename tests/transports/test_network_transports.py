"""The websocket and tcp transports on real loopback sockets.

Real sockets need real time, so these tests run on Trio's real clock with
small timeouts; every one of them is guarded by a ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketRequest, serve_websocket

from trioactors._errors import FrameTooLarge, LocalProtocolError, NodeUnreachable
from trioactors._wire._handshake import (
    ClientHandshake,
    Rejected,
    Send,
    ServerHandshake,
    decode_message,
)
from trioactors.transports import (
    PROTOCOL_VERSION,
    Deliver,
    TcpTransport,
    TransportConfig,
    WebSocketTransport,
)
from trioactors.transports._stream import FrameStream, StreamTransport

FAST = TransportConfig(
    secret=b"cluster secret",
    connect_timeout=1.0,  # generous: a loaded machine must not fail a good connect
    heartbeat_interval=0.2,
    heartbeat_timeout=1.0,
    reconnect_initial=0.02,
    reconnect_max=0.1,
)
GUARD = 10  # seconds any one test may take before it counts as hung

Make = Callable[..., StreamTransport]


@pytest.fixture(params=["tcp", "ws"])
def make(request: pytest.FixtureRequest) -> Make:
    return TcpTransport if request.param == "tcp" else WebSocketTransport


class Inbox:
    """What a node received, with a way to wait for it."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self._changed = trio.Event()

    async def deliver(self, peer: str, frame: bytes) -> None:
        self.frames.append((peer, frame))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        while len(self.frames) < count:
            await self._changed.wait()
        return self.frames


@attrs.define
class Node:
    transport: StreamTransport
    name: str
    address: str
    inbox: Inbox
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


@asynccontextmanager
async def serving() -> AsyncIterator[Callable[..., Any]]:
    """Yield ``start(transport, name, deliver=None) -> Node``; everything stops at exit."""
    async with trio.open_nursery() as nursery:

        async def start(
            transport: StreamTransport, name: str, deliver: Deliver | None = None
        ) -> Node:
            inbox = Inbox()
            scope = trio.CancelScope()
            done = trio.Event()

            async def run(*, task_status: trio.TaskStatus[str]) -> None:
                try:
                    with scope:
                        await transport.serve(
                            name, deliver or inbox.deliver, task_status=task_status
                        )
                finally:
                    done.set()

            address: str = await nursery.start(run)
            return Node(transport, name, address, inbox, scope, done)

        yield start
        nursery.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll a condition that has no event of its own (bounded by the test's guard)."""
    while not condition():
        await trio.sleep(0.01)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- basics -------------------------------------------------------------------------


async def test_frames_both_ways_in_order(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(FAST), "a")
            b = await start(make(FAST), "b")
            assert a.address.startswith(("tcp://127.0.0.1:", "ws://127.0.0.1:"))
            a.transport.add_peer("b", b.address)
            frames = [b"frame %d " % i + bytes(i % 300) for i in range(2000)]

            async def pump(src: Node, dst: str) -> None:
                for frame in frames:
                    await src.transport.send(dst, frame)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, a, "b")
                # b learns a's address from the handshake; no add_peer needed.
                await b.inbox.wait_for(1)
                assert b.transport.peers() == {"a": a.address}
                nursery.start_soon(pump, b, "a")
            assert await b.inbox.wait_for(len(frames)) == [("a", f) for f in frames]
            assert await a.inbox.wait_for(len(frames)) == [("b", f) for f in frames]
            stats = a.transport.statistics()
            assert stats.frames_sent == stats.frames_received == len(frames)
            assert stats.connects == 1
            assert stats.connections_open == 2
            assert stats.frames_lost == stats.connect_failures == 0


async def test_serving_twice_is_refused(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(FAST), "a")
            with pytest.raises(LocalProtocolError, match="already serving"):
                await a.transport.serve("a", a.inbox.deliver)


def test_addresses_are_checked(make: Make) -> None:
    transport = make(FAST)
    for bad in ["http://127.0.0.1:1", "127.0.0.1:1", "tcp://:1", "ws://host", "memory://x"]:
        with pytest.raises(ValueError, match="address"):
            transport.add_peer("x", bad)
    other = "ws://127.0.0.1:1" if make is TcpTransport else "tcp://127.0.0.1:1"
    with pytest.raises(ValueError, match="address"):
        transport.add_peer("x", other)
    assert transport.peers() == {}


# -- frame size ---------------------------------------------------------------------


async def test_local_oversize_frame_raises_at_once(make: Make) -> None:
    config = attrs.evolve(FAST, max_frame_size=2048)
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(config), "a")
            with pytest.raises(FrameTooLarge, match="2049"):
                await a.transport.send("b", bytes(2049))


async def test_peer_sending_an_oversize_frame_is_disconnected_and_counted(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trioactors.transports")
    small = attrs.evolve(FAST, max_frame_size=1024)
    large = attrs.evolve(FAST, max_frame_size=64 * 1024)
    with trio.fail_after(GUARD):
        async with serving() as start:
            b = await start(make(small), "b")
            a = await start(make(large), "a")
            c = await start(make(small), "c")
            a.transport.add_peer("b", b.address)
            c.transport.add_peer("b", b.address)
            await a.transport.send("b", b"fine")
            await b.inbox.wait_for(1)
            await a.transport.send("b", bytes(5000))
            await eventually(lambda: b.transport.statistics().oversize_frames == 1)
            assert "connection with a at 127.0.0.1:" in caplog.text  # the peer is named
            # b keeps serving others ...
            await c.transport.send("b", b"from c")
            assert ("c", b"from c") in await b.inbox.wait_for(2)
            # ... and a too, once it has reconnected (frames sent into the dying
            # connection may be lost: at most once).
            while ("a", b"again") not in b.inbox.frames:
                with contextlib.suppress(NodeUnreachable):
                    await a.transport.send("b", b"again")
                await trio.sleep(0.01)
            assert all(len(f) < 1024 for _, f in b.inbox.frames)


# -- authentication and versions ----------------------------------------------------


@pytest.mark.parametrize(
    ("client_secret", "server_secret"),
    [(b"wrong", b"right"), (b"", b"right"), (b"right", b"")],
)
async def test_wrong_secret_is_rejected_and_the_server_keeps_serving(
    make: Make, client_secret: bytes, server_secret: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trioactors.transports")
    with trio.fail_after(GUARD):
        async with serving() as start:
            server = await start(make(attrs.evolve(FAST, secret=server_secret)), "server")
            intruder = await start(make(attrs.evolve(FAST, secret=client_secret)), "intruder")
            friend = await start(make(attrs.evolve(FAST, secret=server_secret)), "friend")
            intruder.transport.add_peer("server", server.address)
            friend.transport.add_peer("server", server.address)
            began = trio.current_time()
            with pytest.raises(NodeUnreachable, match="server"):
                await intruder.transport.send("server", b"let me in")
            assert trio.current_time() - began < FAST.connect_timeout + 0.5
            assert server.transport.statistics().auth_failures >= 1
            assert intruder.transport.statistics().auth_failures >= 1
            assert server.transport.statistics().connections_open == 0
            assert "intruder" not in server.transport.peers()
            assert "'intruder'" in caplog.text  # the claimed name is logged
            await friend.transport.send("server", b"hello")
            assert await server.inbox.wait_for(1) == [("friend", b"hello")]


async def test_version_mismatch_and_garbage_are_rejected(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            server = await start(make(FAST), "server")
            raw = make(FAST)  # not serving: only its connect hook is used
            async with trio.open_nursery() as nursery:
                stream = await raw.connect_stream(server.address, nursery)
                future = ClientHandshake(
                    node="future",
                    address="tcp://127.0.0.1:9",
                    secret=FAST.secret,
                    version=PROTOCOL_VERSION + 1,
                )
                await stream.send_frame(future.start())
                assert decode_message(await stream.receive_frame()) == Rejected(
                    "version", PROTOCOL_VERSION
                )
                await stream.aclose()

                stream = await raw.connect_stream(server.address, nursery)
                await stream.send_frame(b"\x00garbage")
                assert decode_message(await stream.receive_frame()) == Rejected("malformed")
                await stream.aclose()
                nursery.cancel_scope.cancel()
            stats = server.transport.statistics()
            assert stats.version_mismatches == 1
            assert stats.connections_open == 0
            assert server.inbox.frames == []


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 64,
        b"\xff" * 64,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\xff\xff",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100),  # a TLS hello
        bytes(range(256)) * 8,
    ],
)
async def test_raw_garbage_on_the_socket_is_survived(make: Make, garbage: bytes) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            server = await start(make(FAST), "server")
            port = int(server.address.rsplit(":", 1)[1])
            for close_at_once in (True, False):
                sock = await trio.open_tcp_stream("127.0.0.1", port)
                with contextlib.suppress(trio.BrokenResourceError):
                    await sock.send_all(garbage)
                    if not close_at_once:
                        with trio.move_on_after(FAST.connect_timeout + 0.5):
                            while await sock.receive_some():
                                pass
                await sock.aclose()
            friend = await start(make(FAST), "friend")
            friend.transport.add_peer("server", server.address)
            await friend.transport.send("server", b"still serving?")
            assert await server.inbox.wait_for(1) == [("friend", b"still serving?")]


async def test_a_client_that_resets_right_after_its_upgrade_request_is_survived(
    make: Make,
) -> None:
    # The server may look up the peer's address after the socket is gone
    # (getpeername: ENOTCONN); that must end the connection, not the node.
    request = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    linger = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")  # close = RST
    with trio.fail_after(GUARD):
        async with serving() as start:
            server = await start(make(FAST), "server")
            port = int(server.address.rsplit(":", 1)[1])
            for _ in range(20):
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                await sock.send(request)
                sock.close()
            friend = await start(make(FAST), "friend")
            friend.transport.add_peer("server", server.address)
            await friend.transport.send("server", b"still serving?")
            assert await server.inbox.wait_for(1) == [("friend", b"still serving?")]


async def test_a_client_gone_before_its_address_is_read_is_survived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def gone(self: WebSocketRequest) -> str:
        raise OSError(107, "Transport endpoint is not connected")

    with trio.fail_after(GUARD):
        async with serving() as start:
            server = await start(WebSocketTransport(FAST), "server")
            with monkeypatch.context() as patch:
                patch.setattr(WebSocketRequest, "remote", property(gone))
                client = await start(WebSocketTransport(FAST), "client")
                client.transport.add_peer("server", server.address)
                with pytest.raises(NodeUnreachable):
                    await client.transport.send("server", b"lost")
            friend = await start(WebSocketTransport(FAST), "friend")
            friend.transport.add_peer("server", server.address)
            await friend.transport.send("server", b"still serving?")
            assert await server.inbox.wait_for(1) == [("friend", b"still serving?")]


async def test_client_side_counts_a_server_of_another_version(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(FAST), "a")
            fake = make(FAST)

            async def handler(stream: FrameStream) -> None:
                machine = ServerHandshake(
                    node="b", address="tcp://x:1", secret=FAST.secret, version=PROTOCOL_VERSION + 1
                )
                with contextlib.suppress(trio.BrokenResourceError):
                    for action in machine.receive(await stream.receive_frame()):
                        if isinstance(action, Send):
                            await stream.send_frame(action.message)
                    await stream.receive_frame()

            async with trio.open_nursery() as nursery:
                address = await nursery.start(fake.serve_streams, handler)
                a.transport.add_peer("b", address)
                with pytest.raises(NodeUnreachable, match="version"):
                    await a.transport.send("b", b"hi")
                nursery.cancel_scope.cancel()
            assert a.transport.statistics().version_mismatches >= 1


# -- unreachable peers --------------------------------------------------------------


async def test_unknown_peer_and_not_serving_raise_at_once(make: Make) -> None:
    transport = make(FAST)
    transport.add_peer("b", f"{'tcp' if make is TcpTransport else 'ws'}://127.0.0.1:1")
    with trio.fail_after(0.5), pytest.raises(NodeUnreachable, match="not serving"):
        await transport.send("b", b"x")
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(transport, "a")
            with trio.fail_after(0.5), pytest.raises(NodeUnreachable, match="add_peer"):
                await a.transport.send("nobody", b"x")


async def test_closed_port_raises_within_connect_timeout(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(FAST), "a")
            prefix = "tcp" if make is TcpTransport else "ws"
            a.transport.add_peer("b", f"{prefix}://127.0.0.1:{closed_port()}")
            began = trio.current_time()
            with trio.fail_after(FAST.connect_timeout + 0.5):
                with pytest.raises(NodeUnreachable, match=r"[Rr]efused|connect"):
                    await a.transport.send("b", b"x")
            assert trio.current_time() - began >= FAST.connect_timeout * 0.9
            assert a.transport.statistics().connect_failures >= 1


async def test_a_waiting_send_follows_the_peer_to_its_new_address(make: Make) -> None:
    # A node restarted on another port: the sender waiting on the old address must
    # dial the new one at once, not wait out connect_timeout and drop the frame.
    slow = attrs.evolve(FAST, connect_timeout=30.0)
    with trio.fail_after(GUARD):
        async with serving() as start, trio.open_nursery() as nursery:
            a = await start(make(slow), "a")
            b = await start(make(slow), "b")
            prefix = "tcp" if make is TcpTransport else "ws"
            a.transport.add_peer("b", f"{prefix}://127.0.0.1:{closed_port()}")
            nursery.start_soon(a.transport.send, "b", b"hello")
            await trio.testing.wait_all_tasks_blocked()
            a.transport.add_peer("b", b.address)  # the peer is found at its new address
            assert await b.inbox.wait_for(1) == [("a", b"hello")]


async def test_peer_that_stops_then_returns(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(FAST), "a")
            b = await start(make(FAST), "b")
            a.transport.add_peer("b", b.address)
            await a.transport.send("b", b"one")
            await b.inbox.wait_for(1)
            await b.stop()
            # Sends either fail within connect_timeout or are counted as lost; none hangs.
            accepted = 0
            while True:
                with trio.fail_after(FAST.connect_timeout + 0.5):
                    try:
                        await a.transport.send("b", b"into the void")
                    except NodeUnreachable:
                        break
                accepted += 1
                await trio.testing.wait_all_tasks_blocked()
            await eventually(lambda: a.transport.statistics().connections_open == 0)
            stats = a.transport.statistics()
            assert stats.frames_sent + stats.frames_lost == 1 + accepted, stats
            # b comes back at the same address: a reconnects with backoff.
            port = int(b.address.rsplit(":", 1)[1])
            back = await start(make(FAST, port=port), "b")
            assert back.address == b.address
            await a.transport.send("b", b"welcome back")
            assert await back.inbox.wait_for(1) == [("a", b"welcome back")]
            assert a.transport.statistics().connects == 2


async def test_remove_peer_closes_both_directions(make: Make) -> None:
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(FAST), "a")
            b = await start(make(FAST), "b")
            a.transport.add_peer("b", b.address)
            await a.transport.send("b", b"x")
            await b.inbox.wait_for(1)
            await b.transport.send("a", b"y")
            await a.inbox.wait_for(1)
            assert a.transport.statistics().connections_open == 2
            a.transport.remove_peer("b")
            assert "b" not in a.transport.peers()
            with pytest.raises(NodeUnreachable, match="add_peer"):
                await a.transport.send("b", b"x")
            # Both connections close; b, still alive, reconnects to a, and a learns
            # b's address again from b's hello.
            await eventually(lambda: b.transport.statistics().connects == 2)
            await eventually(lambda: "b" in a.transport.peers())
            await a.transport.send("b", b"z")
            assert (await b.inbox.wait_for(2))[1] == ("a", b"z")


# -- liveness -----------------------------------------------------------------------


async def test_half_open_peer_is_detected_by_heartbeat(make: Make) -> None:
    quick = attrs.evolve(FAST, heartbeat_interval=0.05, heartbeat_timeout=0.3)
    # The stuck peer never pings itself, so the detection is a's.
    stuck_config = attrs.evolve(FAST, heartbeat_interval=math.inf)
    stopped_reading = trio.Event()

    async def stuck(peer: str, frame: bytes) -> None:
        stopped_reading.set()
        await trio.sleep_forever()

    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(quick), "a")
            b = await start(make(stuck_config), "b", deliver=stuck)
            a.transport.add_peer("b", b.address)
            for _ in range(50):  # enough to fill trio-websocket's message queue too
                await a.transport.send("b", b"are you there?")
                await trio.sleep(0)  # let the writer send each one alone (no batching)
            await stopped_reading.wait()
            await eventually(lambda: a.transport.statistics().heartbeat_failures >= 1)


async def test_idle_connections_stay_up(make: Make) -> None:
    quick = attrs.evolve(FAST, heartbeat_interval=0.02, heartbeat_timeout=1.0)
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(quick), "a")
            b = await start(make(quick), "b")
            a.transport.add_peer("b", b.address)
            await a.transport.send("b", b"x")
            await b.inbox.wait_for(1)
            await trio.sleep(0.3)  # many heartbeat rounds, on purpose
            for node in (a, b):
                stats = node.transport.statistics()
                assert stats.heartbeat_failures == 0
                assert stats.connections_open == 1
            await a.transport.send("b", b"y")
            await b.inbox.wait_for(2)
            assert a.transport.statistics().connects == 1


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


async def test_tls_round_trip(
    make: Make, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ssl, client_ssl = tls_contexts
    # a TLS handshake on a loaded 2-core machine can take longer than FAST's 0.3 s
    config = attrs.evolve(FAST, server_ssl=server_ssl, client_ssl=client_ssl, connect_timeout=5.0)
    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(make(config), "a")
            b = await start(make(config), "b")
            assert a.address.startswith(("tls://", "wss://"))
            a.transport.add_peer("b", b.address)
            big = bytes(range(256)) * 1000
            await a.transport.send("b", b"secret hello")
            await a.transport.send("b", big)
            assert await b.inbox.wait_for(2) == [("a", b"secret hello"), ("a", big)]
            await b.transport.send("a", b"secret reply")
            assert await a.inbox.wait_for(1) == [("b", b"secret reply")]
            # A client that does not trust the server's certificate cannot connect.
            untrusting = await start(
                make(attrs.evolve(config, client_ssl=None, connect_timeout=0.3)), "c"
            )
            untrusting.transport.add_peer("b", b.address)
            with pytest.raises(NodeUnreachable):
                await untrusting.transport.send("b", b"hi")
            assert [peer for peer, _ in b.inbox.frames] == ["a", "a"]


async def test_websocket_upgrade_refused_is_unreachable_not_a_crash() -> None:
    async def refuse(request: WebSocketRequest) -> None:
        await request.reject(403, body=b"go away")

    with trio.fail_after(GUARD):
        async with serving() as start:
            a = await start(WebSocketTransport(FAST), "a")
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    functools.partial(serve_websocket, refuse, "127.0.0.1", 0, None)
                )
                a.transport.add_peer("b", f"ws://127.0.0.1:{server.port}")
                with pytest.raises(NodeUnreachable, match="refused"):
                    await a.transport.send("b", b"hi")
                nursery.cancel_scope.cancel()
            assert a.transport.statistics().connect_failures >= 1
