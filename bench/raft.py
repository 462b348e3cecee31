"""The replicated key-value store on three local ``trioactors node --raft`` processes.

- ``raft_writes``: puts per second from 8 concurrent clients on this process's
  node, each put committed on a majority's disk (SQLite) before it returns;
  the baseline is 8 concurrent raw trio-websocket echo round trips to a bare
  server process (a write is at least one round trip to the leader).
- ``raft_read_latency``: one client's linearizable gets in sequence (ReadIndex:
  the leader confirms its leadership with a heartbeat round before each
  answer, so a read costs about two round trips); baseline: one raw echo
  round trip.
- ``raft_failover``: seconds from SIGKILL of the leader's process, while a
  client writes, to the next acknowledged write (a fresh cluster per round);
  the baseline is the longest election timeout (0.3 s), below which no
  failover can go: ``ratio`` = 0.3 / the failover time.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, TYPE_CHECKING, Final

import trio
from trio_websocket import open_websocket_url

import trioactors as ta
from trioactors.transports import TransportConfig, WebSocketTransport

from ._common import GUARD, Result, best_of, latency, throughput, timed_run
from .jobs import _node_cluster, _NodeProcess
from .remote import RAW, _process

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

SECRET: Final = "bench-secret"
SERVERS: Final = ("r1", "r2", "r3")
WRITES: Final = 2_000
CLIENTS: Final = 8
READS: Final = 500
STARTUP_TIMEOUT: Final = 30.0
ELECTION_TIMEOUT_MAX: Final = ta.RaftConfig().election_timeout_max

_names = itertools.count(1)


def _start(name: str, join: Mapping[str, str], log: IO[bytes], *, directory: str) -> _NodeProcess:
    command = [sys.executable, "-m", "trioactors", "node", name, "--workers", "0"]
    command += ["--host", "127.0.0.1", "--raft", ",".join(SERVERS), "--raft-dir", directory]
    for seed, address in join.items():
        command += ["--join", f"{seed}={address}"]
    env = {**os.environ, "TRIOACTORS_SECRET": SECRET}
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    return _NodeProcess(name, process, log)


@contextlib.contextmanager
def _raft_cluster() -> Iterator[tuple[dict[str, str], dict[str, _NodeProcess]]]:
    """Three Raft server processes joined through the first; yield (seeds, processes)."""
    processes: dict[str, _NodeProcess] = {}
    with tempfile.TemporaryDirectory() as directory:
        start = functools.partial(_start, directory=directory)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with _node_cluster(deadline, SERVERS, start, processes) as seeds:
            yield seeds, processes


@contextlib.asynccontextmanager
async def _client_node(seeds: Mapping[str, str]) -> AsyncIterator[ta.Node]:
    transport = WebSocketTransport(TransportConfig(secret=SECRET.encode()), host="127.0.0.1")
    async with ta.open_node(f"bench-{next(_names)}", transport=transport) as node:
        membership = await ta.start_membership(node, seeds=seeds)
        warm = ta.KvClient(node, SERVERS, timeout=STARTUP_TIMEOUT)
        await warm.put("warm-up", "1")  # a leader is elected and every link is up
        for name in SERVERS:  # (connections to every server, not only the leader)
            with contextlib.suppress(ta.TrioactorsError):
                await node.ref(f"$raft@{name}").ask(ta.RaftQuery('{"k": "warm-up"}'), timeout=5)
        yield node
        with trio.move_on_after(2):
            await membership.leave()


async def _writes(seeds: Mapping[str, str]) -> float:
    async with _client_node(seeds) as node:
        clients = [ta.KvClient(node, SERVERS, timeout=GUARD) for _ in range(CLIENTS)]

        async def write(client: ta.KvClient, i: int) -> None:
            for n in range(WRITES // CLIENTS):
                await client.put(f"w{i}-{n}", "x" * 40)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(write, client, i)
        return time.perf_counter() - start


async def _reads(seeds: Mapping[str, str]) -> float:
    async with _client_node(seeds) as node:
        client = ta.KvClient(node, SERVERS, timeout=GUARD)
        await client.put("key", "value")
        start = time.perf_counter()
        for _ in range(READS):
            if await client.get("key") != "value":
                raise RuntimeError("a read returned the wrong value")
        return time.perf_counter() - start


async def _raw_concurrent(port: str, count: int, connections: int) -> float:
    async def one(ws_count: int) -> None:
        async with open_websocket_url(f"ws://127.0.0.1:{port}", disconnect_timeout=1) as ws:
            await ws.send_message("echo")
            await ws.send_message(RAW)
            await ws.get_message()
            ready.append(ws_count)
            if len(ready) == connections:
                all_ready.set()
            await go.wait()
            for _ in range(ws_count):
                await ws.send_message(RAW)
                await ws.get_message()

    ready: list[int] = []
    all_ready = trio.Event()
    go = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one, count // connections)
        await all_ready.wait()  # (connections are made outside the timed region)
        start = time.perf_counter()
        go.set()
    return time.perf_counter() - start


async def _failover(seeds: Mapping[str, str], processes: Mapping[str, _NodeProcess]) -> float:
    async with _client_node(seeds) as node:
        client = ta.KvClient(node, SERVERS, timeout=GUARD, request_timeout=0.5)
        await client.put("before", "1")
        leader = client.leader
        assert leader is not None
        processes[leader].process.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        await client.put("after", "1")
        elapsed = time.perf_counter() - killed
        if client.leader == leader:
            raise RuntimeError("the killed leader answered")
        return elapsed


def _measure(fn: Callable[..., object], *args: object) -> float:
    return timed_run(fn, *args)  # type: ignore[arg-type]


def raft(rounds: int) -> list[Result]:
    with _raft_cluster() as (seeds, _), _process("bench._raw_ws") as port:
        writes = best_of(
            rounds,
            {
                "ours": lambda: _measure(_writes, seeds),
                "raw": lambda: _measure(_raw_concurrent, port, WRITES, CLIENTS),
            },
        )
        reads = best_of(
            rounds,
            {
                "ours": lambda: _measure(_reads, seeds),
                "raw": lambda: _measure(_raw_concurrent, port, READS, 1),
            },
        )
    failovers = []
    for _ in range(max(1, min(rounds, 3))):
        with _raft_cluster() as (seeds, processes):
            failovers.append(_measure(_failover, seeds, processes))
    failover = sorted(failovers)[len(failovers) // 2]  # the median: the typical case
    return [
        throughput("raft_writes", WRITES, writes["ours"], writes["raw"], "writes/s"),
        latency("raft_read_latency", READS, reads["ours"], reads["raw"]),
        Result(
            "raft_failover",
            round(failover, 3),
            "s",
            ELECTION_TIMEOUT_MAX,
            round(ELECTION_TIMEOUT_MAX / failover, 3),
        ),
    ]


WORKLOADS: Final = {"raft": raft}
