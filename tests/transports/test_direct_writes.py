"""Frames written by the sending task itself (``send_frame_nowait``) on real sockets.

The tcp transport writes a frame straight to an idle plain socket, without
blocking, instead of waking the connection's writer task; what the socket
does not take is kept and written before anything else. These tests force
that on small socket buffers and check that frames stay whole and in order.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trio.testing

from trioactors.transports import TcpTransport, TransportConfig, WebSocketTransport
from trioactors.transports._tcp import _TcpFrameStream

GUARD = 10
SMALL_BUFFER = 4096
LIMIT = 1024 * 1024


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        # Before the handshake: shrinking a live connection's receive window
        # makes the kernel drop data and wait for retransmissions.
        listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        client = await trio.testing.open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    return client, server


def _frame(i: int) -> bytes:
    return i.to_bytes(4, "big") * 700  # 2800 bytes: a few fill the small buffers


async def test_a_partly_written_frame_is_finished_before_anything_else() -> None:
    with trio.fail_after(GUARD):
        client, server = await _tcp_pair()
        writer = _TcpFrameStream(client, remote="server", max_frame_size=LIMIT)
        reader = _TcpFrameStream(server, remote="client", max_frame_size=LIMIT)
        count = 300
        # Nobody reads yet: non-blocking writes go through until the socket is full.
        i = 0
        while writer.send_frame_nowait(_frame(i)):
            i += 1
            if writer.unsent:
                break
        assert i < count
        partial = writer.unsent
        if partial:
            # The rest of a frame is pending: no other frame may be written before it.
            assert not writer.send_frame_nowait(_frame(i))
        received: list[bytes] = []

        async def read() -> None:
            while len(received) < count:
                received.append(await reader.receive_frame())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            partials = int(partial)
            while i < count:
                if writer.send_frame_nowait(_frame(i)):
                    partials += writer.unsent
                    if writer.unsent and i % 2:
                        # A ping (or any write) flushes the rest first.
                        await writer.send_frames([])
                else:
                    await writer.send_frames([_frame(i)])  # waits for room, rest first
                i += 1
                if i % 10 == 0:
                    await trio.sleep(0)  # let the reader drain now and then
            await writer.send_frames([])
        assert received == [_frame(n) for n in range(count)]
        assert partials > 0, "the small buffers never forced a partial write"
        await writer.aclose()
        await reader.aclose()


async def test_no_direct_write_on_tls_or_closed_streams() -> None:
    with trio.fail_after(GUARD):
        client, server = await _tcp_pair()
        tls = trio.SSLStream(client, ssl.create_default_context(), server_hostname="server")
        assert not _TcpFrameStream(tls, remote="server", max_frame_size=LIMIT).send_frame_nowait(
            b"never written by hand: TLS must encrypt it"
        )
        writer = _TcpFrameStream(client, remote="server", max_frame_size=LIMIT)
        assert writer.send_frame_nowait(b"before close")
        await writer.aclose()
        assert not writer.send_frame_nowait(b"after close")
        await server.aclose()


@pytest.mark.parametrize("make", [TcpTransport, WebSocketTransport])
async def test_fifo_across_direct_queued_and_large_frames(
    make: type[TcpTransport | WebSocketTransport],
) -> None:
    """Several tasks mix small frames (written directly when idle), large ones
    (always through the writer task) and send_nowait, on a short queue; each
    task's frames arrive in its order, and nothing is lost or duplicated."""
    config = TransportConfig(secret=b"s", send_queue_size=8)
    tasks, per_task = 4, 150
    total = tasks * per_task
    received: list[bytes] = []
    done = trio.Event()

    async def deliver(peer: str, frame: bytes) -> None:
        received.append(frame)
        if len(received) % 37 == 0:
            await trio.sleep(0)  # a slower reader now and then
        if len(received) == total:
            done.set()

    async def ignore(peer: str, frame: bytes) -> None:
        pass

    a, b = make(config), make(config)

    async def pump(task: int) -> None:
        for n in range(per_task):
            frame = b"%d:%d:" % (task, n) + bytes(70_000 if n % 25 == 0 else n % 200)
            if n % 3 or not a.send_nowait("b", frame):
                await a.send("b", frame)
            if n % 7 == 0:
                await trio.sleep(0)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve, "a", ignore)
            a.add_peer("b", await nursery.start(b.serve, "b", deliver))
            async with trio.open_nursery() as pumps:
                for task in range(tasks):
                    pumps.start_soon(pump, task)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert len(received) == total
    for task in range(tasks):
        mine = [f for f in received if f.startswith(b"%d:" % task)]
        assert [int(f.split(b":")[1]) for f in mine] == list(range(per_task))
    stats = a.statistics()
    assert stats.frames_sent == total
    assert stats.frames_lost == 0
