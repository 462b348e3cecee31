"""Three ``trioactors node --raft`` processes; the leader is SIGKILLed during writes.

Each process runs a server of the replicated key-value store with its state in
SQLite. Writers on the test's own node (which joins the cluster's membership,
so it knows the servers' addresses) keep writing distinct keys; the leader's
process is killed with SIGKILL mid-stream. A new leader must be elected among
the two survivors, the writers must carry on against it, and every write that
was acknowledged before, during or after the failover must be readable.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
import trio
from _nodes import SECRET, node_cluster

import trioactors as ta
from trioactors.transports import TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SERVERS = ["r1", "r2", "r3"]


async def test_killing_the_leader_loses_no_acknowledged_write(tmp_path: Path) -> None:
    args = ["--workers", "0", "--raft", ",".join(SERVERS), "--raft-dir", str(tmp_path)]
    with trio.fail_after(120):
        async with node_cluster() as start:
            first = await start("r1", args=args)
            processes = {"r1": first}
            for name in SERVERS[1:]:
                processes[name] = await start(name, join=[("r1", first.address)], args=args)
            carrier = WebSocketTransport(TransportConfig(secret=SECRET.encode()))
            async with ta.open_node("client", transport=carrier) as node:
                await ta.start_membership(node, seeds={"r1": first.address})
                probe = ta.KvClient(node, SERVERS, timeout=30)
                await probe.put("hello", "world")
                leader = probe.leader
                assert leader in SERVERS

                acknowledged: dict[str, str] = {}
                unknown: set[str] = set()
                hundred = trio.Event()
                killed_at: list[float] = []
                after_kill: list[float] = []

                async def writer(prefix: str) -> None:
                    client = ta.KvClient(node, SERVERS, timeout=10, request_timeout=0.5)
                    for i in range(150):
                        key, value = f"{prefix}-{i}", f"v{i}"
                        try:
                            await client.put(key, value)
                        except ta.KvUnavailable:
                            unknown.add(key)  # may or may not have been applied
                            continue
                        acknowledged[key] = value
                        if len(acknowledged) >= 100:
                            hundred.set()
                        if killed_at and not after_kill:
                            after_kill.append(trio.current_time())

                async with trio.open_nursery() as nursery:
                    for prefix in ("a", "b", "c"):
                        nursery.start_soon(writer, prefix)
                    await hundred.wait()
                    processes[leader].kill()  # SIGKILL, mid-stream
                    killed_at.append(trio.current_time())

                reader = ta.KvClient(node, SERVERS, timeout=30)
                for key, value in acknowledged.items():
                    assert await reader.get(key) == value, key
                assert reader.leader is not None
                assert reader.leader != leader  # a new leader among the survivors
                assert len(acknowledged) + len(unknown) == 450
                assert len(acknowledged) >= 400
                failover = after_kill[0] - killed_at[0]
                print(
                    f"\nleader {leader} killed; writes resumed after {failover:.2f} s; "
                    f"{len(acknowledged)} acknowledged, {len(unknown)} unknown"
                )
