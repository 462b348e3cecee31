"""Run ``trioactors node --events`` processes and follow what each one sees.

Every node process prints a JSON line per membership change; a
:class:`NodeProcess` reads them as they come (so the pipe never fills) and
lets a test wait, without polling, until a node's view satisfies a condition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

SECRET = "integration-secret"


@attrs.define(eq=False)
class NodeProcess:
    """One ``trioactors node`` process and the membership events it printed."""

    name: str
    process: trio.Process
    address: str = ""
    events: list[dict[str, Any]] = attrs.field(factory=list)
    states: dict[str, str] = attrs.field(factory=dict)  # node -> its latest state here
    config: dict[str, Any] = attrs.field(factory=dict)  # its configuration, as printed
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def state_of(self, node: str) -> str | None:
        return self.states.get(node)

    def deaths(self) -> list[dict[str, Any]]:
        """Every event in which this node declared another dead."""
        return [e for e in self.events if e["state"] == "dead"]

    async def wait_until(self, condition: Callable[[NodeProcess], bool]) -> None:
        while not condition(self):
            await self._changed.wait()

    async def wait_state(self, node: str, *states: str) -> None:
        await self.wait_until(lambda p: p.states.get(node) in states)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL

    def _record(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.states[event["node"]] = event["state"]
        self._changed.set()
        self._changed = trio.Event()

    async def _read(self, ready: trio.Event) -> None:
        stream = self.process.stdout
        assert stream is not None
        buffer = b""
        while True:
            chunk = await stream.receive_some()
            if not chunk:
                if not ready.is_set():
                    raise RuntimeError(f"node {self.name} exited before it was ready")
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                data = json.loads(line)
                if data.get("event") == "config":
                    self.config[data["key"]] = data["value"]
                    self._changed.set()
                    self._changed = trio.Event()
                elif "event" in data:
                    self._record(data)
                else:
                    assert data["name"] == self.name
                    self.address = data["address"]
                    ready.set()


@asynccontextmanager
async def node_cluster() -> AsyncIterator[Callable[..., Any]]:
    """Yield ``start(name, join=..., host=..., prefix=..., args=...)``; stop every node on exit.

    ``prefix`` runs the node under another command (``["ip", "netns", "exec",
    "host-1"]``); ``join`` is a list of ``(name, address)`` seeds; ``args`` are
    more options of ``trioactors node`` (``["--workers", "2", "--tag", "gpu"]``).
    """
    processes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(
            name: str,
            *,
            join: Sequence[tuple[str, str]] = (),
            host: str = "127.0.0.1",
            prefix: Sequence[str] = (),
            secret: str = SECRET,
            transport: str = "ws",
            args: Sequence[str] = (),
        ) -> NodeProcess:
            command = [*prefix, sys.executable, "-m", "trioactors", "node", name, "--events"]
            command += ["--host", host, "--transport", transport]
            for seed, address in join:
                command += ["--join", f"{seed}={address}"]
            command += args
            env = {**os.environ, "TRIOACTORS_SECRET": secret}
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            node = NodeProcess(name, process)
            processes.append(node)
            ready = trio.Event()
            nursery.start_soon(node._read, ready)
            with trio.fail_after(30):
                await ready.wait()
            return node

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(processes)
            nursery.cancel_scope.cancel()


async def _stop_all(processes: list[NodeProcess]) -> None:
    for node in processes:
        if node.process.returncode is None and node.process.stdin is not None:
            await node.process.stdin.aclose()  # asks it to stop
    with trio.move_on_after(10):
        for node in processes:
            await node.process.wait()
    for node in processes:
        if node.process.returncode is None:
            node.process.kill()
            await node.process.wait()
