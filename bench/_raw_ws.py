"""The raw baseline peer: a bare trio-websocket server in its own process.

    python -m bench._raw_ws

Prints its port on one line, then serves until stdin closes. Per connection:
a first message ``echo`` makes it echo every later message; ``count N`` makes
it read N messages and then send ``done``.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def handle(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        mode = await ws.get_message()
        if mode == "echo":
            while True:
                await ws.send_message(await ws.get_message())
        elif isinstance(mode, str) and mode.startswith("count "):
            for _ in range(int(mode.split()[1])):
                await ws.get_message()
            await ws.send_message("done")
            await ws.get_message()  # until the client closes
    except ConnectionClosed:
        pass


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, max_message_size=1 << 20), handle, "127.0.0.1", 0, None
        )
        print(server.port, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            while await stdin.receive_some():
                pass
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
