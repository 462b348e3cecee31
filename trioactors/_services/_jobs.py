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
kind, offers its tags and has a free slot (counted in the coordinator's own
jobs there; a pool that refused one as busy counts as full until it reports
again), then goes out as a
``RunJob`` told from the coordinator's actor, so that the ``JobDone`` comes
back to it.

Retries. Each job has a :class:`~trioactors.RetryPolicy` (its own, its
kind's, or the queue's; by default 3 attempts). When an attempt fails in a
way another might not (the worker's node was declared dead or left, no
answer within the policy's attempt timeout, or, if the policy says so, the
handler raised), the job waits a random delay (exponential backoff with
full jitter) and is placed again, on another node if one can take it. A job
that could not be delivered (the pool was unreachable or refused it as busy)
certainly did not run: it is placed again at once, and that is not an
attempt. After its last attempt a job ends with ``JobExhausted``.

Circuit breakers. The queue keeps one per node: a node whose attempts fail
``failure_threshold`` times in a row gets no jobs for ``reset_timeout``
seconds, then one trial job; its success closes the circuit. A node that is
declared dead is forgotten, breaker and all.

A job ends exactly once: with the first result of any of its sendings, or
with an error: its deadline passed (``JobTimeout``; deadlines, attempt
timeouts and retry delays share one cancel scope set to the earliest), no
known worker could ever take it (``UnknownJobKind`` / ``NoMatchingWorker``,
after asking the pools once more, in case one learned the kind since), its
attempts ran out (``JobExhausted``), or it failed in a way no retry can help
(``InvalidJobPayload``, ``JobFailed``, or ``WorkerLost`` under ``NO_RETRY``).
A result is matched to the job by the job's id and the number of the sending
it answers (its *ticket*); a result for a job that has already ended, or for
a sending already answered or written off, is ignored and counted.

Delivery is at least once for a job with retries (an attempt written off may
still have run: its late result is ignored, so the job *ends* once), and at
most once under ``NO_RETRY``. Failed jobs are reported to the failure
supervisor, if the queue has one, with the circuits that open and close.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, TypeGuard, TypeVar, cast, final

import attrs
import trio

from .._core._balance import (
    BalanceStrategy,
    Candidate,
    ConsistentHash,
    LeastLoaded,
    strategy_by_name,
)
from .._core._breaker import BreakerChanged, BreakerConfig, Breakers, BreakerState
from .._core._jobs import Job, JobKind, JobResult
from .._core._membership import MemberChanged
from .._core._retry import RETRYABLE, RetryPolicy
from .._errors import (
    ActorNotFound,
    InvalidJobPayload,
    JobError,
    JobExhausted,
    JobFailed,
    JobTimeout,
    NodeUnreachable,
    NoMatchingWorker,
    NotSerializable,
    StoreError,
    UnknownJobKind,
    WorkerLost,
)
from .._runtime._actor import Actor, ActorRef
from .._wire._codec import _converter
from ._discovery import Discovery
from ._failures import CircuitClosed, CircuitOpened, JobGaveUp
from ._results import ResultStream
from ._store import JobStore, StoredJob, StoredOutcome, open_job_store
from ._workers import (
    _BUSY,
    POOL,
    JobDone,
    RunJob,
    _error,
    _structure,
    _type_name,
    register_job_messages,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._runtime._node import Node
    from ._failures import FailureSupervisor
    from ._membership import Membership

__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "JobQueue",
    "JobQueueStatistics",
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
    """Jobs that ended with ``WorkerLost`` (their policy allowed no other attempt)."""
    exhausted: int
    """Jobs that ended with ``JobExhausted``: every attempt failed."""
    retried: int
    """Attempts scheduled after a failed one (each retry counts once)."""
    late_results: int
    """Results for jobs that had already ended, or for a sending already
    answered or given up on (late or duplicated): ignored."""
    rejected_busy: int
    """Times a pool refused a job as busy (the job was placed again)."""
    store_errors: int
    """Writes to the job store that failed (logged; the jobs went on unwritten)."""
    waiting: int
    """Jobs not yet placed on a worker."""
    in_flight: int
    """Jobs sent to a worker, result not yet in."""
    workers: int
    """Worker pools known."""


@final
class _Pending:
    """A job from submission to its end (see the module docstring)."""

    __slots__ = (
        "attempt",
        "avoid",
        "deadline",
        "done",
        "job",
        "last_error",
        "last_worker",
        "need",
        "policy",
        "retry_at",
        "saved",
        "sendings",
        "submitted",
    )

    def __init__(
        self,
        job: Job[object],
        deadline: float,
        policy: RetryPolicy,
        done: Callable[[JobResult[object]], None],
    ) -> None:
        self.job = job
        self.deadline = deadline
        self.policy = policy
        self.done = done
        self.submitted = trio.current_time()
        self.attempt = 0  # attempts started
        self.sendings: dict[int, str] = {}  # ticket -> worker, for every sending not yet answered
        self.avoid: set[str] = set()  # nodes where an attempt failed: others are preferred
        self.last_error: JobError | None = None
        self.last_worker: str | None = None  # where the last failed attempt was
        self.retry_at = math.inf  # waiting out a backoff until then
        self.saved = False  # written to the store (so its end must be written too)
        self.need = 0  # no known worker can take it: fail after discovery round `need`

    @property
    def worker(self) -> str | None:
        """The worker of the latest sending still out, if any."""
        if not self.sendings:
            return None
        return self.sendings[max(self.sendings)]


# what a timer entry is for
_DEADLINE, _ATTEMPT, _RETRY, _WAKE = 0, 1, 2, 3


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
        retry: RetryPolicy,
        breaker: BreakerConfig,
        failures: FailureSupervisor | None,
        store: JobStore | None,
        rng: random.Random,
        name: str,
        owns_store: bool = False,
    ) -> None:
        self.node = node
        self.membership = membership
        self.strategy = strategy
        self.default_timeout = default_timeout
        self.retry = retry
        self.breakers = Breakers(breaker)
        self.failures = failures
        self.store = store
        self._owns_store = owns_store  # opened from a path: closed when the node stops
        self.address = f"{name}@{node.name}"
        self.discovery = Discovery(
            node,
            membership,
            pool_name=pool_name,
            workers=workers,
            refresh_interval=refresh_interval,
            owner=self.address,
        )
        self.table = self.discovery.table
        self.discovery.pool_gone = self._pool_gone
        self._rng = rng
        self._pending: dict[str, _Pending] = {}
        self._waiting: deque[_Pending] = deque()
        # (when, seq, job id, what, ticket): deadlines, attempt timeouts, retries
        self._timers: list[tuple[float, int, str, int, int]] = []
        self._seq = 0
        # Tickets start at a random number, so that a restarted coordinator
        # never takes an answer to its predecessor's sending for its own.
        self._tickets = secrets.randbits(48)
        self._to_save: dict[str, StoredJob] = {}  # written before the next sending
        self._abandoned: list[_Pending] = []
        self._recovered: list[JobResult[object]] = []
        self._recovering = 0
        self._recovered_all = trio.Event()
        self._timer: trio.CancelScope | None = None
        self._wake_dispatch = trio.Event()
        self._unknown: list[_Pending] = []  # jobs no known worker can take (yet)
        self._counts = dict.fromkeys(
            (
                "submitted",
                "succeeded",
                "failed",
                "timed_out",
                "lost",
                "exhausted",
                "retried",
                "late_results",
                "rejected_busy",
                "store_errors",
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

    async def wait_for_workers(
        self, count: int = 1, *, kind: str | JobKind[P, R] | None = None
    ) -> None:
        """Wait until the queue knows ``count`` worker pools (handling ``kind``, if given).

        ``kind`` is a kind's name or the :class:`~trioactors.JobKind` itself.
        Use a cancel scope (``trio.fail_after``) to bound the wait.
        """
        name = kind.name if isinstance(kind, JobKind) else kind
        await self.discovery.wait_for_workers(count, name)

    async def refresh(self) -> None:
        """Ask every pool how it is now, and return when the answers are in.

        The queue does it every ``refresh_interval`` seconds and whenever
        membership changes; call it to act on a change at once (after
        registering a handler on some pool, say).
        """
        await self.discovery.refresh()

    def workers(self) -> list[str]:
        """The addresses of the worker pools the queue knows, sorted."""
        return sorted(w.worker for w in self.table.workers())

    def recovered(self) -> list[JobResult[object]]:
        """The results of the jobs taken up from the store at start, so far.

        Their submitters are gone (a restarted process): this is where their
        results go, and to the store (``store.outcome(job_id)``).
        """
        return list(self._recovered)

    async def wait_recovered(self) -> list[JobResult[object]]:
        """Wait until every job taken up from the store has ended; return their results."""
        await self._recovered_all.wait()
        return self.recovered()

    def circuit_states(self) -> dict[str, str]:
        """Each node's circuit breaker: ``"closed"``, ``"open"`` or ``"half_open"``.

        Only nodes that failed or were sent jobs since the queue started are listed.
        """
        now = trio.current_time()
        return {node: state.value for node, state in sorted(self.breakers.states(now).items())}

    def statistics(self) -> JobQueueStatistics:
        """A snapshot of the queue's counters, and of its jobs waiting and in flight."""
        in_flight = sum(1 for p in self._pending.values() if p.sendings)
        return JobQueueStatistics(
            **self._counts,
            waiting=len(self._pending) - in_flight,
            in_flight=in_flight,
            workers=len(self.table),
        )

    # -- submitting --------------------------------------------------------------------

    def _enqueue(
        self, job: Job[R], done: Callable[[JobResult[object]], None], *, attempt: int = 0
    ) -> Job[R]:
        if job.id in self._pending:
            raise ValueError(f"job {job.id} is already submitted and not finished")
        job = attrs.evolve(job, submitter=self.address)
        timeout = self.default_timeout if job.timeout is None else job.timeout
        deadline = trio.current_time() + timeout
        pending = _Pending(job, deadline, job.retry or self.retry, done)
        pending.attempt = attempt  # (attempts a predecessor started, when recovered)
        self._pending[job.id] = pending
        self._counts["submitted"] += 1
        if self.store is not None:
            self._to_save[job.id] = self._stored(pending)
        self._at(deadline, job.id, _DEADLINE)
        if self.table.placeable(job) == "yes":
            self._waiting.append(pending)
            self._wake_dispatch.set()
        else:
            self._park(pending)
        return job

    def _at(self, when: float, job_id: str, what: int, ticket: int = 0) -> None:
        """Wake the timer task at ``when`` for ``what`` about the job."""
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, job_id, what, ticket))
        if self._timer is not None and when < self._timer.deadline:
            self._timer.deadline = when
        if len(self._timers) > 64 and len(self._timers) > 3 * len(self._pending):
            self._timers = [t for t in self._timers if t[2] in self._pending or t[3] == _WAKE]
            heapq.heapify(self._timers)

    def _abandon(self, job_id: str) -> None:
        """The submitter stopped waiting: forget the job (a late result is counted)."""
        pending = self._pending.pop(job_id, None)
        if pending is not None:
            self._release(pending, failed=False)
            # Written down by the dispatch task, not here: if the whole node is
            # stopping (a submitter cancelled by Ctrl-C, say), that task is gone
            # too, and the job stays pending in the store for a restart.
            self._abandoned.append(pending)
            self._wake_dispatch.set()

    def _release(self, pending: _Pending, *, failed: bool) -> None:
        """Forget every sending of the job still out (their results will be late)."""
        now = trio.current_time()
        for worker in pending.sendings.values():
            self.table.finished(worker)
            node = _node_of(worker)
            if failed:
                self._breaker_changes(self.breakers.on_failure(node, now))
            else:
                self.breakers.on_abandoned(node, now)
        if pending.sendings:
            pending.sendings.clear()
            self._wake_dispatch.set()

    # -- persistence ---------------------------------------------------------------------

    def _stored(self, pending: _Pending) -> StoredJob:
        job = pending.job
        left = pending.deadline - trio.current_time()
        return StoredJob(
            job.id,
            job.kind,
            _converter(self.node.codec.format).unstructure(job.payload),
            tuple(sorted(job.tags)),
            job.key,
            pending.attempt,
            time.time() + left,
            job.submitter or self.address,
            time.time() - (trio.current_time() - pending.submitted),
            None if job.retry is None else attrs.asdict(job.retry),
        )

    def _record(self, pending: _Pending, value: object, error: str, message: str) -> None:
        """Write down how the job ended, before anyone is told: a job whose end
        was told must not run again after a restart."""
        if self.store is None:
            return
        self._to_save.pop(pending.job.id, None)
        if not pending.saved:
            return  # never written: nothing to take back
        outcome = StoredOutcome(
            pending.job.id,
            not error,
            _converter(self.node.codec.format).unstructure(value) if not error else None,
            error,
            message,
            pending.attempt,
            time.time(),
        )
        try:
            self.store.finish([outcome])
        except StoreError as exc:
            self._store_failed(exc)

    def _flush(self) -> None:
        """Write what waits to be written, in one transaction each way."""
        store = self.store
        if store is None:
            return
        if self._to_save:
            jobs, self._to_save = list(self._to_save.values()), {}
            try:
                store.save(jobs)
            except StoreError as exc:
                self._store_failed(exc)
                return
            for job in jobs:
                if (pending := self._pending.get(job.id)) is not None:
                    pending.saved = True

    def _store_failed(self, exc: StoreError) -> None:
        # The jobs go on, unwritten: a restart would not find them. Loud, and
        # counted, rather than stopping all work because a disk filled up.
        self._counts["store_errors"] += 1
        logger.error("%s: cannot write to the job store: %s", self.address, exc)

    def _recover(self) -> None:
        """Take up the jobs a predecessor left pending in the store."""
        assert self.store is not None
        now = time.time()
        left_over = [job for job in self.store.pending() if job.id not in self._pending]
        self._recovering = len(left_over)  # (first: some may end at once)
        if not left_over:
            self._recovered_all.set()
        for stored in left_over:
            left = math.inf if stored.deadline is None else stored.deadline - now
            job: Job[object] = Job(
                stored.kind,
                stored.payload,
                tags=stored.tags,
                key=stored.key,
                id=stored.id,
                timeout=max(left, 1e-3) if left != math.inf else None,
                retry=_policy(stored),
            )
            job = self._enqueue(job, self._recovered_done, attempt=stored.attempt)
            pending = self._pending[job.id]
            pending.saved = True  # (it is in the store: its end must be written)
            pending.job = attrs.evolve(job, submitter=stored.submitter)
            if stored.attempt >= pending.policy.max_attempts:
                # Its last attempt was out when the coordinator stopped: it
                # may have run; no attempt is left to find out.
                lost = WorkerLost(
                    f"the coordinator stopped while attempt {stored.attempt} of "
                    f"{stored.kind!r} job {stored.id} was out"
                )
                self._attempt_failed(pending, lost, "WorkerLost", f"?@{self.node.name}")
            elif left <= 0:
                self._timed_out(pending)
        self._flush()

    def _recovered_done(self, result: JobResult[object]) -> None:
        self._recovered.append(result)
        if len(self._recovered) == self._recovering:
            self._recovered_all.set()

    def _finish(
        self,
        pending: _Pending,
        value: object,
        error: JobError | None,
        *,
        worker: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """End the job: exactly once, with its value or its error (``worker``
        and ``attempt``: those of the answer that ended it, if one did)."""
        if self._pending.pop(pending.job.id, None) is None:
            return
        worker = worker or pending.worker or pending.last_worker
        self._release(pending, failed=False)
        if error is None:
            self._counts["succeeded"] += 1
        else:
            self._counts["failed"] += 1
            if isinstance(error, JobTimeout):
                self._counts["timed_out"] += 1
            elif isinstance(error, WorkerLost):
                self._counts["lost"] += 1
            elif isinstance(error, JobExhausted):
                self._counts["exhausted"] += 1
            self._report_failure(pending, error, worker)
        self._record(pending, value, type(error).__name__ if error else "", str(error or ""))
        pending.done(
            JobResult(
                pending.job,
                value,
                error,
                worker,
                pending.attempt if attempt is None else attempt,
                trio.current_time() - pending.submitted,
            )
        )

    def _attempt_failed(self, pending: _Pending, error: JobError, why: str, worker: str) -> None:
        """An attempt on ``worker`` failed (``why``: the error's name, or
        ``AttemptTimeout``): retry the job after a backoff, preferring another
        node, or end it."""
        pending.last_error = error
        pending.last_worker = worker
        policy = pending.policy
        if policy.retries(pending.attempt, why):
            pending.avoid.add(_node_of(worker))
            now = trio.current_time()
            pending.retry_at = now + policy.delay(pending.attempt, self._rng)
            self._counts["retried"] += 1
            self._at(pending.retry_at, pending.job.id, _RETRY)
            return
        retryable = why in RETRYABLE or (policy.retry_failed and why == "JobFailed")
        if why == "AttemptTimeout" and policy.max_attempts == 1:
            return  # (no other attempt to make: the one out may still answer)
        if retryable and policy.max_attempts > 1:
            error = JobExhausted(
                f"{pending.job.kind!r} job {pending.job.id} failed on all {pending.attempt} "
                f"attempts; the last: {error}",
                pending.attempt,
                error,
            )
            error.__cause__ = pending.last_error
        self._finish(pending, None, error, worker=worker)

    def _report_failure(self, pending: _Pending, error: JobError, worker: str | None) -> None:
        if self.failures is None:
            return
        job = pending.job
        cause = error.last_error if isinstance(error, JobExhausted) else error
        self.failures.report(
            JobGaveUp(
                job.id,
                job.kind,
                pending.attempt,
                type(cause or error).__name__,
                str(error),
                worker,
                self.address,
                _converter(self.node.codec.format).unstructure(job.payload),
                time.time(),
            )
        )

    def _breaker_changes(self, changes: list[BreakerChanged]) -> None:
        for change in changes:
            if change.after is BreakerState.OPEN and change.before is not BreakerState.OPEN:
                self._at(change.at + self.breakers.config.reset_timeout, "", _WAKE)
                logger.warning(
                    "%s: circuit to %s opened after %d failures",
                    self.address,
                    change.key,
                    change.failures,
                )
                if self.failures is not None:
                    self.failures.report(
                        CircuitOpened(
                            change.key,
                            change.failures,
                            self.breakers.config.reset_timeout,
                            time.time(),
                        )
                    )
            elif change.after is BreakerState.CLOSED:
                logger.info("%s: circuit to %s closed", self.address, change.key)
                if self.failures is not None:
                    self.failures.report(CircuitClosed(change.key, time.time()))

    # -- the coordinator's tasks ---------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Place waiting jobs on workers, whenever a job, a slot or a worker appears."""
        while True:
            await self._wake_dispatch.wait()
            self._wake_dispatch = trio.Event()
            if self._abandoned:
                abandoned, self._abandoned = self._abandoned, []
                for pending in abandoned:
                    self._record(pending, None, "Abandoned", "the submitter stopped waiting")
            await self._dispatch()
            self._flush()

    async def _dispatch(self) -> None:
        skipped: list[_Pending] = []
        placed: list[tuple[_Pending, str, int, RunJob]] = []
        now = trio.current_time()
        for _ in range(len(self._waiting)):
            if not self._waiting or not self.table.has_room():
                break
            pending = self._waiting.popleft()
            job = pending.job
            if self._pending.get(job.id) is not pending:
                continue  # ended while waiting (abandoned, timed out)
            if self.table.placeable(job) != "yes":  # its workers went away
                self._park(pending)
                continue
            try:
                chosen = self.strategy.choose(job, self._candidates(pending, now))
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
            placed.append(self._place(pending, chosen.worker))
        self._waiting.extendleft(reversed(skipped))
        # Written down before they are sent (with the attempt they are on), in
        # one transaction per round; then sent.
        self._flush()
        # One task per worker, each sending in order: a connection that is
        # slow to open holds up only the jobs bound for it.
        by_worker: dict[str, list[tuple[_Pending, str, int, RunJob]]] = {}
        for placement in placed:
            by_worker.setdefault(placement[1], []).append(placement)
        if len(by_worker) == 1:
            await self._deliver_all(placed)
        elif by_worker:
            async with trio.open_nursery() as nursery:
                for placements in by_worker.values():
                    nursery.start_soon(self._deliver_all, placements)

    async def _deliver_all(self, placements: list[tuple[_Pending, str, int, RunJob]]) -> None:
        for pending, worker, ticket, message in placements:
            await self._deliver(pending, worker, ticket, message)

    def _candidates(self, pending: _Pending, now: float) -> list[Candidate]:
        """The workers for the job: those on nodes membership holds reachable
        (checked here too: the news of a death may still be in our mailbox)
        whose circuit lets a job through, and of those, if any could take it,
        the ones on nodes where the job has not failed."""
        view = None if self.membership is None else self.membership.view
        allowed = [
            c
            for c in self.table.candidates(pending.job.kind)
            if self.breakers.allow(c.node, now)
            and (view is None or (m := view.get(c.node)) is None or m.reachable)
        ]
        if pending.avoid:
            elsewhere = [c for c in allowed if c.node not in pending.avoid]
            if any(pending.job.tags <= c.tags for c in elsewhere):
                return elsewhere  # (full ones too: the job waits for them)
        return allowed

    def _park(self, pending: _Pending) -> None:
        """No known worker can take the job: ask the pools again before giving up.

        A pool may have registered the kind, or joined, since the last round;
        the verdict waits for a round that starts after this moment.
        """
        pending.need = self.discovery.rounds_started + 1
        self._unknown.append(pending)
        self.discovery.wake()

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
            elif self.discovery.rounds_done >= pending.need:
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
            reason = (
                f"no worker handles {job.kind!r} jobs; the {len(known)} known pools "
                f"handle: {', '.join(handled) or 'nothing'}"
            )
            error: JobError = UnknownJobKind(reason)
        else:
            reason = (
                f"no worker that handles {job.kind!r} jobs offers every tag of {sorted(job.tags)}"
            )
            error = NoMatchingWorker(reason)
        last = pending.last_error
        if last is not None:  # an attempt failed, and no other worker can take the job
            message = f"{last} (and it cannot be retried: {reason})"
            if isinstance(last, JobFailed):
                error = JobFailed(message, last.error_type)
            else:
                error = type(last)(message)
        self._finish(pending, None, error)

    def _place(self, pending: _Pending, worker: str) -> tuple[_Pending, str, int, RunJob]:
        """Start an attempt of the job on ``worker`` (the sending comes next)."""
        job = pending.job
        now = trio.current_time()
        self._tickets += 1
        ticket = self._tickets
        pending.attempt += 1
        message = RunJob(
            job.id,
            job.kind,
            _converter(self.node.codec.format).unstructure(job.payload),
            pending.attempt,
            ticket,
            max(0.0, pending.deadline - now),
            self.address,
            job.key,
        )
        pending.sendings[ticket] = worker
        self.table.sent(worker)
        self._breaker_changes(self.breakers.on_sent(_node_of(worker), now))
        if pending.policy.attempt_timeout is not None:
            self._at(now + pending.policy.attempt_timeout, job.id, _ATTEMPT, ticket)
        if self.store is not None:
            self._to_save[job.id] = self._stored(pending)
        return pending, worker, ticket, message

    async def _deliver(self, pending: _Pending, worker: str, ticket: int, message: RunJob) -> None:
        job = pending.job
        node = _node_of(worker)
        try:
            await self.node.ref(worker).tell(message)
        except (NodeUnreachable, ActorNotFound) as exc:
            # Never delivered, so never run: place it again (not an attempt),
            # elsewhere if it can be, and forget the worker until discovery
            # finds it again.
            logger.info(
                "%s: worker %s unreachable (%s); placing job %s again",
                self.address,
                worker,
                exc,
                job.id,
            )
            self.table.remove(worker)
            self.discovery.changed()
            pending.attempt -= 1
            if pending.sendings.pop(ticket, None) is not None:
                self._breaker_changes(self.breakers.on_failure(node, trio.current_time()))
            if self._pending.get(job.id) is pending:
                pending.avoid.add(node)
                self._waiting.appendleft(pending)
                self._wake_dispatch.set()
        except NotSerializable as exc:
            pending.sendings.pop(ticket, None)
            self.table.finished(worker)
            self.breakers.on_abandoned(node, trio.current_time())
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
        if pending is None or worker is None or pending.sendings.get(done.ticket) != worker:
            self._counts["late_results"] += 1
            return
        del pending.sendings[done.ticket]
        self.table.finished(worker)
        now = trio.current_time()
        node = _node_of(worker)
        if done.error == _BUSY:  # refused, never run: place it again (not an attempt)
            self._counts["rejected_busy"] += 1
            self.table.busy(worker)
            self.breakers.on_abandoned(node, now)
            pending.attempt -= 1
            if not pending.sendings and pending.retry_at == math.inf:
                self._waiting.appendleft(pending)
            return
        self._breaker_changes(self.breakers.on_success(node, now))  # (the node answered)
        job = pending.job
        if done.error:
            error = _error(done.error, done.error_type, done.text)
            if done.error == "JobFailed" and not pending.sendings:
                self._attempt_failed(pending, error, "JobFailed", worker)
            elif not pending.sendings:
                self._finish(pending, None, error, worker=worker)
            return
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
                worker=worker,
            )
            return
        self._finish(pending, value, None, worker=worker, attempt=done.attempt)  # first wins

    def _on_member(self, change: MemberChanged) -> None:
        if change.after.reachable:
            if change.before is None or not change.before.reachable:
                self.discovery.wake()
            return
        if self.table.remove_node(change.node):
            self.discovery.changed()
        # Every sending out on that node is lost, whether or not its pool is
        # still in the table (a drained pool leaves the table but finishes its jobs).
        state = change.after.state.name.lower()
        for pending in list(self._pending.values()):
            lost = [t for t, w in pending.sendings.items() if _node_of(w) == change.node]
            if not lost:
                continue
            worker = pending.sendings[lost[-1]]
            for ticket in lost:
                self.table.finished(pending.sendings.pop(ticket))
            if pending.sendings or pending.retry_at != math.inf:
                continue  # another attempt is out or coming
            error = WorkerLost(
                f"{pending.job.kind!r} job {pending.job.id} was on {worker}, whose node is {state}"
            )
            self._attempt_failed(pending, error, "WorkerLost", worker)
        self.breakers.forget(change.node)
        self._recheck_waiting()

    async def _timer_loop(self) -> None:
        """Deadlines, attempt timeouts and retries: one cancel scope at the earliest."""
        while True:
            with trio.CancelScope() as self._timer:
                self._timer.deadline = self._timers[0][0] if self._timers else math.inf
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, job_id, what, ticket = heapq.heappop(self._timers)
                if what == _WAKE:  # (a circuit lets a trial through now)
                    self._wake_dispatch.set()
                    continue
                pending = self._pending.get(job_id)
                if pending is None:
                    continue
                if what == _DEADLINE:
                    self._timed_out(pending)
                elif what == _RETRY and pending.retry_at <= now:
                    pending.retry_at = math.inf
                    self._waiting.appendleft(pending)
                    self._wake_dispatch.set()
                elif what == _ATTEMPT and ticket in pending.sendings:
                    worker = pending.sendings[ticket]
                    self._breaker_changes(self.breakers.on_failure(_node_of(worker), now))
                    if ticket == max(pending.sendings) and pending.retry_at == math.inf:
                        timeout = pending.policy.attempt_timeout
                        error = JobTimeout(
                            f"{pending.job.kind!r} job {job_id}: no answer from {worker} "
                            f"within the attempt timeout ({timeout:g} s)"
                        )
                        self._attempt_failed(pending, error, "AttemptTimeout", worker)

    def _timed_out(self, pending: _Pending) -> None:
        if pending.sendings:
            where = f"on {pending.worker}"
        elif pending.retry_at != math.inf:
            where = f"waiting to retry after {pending.last_error}"
        else:
            where = "waiting for a free worker"
        attempts = f" after {pending.attempt} attempts" if pending.attempt > 1 else ""
        self._finish(
            pending,
            None,
            JobTimeout(
                f"{pending.job.kind!r} job {pending.job.id} had no result within "
                f"{pending.deadline - pending.submitted:g} s{attempts} ({where})"
            ),
        )

    def _pool_gone(self, worker: str) -> None:
        """The pool at ``worker`` answered that it does not exist (its actor
        stopped on a live node): the jobs out on it will never be answered."""
        now = trio.current_time()
        for pending in list(self._pending.values()):
            lost = [t for t, w in pending.sendings.items() if w == worker]
            if not lost:
                continue
            for ticket in lost:
                self.table.finished(pending.sendings.pop(ticket))
            self._breaker_changes(self.breakers.on_failure(_node_of(worker), now))
            if pending.sendings or pending.retry_at != math.inf:
                continue
            error = WorkerLost(
                f"{pending.job.kind!r} job {pending.job.id} was on {worker}, which is gone"
            )
            self._attempt_failed(pending, error, "WorkerLost", worker)

    def _after_round(self, removed: bool) -> None:
        if removed:
            self._recheck_waiting()
        self._recheck()
        self._wake_dispatch.set()


class _QueueActor(Actor[JobDone | MemberChanged]):
    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    async def on_start(self) -> None:
        q = self.queue
        self.context.start_soon(q._timer_loop)
        self.context.start_soon(q._dispatch_loop)
        self.context.start_soon(q.discovery.run, q._after_round)

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


async def _close_at_exit(store: JobStore) -> None:
    """Close a store the queue opened itself when its node stops."""
    try:
        await trio.sleep_forever()
    finally:
        store.close()


def _policy(stored: StoredJob) -> RetryPolicy | None:
    if stored.retry is None:
        return None
    try:
        return _converter("json").structure(stored.retry, RetryPolicy)
    except Exception as exc:
        logger.warning(
            "job %s: its stored retry policy is unusable (%s): the queue's applies", stored.id, exc
        )
        return None


def _is_store(value: object) -> TypeGuard[JobStore]:
    return hasattr(value, "save") and hasattr(value, "pending")


def _open_store(store: JobStore | str | os.PathLike[str] | None) -> JobStore | None:
    if store is None or _is_store(store):
        return store
    assert isinstance(store, (str, os.PathLike))
    return open_job_store(store)


def _node_of(worker: str) -> str:
    return worker.rpartition("@")[2]


async def start_job_queue(
    node: Node,
    *,
    membership: Membership | None = None,
    strategy: BalanceStrategy | str = "least-loaded",
    workers: Iterable[str] = (),
    pool_name: str = POOL,
    default_timeout: float = DEFAULT_JOB_TIMEOUT,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    retry: RetryPolicy | None = None,
    breaker: BreakerConfig | None = None,
    failures: FailureSupervisor | None = None,
    store: JobStore | str | os.PathLike[str] | None = None,
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
      retry: how jobs are retried unless their kind or they say otherwise
        (default ``RetryPolicy()``: 3 attempts, backoff with full jitter, for
        failures of the worker's node; ``NO_RETRY``: at most once).
      breaker: the circuit breaker kept for each node (default
        ``BreakerConfig()``: open after 5 failures in a row, try again after 30 s).
      failures: where to report jobs that failed and circuits that opened or
        closed (see :func:`~trioactors.start_failure_supervisor`).
      store: where jobs are written down before they are sent (a
        :class:`~trioactors.JobStore`, or the path of a SQLite file), so that
        a coordinator restarted on it takes up the jobs left pending (see
        :meth:`JobQueue.recovered`). Without it, jobs live in memory only.
      seed: seeds the strategy's random choices and the retry delays (for tests).
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
        retry=retry or RetryPolicy(),
        breaker=breaker or BreakerConfig(),
        failures=failures,
        store=_open_store(store),
        owns_store=store is not None and not _is_store(store),
        rng=rng,
        name=name,
    )
    ref = await node.root.start_actor(_QueueActor, queue, name=name, mailbox_size=10_000)
    if membership is not None:
        membership.subscribe(ref)
    await queue.discovery.ready.wait()
    if queue.store is not None and queue._owns_store and node._nursery is not None:
        node._nursery.start_soon(_close_at_exit, queue.store)
    if queue.store is not None:
        queue._recover()
        queue._wake_dispatch.set()
    else:
        queue._recovered_all.set()
    return queue
