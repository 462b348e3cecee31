"""File distribution: a 64 MiB push between two nodes, against raw trio-websocket.

Ours: two nodes in this process, each with a ``WebSocketTransport`` on
127.0.0.1 (shared secret, default frame limit) and ``start_files``; the
timed region is one ``push`` of the file to the other node: hashing the
source, offering, 256 chunks of 256 KiB with their SHA-256 (base64 in the
JSON wire format, raw bytes in msgpack) over a window of 4, the receiver
checking, writing and hashing each, then fsync, rename and the manifest.

Baseline: a bare trio-websocket server and client in this process; the
client reads the same file 256 KiB at a time and sends each piece as a
binary message; the server writes them to a file and fsyncs it, then says
``done``. No hashing, no acknowledgements but the last.

Both sides connect before the timed region (ours with a one-byte push).
The result is MiB/s, ratio = ours / raw.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

import trioactors as ta
from trioactors._services._files import start_files
from trioactors.transports import TransportConfig, WebSocketTransport

from ._common import Result, best_of, throughput, timed_run

if TYPE_CHECKING:
    from collections.abc import Callable

    from trioactors._wire._codec import Format

__all__ = ["WORKLOADS"]

MiB: Final = 1024 * 1024
SIZE: Final = 64 * MiB
CHUNK: Final = 256 * 1024
SECRET: Final = b"bench-secret"


def _make_source(root: Path) -> Path:
    path = root / "source.bin"
    rng = random.Random(64)
    with open(path, "wb") as f:
        for _ in range(SIZE // MiB):
            f.write(rng.randbytes(MiB))
    (root / "tiny").write_bytes(b"x")
    return path


async def _ours(root: Path, wire_format: Format) -> float:
    config = TransportConfig(secret=SECRET)
    received = Path(tempfile.mkdtemp(dir=root))
    try:
        async with (
            ta.open_node(
                "sender", transport=WebSocketTransport(config), wire_format=wire_format
            ) as a,
            ta.open_node(
                "receiver", transport=WebSocketTransport(config), wire_format=wire_format
            ) as b,
        ):
            a.add_peer("receiver", b.address)
            sender = await start_files(a, root / "sender", chunk_size=CHUNK)
            receiver = await start_files(b, received, chunk_size=CHUNK)
            (await sender.push(root / "tiny", to=["receiver"])).check()  # connects
            start = time.perf_counter()
            report = await sender.push(root / "source.bin", to=["receiver"])
            elapsed = time.perf_counter() - start
            report.check()
            if receiver.held()["source.bin"].size != SIZE:
                raise RuntimeError("the receiver holds something else")
            return elapsed
    finally:
        shutil.rmtree(received)


async def _raw(root: Path) -> float:
    target = root / "raw.bin"

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        async with await trio.open_file(target, "wb") as f:
            while True:
                message = await ws.get_message()
                if not isinstance(message, bytes):  # "end"
                    break
                await f.write(message)
            await f.flush()
            await trio.to_thread.run_sync(os.fsync, f.fileno())
        await ws.send_message("done")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, max_message_size=1 << 20), handler, "127.0.0.1", 0, None
        )
        url = f"ws://127.0.0.1:{server.port}"
        async with open_websocket_url(url, disconnect_timeout=1) as ws:
            start = time.perf_counter()
            async with await trio.open_file(root / "source.bin", "rb") as f:
                while piece := await f.read(CHUNK):
                    await ws.send_message(piece)
            await ws.send_message("end")
            if await ws.get_message() != "done":
                raise RuntimeError("the raw server did not finish")
            elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    if target.stat().st_size != SIZE:
        raise RuntimeError("the raw transfer wrote something else")
    target.unlink()
    return elapsed


def files(rounds: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="trioactors-bench-") as tmp:
        root = Path(tmp)
        _make_source(root)
        best = best_of(
            rounds,
            {
                "json": lambda: timed_run(_ours, root, "json"),
                "msgpack": lambda: timed_run(_ours, root, "msgpack"),
                "raw": lambda: timed_run(_raw, root),
            },
        )
    mib = SIZE // MiB
    return [
        throughput("files_push_64mib_json", mib, best["json"], best["raw"], "MiB/s"),
        throughput("files_push_64mib_msgpack", mib, best["msgpack"], best["raw"], "MiB/s"),
    ]


WORKLOADS: dict[str, Callable[[int], list[Result]]] = {"files": files}
"""The file distribution workload (``python -m bench files`` once it is wired in)."""
