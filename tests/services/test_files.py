"""File distribution on the in-memory network: resume, integrity, atomic install, versions.

Real files and worker threads: these tests run on the real clock (a MockClock
would jump over timeouts while a thread writes), each bounded by ``fail_after``.
"""

from __future__ import annotations

import hashlib
import os
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

import trioactors as ta
from trioactors._core._chunks import (
    ChunkCorrupted,
    ChunkPlan,
    FileTransferError,
    HashMismatch,
    UnsafeFileName,
    digest_of,
)
from trioactors._errors import InvalidPayload, NodeCrashed
from trioactors._services import _files
from trioactors._services._files import (
    MANIFEST,
    Answer,
    Chunk,
    Commit,
    FileService,
    FileVersion,
    GetHeld,
    HeldFiles,
    Offer,
    Status,
    register_file_messages,
    start_files,
)
from trioactors._wire._codec import Codec, Envelope, Kind, MessageRegistry
from trioactors.transports import MemoryNetwork, TransportConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from trioactors._wire._codec import Format

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
LIMIT = 30.0  # seconds any test may take

FAST: dict[str, float | int] = {"chunk_timeout": 1.0, "offer_timeout": 1.0, "attempts": 10}
"""Short timeouts: a lost chunk costs a second of real time, not ten."""


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def partials(directory: Path) -> list[Path]:
    return sorted(directory.rglob(".trioactors-*.part"))


@attrs.define
class Cluster:
    """Nodes on one in-memory network, each with ``start_files`` on ``root / name``."""

    network: MemoryNetwork
    nursery: trio.Nursery
    root: Path
    names: list[str]
    options: dict[str, float | int]
    wire_format: Format
    files: dict[str, FileService] = attrs.Factory(dict)
    nodes: dict[str, ta.Node] = attrs.Factory(dict)

    async def start(
        self, name: str, transport: ta.transports.MemoryTransport | None = None
    ) -> None:
        await self.nursery.start(self._run, name, transport or self.network.transport(name))

    async def _run(
        self,
        name: str,
        transport: ta.transports.MemoryTransport,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with ta.open_node(
                name, transport=transport, wire_format=self.wire_format
            ) as node:
                for other in self.names:
                    if other != name:
                        node.add_peer(other, f"memory://{other}")
                self.nodes[name] = node
                self.files[name] = await start_files(
                    node,
                    self.root / name,
                    chunk_size=CHUNK,
                    **self.options,  # type: ignore[arg-type]
                )
                task_status.started()
                await trio.sleep_forever()
        except NodeCrashed:
            pass

    async def crash_and_restart(self, name: str) -> None:
        self.network.crash(name)
        await trio.sleep(0)  # (the crashed node's tasks see it)
        await self.start(name, self.network.restart(name))


@asynccontextmanager
async def cluster(
    tmp_path: Path,
    size: int = 5,
    *,
    latency: float = 0.0,
    wire_format: Format = "json",
    fast: bool = False,
    **options: float | int,
) -> AsyncIterator[Cluster]:
    if fast:
        options = {**FAST, **options}
    network = MemoryNetwork(seed=3, latency=latency)
    names = [f"n{i}" for i in range(size)]
    with trio.fail_after(LIMIT):
        async with network.running(), trio.open_nursery() as nursery:
            c = Cluster(network, nursery, tmp_path / "nodes", names, options, wire_format)
            for name in names:
                await c.start(name)
            yield c
            nursery.cancel_scope.cancel()


async def wait_for(condition: Callable[[], bool]) -> None:
    """Real threads do the I/O: look again every millisecond (bounded by the test's limit)."""
    while not condition():
        await trio.sleep(0.001)


def source(tmp_path: Path, data: bytes, name: str = "blob.bin") -> Path:
    path = tmp_path / "source" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def install_old(c: Cluster, tmp_path: Path, targets: list[str]) -> bytes:
    """Push an old version of ``blob.bin`` first; its bytes."""
    old = payload(300 * KiB, seed=99)
    report = await c.files["n0"].push(
        source(tmp_path, old, "old.bin"), to=targets, name="blob.bin", version="old"
    )
    assert report.check().ok
    return old


# -- the whole path ----------------------------------------------------------------------------


@pytest.mark.parametrize("wire_format", ["json", "msgpack"])
async def test_push_to_four_nodes_with_a_crash_resumes_and_verifies(
    tmp_path: Path, wire_format: Format
) -> None:
    data = payload(8 * MiB, seed=1)
    count = ChunkPlan(len(data), CHUNK).count  # 128
    path = source(tmp_path, data)
    targets = ["n1", "n2", "n3", "n4"]
    async with cluster(tmp_path, latency=0.002, wire_format=wire_format, fast=True) as c:
        n0 = c.files["n0"]
        crashed_at = 0
        async with trio.open_nursery() as nursery:

            async def crash_midway() -> None:
                nonlocal crashed_at
                await wait_for(lambda: c.files["n2"].statistics().chunks_received >= count // 3)
                crashed_at = c.files["n2"].statistics().chunks_received
                await c.crash_and_restart("n2")

            nursery.start_soon(crash_midway)
            report = await n0.push(path, to=targets, version="v2")
        assert report.ok, report.failed()
        assert count // 3 <= crashed_at < count
        assert report.version == "v2"
        assert report.files == [FileVersion("blob.bin", "v2", len(data), sha(data))]
        for name in targets:
            installed = c.root / name / "blob.bin"
            assert installed.read_bytes() == data
            assert sha(installed.read_bytes()) == sha(data)
            assert c.files[name].held() == {
                "blob.bin": FileVersion("blob.bin", "v2", len(data), sha(data))
            }
            assert partials(c.root / name) == []
        # the others got every chunk once, in one round
        for name in ("n1", "n3", "n4"):
            result = report.results[name]
            assert (result.chunks, result.resent, result.rounds) == (count, 0, 1)
            assert result.bytes == len(data)
        # n2 resumed from its partial file instead of starting over
        result = report.results["n2"]
        assert result.rounds >= 2
        assert result.chunks <= count + 2 * n0.window < count + crashed_at
        restarted = c.files["n2"].statistics()
        assert restarted.resumed == 1
        assert restarted.chunks_received <= count - crashed_at
        assert restarted.installs == 1
        assert n0.statistics().chunks_sent == sum(r.chunks for r in report.results.values())


async def test_a_partition_mid_transfer_resumes_after_heal(tmp_path: Path) -> None:
    data = payload(4 * MiB, seed=2)
    count = ChunkPlan(len(data), CHUNK).count
    async with cluster(tmp_path, 2, latency=0.002, fast=True) as c:
        async with trio.open_nursery() as nursery:

            async def partition_midway() -> None:
                await wait_for(lambda: c.files["n1"].statistics().chunks_received >= count // 2)
                c.network.partition(["n1"])
                await trio.sleep(2.0)
                c.network.heal()

            nursery.start_soon(partition_midway)
            report = await c.files["n0"].push(source(tmp_path, data), to=["n1"])
        assert report.ok, report.failed()
        assert (c.root / "n1" / "blob.bin").read_bytes() == data
        result = report.results["n1"]
        assert result.rounds >= 2
        assert result.chunks < count + count // 2  # it went on from where n1 was


async def test_a_dropping_network_still_delivers_exact_bytes(tmp_path: Path) -> None:
    data = payload(2 * MiB + 123, seed=3)
    async with cluster(tmp_path, 3, fast=True) as c:
        c.network.drop(0.05)
        report = await c.files["n0"].push(source(tmp_path, data), to=["n1", "n2"])
        c.network.clear()
        assert report.ok, report.failed()
        for name in ("n1", "n2"):
            assert (c.root / name / "blob.bin").read_bytes() == data


# -- integrity ---------------------------------------------------------------------------------


async def test_a_corrupted_chunk_is_detected_counted_and_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(1 * MiB, seed=4)
    corrupted: list[int] = []

    def corrupt_once(name: str, version: str, index: int, chunk: bytes, digest: str) -> Chunk:
        if index == 5 and not corrupted:
            corrupted.append(index)
            chunk = bytes([chunk[0] ^ 1]) + chunk[1:]  # the digest is still the original's
        return Chunk(name, version, index, chunk, digest)

    monkeypatch.setattr(_files, "_make_chunk", corrupt_once)
    async with cluster(tmp_path, 2) as c:
        report = await c.files["n0"].push(source(tmp_path, data), to=["n1"])
        assert report.ok
        assert corrupted == [5]
        assert (c.root / "n1" / "blob.bin").read_bytes() == data
        assert c.files["n1"].statistics().corrupt == 1
        assert report.results["n1"].resent >= 1
        assert report.results["n1"].rounds == 1  # re-requested within the round


async def test_a_chunk_corrupted_every_time_fails_and_the_old_version_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path, 2, max_corrupt=3) as c:
        old = await install_old(c, tmp_path, ["n1"])

        def always_corrupt(name: str, version: str, index: int, chunk: bytes, digest: str) -> Chunk:
            if index == 2:
                chunk = chunk[::-1]
            return Chunk(name, version, index, chunk, digest)

        monkeypatch.setattr(_files, "_make_chunk", always_corrupt)
        report = await c.files["n0"].push(source(tmp_path, payload(MiB, seed=5)), to=["n1"])
        assert not report.ok
        error = report.results["n1"].error
        assert isinstance(error, ChunkCorrupted)
        with pytest.raises(ExceptionGroup) as caught:
            report.check()
        assert caught.value.exceptions == (error,)
        assert (c.root / "n1" / "blob.bin").read_bytes() == old
        assert c.files["n1"].held()["blob.bin"].version == "old"
        assert c.files["n1"].statistics().corrupt == 4  # max_corrupt + 1
        assert c.files["n0"].statistics().push_failures == 1


async def test_a_whole_file_hash_mismatch_is_rejected_and_the_old_version_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path, 3) as c:
        old = await install_old(c, tmp_path, ["n1", "n2"])
        real = _files._hash_file

        def wrong_hash(path: Path) -> tuple[int, str]:  # as if the file changed after hashing
            size, _ = real(path)
            return size, sha(b"something else")

        monkeypatch.setattr(_files, "_hash_file", wrong_hash)
        report = await c.files["n0"].push(source(tmp_path, payload(MiB, seed=6)), to=["n1", "n2"])
        for name in ("n1", "n2"):
            assert isinstance(report.results[name].error, HashMismatch)
            assert (c.root / name / "blob.bin").read_bytes() == old
            assert c.files[name].held()["blob.bin"].version == "old"
            assert c.files[name].statistics().hash_mismatches == 1
            assert partials(c.root / name) == []  # discarded


async def test_a_source_that_shrinks_while_pushed_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path, 2) as c:
        path = source(tmp_path, payload(MiB, seed=7))
        real = _files._read_chunk

        def shrinking(at: Path, offset: int, length: int) -> tuple[bytes, str]:
            if offset >= 4 * CHUNK:
                at.write_bytes(b"short")
            return real(at, offset, length)

        monkeypatch.setattr(_files, "_read_chunk", shrinking)
        report = await c.files["n0"].push(path, to=["n1"])
        error = report.results["n1"].error
        assert isinstance(error, FileTransferError)
        assert "changed or vanished" in str(error)
        assert not (c.root / "n1" / "blob.bin").exists()


# -- raw messages from a peer ---------------------------------------------------------------


@pytest.mark.parametrize("wire_format", ["json", "msgpack"])
async def test_raw_messages_are_checked(tmp_path: Path, wire_format: Format) -> None:
    data = payload(10 * KiB, seed=8)
    pieces = [data[i : i + 4 * KiB] for i in range(0, len(data), 4 * KiB)]
    async with cluster(tmp_path, 2, wire_format=wire_format) as c:
        receiver = c.files["n1"]
        files = c.nodes["n0"].ref("$files@n1")

        async def ask(message: Offer | Chunk | Commit) -> Answer:
            answer = await files.ask(message)
            assert isinstance(answer, Answer)
            return answer

        name, version = "raw/data.bin", "r1"
        announced = sha(b"not the data")  # the chunks will not add up to this
        chunk = Chunk(name, version, 0, pieces[0], digest_of(pieces[0]))
        assert (await ask(chunk)).status is Status.UNKNOWN  # no offer yet
        offer = Offer(name, version, len(data), announced, 4 * KiB)
        assert await ask(offer) == Answer(Status.OK, 0)
        bad = Chunk(name, version, 0, pieces[1][: len(pieces[0])], digest_of(pieces[0]))
        assert await ask(bad) == Answer(Status.CORRUPT, 0)
        assert await ask(Chunk(name, version, 1, pieces[1], digest_of(pieces[1]))) == Answer(
            Status.OUT_OF_ORDER, 0
        )
        for index, piece in enumerate(pieces):
            assert await ask(Chunk(name, version, index, piece, digest_of(piece))) == Answer(
                Status.OK, index + 1
            )
        assert await ask(chunk) == Answer(Status.DUPLICATE, 3)
        assert await ask(offer) == Answer(Status.OK, 3)  # it has them all
        answer = await ask(Commit(name, version, announced))
        assert answer.status is Status.HASH_MISMATCH
        assert sha(data) in answer.detail
        stats = receiver.statistics()
        assert (stats.corrupt, stats.out_of_order, stats.duplicates, stats.unknown) == (1, 1, 1, 1)
        assert (stats.hash_mismatches, stats.installs, stats.transfers) == (1, 0, 0)
        assert not (c.root / "n1" / "raw" / "data.bin").exists()
        assert partials(c.root / "n1") == []
        assert receiver.held() == {}
        held = await c.nodes["n0"].ref("$files@n1").ask(GetHeld())
        assert held == HeldFiles([])


@pytest.mark.parametrize(
    "name",
    ["../escape", "/etc/passwd", "a//b", "a/./b", "x/../../y", ".trioactors-manifest.json", "a\\b"],
)
async def test_unsafe_names_from_peers_are_refused(tmp_path: Path, name: str) -> None:
    async with cluster(tmp_path, 2) as c:
        answer = await c.nodes["n0"].ref("$files@n1").ask(Offer(name, "v1", 1, sha(b"x"), 1024))
        assert isinstance(answer, Answer)
        assert answer.status is Status.REFUSED
        assert c.files["n1"].statistics().refused == 1
        assert sorted(p.name for p in (c.root / "n1").iterdir()) == []


async def test_names_through_links_out_of_the_directory_are_refused(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2) as c:
        outside = tmp_path / "outside"
        outside.mkdir()
        (c.root / "n1" / "link").symlink_to(outside, target_is_directory=True)
        report = await c.files["n0"].push(source(tmp_path, b"data"), to=["n1"], name="link/x")
        error = report.results["n1"].error
        assert isinstance(error, FileTransferError)
        assert "outside" in str(error)
        assert list(outside.iterdir()) == []


async def test_bad_offers_are_refused(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, max_size=1000) as c:
        files = c.nodes["n0"].ref("$files@n1")
        for offer in [
            Offer("big", "v1", 1001, sha(b"x"), 1024),  # over max_size
            Offer("f", "", 1, sha(b"x"), 1024),
            Offer("f", "v1", 1, "not a hash", 1024),
            Offer("f", "v1", 1, sha(b"x"), 0),
            Offer("f", "v1", -1, sha(b"x"), 1024),
        ]:
            answer = await files.ask(offer)
            assert isinstance(answer, Answer)
            assert answer.status is Status.REFUSED, offer
        assert c.files["n1"].statistics().refused == 5


def test_chunks_cross_the_wire_in_both_formats() -> None:
    registry = MessageRegistry()
    register_file_messages(registry)
    register_file_messages(registry)  # (twice is fine)
    assert registry.tag_of(Chunk) == "$files.Chunk"
    data = bytes(range(256)) * 3
    chunk = Chunk("a/b", "v1", 3, data, digest_of(data))
    for fmt in ("json", "msgpack"):
        codec = Codec(registry, fmt)
        frame = codec.encode(Envelope(Kind.ASK, "$files@n1", None, 1, None, "", chunk))
        assert codec.decode(frame).payload == chunk
        answer = Answer(Status.CORRUPT, 3, "why")
        frame = codec.encode(Envelope(Kind.REPLY, "$ask@n0", None, 2, 1, "", answer))
        assert codec.decode(frame).payload == answer
    assert "768 bytes" in repr(chunk)
    codec = Codec(registry, "json")
    for bad in (
        ["a", "v", 0, "not base64!", digest_of(b"")],
        ["a", "v", "0", "", digest_of(b"")],
        ["a", "v", 0, ""],
        {"name": "a"},
    ):
        frame = codec.encode(
            Envelope(Kind.TELL, "$files@n1", None, 1, None, "", ta.RawMessage("$files.Chunk", bad))
        )
        with pytest.raises(InvalidPayload):
            codec.decode(frame)
    frame = Codec(registry, "msgpack").encode(
        Envelope(
            Kind.TELL,
            "x@n",
            None,
            1,
            None,
            "",
            ta.RawMessage("$files.Chunk", ["a", "v", 0, "str", ""]),
        )
    )
    with pytest.raises(InvalidPayload):
        Codec(registry, "msgpack").decode(frame)


async def test_two_versions_pushed_at_once_both_finish(tmp_path: Path) -> None:
    one, two = payload(MiB, seed=20), payload(MiB + 1, seed=21)
    async with cluster(tmp_path, 3, latency=0.001) as c:
        first, second = source(tmp_path, one, "one"), source(tmp_path, two, "two")
        reports = []

        async def push(sender: str, path: Path, version: str) -> None:
            reports.append(
                await c.files[sender].push(path, to=["n1"], name="blob.bin", version=version)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(push, "n0", first, "v1")
            nursery.start_soon(push, "n2", second, "v2")
        assert all(r.ok for r in reports), [r.failed() for r in reports]
        held = c.files["n1"].held()["blob.bin"]  # the last commit wins, consistently
        content = (c.root / "n1" / "blob.bin").read_bytes()
        assert (held.version, content) in {("v1", one), ("v2", two)}
        assert held.sha256 == sha(content)
        assert partials(c.root / "n1") == []


async def test_other_content_under_the_same_version_waits_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path, 2) as c:
        files = c.nodes["n0"].ref("$files@n1")
        first = Offer("f", "v1", 10, sha(b"0123456789"), 4)
        other = Offer("f", "v1", 10, sha(b"abcdefghij"), 4)
        assert await files.ask(first) == Answer(Status.OK, 0)
        answer = await files.ask(other)
        assert isinstance(answer, Answer)
        assert answer.status is Status.REFUSED
        assert "different versions" in answer.detail
        assert len(partials(c.root / "n1")) == 1
        monkeypatch.setattr(_files, "IDLE_TRANSFER", 0.0)  # the first sender went away
        assert await files.ask(other) == Answer(Status.OK, 0)
        assert len(partials(c.root / "n1")) == 1  # the first one's was deleted
        assert c.files["n1"].statistics().transfers == 1


# -- install, versions, directories -----------------------------------------------------------


async def test_the_target_holds_the_old_or_the_new_content_never_a_mixture(tmp_path: Path) -> None:
    new = payload(3 * MiB, seed=10)
    async with cluster(tmp_path, 2, latency=0.001) as c:
        old = await install_old(c, tmp_path, ["n1"])
        target = c.root / "n1" / "blob.bin"
        seen: set[str] = set()
        done = trio.Event()

        async def watch() -> None:
            while not done.is_set():
                content = await trio.Path(target).read_bytes()
                assert content in (old, new), f"a mixture of {len(content)} bytes"
                seen.add("old" if content == old else "new")
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            report = await c.files["n0"].push(source(tmp_path, new), to=["n1"], version="new")
            done.set()
        assert report.ok
        assert target.read_bytes() == new
        assert "old" in seen
        assert sorted(p.name for p in (c.root / "n1").iterdir()) == [MANIFEST, "blob.bin"]


async def test_versions_are_recorded_persist_and_are_not_sent_twice(tmp_path: Path) -> None:
    data = payload(500 * KiB, seed=11)
    async with cluster(tmp_path, 3) as c:
        path = source(tmp_path, data)
        report = await c.files["n0"].push(path, to=["n1", "n2"])
        expected = FileVersion("blob.bin", sha(data)[:16], len(data), sha(data))
        assert report.version == expected.version
        assert c.files["n1"].held() == {"blob.bin": expected}
        again = await c.files["n0"].push(path, to=["n1", "n2"])
        assert again.ok
        assert {r.bytes for r in again.results.values()} == {0}  # already held
        held = await c.nodes["n0"].ref("$files@n2").ask(GetHeld())
        assert isinstance(held, HeldFiles)
        assert held.as_dict() == {"blob.bin": expected}
        # the manifest survives a restart of the node
        await c.crash_and_restart("n1")
        assert c.files["n1"].held() == {"blob.bin": expected}
        # removed by hand: no longer held, so sent again
        (c.root / "n2" / "blob.bin").unlink()
        third = await c.files["n0"].push(path, to=["n2"])
        assert third.results["n2"].bytes == len(data)
        assert (c.root / "n2" / "blob.bin").read_bytes() == data


async def test_an_unreadable_manifest_is_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "files"
    directory.mkdir()
    (directory / MANIFEST).write_text("{not json")
    network = MemoryNetwork()
    with trio.fail_after(LIMIT):
        async with (
            network.running(),
            ta.open_node("solo", transport=network.transport("solo")) as node,
        ):
            files = await start_files(node, directory)
            assert files.held() == {}
            report = await files.push(source(tmp_path, b"hello"))  # to itself
            assert report.ok
            assert list(report.results) == ["solo"]
            assert (directory / "blob.bin").read_bytes() == b"hello"
            assert '"blob.bin"' in (directory / MANIFEST).read_text()


async def test_a_directory_is_pushed_file_by_file(tmp_path: Path) -> None:
    tree = tmp_path / "site"
    (tree / "sub" / "deeper").mkdir(parents=True)
    contents = {
        "index.html": b"<html>",
        ".env": b"KEY=1",
        "sub/data.bin": payload(200 * KiB, seed=12),
        "sub/deeper/empty": b"",
    }
    for rel, content in contents.items():
        (tree / rel).write_bytes(content)
    os.symlink(tree / "index.html", tree / "sub" / "link.html")
    async with cluster(tmp_path, 3) as c:
        report = await c.files["n0"].push(tree, to=["n1", "n2"], version="7")
        assert report.ok, report.failed()
        names = {f"site/{rel}" for rel in contents} | {"site/sub/link.html"}
        assert {f.name for f in report.files} == names
        assert {f.version for f in report.files} == {"7"}
        for node in ("n1", "n2"):
            for rel, content in contents.items():
                assert (c.root / node / "site" / rel).read_bytes() == content
            assert (c.root / node / "site" / "sub" / "link.html").read_bytes() == b"<html>"
            assert set(c.files[node].held()) == names
        assert report.results["n1"].bytes == sum(map(len, contents.values())) + len(b"<html>")


async def test_push_arguments(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2) as c:
        n0 = c.files["n0"]
        path = source(tmp_path, b"x")
        with pytest.raises(TypeError, match="node names"):
            await n0.push(path, to="n1")
        with pytest.raises(UnsafeFileName):
            await n0.push(path, name="../x")
        with pytest.raises(ValueError, match="version"):
            await n0.push(path, version="")
        with pytest.raises(ValueError, match="node name"):
            await n0.push(path, to=["not a node"])
        with pytest.raises(FileNotFoundError):
            await n0.push(tmp_path / "missing")
        assert n0.path_of("a/b") == c.root / "n0" / "a" / "b"
        report = await n0.push(path, to=["n1", "nowhere"])
        assert report.results["n1"].ok
        error = report.results["nowhere"].error
        assert isinstance(error, FileTransferError)
        assert "gave up" in str(error)
        assert isinstance(error.__cause__, ta.NodeUnreachable)


async def test_start_files_arguments(tmp_path: Path) -> None:
    network = MemoryNetwork(config=TransportConfig(max_frame_size=64 * KiB))
    with trio.fail_after(LIMIT):
        async with (
            network.running(),
            ta.open_node("solo", transport=network.transport("solo")) as node,
        ):
            with pytest.raises(ValueError, match="max_frame_size"):
                await start_files(node, tmp_path, chunk_size=64 * KiB)
            for bad in (
                {"window": 0},
                {"attempts": 0},
                {"chunk_timeout": 0},
                {"max_size": -1},
                {"chunk_size": 0},
            ):
                with pytest.raises(ValueError, match="must be"):
                    await start_files(node, tmp_path, **bad)  # type: ignore[arg-type]
            files = await start_files(node, tmp_path / "a" / "b", chunk_size=32 * KiB)
            assert (tmp_path / "a" / "b").is_dir()
            assert "$files@solo" in repr(files)
            with pytest.raises(ta.NameTaken):
                await start_files(node, tmp_path, chunk_size=32 * KiB)


async def test_to_none_means_every_reachable_member(tmp_path: Path) -> None:
    network = MemoryNetwork(seed=4)
    data = payload(100 * KiB, seed=13)
    with trio.fail_after(LIMIT):
        async with network.running(), trio.open_nursery() as nursery:
            services: dict[str, FileService] = {}
            members: dict[str, ta.Membership] = {}

            async def run(name: str, task_status: trio.TaskStatus[None]) -> None:
                async with ta.open_node(name, transport=network.transport(name)) as node:
                    seeds = {} if name == "m0" else {"m0": "memory://m0"}
                    members[name] = await ta.start_membership(node, seeds=seeds)
                    services[name] = await start_files(
                        node, tmp_path / name, membership=members[name]
                    )
                    task_status.started()
                    await trio.sleep_forever()

            for name in ("m0", "m1", "m2"):
                await nursery.start(run, name)
            while len(members["m0"].alive()) < 3:
                await members["m0"].wait_changed()
            report = await services["m0"].push(source(tmp_path, data))
            assert sorted(report.results) == ["m0", "m1", "m2"]
            assert report.ok
            for name in ("m0", "m1", "m2"):
                assert (tmp_path / name / "blob.bin").read_bytes() == data
            nursery.cancel_scope.cancel()
