"""Files and configuration across real ``trioactors node`` processes on 127.0.0.1."""

from __future__ import annotations

import hashlib
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
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


NEW_ACCOUNT = """
import trioactors as ta
from trioactors._nodecmd import Add, Total


class Account(ta.Reloadable[object]):
    '''Version 2: every deposit earns a bonus of one.'''

    def __init__(self) -> None:
        self.total = 0

    async def receive(self, message: object) -> object:
        match message:
            case Add(amount):
                self.total += amount + 1
            case Total():
                return self.total
        return None
"""


async def test_new_code_pushed_and_reloaded_on_a_process(tmp_path: Path) -> None:
    """Code pushed by file distribution, then loaded in place: the total carries over."""
    from trioactors._nodecmd import Add, Total, registry

    source = tmp_path / "code" / "account_v2.py"
    source.parent.mkdir()
    source.write_text(NEW_ACCOUNT)
    with trio.fail_after(60):
        async with cluster(tmp_path) as (node, membership, _):
            for cls in (Add, Total):
                if node.codec.registry.tag_of(cls) is None:
                    node.codec.registry.register(cls, registry.tag_of(cls))
            ta.register_reload_messages(node.codec.registry)
            files = await ta.start_files(node, tmp_path / "here", membership=membership)
            assert (await files.push(source, to=["f2"], version="2")).ok
            account = node.ref("account@f2")
            await account.tell(Add(10))
            assert await account.ask(Total()) == 10
            target = f"{tmp_path / 'f2' / 'account_v2.py'}:Account"
            record = await node.ref("$reloader@f2").ask(ta.Reload("account", target, "2"))
            assert isinstance(record, ta.ReloadRecord)
            assert record.outcome is ta.ReloadOutcome.RELOADED
            assert await account.ask(Total()) == 10  # the state came along
            await account.tell(Add(5))
            assert await account.ask(Total()) == 16  # the new code runs
            history = await node.ref("$reloader@f2").ask(ta.ListReloads("account"))
            assert isinstance(history, ta.ReloadHistory)
            assert [(r.version, r.outcome) for r in history.records] == [
                ("2", ta.ReloadOutcome.RELOADED)
            ]
            # a version that does not import is refused, and version 2 keeps serving
            broken = tmp_path / "f2" / "broken.py"
            broken.write_text("import no_such_module_anywhere\n")
            with pytest.raises(ta.TrioactorsError, match="no_such_module_anywhere"):
                await node.ref("$reloader@f2").ask(ta.Reload("account", f"{broken}:Account", "3"))
            await account.tell(Add(1))
            assert await account.ask(Total()) == 18
