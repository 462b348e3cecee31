"""The shared conformance suite every transport passes (``check_transport``).

Shaped like ``trio.testing.check_two_way_stream``: the caller hands over a
factory of serving transport pairs, and each check opens a fresh pair, drives
it through the public :class:`~trioactors.transports.Transport` API only, and
fails with an ``AssertionError`` (or the unexpected exception) when the
contract in ``trioactors/transports/_base.py`` is broken. Every step runs
under a Trio-clock ``fail_after``, so a hang fails instead of stalling; under
``MockClock(autojump_threshold=0)`` the timeouts cost no real time.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeAlias, final

import attrs
import trio
import trio.testing

from .._errors import FrameTooLarge, NodeUnreachable
from ..transports._base import Deliver, Transport, TransportConfig

__all__ = ["MakePair", "TransportPair", "check_transport", "open_transport_pair"]

_AT_ONCE = 1.0  # seconds an "at once" failure may take, even on a slow machine


@attrs.frozen
class TransportPair:
    """Two serving transports that know each other (yielded by a ``MakePair``).

    .. versionadded:: 0.1
    """

    a: Transport
    b: Transport
    a_name: str
    b_name: str
    a_address: str
    b_address: str
    config: TransportConfig
    """The settings both sides use (the checks read ``max_frame_size``,
    ``send_queue_size`` and ``connect_timeout``)."""
    stop_b: Callable[[], Awaitable[None]]
    """Stop ``b`` (cancel its ``serve``) and return once it has returned."""


MakePair: TypeAlias = Callable[[Deliver, Deliver], AbstractAsyncContextManager[TransportPair]]
"""``make_pair(deliver_a, deliver_b)``: an async context manager yielding a
:class:`TransportPair` whose ``a`` serves with ``deliver_a`` and ``b`` with
``deliver_b``. Usually built with :func:`open_transport_pair`."""


@asynccontextmanager
async def open_transport_pair(
    a: Transport,
    b: Transport,
    deliver_a: Deliver,
    deliver_b: Deliver,
    *,
    config: TransportConfig,
    names: tuple[str, str] = ("a", "b"),
) -> AsyncIterator[TransportPair]:
    """Serve ``a`` and ``b`` in a nursery of their own and introduce them to each other.

    Args:
      a: The first transport, not yet serving.
      b: The second transport, not yet serving.
      deliver_a: What ``a`` delivers received frames to.
      deliver_b: What ``b`` delivers received frames to.
      config: The config both were built with (recorded in the pair).
      names: The node names they serve as.

    .. versionadded:: 0.1
    """
    a_name, b_name = names
    b_scope = trio.CancelScope()
    b_done = trio.Event()

    async def serve_b(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with b_scope:
                await b.serve(b_name, deliver_b, task_status=task_status)
        finally:
            b_done.set()

    async def stop_b() -> None:
        b_scope.cancel()
        await b_done.wait()

    async with trio.open_nursery() as nursery:
        a_address: str = await nursery.start(a.serve, a_name, deliver_a)
        b_address: str = await nursery.start(serve_b)
        a.add_peer(b_name, b_address)
        b.add_peer(a_name, a_address)
        yield TransportPair(a, b, a_name, b_name, a_address, b_address, config, stop_b)
        nursery.cancel_scope.cancel()


@final
class _Inbox:
    """Records what a transport delivers and lets a check wait for it."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self._changed = trio.Event()

    async def deliver(self, peer: str, frame: bytes) -> None:
        self.frames.append((peer, frame))
        self._changed.set()
        await trio.lowlevel.checkpoint()

    async def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        while len(self.frames) < count:
            self._changed = trio.Event()
            await self._changed.wait()
        return self.frames


@asynccontextmanager
async def _opened(make_pair: MakePair) -> AsyncIterator[tuple[TransportPair, _Inbox, _Inbox]]:
    inbox_a, inbox_b = _Inbox(), _Inbox()
    async with make_pair(inbox_a.deliver, inbox_b.deliver) as pair:
        yield pair, inbox_a, inbox_b


async def check_transport(make_pair: MakePair, *, frames: int = 500, timeout: float = 60) -> None:
    """Check that the transports ``make_pair`` builds keep the transport contract.

    Each check gets a fresh pair:

    - frames go both ways and are delivered with the sender's node name;
    - ``frames`` pipelined frames per direction (and from several concurrent
      tasks) arrive complete and in order, through the send queue's
      backpressure, and ``statistics()`` counts them;
    - a frame of exactly ``max_frame_size`` bytes arrives intact, one byte more
      raises :class:`FrameTooLarge` at once, and the transport keeps working;
    - an empty frame is a frame: ``b""`` is delivered as ``b""``, in order;
    - an unknown or removed peer raises :class:`NodeUnreachable` at once;
    - a stopped peer makes ``send`` raise :class:`NodeUnreachable` within
      ``connect_timeout`` (after a warm connection, possibly after a few sends
      that are silently lost), never hang.

    Args:
      make_pair: Builds a serving pair, see :data:`MakePair`.
      frames: How many frames the ordering checks pipeline per direction.
      timeout: Limit of each check, in seconds of Trio's clock.

    Raises:
      AssertionError: The contract is broken; the message names the check,
        ``__cause__`` holds the original failure.
      trio.TooSlowError: A check took longer than ``timeout`` (a hang).

    .. versionadded:: 0.1
    """
    checks = [
        _check_both_ways,
        _check_fifo,
        _check_concurrent_senders,
        _check_frame_size,
        _check_empty_frames,
        _check_unknown_peer,
        _check_stopped_peer_warm,
        _check_stopped_peer_cold,
    ]
    for check in checks:
        where = f"transport check {check.__name__.removeprefix('_check_')!r}"
        try:
            with trio.fail_after(timeout):
                await check(make_pair, frames)
        except BaseException as exc:
            # The pair's nurseries wrap a failed assert in groups of one: say it plainly.
            leaf = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]
            if isinstance(leaf, AssertionError):
                raise AssertionError(f"{where} failed: {leaf}") from exc
            exc.add_note(f"in {where}")
            raise


async def _check_both_ways(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, inbox_a, inbox_b):
        a0, b0 = pair.a.statistics(), pair.b.statistics()
        assert pair.a.peers().get(pair.b_name) == pair.b_address, pair.a.peers()
        assert pair.b.peers().get(pair.a_name) == pair.a_address, pair.b.peers()
        await pair.a.send(pair.b_name, b"ping from a")
        await pair.b.send(pair.a_name, b"ping from b")
        assert await inbox_b.wait_for(1) == [(pair.a_name, b"ping from a")]
        assert await inbox_a.wait_for(1) == [(pair.b_name, b"ping from b")]
        a1, b1 = pair.a.statistics(), pair.b.statistics()
        for before, after in ((a0, a1), (b0, b1)):
            assert after.frames_sent - before.frames_sent == 1, (before, after)
            assert after.frames_received - before.frames_received == 1, (before, after)
            assert after.bytes_sent - before.bytes_sent >= 11, (before, after)
            assert after.bytes_received - before.bytes_received >= 11, (before, after)
            assert after.frames_lost == before.frames_lost, (before, after)


def _payload(i: int) -> bytes:
    # varied lengths, including empty ones, each frame recognisable
    return b"%d:" % i + b"x" * (i % 37)


async def _check_fifo(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, inbox_a, inbox_b):
        a0, b0 = pair.a.statistics(), pair.b.statistics()
        expected = [_payload(i) for i in range(frames)]

        async def pump(src: Transport, dst: str) -> None:
            for frame in expected:
                await src.send(dst, frame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, pair.a, pair.b_name)
            nursery.start_soon(pump, pair.b, pair.a_name)
            got_b = await inbox_b.wait_for(frames)
            got_a = await inbox_a.wait_for(frames)
        assert got_b == [(pair.a_name, f) for f in expected], "a -> b out of order or altered"
        assert got_a == [(pair.b_name, f) for f in expected], "b -> a out of order or altered"
        payload = sum(map(len, expected))
        for before, after in ((a0, pair.a.statistics()), (b0, pair.b.statistics())):
            assert after.frames_sent - before.frames_sent == frames, (before, after)
            assert after.frames_received - before.frames_received == frames, (before, after)
            assert after.bytes_sent - before.bytes_sent >= payload, (before, after)
            assert after.bytes_received - before.bytes_received >= payload, (before, after)
            assert after.frames_lost == before.frames_lost, (before, after)


async def _check_concurrent_senders(make_pair: MakePair, frames: int) -> None:
    tasks = 4
    async with _opened(make_pair) as (pair, _, inbox_b):

        async def pump(task: int) -> None:
            for i in range(frames // tasks):
                await pair.a.send(pair.b_name, b"%d:%d" % (task, i))

        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(pump, task)
        got = await inbox_b.wait_for(tasks * (frames // tasks))
        for task in range(tasks):
            mine = [frame for _, frame in got if frame.startswith(b"%d:" % task)]
            assert mine == [b"%d:%d" % (task, i) for i in range(frames // tasks)], task


async def _check_frame_size(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, _, inbox_b):
        limit = pair.config.max_frame_size
        biggest = bytes(range(256)) * (limit // 256) + b"z" * (limit % 256)
        await pair.a.send(pair.b_name, biggest)
        got = await inbox_b.wait_for(1)
        assert got[0][1] == biggest, "a frame of exactly max_frame_size arrived altered"
        with trio.fail_after(_AT_ONCE):
            try:
                await pair.a.send(pair.b_name, biggest + b"!")
            except FrameTooLarge:
                pass
            else:
                raise AssertionError(f"a frame of max_frame_size + 1 = {limit + 1} was accepted")
        await pair.a.send(pair.b_name, b"still working")
        assert (await inbox_b.wait_for(2))[1] == (pair.a_name, b"still working")


async def _check_empty_frames(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, inbox_a, inbox_b):
        for frame in (b"before", b"", b"after"):
            await pair.a.send(pair.b_name, frame)
        await pair.b.send(pair.a_name, b"")
        assert [f for _, f in await inbox_b.wait_for(3)] == [b"before", b"", b"after"]
        assert await inbox_a.wait_for(1) == [(pair.b_name, b"")]


async def _expect_unreachable_at_once(transport: Transport, peer: str) -> None:
    with trio.fail_after(_AT_ONCE):
        try:
            await transport.send(peer, b"hello?")
        except NodeUnreachable:
            return
    raise AssertionError(f"send to unknown peer {peer!r} did not raise NodeUnreachable")


async def _check_unknown_peer(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, _, inbox_b):
        await _expect_unreachable_at_once(pair.a, "nobody-" + pair.b_name)
        await pair.a.send(pair.b_name, b"one")
        await inbox_b.wait_for(1)
        pair.a.remove_peer(pair.b_name)
        assert pair.b_name not in pair.a.peers(), pair.a.peers()
        await _expect_unreachable_at_once(pair.a, pair.b_name)
        pair.a.add_peer(pair.b_name, pair.b_address)
        await pair.a.send(pair.b_name, b"two")
        assert (await inbox_b.wait_for(2))[1] == (pair.a_name, b"two")


async def _expect_unreachable_soon(pair: TransportPair) -> None:
    """Sends to the stopped ``b`` fail within connect_timeout; a few may be lost first."""
    connect_timeout = pair.config.connect_timeout
    slack = 0.5 * connect_timeout + 1.0 if math.isfinite(connect_timeout) else math.inf
    for _ in range(100):
        start = trio.current_time()
        with trio.fail_after(connect_timeout + slack):
            try:
                await pair.a.send(pair.b_name, b"anyone there?")
            except NodeUnreachable:
                elapsed = trio.current_time() - start
                assert elapsed <= connect_timeout + slack, elapsed
                return
        # Accepted on a connection that has not noticed the peer left yet: let
        # every task (the transport's readers) run until they are all blocked.
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError("100 sends to a stopped peer were accepted; none raised NodeUnreachable")


async def _check_stopped_peer_warm(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, _, inbox_b):
        await pair.a.send(pair.b_name, b"warm up")
        await inbox_b.wait_for(1)
        await pair.stop_b()
        await _expect_unreachable_soon(pair)
        assert pair.a.statistics().connect_failures >= 1, pair.a.statistics()


async def _check_stopped_peer_cold(make_pair: MakePair, frames: int) -> None:
    async with _opened(make_pair) as (pair, _, inbox_b):
        await pair.stop_b()
        await _expect_unreachable_soon(pair)
        assert inbox_b.frames == []
