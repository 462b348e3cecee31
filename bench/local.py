"""The local (single-process) workloads, each next to its raw Trio baseline.

Every workload is a function ``(rounds) -> list[Result]``. Its trioactors
side and its baseline do the same work: the same message objects, the same
capacities (1000, the default mailbox size), the same number of tasks doing
the work. Each side checks its own results, so a fast but wrong run fails.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Final

import attrs
import trio

import trioactors

from ._common import Result, best_of, latency, throughput, timed_run

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["WORKLOADS"]

CAPACITY: Final = 1000
"""Mailbox and channel capacity on both sides: trioactors' default mailbox size."""

TELL_COUNT: Final = 100_000
ASK_COUNT: Final = 10_000
FAN_OUT_JOBS: Final = 10_000
FAN_OUT_WORKERS: Final = 4
RESTART_COUNT: Final = 200


class BenchError(RuntimeError):
    """A benchmark computed a wrong answer: its timing would mean nothing."""


def _check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise BenchError(f"{what}: got {got!r}, expected {expected!r}")


# -- messages ------------------------------------------------------------------


@attrs.frozen
class Tick:
    n: int


@attrs.frozen
class Ping(trioactors.Request[int]):
    n: int


@attrs.frozen
class Job:
    n: int


@attrs.frozen
class Done:
    n: int


@attrs.frozen
class Go:
    pass


@attrs.frozen
class Crash:
    pass


class Crashed(Exception):
    """Raised on purpose by the restart workload."""


# -- 1. tell_throughput --------------------------------------------------------


class Counter(trioactors.Actor[Tick]):
    def __init__(self, total: int, done: trio.Event) -> None:
        self.total = total
        self.done = done
        self.count = 0

    async def receive(self, message: Tick) -> None:
        self.count += 1
        if self.count == self.total:
            self.done.set()


async def _tell_ours(count: int) -> float:
    done = trio.Event()
    async with trioactors.open_supervisor() as sup:
        ref = await sup.start_actor(Counter, count, done, name="counter")
        start = time.perf_counter()
        for i in range(count):
            await ref.tell(Tick(i))
        await done.wait()
        return time.perf_counter() - start


async def _tell_channel(count: int) -> float:
    send, receive = trio.open_memory_channel[Tick](CAPACITY)
    done = trio.Event()

    async def consumer() -> None:
        n = 0
        async for _ in receive:
            n += 1
            if n == count:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        start = time.perf_counter()
        async with send:
            for i in range(count):
                await send.send(Tick(i))
        await done.wait()
        return time.perf_counter() - start


async def _tell_nowait_limit(count: int) -> float:
    # The fastest a bounded Trio channel goes: both sides use the *_nowait fast
    # path and only fall back to the awaiting call (and so to the scheduler)
    # when the buffer is full or empty, so the work moves in batches of up to
    # CAPACITY items per context switch.
    send, receive = trio.open_memory_channel[Tick](CAPACITY)
    done = trio.Event()

    async def consumer() -> None:
        for _ in range(count):
            try:
                receive.receive_nowait()
            except trio.WouldBlock:
                await receive.receive()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        start = time.perf_counter()
        async with send:
            for i in range(count):
                tick = Tick(i)
                try:
                    send.send_nowait(tick)
                except trio.WouldBlock:
                    await send.send(tick)
        await done.wait()
        return time.perf_counter() - start


def tell_throughput(rounds: int) -> list[Result]:
    n = TELL_COUNT
    best = best_of(
        rounds,
        {
            "ours": lambda: timed_run(_tell_ours, n),
            "channel": lambda: timed_run(_tell_channel, n),
            "nowait": lambda: timed_run(_tell_nowait_limit, n),
        },
    )
    return [
        throughput("tell_throughput", n, best["ours"], best["channel"], "msg/s"),
        throughput("tell_throughput_send_nowait_limit", n, best["ours"], best["nowait"], "msg/s"),
    ]


# -- 2. ask_roundtrip ----------------------------------------------------------


class Echo(trioactors.Actor[Ping]):
    async def receive(self, message: Ping) -> int:
        return message.n


async def _ask_ours(count: int) -> float:
    async with trioactors.open_supervisor() as sup:
        ref = await sup.start_actor(Echo, name="echo")
        total = 0
        start = time.perf_counter()
        for i in range(count):
            total += await ref.ask(Ping(i))
        elapsed = time.perf_counter() - start
    _check("ask replies", total, count * (count - 1) // 2)
    return elapsed


async def _ask_channels(count: int) -> float:
    requests_send, requests_receive = trio.open_memory_channel[Ping](CAPACITY)
    replies_send, replies_receive = trio.open_memory_channel[int](CAPACITY)

    async def server() -> None:
        async with replies_send:
            async for request in requests_receive:
                await replies_send.send(request.n)

    total = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        start = time.perf_counter()
        async with requests_send:
            for i in range(count):
                await requests_send.send(Ping(i))
                total += await replies_receive.receive()
        elapsed = time.perf_counter() - start
    _check("channel replies", total, count * (count - 1) // 2)
    return elapsed


def ask_roundtrip(rounds: int) -> list[Result]:
    n = ASK_COUNT
    best = best_of(
        rounds,
        {
            "ours": lambda: timed_run(_ask_ours, n),
            "channels": lambda: timed_run(_ask_channels, n),
        },
    )
    return [latency("ask_roundtrip", n, best["ours"], best["channels"])]


# -- 3. fan_out ----------------------------------------------------------------


class Worker(trioactors.Actor[Job]):
    async def receive(self, message: Job) -> None:
        sender = self.context.sender
        assert sender is not None
        await sender.tell(Done(message.n * 2))


class Coordinator(trioactors.Actor[Go | Done]):
    """On ``Go``, deals the jobs round robin and counts the ``Done`` replies.

    The jobs go out from a background task (``context.start_soon``; the
    workers still see the coordinator as the sender) so that the mailbox loop
    keeps taking replies meanwhile. Sending them from ``receive`` itself would
    deadlock once the workers' mailboxes and ours are all full: bounded
    mailboxes mean backpressure, in both directions.
    """

    def __init__(
        self,
        workers: list[trioactors.ActorRef[Job]],
        jobs: int,
        totals: list[int],
        done: trio.Event,
    ) -> None:
        self.workers = workers
        self.jobs = jobs
        self.totals = totals
        self.done = done
        self.count = 0
        self.total = 0

    async def receive(self, message: Go | Done) -> None:
        match message:
            case Go():
                self.context.start_soon(self._deal)
            case Done(n):
                self.count += 1
                self.total += n
                if self.count == self.jobs:
                    self.totals.append(self.total)
                    self.done.set()

    async def _deal(self) -> None:
        workers = itertools.cycle(self.workers)
        for i in range(self.jobs):
            await next(workers).tell(Job(i))


async def _fan_out_ours(jobs: int) -> float:
    done = trio.Event()
    totals: list[int] = []
    async with trioactors.open_supervisor() as sup:
        workers: list[trioactors.ActorRef[Job]] = [
            await sup.start_actor(Worker, name=f"worker-{i}") for i in range(FAN_OUT_WORKERS)
        ]
        coordinator = await sup.start_actor(
            Coordinator, workers, jobs, totals, done, name="coordinator"
        )
        start = time.perf_counter()
        await coordinator.tell(Go())
        await done.wait()
        elapsed = time.perf_counter() - start
    _check("fan-out results", totals, [jobs * (jobs - 1)])
    return elapsed


async def _fan_out_channels(jobs: int) -> float:
    jobs_send, jobs_receive = trio.open_memory_channel[Job](CAPACITY)
    results_send, results_receive = trio.open_memory_channel[Done](CAPACITY)

    async def worker() -> None:
        async for job in jobs_receive:
            await results_send.send(Done(job.n * 2))

    async def deal() -> None:
        async with jobs_send:
            for i in range(jobs):
                await jobs_send.send(Job(i))

    async with trio.open_nursery() as nursery:
        for _ in range(FAN_OUT_WORKERS):
            nursery.start_soon(worker)
        start = time.perf_counter()
        nursery.start_soon(deal)
        total = 0
        for _ in range(jobs):
            total += (await results_receive.receive()).n
        elapsed = time.perf_counter() - start
    _check("channel fan-out results", total, jobs * (jobs - 1))
    return elapsed


def fan_out(rounds: int) -> list[Result]:
    n = FAN_OUT_JOBS
    best = best_of(
        rounds,
        {
            "ours": lambda: timed_run(_fan_out_ours, n),
            "channels": lambda: timed_run(_fan_out_channels, n),
        },
    )
    return [throughput("fan_out", n, best["ours"], best["channels"], "jobs/s")]


# -- 4. restart ----------------------------------------------------------------


class Fragile(trioactors.Actor[Crash | Ping]):
    async def receive(self, message: Crash | Ping) -> int:
        match message:
            case Crash():
                raise Crashed
            case Ping(n):
                return n


async def _restart_ours(count: int) -> float:
    # Never give up: a billion restarts per second allowed.
    async with trioactors.open_supervisor(intensity=10**9, period=1) as sup:
        ref = await sup.start_actor(Fragile, name="fragile")
        start = time.perf_counter()
        for i in range(count):
            await ref.tell(Crash())
            _check("reply after restart", await ref.ask(Ping(i)), i)
        elapsed = time.perf_counter() - start
        _check("restarts", sup.child("fragile").restarts, count)
    return elapsed


async def _raw_server(
    requests: trio.MemoryReceiveChannel[Crash | Ping],
    replies: trio.MemorySendChannel[int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    async for request in requests:
        match request:
            case Crash():
                raise Crashed
            case Ping(n):
                await replies.send(n)


async def _raw_supervisor(
    requests: trio.MemoryReceiveChannel[Crash | Ping],
    replies: trio.MemorySendChannel[int],
    restarts: list[int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        crashed = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_raw_server, requests, replies)
        except* Crashed:
            crashed = True
        if not crashed:  # the request channel was closed: a normal exit
            return
        restarts[0] += 1


async def _restart_raw(count: int) -> float:
    requests_send, requests_receive = trio.open_memory_channel[Crash | Ping](CAPACITY)
    replies_send, replies_receive = trio.open_memory_channel[int](CAPACITY)
    restarts = [0]
    async with trio.open_nursery() as nursery:
        await nursery.start(_raw_supervisor, requests_receive, replies_send, restarts)
        start = time.perf_counter()
        async with requests_send:
            for i in range(count):
                await requests_send.send(Crash())
                await requests_send.send(Ping(i))
                _check("raw reply after restart", await replies_receive.receive(), i)
            elapsed = time.perf_counter() - start
    _check("raw restarts", restarts[0], count)
    return elapsed


def restart(rounds: int) -> list[Result]:
    # Each crash is logged as a warning with its traceback; that is not what
    # we are timing, and 200 tracebacks per round would bury the results.
    logging.getLogger("trioactors").setLevel(logging.CRITICAL)
    n = RESTART_COUNT
    best = best_of(
        rounds,
        {
            "ours": lambda: timed_run(_restart_ours, n),
            "raw": lambda: timed_run(_restart_raw, n),
        },
    )
    return [latency("restart", n, best["ours"], best["raw"])]


WORKLOADS: dict[str, Callable[[int], list[Result]]] = {
    "tell_throughput": tell_throughput,
    "ask_roundtrip": ask_roundtrip,
    "fan_out": fan_out,
    "restart": restart,
}
"""Every workload, in the order ``python -m bench`` runs them."""
