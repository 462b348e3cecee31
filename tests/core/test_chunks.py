"""File chunks: the plan, the receiver's assembly and the sender's window, by hand and under hypothesis."""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioactors import TrioactorsError
from trioactors._core._chunks import (
    MAX_CHUNK_SIZE,
    Accepted,
    Assembly,
    ChunkCorrupted,
    ChunkPlan,
    FileTransferError,
    HashMismatch,
    Reason,
    Rejected,
    SendWindow,
    UnsafeFileName,
    check_digest,
    check_name,
    check_version,
    digest_of,
)

if TYPE_CHECKING:
    import random


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, chunk_size: int) -> list[bytes]:
    plan = ChunkPlan(len(data), chunk_size)
    return [data[offset : offset + length] for _, offset, length in plan]


def assembly_for(data: bytes, chunk_size: int, *, sha256: str | None = None) -> Assembly:
    return Assembly("f.bin", "v1", len(data), sha256 or sha(data), chunk_size)


def rebuilt(data: bytes, chunk_size: int, written: bytes) -> Assembly:
    """A restarted receiver: a fresh assembly fed its partial file, chunk by chunk."""
    assembly = assembly_for(data, chunk_size)
    for index, piece in enumerate(chunks(written, chunk_size)):
        if len(piece) < assembly.plan.length(index):
            break
        assert isinstance(assembly.accept(index, piece, digest_of(piece)), Accepted)
    return assembly


def flip(data: bytes, at: int = 0) -> bytes:
    """``data`` with one byte changed (never equal to ``data``)."""
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


# -- errors and names ----------------------------------------------------------------------


def test_errors() -> None:
    for cls in (ChunkCorrupted, HashMismatch, UnsafeFileName):
        assert issubclass(cls, FileTransferError)
    assert issubclass(FileTransferError, TrioactorsError)
    assert issubclass(UnsafeFileName, ValueError)


@pytest.mark.parametrize(
    "name", ["a", "a.txt", "dir/sub/file.tar.gz", ".env", "x..y", "ünïcode/名前", "a b/c"]
)
def test_safe_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../up",
        "a/../../b",
        "a/./b",
        ".",
        "..",
        "a//b",
        "a/",
        "a\\b",
        "C:\\x",
        "nul\x00",
        "line\nfeed",
        ".trioactors-manifest.json",
        "dir/.trioactors-0123.part",
        "x" * 256,
        "a/" * 600,
        7,
        None,
        b"bytes",
    ],
)
def test_unsafe_names(name: object) -> None:
    with pytest.raises(UnsafeFileName):
        check_name(name)


def test_versions_and_digests() -> None:
    assert check_version("1.2.3+build 7") == "1.2.3+build 7"
    for bad in ("", "x" * 129, "tab\there", 3, None):
        with pytest.raises(ValueError, match="version"):
            check_version(bad)
    good = sha(b"")
    assert check_digest(good) == good
    for bad_digest in (good.upper(), good[:-1], good + "0", "g" * 64, None):
        with pytest.raises(ValueError, match="SHA-256"):
            check_digest(bad_digest)


# -- the plan ------------------------------------------------------------------------------


def test_plan() -> None:
    plan = ChunkPlan(10, 4)
    assert plan.count == 3
    assert list(plan) == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert [plan.offset(i) for i in range(3)] == [0, 4, 8]
    assert [plan.length(i) for i in range(3)] == [4, 4, 2]
    with pytest.raises(IndexError):
        plan.offset(3)
    with pytest.raises(IndexError):
        plan.length(-1)
    assert ChunkPlan(8, 4).count == 2
    assert ChunkPlan(0, 4).count == 0
    assert list(ChunkPlan(0, 4)) == []
    for size, chunk_size in [(-1, 4), (4, 0), (4, MAX_CHUNK_SIZE + 1), (True, 4)]:
        with pytest.raises(ValueError, match="must be"):
            ChunkPlan(size, chunk_size)


@given(st.integers(0, 10_000), st.integers(1, 2_000))
def test_plan_covers_the_file_exactly(size: int, chunk_size: int) -> None:
    plan = ChunkPlan(size, chunk_size)
    position = 0
    for index, offset, length in plan:
        assert offset == position == plan.offset(index)
        assert 0 < length <= chunk_size
        assert length == plan.length(index)
        position += length
    assert position == size


# -- the assembly, by hand ------------------------------------------------------------------


def test_in_order_delivery_assembles_the_file() -> None:
    data = bytes(range(256)) * 5
    assembly = assembly_for(data, 300)
    assert assembly.next_needed() == 0
    assert not assembly.complete
    assert assembly.finish() == Rejected(Reason.INCOMPLETE, 0)
    for index, piece in enumerate(chunks(data, 300)):
        verdict = assembly.accept(index, piece, digest_of(piece))
        assert verdict == Accepted(index + 1, index == 4)
    assert assembly.complete
    assert assembly.received == len(data)
    assert assembly.digest() == sha(data)
    assert assembly.finish() == Accepted(5, True)
    assert "5/5 chunks" in repr(assembly)


def test_every_rejection_leaves_the_assembly_unchanged() -> None:
    data = bytes(range(100))
    pieces = chunks(data, 30)  # 30, 30, 30, 10
    assembly = assembly_for(data, 30)
    assert isinstance(assembly.accept(0, pieces[0], digest_of(pieces[0])), Accepted)
    before = (assembly.next_needed(), assembly.received, assembly.digest())
    cases = [
        (0, pieces[0], digest_of(pieces[0]), Reason.DUPLICATE),
        (2, pieces[2], digest_of(pieces[2]), Reason.OUT_OF_ORDER),
        (4, b"x", digest_of(b"x"), Reason.OUT_OF_RANGE),
        (-1, b"x", digest_of(b"x"), Reason.OUT_OF_RANGE),
        (1, pieces[1][:-1], digest_of(pieces[1][:-1]), Reason.BAD_LENGTH),
        (1, flip(pieces[1], 7), digest_of(pieces[1]), Reason.CORRUPT),
        (1, pieces[1], digest_of(pieces[2]), Reason.CORRUPT),
    ]
    for index, piece, digest, reason in cases:
        assert assembly.accept(index, piece, digest) == Rejected(reason, 1)
        assert (assembly.next_needed(), assembly.received, assembly.digest()) == before


def test_a_wrong_whole_file_hash_is_detected_at_the_end() -> None:
    data = b"the file as sent"
    assembly = assembly_for(data, 5, sha256=sha(b"the file as announced"))
    for index, piece in enumerate(chunks(data, 5)):
        assert isinstance(assembly.accept(index, piece, digest_of(piece)), Accepted)
    assert assembly.complete
    assert assembly.finish() == Rejected(Reason.HASH_MISMATCH, 4)


def test_an_empty_file() -> None:
    assembly = assembly_for(b"", 4)
    assert assembly.complete
    assert assembly.next_needed() == 0
    assert assembly.finish() == Accepted(0, True)
    assert assembly.accept(0, b"", digest_of(b"")) == Rejected(Reason.OUT_OF_RANGE, 0)
    assert assembly_for(b"", 4, sha256=sha(b"x")).finish() == Rejected(Reason.HASH_MISMATCH, 0)


def test_the_assembly_checks_what_it_is_given() -> None:
    with pytest.raises(UnsafeFileName):
        Assembly("../x", "v1", 1, sha(b"x"), 4)
    with pytest.raises(ValueError, match="version"):
        Assembly("x", "", 1, sha(b"x"), 4)
    with pytest.raises(ValueError, match="SHA-256"):
        Assembly("x", "v1", 1, "abc", 4)
    with pytest.raises(ValueError, match="size"):
        Assembly("x", "v1", -1, sha(b"x"), 4)


# -- the assembly under hypothesis --------------------------------------------------------

Event = tuple[str, int]  # ("send", index) | ("corrupt", index) | ("restart", 0)

events = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 40)),
        st.tuples(st.just("corrupt"), st.integers(0, 40)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=60,
)


@given(data=st.binary(max_size=600), chunk_size=st.integers(1, 64), schedule=events)
def test_duplicates_reordering_corruption_and_restarts_assemble_the_exact_bytes(
    data: bytes, chunk_size: int, schedule: list[Event]
) -> None:
    """Whatever arrives, the partial file holds exactly a prefix of the file; resuming
    from ``next_needed`` always completes it with the exact bytes and the right hash."""
    pieces = chunks(data, chunk_size)
    assembly = assembly_for(data, chunk_size)
    written = bytearray()  # the receiver's partial file
    restarts = 0

    def deliver(index: int, piece: bytes, digest: str) -> None:
        before = assembly.next_needed()
        verdict = assembly.accept(index, piece, digest)
        if isinstance(verdict, Accepted):
            written.extend(piece)
            assert verdict.next == before + 1
        else:
            assert verdict.next == before
        assert 0 <= assembly.next_needed() <= len(pieces)
        assert bytes(written) == data[: len(written)]
        assert assembly.received == len(written)
        assert assembly.digest() == sha(bytes(written))

    for kind, raw_index in schedule:
        if kind == "restart":
            assembly = rebuilt(data, chunk_size, bytes(written))
            restarts += 1
            assert assembly.received == len(written)
            continue
        if not pieces:
            deliver(raw_index, b"x", digest_of(b"x"))
            continue
        index = raw_index % len(pieces)
        piece = pieces[index]
        if kind == "send":
            deliver(index, piece, digest_of(piece))
        else:
            before = assembly.next_needed()
            verdict = assembly.accept(index, flip(piece, raw_index), digest_of(piece))
            assert isinstance(verdict, Rejected)
            assert verdict.next == before
    # resume: the sender goes on from where the receiver says
    while not assembly.complete:
        index = assembly.next_needed()
        deliver(index, pieces[index], digest_of(pieces[index]))
    assert bytes(written) == data
    assert assembly.finish() == Accepted(len(pieces), True)


@given(data=st.binary(min_size=1, max_size=300), chunk_size=st.integers(1, 32), r=st.randoms())
def test_a_corrupted_chunk_is_always_rejected(
    data: bytes, chunk_size: int, r: random.Random
) -> None:
    pieces = chunks(data, chunk_size)
    assembly = assembly_for(data, chunk_size)
    stop = r.randrange(len(pieces))
    for index in range(stop):
        assembly.accept(index, pieces[index], digest_of(pieces[index]))
    piece = pieces[stop]
    bad = flip(piece, r.randrange(len(piece)))
    assert assembly.accept(stop, bad, digest_of(piece)) == Rejected(Reason.CORRUPT, stop)


@given(data=st.binary(max_size=300), other=st.binary(max_size=300), chunk_size=st.integers(1, 32))
def test_a_wrong_file_hash_is_always_detected(data: bytes, other: bytes, chunk_size: int) -> None:
    assembly = assembly_for(data, chunk_size, sha256=sha(other))
    for index, piece in enumerate(chunks(data, chunk_size)):
        assert isinstance(assembly.accept(index, piece, digest_of(piece)), Accepted)
    expected = Accepted if data == other else Rejected
    assert isinstance(assembly.finish(), expected)


# -- the window, by hand ---------------------------------------------------------------------


def test_the_window_sends_in_order_and_stops_when_full() -> None:
    window = SendWindow(ChunkPlan(100, 10), window=3)
    assert [window.take(), window.take(), window.take(), window.take()] == [
        (0, 1),
        (1, 1),
        (2, 1),
        None,
    ]
    assert window.in_flight == 3
    window.on_answer(0, 1, Accepted(1, False))
    assert window.acked == 1
    assert window.take() == (3, 1)
    assert (window.sent, window.resent) == (4, 0)


def test_one_bad_chunk_costs_one_rewind() -> None:
    window = SendWindow(ChunkPlan(40, 10), window=4)
    sent = [window.take() for _ in range(4)]
    assert sent == [(0, 1), (1, 1), (2, 1), (3, 1)]
    window.on_answer(0, 1, Rejected(Reason.CORRUPT, 0))  # rewinds to 0 in epoch 2
    for index in (1, 2, 3):  # sent behind it, so out of order in turn: ignored
        window.on_answer(index, 1, Rejected(Reason.OUT_OF_ORDER, 0))
    assert window.rewinds == 1
    assert window.corrupt == 1
    assert [window.take() for _ in range(5)] == [(0, 2), (1, 2), (2, 2), (3, 2), None]
    assert window.resent == 4
    for index in range(4):
        window.on_answer(index, 2, Accepted(index + 1, index == 3))
    assert window.done


def test_answers_skip_ahead_and_resume_restarts_the_round() -> None:
    window = SendWindow(ChunkPlan(100, 10), start=3, window=2)
    assert window.take() == (3, 1)
    window.on_answer(3, 1, Rejected(Reason.DUPLICATE, 7))  # it has more than we thought
    assert window.acked == 7
    assert window.take() == (7, 1)
    window.on_lost(7, 1)  # no answer: stalled until the shell offers again
    assert window.stalled
    assert window.take() is None
    window.resume(8)
    assert not window.stalled
    assert window.in_flight == 0
    assert window.take() == (8, 2)
    window.on_answer(7, 1, Accepted(9, False))  # from the previous round: ignored
    assert window.acked == 8
    assert window.in_flight == 1


def test_a_chunk_corrupted_too_often_fails_the_window() -> None:
    window = SendWindow(ChunkPlan(30, 10), window=1, max_corrupt=2)
    for attempt in range(3):
        item = window.take()
        assert item is not None
        index, epoch = item
        assert index == 0
        window.on_answer(index, epoch, Rejected(Reason.CORRUPT, 0))
        assert (window.failed is None) == (attempt < 2)
    assert window.failed is Reason.CORRUPT
    assert not window.done
    assert window.take() is None


def test_answers_no_chunk_can_have_fail_the_window() -> None:
    window = SendWindow(ChunkPlan(30, 10))
    index, epoch = window.take() or (0, 0)
    window.on_answer(index, epoch, Rejected(Reason.OUT_OF_RANGE, 0))
    assert window.failed is Reason.OUT_OF_RANGE


def test_window_arguments() -> None:
    plan = ChunkPlan(30, 10)
    with pytest.raises(ValueError, match="window"):
        SendWindow(plan, window=0)
    with pytest.raises(ValueError, match="max_corrupt"):
        SendWindow(plan, max_corrupt=-1)
    with pytest.raises(ValueError, match="start"):
        SendWindow(plan, start=4)
    assert SendWindow(plan, start=3).done
    assert SendWindow(ChunkPlan(0, 10)).done


# -- sender and receiver over a faulty link, under hypothesis ------------------------------

DELIVER, DROP, CORRUPT, DUPLICATE, RESTART = range(5)


@settings(max_examples=300)
@given(
    data=st.binary(max_size=800),
    chunk_size=st.integers(1, 64),
    window_size=st.integers(1, 6),
    faults=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 1000)), max_size=120),
)
def test_the_window_and_the_assembly_complete_over_any_faults(
    data: bytes, chunk_size: int, window_size: int, faults: list[tuple[int, int]]
) -> None:
    """Frames are lost, corrupted, duplicated; answers come back in any order;
    the receiver restarts from its partial file. The file always arrives exactly,
    and the sender resumes instead of starting over."""
    plan = ChunkPlan(len(data), chunk_size)
    pieces = chunks(data, chunk_size)
    assembly = assembly_for(data, chunk_size)
    written = bytearray()
    window = SendWindow(plan, window=window_size, max_corrupt=len(faults) + 1)
    frames: deque[tuple[int, int, bytes]] = deque()  # to the receiver, in order
    answers: list[tuple[int, int, Accepted | Rejected | None]] = []  # None: lost
    schedule = iter(faults)
    rounds = 1
    for _ in range(100_000):
        if window.done:
            break
        assert window.failed is None
        assert 0 <= window.in_flight <= window_size
        while (item := window.take()) is not None:
            index, epoch = item
            frames.append((index, epoch, pieces[index]))
        if window.stalled:  # the shell offers again: the receiver says where it stands
            frames.clear()
            answers.clear()
            window.resume(assembly.next_needed())
            rounds += 1
            continue
        assert frames or answers, "nothing in flight, yet not done"
        fault, pick = next(schedule, (DELIVER, 0))
        if answers and (not frames or pick % 2):
            index, epoch, verdict = answers.pop(pick % len(answers) if fault >= 5 else 0)
            if verdict is None:
                window.on_lost(index, epoch)
            else:
                window.on_answer(index, epoch, verdict)
            continue
        index, epoch, piece = frames.popleft()
        digest = digest_of(piece)
        if fault == DROP:
            answers.append((index, epoch, None))
        elif fault == CORRUPT and piece:
            verdict = assembly.accept(index, flip(piece, pick), digest)
            assert isinstance(verdict, Rejected)
            answers.append((index, epoch, verdict))
        elif fault == RESTART:
            assembly = rebuilt(data, chunk_size, bytes(written))
            lost = [(i, e, None) for i, e, _ in frames] + [(i, e, None) for i, e, _ in answers]
            frames.clear()
            answers[:] = [(index, epoch, None), *lost]
        else:
            verdict = assembly.accept(index, piece, digest)
            if isinstance(verdict, Accepted):
                written.extend(piece)
            answers.append((index, epoch, verdict))
            if fault == DUPLICATE:  # the copy's answer goes to an ask already answered
                assert isinstance(assembly.accept(index, piece, digest), Rejected)
    else:
        raise AssertionError(f"no progress: {window!r} {assembly!r}")
    assert bytes(written) == data
    assert assembly.finish() == Accepted(plan.count, True)
    assert window.acked == plan.count
    # every chunk was sent at most once per rewind or round, plus one window
    assert window.sent <= plan.count + (window.rewinds + rounds) * (plan.count + window_size)
    if not faults:
        assert (window.sent, window.resent, window.rewinds, rounds) == (plan.count, 0, 0, 1)
