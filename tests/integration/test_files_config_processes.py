"""Files and configuration across real ``trioactors node`` processes on 127.0.0.1."""

from __future__ import annotations

import hashlib
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio
from _nodes import SECRET, node_cluster

import trioactors as ta
from trioactors._services._files import GetHeld, HeldFiles
from trioactors.transports import TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from _nodes import NodeProcess

NAMES = ("f1", "f2", "f3")


@asynccontextmanager
async def cluster(
    tmp_path: Path,
) -> AsyncIterator[tuple[ta.Node, ta.Membership, list[NodeProcess]]]:
    """Three node processes receiving files under tmp_path, and this process's node."""
    async with node_cluster() as start:
        first = await start(NAMES[0], args=["--files-dir", str(tmp_path / NAMES[0])])
        nodes = [first]
        for name in NAMES[1:]:
            args = ["--files-dir", str(tmp_path / name)]
            nodes.append(await start(name, join=[(NAMES[0], first.address)], args=args))
        transport = WebSocketTransport(TransportConfig(secret=SECRET.encode()))
        async with ta.open_node("here", transport=transport) as node:
            membership = await ta.start_membership(
                node, seeds={NAMES[0]: first.address}, config=ta.MembershipConfig(seed=1)
            )
            while not set(NAMES) <= set(membership.alive()):
                await membership.wait_changed()
            yield node, membership, nodes


async def test_a_file_pushed_to_three_processes(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
    source = tmp_path / "source" / "model.bin"
    source.parent.mkdir()
    source.write_bytes(data)
    with trio.fail_after(60):
        async with cluster(tmp_path) as (node, membership, _):
            files = await ta.start_files(node, tmp_path / "here", membership=membership)
            report = await files.push(source, to=NAMES, version="v1")
            assert report.ok, report.failed()
            assert set(report.results) == set(NAMES)
            digest = hashlib.sha256(data).hexdigest()
            for name in NAMES:
                held = await node.ref(f"$files@{name}").ask(GetHeld())
                assert isinstance(held, HeldFiles)
                versions = {v.name: v for v in held.files}
                assert versions["model.bin"].version == "v1"
                assert versions["model.bin"].sha256 == digest
                assert (tmp_path / name / "model.bin").read_bytes() == data


async def test_configuration_reaches_every_process(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path) as (node, membership, processes):
            config = await ta.start_config(node, membership)
            await config.set("feature.flag", True)
            await config.set("limits", {"jobs": 8, "rate": 2.5})
            for process in processes:  # each prints the changes it applies (--events)
                await process.wait_until(
                    lambda p: (
                        p.config.get("feature.flag") is True
                        and p.config.get("limits") == {"jobs": 8, "rate": 2.5}
                    )
                )
            # and answers the read-only query with the same
            for name in NAMES:
                seen = await node.ref(f"$config@{name}").ask(ta.GetConfig())
                assert seen == {"feature.flag": True, "limits": {"jobs": 8, "rate": 2.5}}
            await config.delete("feature.flag")
            for process in processes:
                await process.wait_until(lambda p: p.config.get("feature.flag", 0) is None)
