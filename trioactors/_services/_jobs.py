"""The distributed job queue's coordinator: submitting, placing and finishing jobs.

Theory of operation
-------------------

Worker pools (``_workers.py``) run jobs and tell each outcome, a ``JobDone``
with the pool's load, to the envelope's sender.

A **coordinator** (:func:`start_job_queue`, the :class:`JobQueue` object and
its ``$jobs:queue`` actor) keeps the jobs submitted on its node until they
end. It learns the pools by asking each one it finds (``DescribeWorker``)
every ``refresh_interval`` seconds and at once when membership changes; the
round trip of that ask is the latency sample of ``lowest-latency``. A job
waits until the balancing strategy finds a worker for it that handles its
kind, offers its tags and has a free slot (as the coordinator counts its own
jobs there, or the pool reported, whichever is more), then goes out as a
``RunJob`` told from the coordinator's actor, so that the ``JobDone`` comes
back to it.

A job ends exactly once: with the first result for its current attempt, or
with an error: its deadline passed (``JobTimeout``, from one cancel scope
that tracks the earliest deadline), no known worker could ever take it
(``UnknownJobKind`` / ``NoMatchingWorker``, after asking the pools once
more, in case one learned the kind since), or the worker's node
was declared dead or left (``WorkerLost``). A result for a job that has
already ended (late, or duplicated) is recognised by the job's id and the
number of the sending it answers (its *ticket*: a job sent again, or
submitted again, gets a new one), ignored and counted.

Delivery is at most once per attempt; this module makes one attempt. (The
retry queue builds at-least-once on top of it, with idempotent completion.)
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, cast, final

import attrs
import trio

from .._core._balance import BalanceStrategy, ConsistentHash, LeastLoaded, strategy_by_name
from .._core._jobs import Job, JobKind, JobResult, WorkerTable
from .._core._membership import MemberChanged
from .._errors import (
    ActorNotFound,
    AskTimeout,
    InvalidJobPayload,
    JobError,
    JobTimeout,
    NodeUnreachable,
    NoMatchingWorker,
    NotSerializable,
    TrioactorsError,
    UnknownJobKind,
    WorkerLost,
)
from .._runtime._actor import Actor, ActorRef
from .._wire._codec import _converter
from ._workers import (
    _BUSY,
    POOL,
    DescribeWorker,
    JobDone,
    RunJob,
    WorkerInfo,
    _error,
    _structure,
    _type_name,
    register_job_messages,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator

    from .._runtime._node import Node
    from ._membership import Membership

__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "JobQueue",
    "JobQueueStatistics",
    "ResultStream",
    "start_job_queue",
]

logger = logging.getLogger("trioactors.jobs")

QUEUE = "$jobs:queue"
"""The default name of a node's coordinator actor."""
DEFAULT_JOB_TIMEOUT = 60.0
"""Seconds a job may take from submission to result unless it says otherwise."""
DEFAULT_REFRESH_INTERVAL = 1.0
"""Seconds between a coordinator's rounds of asking the pools how they are."""
DEFAULT_WINDOW = 1024
"""Jobs of one ``submit_many`` stream held by the coordinator at once."""

R = TypeVar("R")
P = TypeVar("P")


# -- the coordinator -----------------------------------------------------------------------


@final
@attrs.frozen
class JobQueueStatistics:
    """Counters of a :class:`JobQueue` (``queue.statistics()``).

    .. versionadded:: 0.1
    """

    submitted: int
    succeeded: int
    failed: int
    """Jobs that ended with an error, timeouts included."""
    timed_out: int
    lost: int
    """Jobs that ended with ``WorkerLost``."""
    late_results: int
    """Results for jobs that had already ended (late or duplicated): ignored."""
    rejected_busy: int
    """Times a pool refused a job as busy (the job was placed again)."""
    waiting: int
    """Jobs not yet placed on a worker."""
    in_flight: int
    """Jobs sent to a worker, result not yet in."""
    workers: int
    """Worker pools known."""


@final
class _Pending:
    __slots__ = ("deadline", "done", "job", "need", "sent_at", "submitted", "ticket", "worker")

    def __init__(
        self, job: Job[object], deadline: float, done: Callable[[JobResult[object]], None]
    ) -> None:
        self.job = job
        self.deadline = deadline
        self.done = done
        self.submitted = trio.current_time()
        self.worker: str | None = None
        self.sent_at = 0.0
        self.ticket = 0  # the number of its latest sending (see RunJob.ticket)
        self.need = 0  # no known worker can take it: fail after discovery round `need`


@final
class JobQueue:
    """Submits jobs to worker pools anywhere in the cluster; from :func:`start_job_queue`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        membership: Membership | None,
        *,
        strategy: BalanceStrategy,
        pool_name: str,
        workers: Iterable[str],
        default_timeout: float,
        refresh_interval: float,
        name: str,
    ) -> None:
        self.node = node
        self.membership = membership
        self.strategy = strategy
        self.pool_name = pool_name
        self.static_workers = list(workers)
        self.default_timeout = default_timeout
        self.refresh_interval = refresh_interval
        self.address = f"{name}@{node.name}"
        self.table = WorkerTable()
        self._pending: dict[str, _Pending] = {}
        self._waiting: deque[_Pending] = deque()
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0
        self._tickets = 0
        self._timer: trio.CancelScope | None = None
        self._wake_dispatch = trio.Event()
        self._rediscover = trio.Event()
        self._changed = trio.Event()  # set when the table of workers changes
        self._ready = trio.Event()  # set after the first round of discovery
        self._unknown: list[_Pending] = []  # jobs no known worker can take (yet)
        self._rounds_started = 0
        self._rounds_done = 0
        self._round_done = trio.Event()
        self._counts = dict.fromkeys(
            (
                "submitted",
                "succeeded",
                "failed",
                "timed_out",
                "lost",
                "late_results",
                "rejected_busy",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"<JobQueue {self.address} workers={len(self.table)} pending={len(self._pending)}>"

    # -- public ------------------------------------------------------------------------

    async def submit(self, job: Job[R]) -> R:
        """Run ``job`` on some worker and return its result.

        Raises:
          JobTimeout: no result within the job's timeout (default
            ``default_timeout``), counted from this call.
          UnknownJobKind, NoMatchingWorker: no known worker could take it.
          InvalidJobPayload: the payload did not fit the handler's type, or
            the result did not fit the job's ``result_type``.
          JobFailed: the handler raised.
          WorkerLost: the worker's node died or left with the job.
        """
        return (await self.submit_result(job)).unwrap()

    async def submit_result(self, job: Job[R]) -> JobResult[R]:
        """Like :meth:`submit`, but return the :class:`~trioactors.JobResult`
        (a value or an error) instead of raising the job's error."""
        outcome: list[JobResult[object]] = []
        event = trio.Event()

        def done(result: JobResult[object]) -> None:
            outcome.append(result)
            event.set()

        job = self._enqueue(job, done)
        try:
            await event.wait()
        except BaseException:
            self._abandon(job.id)
            raise
        return cast("JobResult[R]", outcome[0])

    def submit_many(
        self, jobs: Iterable[Job[R]], *, window: int = DEFAULT_WINDOW
    ) -> ResultStream[R]:
        """Scatter ``jobs`` across the workers; gather the results as they arrive.

        Use it as ``async with queue.submit_many(jobs) as results: async for
        result in results: ...``. Results come in the order they arrive, each
        a :class:`~trioactors.JobResult` (a failed job is a result with an
        ``error``; it does not stop the others). At most ``window`` jobs are
        handed to the coordinator at once, the next one as each result is
        taken, so an iterable of any length (a generator) is read lazily and
        a slow consumer holds back the work. Leaving the ``async with``
        early abandons the jobs still out (their late results are counted).
        """
        return ResultStream(self, iter(jobs), window)

    def map(
        self,
        kind: JobKind[P, R],
        payloads: Iterable[P],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
    ) -> ResultStream[R]:
        """:meth:`submit_many` of one job of ``kind`` per payload."""
        return self.submit_many((kind.job(p, timeout=timeout) for p in payloads), window=window)

    async def wait_for_workers(self, count: int = 1, *, kind: str | None = None) -> None:
        """Wait until the queue knows ``count`` worker pools (handling ``kind``, if given).

        Use a cancel scope (``trio.fail_after``) to bound the wait.
        """
        while True:
            workers = self.table.workers()
            if kind is not None:
                workers = [w for w in workers if kind in w.kinds]
            if len(workers) >= count:
                return
            self._rediscover.set()
            await self._changed.wait()

    async def refresh(self) -> None:
        """Ask every pool how it is now, and return when the answers are in.

        The queue does it every ``refresh_interval`` seconds and whenever
        membership changes; call it to act on a change at once (after
        registering a handler on some pool, say).
        """
        target = self._rounds_started + 1
        self._rediscover.set()
        while self._rounds_done < target:
            await self._round_done.wait()

    def workers(self) -> list[str]:
        """The addresses of the worker pools the queue knows, sorted."""
        return sorted(w.worker for w in self.table.workers())

    def statistics(self) -> JobQueueStatistics:
        in_flight = sum(1 for p in self._pending.values() if p.worker is not None)
        return JobQueueStatistics(
            **self._counts,
            waiting=len(self._pending) - in_flight,
            in_flight=in_flight,
            workers=len(self.table),
        )

    # -- submitting --------------------------------------------------------------------

    def _enqueue(self, job: Job[R], done: Callable[[JobResult[object]], None]) -> Job[R]:
        if job.id in self._pending:
            raise ValueError(f"job {job.id} is already submitted and not finished")
        job = attrs.evolve(job, submitter=self.address)
        timeout = self.default_timeout if job.timeout is None else job.timeout
        deadline = trio.current_time() + timeout
        pending = _Pending(job, deadline, done)
        self._pending[job.id] = pending
        self._counts["submitted"] += 1
        self._seq += 1
        heapq.heappush(self._deadlines, (deadline, self._seq, job.id))
        if self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline
        if len(self._deadlines) > 64 and len(self._deadlines) > 2 * len(self._pending):
            self._deadlines = [(d, s, i) for d, s, i in self._deadlines if i in self._pending]
            heapq.heapify(self._deadlines)
        if self.table.placeable(job) == "yes":
            self._waiting.append(pending)
            self._wake_dispatch.set()
        else:
            self._park(pending)
        return job

    def _abandon(self, job_id: str) -> None:
        """The submitter stopped waiting: forget the job (a late result is counted)."""
        pending = self._pending.pop(job_id, None)
        if pending is not None and pending.worker is not None:
            self.table.finished(pending.worker)
            self._wake_dispatch.set()

    def _finish(
        self,
        pending: _Pending,
        value: object,
        error: JobError | None,
        *,
        worker: str | None = None,
    ) -> None:
        if self._pending.pop(pending.job.id, None) is None:
            return
        if pending.worker is not None:
            self.table.finished(pending.worker)
            self._wake_dispatch.set()
        if error is None:
            self._counts["succeeded"] += 1
        else:
            self._counts["failed"] += 1
            if isinstance(error, JobTimeout):
                self._counts["timed_out"] += 1
            elif isinstance(error, WorkerLost):
                self._counts["lost"] += 1
        pending.done(
            JobResult(
                pending.job,
                value,
                error,
                worker or pending.worker,
                pending.job.attempt,
                trio.current_time() - pending.submitted,
            )
        )

    # -- the coordinator's tasks ---------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Place waiting jobs on workers, whenever a job, a slot or a worker appears."""
        while True:
            await self._wake_dispatch.wait()
            self._wake_dispatch = trio.Event()
            await self._dispatch()

    async def _dispatch(self) -> None:
        skipped: list[_Pending] = []
        for _ in range(len(self._waiting)):
            if not self._waiting or not self.table.has_room():
                break
            pending = self._waiting.popleft()
            job = pending.job
            if self._pending.get(job.id) is not pending:
                continue  # abandoned, or timed out while waiting
            if self.table.placeable(job) != "yes":  # its workers went away
                self._park(pending)
                continue
            try:
                chosen = self.strategy.choose(job, self.table.candidates(job.kind))
            except Exception as exc:  # a strategy's bug or refusal fails the job, not the queue
                logger.warning(
                    "%s: %r could not place job %s",
                    self.address,
                    self.strategy,
                    job.id,
                    exc_info=True,
                )
                self._finish(
                    pending,
                    None,
                    NoMatchingWorker(
                        f"the balancing strategy {self.strategy!r} could not place "
                        f"{job.kind!r} job {job.id}: {exc}"
                    ),
                )
                continue
            if chosen is None:
                skipped.append(pending)
                continue
            await self._send(pending, chosen.worker)
        self._waiting.extendleft(reversed(skipped))

    def _park(self, pending: _Pending) -> None:
        """No known worker can take the job: ask the pools again before giving up.

        A pool may have registered the kind, or joined, since the last round;
        the verdict waits for a round that starts after this moment.
        """
        pending.need = self._rounds_started + 1
        self._unknown.append(pending)
        self._rediscover.set()

    def _recheck(self) -> None:
        """After a round of discovery: place or fail the parked jobs; park the
        waiting jobs that no worker can take any more (workers went away)."""
        parked, self._unknown = self._unknown, []
        back: list[_Pending] = []
        for pending in parked:
            if self._pending.get(pending.job.id) is not pending:
                continue
            why = self.table.placeable(pending.job)
            if why == "yes":
                back.append(pending)
            elif self._rounds_done >= pending.need:
                self._unplaceable(pending, why)
            else:
                self._unknown.append(pending)
        self._waiting.extendleft(reversed(back))
        if back:
            self._wake_dispatch.set()

    def _recheck_waiting(self) -> None:
        """Workers went away: park the waiting jobs that none of the rest can take."""
        keep: deque[_Pending] = deque()
        for pending in self._waiting:
            if self._pending.get(pending.job.id) is not pending:
                continue
            if self.table.placeable(pending.job) == "yes":
                keep.append(pending)
            else:
                self._park(pending)
        self._waiting = keep

    def _unplaceable(self, pending: _Pending, why: str) -> None:
        job = pending.job
        known = self.workers()
        if why == "kind":
            handled = sorted({k for w in self.table.workers() for k in w.kinds})
            error: JobError = UnknownJobKind(
                f"no worker handles {job.kind!r} jobs; the {len(known)} known pools "
                f"handle: {', '.join(handled) or 'nothing'}"
            )
        else:
            error = NoMatchingWorker(
                f"no worker that handles {job.kind!r} jobs offers every tag of {sorted(job.tags)}"
            )
        self._finish(pending, None, error)

    async def _send(self, pending: _Pending, worker: str) -> None:
        job = pending.job
        now = trio.current_time()
        self._tickets += 1
        pending.ticket = self._tickets
        message = RunJob(
            job.id,
            job.kind,
            _converter(self.node.codec.format).unstructure(job.payload),
            job.attempt,
            pending.ticket,
            max(0.0, pending.deadline - now),
            self.address,
            job.key,
        )
        pending.worker = worker
        pending.sent_at = now
        self.table.sent(worker)
        try:
            await self.node.ref(worker).tell(message)
        except (NodeUnreachable, ActorNotFound) as exc:
            # Never delivered: forget the worker, place the job again.
            logger.info(
                "%s: worker %s unreachable (%s); placing job again", self.address, worker, exc
            )
            self.table.remove(worker)
            self._changed.set()
            self._changed = trio.Event()
            if self._pending.get(job.id) is pending:
                pending.worker = None
                self._waiting.appendleft(pending)
                self._wake_dispatch.set()
        except NotSerializable as exc:
            self.table.finished(worker)
            pending.worker = None
            self._finish(
                pending,
                None,
                InvalidJobPayload(
                    f"the payload of {job.kind!r} job {job.id} cannot be sent: {exc}"
                ),
            )

    def _on_done(self, done: JobDone, sender: ActorRef[object] | None) -> None:
        worker = None if sender is None else sender.address
        if worker is not None:
            self.table.report(worker, done.outstanding)
            self._wake_dispatch.set()
        pending = self._pending.get(done.id)
        if (
            pending is None
            or pending.worker is None
            or pending.worker != worker
            or pending.ticket != done.ticket
        ):
            self._counts["late_results"] += 1
            return
        if done.error == _BUSY:
            self._counts["rejected_busy"] += 1
            self.table.finished(pending.worker)
            if worker is not None:
                self.table.busy(worker)
            pending.worker = None
            self._waiting.appendleft(pending)
            return
        if done.error:
            self._finish(pending, None, _error(done.error, done.error_type, done.text))
            return
        job = pending.job
        try:
            value = _structure(self.node.codec.format, done.value, job.result_type)
        except InvalidJobPayload as exc:
            self._finish(
                pending,
                None,
                InvalidJobPayload(
                    f"the result of {job.kind!r} job {job.id} from {worker} does not fit "
                    f"{_type_name(job.result_type)}: {exc}"
                ),
            )
            return
        self._finish(pending, value, None)

    def _on_member(self, change: MemberChanged) -> None:
        if change.after.reachable:
            if change.before is None or not change.before.reachable:
                self._rediscover.set()
            return
        if self.table.remove_node(change.node):
            self._changed.set()
            self._changed = trio.Event()
        # Every job out on that node is lost, whether or not its pool is still
        # in the table (a drained pool leaves the table but finishes its jobs).
        suffix = f"@{change.node}"
        for pending in list(self._pending.values()):
            if pending.worker is not None and pending.worker.endswith(suffix):
                self._finish(
                    pending,
                    None,
                    WorkerLost(
                        f"{pending.job.kind!r} job {pending.job.id} was on {pending.worker}, "
                        f"whose node is {change.after.state.name.lower()}"
                    ),
                )
        self._recheck_waiting()

    async def _deadline_loop(self) -> None:
        """Fail the jobs whose deadline passed: one cancel scope at the earliest deadline."""
        while True:
            with trio.CancelScope() as self._timer:
                self._timer.deadline = self._deadlines[0][0] if self._deadlines else math.inf
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, job_id = heapq.heappop(self._deadlines)
                pending = self._pending.get(job_id)
                if pending is not None and pending.deadline <= now:
                    where = (
                        f"on {pending.worker}" if pending.worker else "waiting for a free worker"
                    )
                    self._finish(
                        pending,
                        None,
                        JobTimeout(
                            f"{pending.job.kind!r} job {job_id} had no result within "
                            f"{pending.deadline - pending.submitted:g} s ({where})"
                        ),
                    )

    async def _discover_loop(self) -> None:
        while True:
            self._rounds_started += 1
            if await self._discover():
                self._recheck_waiting()
            self._rounds_done += 1
            self._round_done.set()
            self._round_done = trio.Event()
            self._recheck()
            self._ready.set()
            self._wake_dispatch.set()
            with trio.move_on_after(self.refresh_interval):
                await self._rediscover.wait()
            self._rediscover = trio.Event()

    def _addresses(self) -> set[str]:
        found = set(self.static_workers)
        if self.membership is not None:
            found.update(ref.address for ref in self.membership.lookup(self.pool_name))
        elif self.pool_name in self.node.system.names():
            found.add(f"{self.pool_name}@{self.node.name}")
        return found

    async def _discover(self) -> bool:
        """Ask every pool how it is; return whether any pool went away."""
        addresses = self._addresses()
        changed = removed = False
        for worker in [w.worker for w in self.table.workers()]:
            if worker not in addresses:  # no longer announced (e.g. draining): no new jobs
                self.table.remove(worker)
                changed = removed = True

        async def ask(address: str) -> None:
            nonlocal changed, removed
            start = trio.current_time()
            try:
                info = await self.node.ref(address).ask(
                    DescribeWorker(), timeout=max(self.refresh_interval, 0.5)
                )
            except AskTimeout:
                return  # slow, not gone: keep what we knew
            except (TrioactorsError, ValueError) as exc:
                if self.table.remove(address):
                    changed = removed = True
                logger.debug("%s: no worker pool at %s: %s", self.address, address, exc)
                return
            if not isinstance(cast("object", info), WorkerInfo):
                return  # (a peer answered with some other registered type)
            changed |= self.table.describe(
                worker=address,
                node=info.node,
                kinds=info.kinds,
                tags=info.tags,
                concurrency=info.concurrency,
                slots=info.slots,
                outstanding=info.running + info.queued,
                rtt=trio.current_time() - start,
            )

        async with trio.open_nursery() as nursery:
            for address in sorted(addresses):
                nursery.start_soon(ask, address)
        if changed:
            self._changed.set()
            self._changed = trio.Event()
        return removed


class _QueueActor(Actor[JobDone | MemberChanged]):
    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    async def on_start(self) -> None:
        q = self.queue
        self.context.start_soon(q._deadline_loop)
        self.context.start_soon(q._dispatch_loop)
        self.context.start_soon(q._discover_loop)

    async def receive(self, message: JobDone | MemberChanged) -> object:
        if type(message) not in (JobDone, MemberChanged):
            return await super().receive(message)
        match message:
            case JobDone():
                self.queue._on_done(message, self.context.sender)
                return None
            case MemberChanged():
                self.queue._on_member(message)
        return None


async def start_job_queue(
    node: Node,
    *,
    membership: Membership | None = None,
    strategy: BalanceStrategy | str = "least-loaded",
    workers: Iterable[str] = (),
    pool_name: str = POOL,
    default_timeout: float = DEFAULT_JOB_TIMEOUT,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    seed: int | None = None,
    name: str = QUEUE,
) -> JobQueue:
    """Start a coordinator on ``node`` and return its :class:`JobQueue`.

    Returns once the first round of asking the pools is done, so that the
    queue knows the workers reachable now.

    Args:
      membership: where to find worker pools (every member's ``pool_name``
        actor) and to learn that a worker's node died; without it, only
        ``workers`` and a pool on this node.
      strategy: a :class:`~trioactors.BalanceStrategy` or the name of one
        (``"random"``, ``"round-robin"``, ``"least-loaded"`` (default),
        ``"lowest-latency"``, ``"consistent-hash"``).
      workers: addresses of worker pools to use besides those found.
      default_timeout: seconds a job may take unless it says otherwise (60).
      refresh_interval: seconds between asking every pool how it is (1).
      seed: seeds the strategy's random choices (for tests).
      name: the coordinator actor's name (``$jobs:queue``).

    .. versionadded:: 0.1
    """
    if not (default_timeout > 0 and refresh_interval > 0):
        raise ValueError("default_timeout and refresh_interval must be > 0")
    register_job_messages(node.codec.registry)
    rng = random.Random(seed)
    if isinstance(strategy, str):
        strategy = strategy_by_name(strategy, rng)
        if isinstance(strategy, ConsistentHash):
            strategy.fallback = LeastLoaded(rng)  # keyless jobs: least loaded
    queue = JobQueue(
        node,
        membership,
        strategy=strategy,
        pool_name=pool_name,
        workers=workers,
        default_timeout=default_timeout,
        refresh_interval=refresh_interval,
        name=name,
    )
    ref = await node.root.start_actor(_QueueActor, queue, name=name, mailbox_size=10_000)
    if membership is not None:
        membership.subscribe(ref)
    await queue._ready.wait()
    return queue


# -- streams of results ---------------------------------------------------------------------


@final
class ResultStream(Generic[R]):
    """Results of :meth:`JobQueue.submit_many`, as they arrive.

    ``async with`` it, then ``async for`` over it; see
    :meth:`JobQueue.submit_many`.

    .. versionadded:: 0.1
    """

    def __init__(self, queue: JobQueue, jobs: Iterator[Job[R]], window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        self._queue = queue
        self._jobs: Iterator[Job[R]] | None = jobs
        self._window = window
        self._out: set[str] = set()
        self._results: deque[JobResult[object]] = deque()
        self._arrived = trio.Event()
        self._closed = False

    async def __aenter__(self) -> ResultStream[R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Abandon the jobs still out (their late results are counted and dropped)."""
        self._closed = True
        self._jobs = None
        for job_id in list(self._out):
            self._queue._abandon(job_id)
        self._out.clear()
        await trio.lowlevel.checkpoint()

    def __aiter__(self) -> AsyncIterator[JobResult[R]]:
        return self

    def _fill(self) -> None:
        while self._jobs is not None and len(self._out) + len(self._results) < self._window:
            job = next(self._jobs, None)
            if job is None:
                self._jobs = None
                return
            job = self._queue._enqueue(job, self._done)
            self._out.add(job.id)

    def _done(self, result: JobResult[object]) -> None:
        if result.job.id in self._out:
            self._out.discard(result.job.id)
            self._results.append(result)
            self._arrived.set()

    async def __anext__(self) -> JobResult[R]:
        if self._closed:
            raise StopAsyncIteration
        self._fill()
        while not self._results:
            if not self._out:
                raise StopAsyncIteration
            await self._arrived.wait()
            self._arrived = trio.Event()
        result = cast("JobResult[R]", self._results.popleft())
        self._fill()
        await trio.lowlevel.checkpoint()
        return result
