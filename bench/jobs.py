"""Job-queue workloads: a coordinator and worker pools, against plain Trio tasks.

``jobs-local``: the coordinator (``start_job_queue``) and a worker pool
(``start_worker_pool``, concurrency 2) on one node, in this process, on an
in-memory transport that carries nothing (every message is local): the
queue's own cost per job. Baseline: two Trio tasks reading jobs from a memory
channel and sending results on another.

``jobs-cluster``: three ``trioactors node --workers 2`` processes on
127.0.0.1 form a cluster; each measurement starts a node in this process,
joins it with membership, starts a coordinator there and sends the jobs
through ``submit_many``. Baseline: the same jobs, run by the same handler
functions, on six Trio tasks in this process (three nodes times two).

Every measurement is a fresh ``trio.run`` (see ``_common.py``): starting the
node, joining, finding the workers and a warm-up batch are outside the timed
region. Every side checks every result against the expected value.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from typing import IO, TYPE_CHECKING, Final, TypeVar, TypeVarTuple

import attrs
import trio

import trioactors as ta
from trioactors.examples import DIGEST, ECHO, HANDLERS, Digest, digest, echo
from trioactors.transports import MemoryNetwork, TransportConfig, WebSocketTransport

from ._common import GUARD, Result, best_of, latency, throughput, timed_run

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

__all__ = ["WORKLOADS"]

P = TypeVar("P")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

CAPACITY: Final = 1000
"""Channel capacity of the baselines (trioactors' default mailbox size)."""
LOCAL_JOBS: Final = 10_000
LOCAL_CONCURRENCY: Final = 2
CLUSTER_JOBS: Final = int(os.environ.get("TRIOACTORS_BENCH_JOBS", "10000"))
"""Jobs per cluster measurement (``TRIOACTORS_BENCH_JOBS=2000`` for a quicker run)."""
CLUSTER_NODES: Final = 3
NODE_WORKERS: Final = 2
"""``--workers`` of each node process: the concurrency of its worker pool."""
DIGEST_ROUNDS: Final = 300
"""SHA-256 rounds per DIGEST job: about 0.3 us each, so some 90 us of CPU per job."""
WARM_UP: Final = 100
"""ECHO jobs sent before the timed region (connections, caches)."""
SECRET: Final = "bench-secret"
STARTUP_TIMEOUT: Final = 30.0
"""Seconds the node processes may take to print their addresses; also the wait for the workers."""
STOP_TIMEOUT: Final = 10.0
"""Seconds the node processes get to exit once their stdin is closed; then they are killed."""
LEAVE_TIMEOUT: Final = 2.0


class BenchError(RuntimeError):
    """A benchmark computed a wrong answer: its timing would mean nothing."""


def _check_results(
    what: str, got: Sequence[tuple[object, object]], expected: Mapping[P, R]
) -> None:
    """``got`` holds one (payload, result) pair per payload of ``expected``, each right."""
    found = dict(got)
    if len(got) != len(expected) or len(found) != len(expected):
        raise BenchError(f"{what}: {len(got)} results for {len(expected)} jobs")
    for payload, want in expected.items():
        if payload not in found or found[payload] != want:
            result = found.get(payload, "nothing")
            raise BenchError(f"{what}: job {payload!r} returned {result!r}, expected {want!r}")


# -- both workloads ---------------------------------------------------------------------------


async def _run_jobs(queue: ta.JobQueue, jobs: Iterable[ta.Job[R]]) -> list[ta.JobResult[R]]:
    """Every job through ``submit_many``; the results, in the order they came."""
    async with queue.submit_many(jobs) as stream:
        return [result async for result in stream]


def _pairs(what: str, results: Sequence[ta.JobResult[R]]) -> list[tuple[object, R]]:
    """The (payload, value) of every result; raises on the first failed job."""
    pairs: list[tuple[object, R]] = []
    for result in results:
        if result.error is not None:
            raise BenchError(f"{what}: job {result.job.payload!r} failed: {result.error!r}")
        pairs.append((result.job.payload, result.value))  # type: ignore[arg-type]
    return pairs


async def _raw_tasks(
    handler: Callable[[P], R], payloads: Iterable[P], tasks: int
) -> list[tuple[P, R]]:
    """Plain Trio: ``tasks`` tasks run ``handler`` on payloads from one memory channel
    and send (payload, result) on another; a producer task deals the payloads."""
    jobs_send, jobs_receive = trio.open_memory_channel[P](CAPACITY)
    results_send, results_receive = trio.open_memory_channel[tuple[P, R]](CAPACITY)

    async def worker(results: trio.MemorySendChannel[tuple[P, R]]) -> None:
        async with results:
            async for payload in jobs_receive:
                await results.send((payload, handler(payload)))

    async def deal() -> None:
        async with jobs_send:
            for payload in payloads:
                await jobs_send.send(payload)

    pairs: list[tuple[P, R]] = []
    async with trio.open_nursery() as nursery:
        async with results_send:
            for _ in range(tasks):
                nursery.start_soon(worker, results_send.clone())
        nursery.start_soon(deal)
        async for pair in results_receive:  # (ends when every worker has closed its clone)
            pairs.append(pair)
    return pairs


def _warm_up() -> Iterator[ta.Job[object]]:
    return (ECHO.job(-i) for i in range(1, WARM_UP + 1))


# -- jobs-local -------------------------------------------------------------------------------


async def _local_ours(count: int) -> float:
    network = MemoryNetwork()
    async with (
        network.running(),
        ta.open_node("bench", transport=network.transport("bench")) as node,
    ):
        await ta.start_worker_pool(node, HANDLERS, concurrency=LOCAL_CONCURRENCY)
        queue = await ta.start_job_queue(node)
        await queue.wait_for_workers(1)
        _pairs("local warm-up", await _run_jobs(queue, _warm_up()))
        start = time.perf_counter()
        results = await _run_jobs(queue, (ECHO.job(i) for i in range(count)))
        elapsed = time.perf_counter() - start
    _check_results("local queue", _pairs("local queue", results), {i: i for i in range(count)})
    return elapsed


async def _local_raw(count: int) -> float:
    start = time.perf_counter()
    pairs = await _raw_tasks(echo, range(count), LOCAL_CONCURRENCY)
    elapsed = time.perf_counter() - start
    _check_results("local raw tasks", pairs, {i: i for i in range(count)})
    return elapsed


def jobs_local(rounds: int) -> list[Result]:
    n = LOCAL_JOBS
    best = best_of(
        rounds,
        {"ours": lambda: timed_run(_local_ours, n), "raw": lambda: timed_run(_local_raw, n)},
    )
    return [latency("jobs_local_echo", n, best["ours"], best["raw"])]


# -- jobs-cluster: the node processes ---------------------------------------------------------


@attrs.define
class _NodeProcess:
    """A ``trioactors node`` process; what it writes on stderr goes to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def address(self, deadline: float) -> str:
        """The address the node prints once serving; waits until ``deadline`` (monotonic)."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"node {self.name} printed no address in time")
        line = stdout.readline()  # (the node prints and flushes whole lines)
        if not line:
            status = self.process.wait()
            raise RuntimeError(f"node {self.name} exited (status {status}) before it was ready")
        ready = json.loads(line)
        if ready.get("name") != self.name:
            raise RuntimeError(f"node {self.name} said {line!r}")
        return str(ready["address"])

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the node wrote on stderr."""
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _start_node(name: str, join: Mapping[str, str], log: IO[bytes]) -> _NodeProcess:
    command = [sys.executable, "-m", "trioactors", "node", name]
    command += ["--workers", str(NODE_WORKERS), "--host", "127.0.0.1"]
    for seed, address in join.items():
        command += ["--join", f"{seed}={address}"]
    env = {**os.environ, "TRIOACTORS_SECRET": SECRET}
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
    )
    return _NodeProcess(name, process, log)


def _stop(nodes: list[_NodeProcess]) -> None:
    """Close every stdin (the nodes' signal to stop), wait a while, kill the rest."""
    for node in nodes:
        stdin = node.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):  # (a broken pipe: it is gone already)
                stdin.close()
    deadline = time.monotonic() + STOP_TIMEOUT
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


@contextlib.contextmanager
def _node_cluster(
    deadline: float,
    names: Sequence[str] | None = None,
    start: Callable[[str, Mapping[str, str], IO[bytes]], _NodeProcess] | None = None,
    processes: dict[str, _NodeProcess] | None = None,
) -> Iterator[dict[str, str]]:
    """Run the node processes, joined through the first; yield the seeds to join them.

    ``names`` (default ``node-1`` ... ``node-N``) are started with ``start``
    (default: worker nodes); ``processes``, if given, receives them by name.

    The processes are stopped when the block ends, however it ends. Their
    stderr is kept aside and shown only if the block fails.
    """
    ready_by = min(deadline, time.monotonic() + STARTUP_TIMEOUT)
    nodes: list[_NodeProcess] = []
    with contextlib.ExitStack() as files:
        try:
            names = names or [f"node-{i}" for i in range(1, CLUSTER_NODES + 1)]
            start = start or _start_node
            first = start(names[0], {}, files.enter_context(tempfile.TemporaryFile()))
            nodes.append(first)
            seeds = {first.name: first.address(ready_by)}
            for name in names[1:]:
                nodes.append(start(name, seeds, files.enter_context(tempfile.TemporaryFile())))
            for node in nodes[1:]:
                node.address(ready_by)
            if processes is not None:
                processes.update((node.name, node) for node in nodes)
            yield seeds
        except BaseException:
            _stop(nodes)
            for node in nodes:
                sys.stderr.write(f"-- {node.name}'s stderr, the end:\n{node.tail()}\n")
            raise
        finally:
            _stop(nodes)


# -- jobs-cluster: measurements ---------------------------------------------------------------

_names = itertools.count(1)


async def _cluster_ours(
    seeds: Mapping[str, str], jobs: Callable[[], Iterable[ta.Job[R]]], expected: Mapping[P, R]
) -> float:
    """``jobs()`` through a coordinator on a node of our own, joined to the cluster."""
    transport = WebSocketTransport(TransportConfig(secret=SECRET.encode()), host="127.0.0.1")
    # a fresh name per measurement: a node that left is not the same member coming back
    async with ta.open_node(f"bench-{next(_names)}", transport=transport) as node:
        membership = await ta.start_membership(node, seeds=seeds)
        queue = await ta.start_job_queue(node, membership=membership)
        with trio.fail_after(STARTUP_TIMEOUT):
            await queue.wait_for_workers(CLUSTER_NODES)
        # connects every worker's node to ours (the results come that way)
        _pairs("cluster warm-up", await _run_jobs(queue, _warm_up()))
        start = time.perf_counter()
        results = await _run_jobs(queue, jobs())
        elapsed = time.perf_counter() - start
        with trio.move_on_after(LEAVE_TIMEOUT):
            await membership.leave()
    _check_results("cluster queue", _pairs("cluster queue", results), expected)
    used = {result.worker for result in results}
    if len(used) != CLUSTER_NODES:
        raise BenchError(f"the jobs ran on {sorted(map(str, used))}, not on {CLUSTER_NODES} pools")
    return elapsed


async def _cluster_raw(
    handler: Callable[[P], R], payloads: Callable[[], Iterable[P]], expected: Mapping[P, R]
) -> float:
    start = time.perf_counter()
    pairs = await _raw_tasks(handler, payloads(), CLUSTER_NODES * NODE_WORKERS)
    elapsed = time.perf_counter() - start
    _check_results("cluster raw tasks", pairs, expected)
    return elapsed


def _timed_run_before(deadline: float, fn: Callable[[*Ts], Awaitable[float]], *args: *Ts) -> float:
    """``timed_run``, also failing (``trio.TooSlowError``) at ``deadline`` (monotonic)."""
    gc.collect()

    async def guarded() -> float:
        with trio.fail_after(max(0.0, min(GUARD, deadline - time.monotonic()))):
            return await fn(*args)

    return trio.run(guarded)


def jobs_cluster(rounds: int) -> list[Result]:
    n = CLUSTER_JOBS
    # the whole workload has a deadline, on top of GUARD per measurement
    deadline = time.monotonic() + GUARD * (1 + rounds)
    texts = [f"job-{i}" for i in range(n)]

    def payloads() -> Iterator[Digest]:
        return (Digest(text, DIGEST_ROUNDS) for text in texts)

    digests = {payload: digest(payload) for payload in payloads()}
    echoes = {i: i for i in range(n)}
    with _node_cluster(deadline) as seeds:
        best = best_of(
            rounds,
            {
                "digest": lambda: _timed_run_before(
                    deadline,
                    _cluster_ours,
                    seeds,
                    lambda: (DIGEST.job(payload) for payload in payloads()),
                    digests,
                ),
                "digest_raw": lambda: _timed_run_before(
                    deadline, _cluster_raw, digest, payloads, digests
                ),
                "echo": lambda: _timed_run_before(
                    deadline, _cluster_ours, seeds, lambda: (ECHO.job(i) for i in range(n)), echoes
                ),
                "echo_raw": lambda: _timed_run_before(
                    deadline, _cluster_raw, echo, lambda: range(n), echoes
                ),
            },
        )
    echo_us = best["echo"] / n * 1e6
    echo_raw_us = best["echo_raw"] / n * 1e6
    overhead = echo_us - echo_raw_us
    work = best["digest_raw"] / n * 1e6
    return [
        throughput("jobs_cluster_digest", n, best["digest"], best["digest_raw"], "jobs/s"),
        latency("jobs_cluster_echo", n, best["echo"], best["echo_raw"]),
        Result(
            "jobs_cluster_overhead",
            round(overhead, 2),
            "us",
            round(work, 2),
            round(work / max(overhead, 0.01), 3),
        ),
    ]


WORKLOADS: dict[str, Callable[[int], list[Result]]] = {
    "jobs-local": jobs_local,
    "jobs-cluster": jobs_cluster,
}
"""The job-queue workloads, in the order ``python -m bench`` runs them."""
