"""The distributed job queue: worker pools, coordinators and their wire messages.

Theory of operation
-------------------

A **worker pool** (:func:`start_worker_pool`) is an actor, ``jobs:worker`` by
default, with handlers registered by job kind. Its name does not start with
``$``, so membership announces it and any node finds the pools of the cluster
with ``membership.lookup("jobs:worker")``. It runs at most ``concurrency``
jobs at once and accepts ``concurrency * prefetch`` (its *slots*), running or
queued; a job beyond that is refused as busy (the coordinator places it
again). For each job it structures the payload into the handler's payload
type, runs the handler under the job's deadline (a cancel scope), and
*tells* the outcome, a ``JobDone``, to the envelope's sender: whoever sent
the job hears back, on whatever node it is. Every ``JobDone`` carries the
pool's count of jobs running and queued: the load report.

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
(``UnknownJobKind`` / ``NoMatchingWorker``, at once), or the worker's node
was declared dead or left (``WorkerLost``). A result for a job that has
already ended (late, or duplicated) is recognised by the job's id and
attempt, ignored and counted.

Delivery is at most once per attempt; this module makes one attempt. (The
retry queue builds at-least-once on top of it, with idempotent completion.)
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import random
import typing
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, Never, Protocol, TypeAlias, TypeVar, cast, final

import attrs
import cattrs
import trio

from .._core._balance import BalanceStrategy, ConsistentHash, LeastLoaded, strategy_by_name
from .._core._jobs import Job, JobKind, JobResult, WorkerTable
from .._core._membership import MemberChanged
from .._errors import (
    ActorNotFound,
    AskTimeout,
    InvalidJobPayload,
    JobError,
    JobFailed,
    JobTimeout,
    NodeUnreachable,
    NoMatchingWorker,
    NotSerializable,
    TrioactorsError,
    UnknownJobKind,
    WorkerLost,
)
from .._runtime._actor import Actor, ActorRef, Request, read_only
from .._wire._codec import _converter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping

    from .._runtime._node import Node
    from .._wire._codec import MessageRegistry
    from ._membership import Membership

__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "DescribeWorker",
    "JobQueue",
    "JobQueueStatistics",
    "ResultStream",
    "WorkerInfo",
    "WorkerPool",
    "WorkerPoolStatistics",
    "register_job_messages",
    "start_job_queue",
    "start_worker_pool",
]

logger = logging.getLogger("trioactors.jobs")

POOL = "jobs:worker"
"""The default name of a node's worker pool (announced to the cluster)."""
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

_BUSY = "WorkerBusy"  # a JobDone error: the pool had no free slot (the job is placed again)


# -- wire messages -----------------------------------------------------------------------


@final
@attrs.frozen
class RunJob:
    """Run this job and tell the outcome to the sender (internal wire message)."""

    id: str
    kind: str
    payload: object
    attempt: int
    time_left: float | None
    submitter: str
    key: str | None


@final
@attrs.frozen
class JobDone:
    """How a job ended on a worker (internal wire message); ``error`` is ``""`` if ok."""

    id: str
    attempt: int
    value: object
    error: str
    error_type: str
    text: str
    outstanding: int
    """Jobs running or queued at the pool after this one: the load report."""


@final
@attrs.frozen
class WorkerInfo:
    """What a worker pool says about itself (the answer to :class:`DescribeWorker`).

    .. versionadded:: 0.1
    """

    worker: str
    node: str
    kinds: list[str]
    tags: list[str]
    concurrency: int
    slots: int
    running: int
    queued: int
    succeeded: int
    failed: int


@final
@read_only
@attrs.frozen
class DescribeWorker(Request[WorkerInfo]):
    """Ask a worker pool for its :class:`WorkerInfo` (a read-only query).

    .. versionadded:: 0.1
    """


def _run_job_to_wire(m: RunJob) -> list[object]:
    return [m.id, m.kind, m.payload, m.attempt, m.time_left, m.submitter, m.key]


def _run_job_from_wire(data: object, _: type) -> RunJob:
    if type(data) is list and len(data) == 7:
        id_, kind, payload, attempt, time_left, submitter, key = data
        if (
            type(id_) is str
            and type(kind) is str
            and type(attempt) is int
            and attempt >= 1
            and (time_left is None or (type(time_left) in (int, float) and time_left >= 0))
            and type(submitter) is str
            and (key is None or type(key) is str)
        ):
            return RunJob(id_, kind, payload, attempt, time_left, submitter, key)
    raise ValueError(
        f"a RunJob is [id, kind, payload, attempt, time_left, submitter, key], not {data!r:.80}"
    )


def _job_done_to_wire(m: JobDone) -> list[object]:
    return [m.id, m.attempt, m.value, m.error, m.error_type, m.text, m.outstanding]


def _job_done_from_wire(data: object, _: type) -> JobDone:
    if type(data) is list and len(data) == 7:
        id_, attempt, value, error, error_type, text, outstanding = data
        if (
            type(id_) is str
            and type(attempt) is int
            and type(error) is str
            and type(error_type) is str
            and type(text) is str
            and type(outstanding) is int
            and outstanding >= 0
        ):
            return JobDone(id_, attempt, value, error, error_type, text, outstanding)
    raise ValueError(
        f"a JobDone is [id, attempt, value, error, error_type, text, outstanding], not {data!r:.80}"
    )


# Jobs and results travel as short lists: their payloads are left as plain
# data here and structured against the handler's (or the submitter's) type.
for _format in ("json", "msgpack"):
    _converter(_format).register_unstructure_hook(RunJob, _run_job_to_wire)
    _converter(_format).register_structure_hook(RunJob, _run_job_from_wire)
    _converter(_format).register_unstructure_hook(JobDone, _job_done_to_wire)
    _converter(_format).register_structure_hook(JobDone, _job_done_from_wire)

_CLASSES: tuple[type, ...] = (RunJob, JobDone, DescribeWorker, WorkerInfo)


def register_job_messages(registry: MessageRegistry) -> None:
    """Register the job queue's messages in ``registry`` (``$jobs.*`` tags).

    :func:`start_worker_pool` and :func:`start_job_queue` do it for the node's
    registry.

    .. versionadded:: 0.1
    """
    for cls in _CLASSES:
        if registry.tag_of(cls) is None:
            registry.register(cls, f"$jobs.{cls.__name__}")


_ERRORS: dict[str, type[JobError]] = {
    cls.__name__: cls
    for cls in (UnknownJobKind, NoMatchingWorker, InvalidJobPayload, JobFailed, JobTimeout)
}


def _error(tag: str, error_type: str, text: str) -> JobError:
    if tag == "JobFailed":
        return JobFailed(text, error_type)
    return _ERRORS.get(tag, JobError)(text)


def _is_untyped(tp: object) -> bool:
    return tp is None or tp is object or tp is Any or tp is inspect.Parameter.empty


def _structure(format: str, data: object, tp: object) -> object:
    """``data`` as a ``tp``; raises InvalidJobPayload with what did not fit."""
    if _is_untyped(tp):
        return data
    try:
        return _converter(format).structure(data, tp)  # type: ignore[arg-type]
    except cattrs.BaseValidationError as exc:
        raise InvalidJobPayload("; ".join(cattrs.transform_error(exc))) from None
    except Exception as exc:
        raise InvalidJobPayload(f"{exc!r}") from None


def _type_name(tp: object) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


# -- the worker pool ---------------------------------------------------------------------


Handler: TypeAlias = "Callable[[Never], object] | ActorRef[Never]"
"""A job handler: a function (async or not) of the payload, or an actor."""


class _Kind(Protocol):
    """A :class:`~trioactors.JobKind`, as a pool sees it."""

    @property
    def name(self) -> str: ...
    @property
    def payload_type(self) -> object: ...


@final
@attrs.frozen
class _Handler:
    kind: str
    target: Callable[[object], object] | ActorRef[object]
    payload_type: object
    thread: bool

    async def run(self, payload: object) -> object:
        target = self.target
        if isinstance(target, ActorRef):
            return await target.ask(payload, timeout=None)  # (the job's deadline bounds it)
        if self.thread:
            return await trio.to_thread.run_sync(target, payload, abandon_on_cancel=True)
        result = target(payload)
        if inspect.isawaitable(result):
            result = await result
        return result


def _payload_type_of(fn: Callable[[Never], object]) -> object:
    """The annotation of the function's first parameter, or ``None``."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not parameters:
        raise TypeError(f"a job handler takes the payload as its argument; {fn!r} takes none")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    return hints.get(parameters[0].name)


@final
@attrs.frozen
class WorkerPoolStatistics:
    """Counters of a :class:`WorkerPool` (``pool.statistics()``).

    .. versionadded:: 0.1
    """

    received: int
    """Jobs that arrived."""
    succeeded: int
    """Jobs whose handler returned a result that was sent back."""
    failed: int
    """Jobs that ended with an error (any of the errors below, or the handler raised)."""
    unknown_kind: int
    """Jobs of a kind with no handler here."""
    invalid_payload: int
    """Jobs whose payload did not fit the handler's type, or whose result could not be sent."""
    timed_out: int
    """Jobs whose deadline passed while they waited or ran here."""
    rejected_busy: int
    """Jobs refused because every slot was taken (placed again by their coordinator)."""
    unanswerable: int
    """Jobs sent from outside an actor: no address to send the outcome to (dropped, logged)."""
    replies_lost: int
    """Outcomes that could not be sent back (the submitter's node was unreachable)."""
    running: int
    queued: int


@final
class WorkerPool:
    """A node's job handlers and the jobs running there; from :func:`start_worker_pool`.

    .. versionadded:: 0.1
    """

    def __init__(
        self, node: Node, *, name: str, concurrency: int, prefetch: int, tags: Iterable[str]
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, not {prefetch}")
        if isinstance(tags, str):
            raise TypeError(f"tags must be a set of strings, not the string {tags!r}")
        self.node = node
        self.name = name
        self.address = f"{name}@{node.name}"
        self.concurrency = concurrency
        self.slots = concurrency * prefetch
        self.tags = frozenset(tags)
        self._handlers: dict[str, _Handler] = {}
        self._queue: deque[tuple[RunJob, ActorRef[object], float]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._running = 0
        self._counts = dict.fromkeys(
            (
                "received",
                "succeeded",
                "failed",
                "unknown_kind",
                "invalid_payload",
                "timed_out",
                "rejected_busy",
                "unanswerable",
                "replies_lost",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"<WorkerPool {self.address} kinds={sorted(self._handlers)}>"

    # -- public ------------------------------------------------------------------------

    def register(
        self,
        kind: str | _Kind,
        handler: Handler,
        *,
        payload_type: object = None,
        thread: bool = False,
    ) -> None:
        """Run jobs of ``kind`` with ``handler``; replaces an earlier handler of the kind.

        ``handler`` is an async function or a plain function taking the
        payload (and returning the result), or an :class:`~trioactors.ActorRef`
        (the payload is sent to the actor as an ``ask``; its reply is the
        result, and the actor handles the pool's jobs one at a time, in order).

        The payload type is, in order: ``payload_type``, the
        :class:`~trioactors.JobKind`'s, the annotation of the function's first
        parameter; without any, the handler gets plain data.

        A plain function runs on the node's event loop, so it must be quick;
        with ``thread=True`` it runs in a worker thread instead
        (``trio.to_thread.run_sync``), which keeps the node responsive while it
        blocks (it still holds the GIL while it computes).
        """
        name = kind if isinstance(kind, str) else kind.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"a job kind is a non-empty string, not {name!r}")
        if payload_type is None and not isinstance(kind, str):
            payload_type = kind.payload_type
        if isinstance(handler, ActorRef):
            if thread:
                raise ValueError("thread=True is for plain functions, not actors")
        elif not callable(handler):
            raise TypeError(f"a job handler is a function or an ActorRef, not {handler!r}")
        elif payload_type is None:
            payload_type = _payload_type_of(handler)
        if thread and inspect.iscoroutinefunction(handler):
            raise ValueError("thread=True is for plain functions; async functions run on the loop")
        target = cast("Callable[[object], object] | ActorRef[object]", handler)
        self._handlers[name] = _Handler(name, target, payload_type, thread)

    def unregister(self, kind: str | _Kind) -> None:
        """Stop taking jobs of ``kind`` (a job of it then gets ``UnknownJobKind``)."""
        self._handlers.pop(kind if isinstance(kind, str) else kind.name, None)

    def kinds(self) -> list[str]:
        """The job kinds this pool handles, sorted."""
        return sorted(self._handlers)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            self.address,
            self.node.name,
            self.kinds(),
            sorted(self.tags),
            self.concurrency,
            self.slots,
            self._running,
            len(self._queue),
            self._counts["succeeded"],
            self._counts["failed"],
        )

    def statistics(self) -> WorkerPoolStatistics:
        return WorkerPoolStatistics(**self._counts, running=self._running, queued=len(self._queue))

    # -- inside --------------------------------------------------------------------------

    def _outstanding(self) -> int:
        return self._running + len(self._queue)

    def _accept(self, job: RunJob, sender: ActorRef[object] | None) -> None:
        self._counts["received"] += 1
        if sender is None:
            self._counts["unanswerable"] += 1
            logger.warning(
                "%s: job %s (%s) came from outside an actor; nobody to send its result to, dropped",
                self.address,
                job.id,
                job.kind,
            )
            return
        if self._outstanding() >= self.slots:
            self._counts["rejected_busy"] += 1
            busy = JobDone(
                job.id, job.attempt, None, _BUSY, "", "no free slot", self._outstanding()
            )
            try:
                sender.tell_nowait(busy)
            except (trio.WouldBlock, NodeUnreachable) as exc:
                self._counts["replies_lost"] += 1
                logger.warning("%s: could not refuse job %s: %r", self.address, job.id, exc)
            return
        self._queue.append((job, sender, trio.current_time()))
        self._lot.unpark()

    async def _runner(self) -> None:
        while True:
            while not self._queue:
                await self._lot.park()
            job, sender, received = self._queue.popleft()
            self._running += 1
            try:
                done = await self._run(job, received)
            finally:
                self._running -= 1
            await self._reply(sender, done)

    async def _run(self, job: RunJob, received: float) -> JobDone:
        def failed(error: type[JobError], text: str, error_type: str = "") -> JobDone:
            self._counts["failed"] += 1
            return JobDone(job.id, job.attempt, None, error.__name__, error_type, text, 0)

        handler = self._handlers.get(job.kind)
        if handler is None:
            self._counts["unknown_kind"] += 1
            handles = ", ".join(self.kinds()) or "nothing"
            return failed(
                UnknownJobKind,
                f"no handler for {job.kind!r} jobs on {self.address} (it handles: {handles})",
            )
        format = self.node.codec.format
        try:
            payload = _structure(format, job.payload, handler.payload_type)
        except InvalidJobPayload as exc:
            self._counts["invalid_payload"] += 1
            return failed(
                InvalidJobPayload,
                f"the payload of {job.kind!r} job {job.id} does not fit "
                f"{_type_name(handler.payload_type)}: {exc}",
            )
        deadline = math.inf
        if job.time_left is not None:
            deadline = received + job.time_left
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                result = await handler.run(payload)
            except Exception as exc:
                logger.warning(
                    "%s: %r job %s failed", self.address, job.kind, job.id, exc_info=True
                )
                return failed(
                    JobFailed,
                    f"{job.kind!r} job {job.id} failed on {self.address}: "
                    f"{type(exc).__name__}: {exc}",
                    type(exc).__name__,
                )
        if scope.cancelled_caught:
            self._counts["timed_out"] += 1
            return failed(
                JobTimeout, f"{job.kind!r} job {job.id} ran out of time on {self.address}"
            )
        try:
            value = _converter(format).unstructure(result)
        except Exception as exc:
            self._counts["invalid_payload"] += 1
            return failed(
                InvalidJobPayload,
                f"the result of {job.kind!r} job {job.id} ({type(result).__qualname__}) "
                f"cannot be sent: {exc!r}",
            )
        self._counts["succeeded"] += 1
        return JobDone(job.id, job.attempt, value, "", "", "", 0)

    async def _reply(self, sender: ActorRef[object], done: JobDone) -> None:
        done = attrs.evolve(done, outstanding=self._outstanding())
        try:
            try:
                await sender.tell(done)
            except NotSerializable as exc:  # the value holds something the wire cannot carry
                self._counts["succeeded"] -= 1
                self._counts["failed"] += 1
                self._counts["invalid_payload"] += 1
                text = f"the result of job {done.id} cannot be sent: {exc}"
                await sender.tell(
                    JobDone(
                        done.id,
                        done.attempt,
                        None,
                        "InvalidJobPayload",
                        "",
                        text,
                        done.outstanding,
                    )
                )
        except (NodeUnreachable, NotSerializable) as exc:
            self._counts["replies_lost"] += 1
            logger.warning(
                "%s: the outcome of job %s could not be sent to %s: %s",
                self.address,
                done.id,
                sender.address,
                exc,
            )


class _PoolActor(Actor[RunJob | DescribeWorker]):
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    async def on_start(self) -> None:
        for _ in range(self.pool.concurrency):
            self.context.start_soon(self.pool._runner)

    async def receive(self, message: RunJob | DescribeWorker) -> object:
        if type(message) not in (RunJob, DescribeWorker):  # (a peer may send any registered type)
            return await super().receive(message)
        match message:
            case RunJob():
                self.pool._accept(message, self.context.sender)
            case DescribeWorker():
                return self.pool.info()
        return None


async def start_worker_pool(
    node: Node,
    handlers: Mapping[str | _Kind, Handler] | None = None,
    *,
    concurrency: int = 4,
    prefetch: int = 2,
    tags: Iterable[str] = (),
    name: str = POOL,
) -> WorkerPool:
    """Start a worker pool on ``node``: an actor that runs jobs with ``handlers``.

    Args:
      handlers: job kinds (names or :class:`~trioactors.JobKind`) mapped to
        handlers; see :meth:`WorkerPool.register` (also for adding more later).
      concurrency: jobs run at once.
      prefetch: slots per concurrent job: the pool accepts
        ``concurrency * prefetch`` jobs at once, running or queued, so that
        the next job is already here when one ends (as Celery's prefetch).
      tags: capabilities this node offers (e.g. ``{"gpu"}``); jobs that
        require tags only go to pools that offer them all.
      name: the pool actor's name; coordinators look pools up by it.

    .. versionadded:: 0.1
    """
    register_job_messages(node.codec.registry)
    pool = WorkerPool(node, name=name, concurrency=concurrency, prefetch=prefetch, tags=tags)
    for kind, handler in (handlers or {}).items():
        pool.register(kind, handler)
    await node.root.start_actor(_PoolActor, pool, name=name, mailbox_size=max(64, pool.slots * 4))
    return pool


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
    __slots__ = ("deadline", "done", "job", "sent_at", "submitted", "worker")

    def __init__(
        self, job: Job[object], deadline: float, done: Callable[[JobResult[object]], None]
    ) -> None:
        self.job = job
        self.deadline = deadline
        self.done = done
        self.submitted = trio.current_time()
        self.worker: str | None = None
        self.sent_at = 0.0


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
        self._timer: trio.CancelScope | None = None
        self._wake_dispatch = trio.Event()
        self._rediscover = trio.Event()
        self._changed = trio.Event()  # set when the table of workers changes
        self._ready = trio.Event()  # set after the first round of discovery
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
        self._waiting.append(pending)
        self._wake_dispatch.set()
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
            why = self.table.placeable(job)
            if why != "yes":
                if self._ready.is_set():
                    self._unplaceable(pending, why)
                else:
                    skipped.append(pending)
                continue
            chosen = self.strategy.choose(job, self.table.candidates(job.kind))
            if chosen is None:
                skipped.append(pending)
                continue
            await self._send(pending, chosen.worker)
        self._waiting.extendleft(reversed(skipped))

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
        message = RunJob(
            job.id,
            job.kind,
            _converter(self.node.codec.format).unstructure(job.payload),
            job.attempt,
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
            or pending.job.attempt != done.attempt
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
        gone = set(self.table.remove_node(change.node))
        if not gone:
            return
        self._changed.set()
        self._changed = trio.Event()
        for pending in list(self._pending.values()):
            if pending.worker in gone:
                self._finish(
                    pending,
                    None,
                    WorkerLost(
                        f"{pending.job.kind!r} job {pending.job.id} was on {pending.worker}, "
                        f"whose node is {change.after.state.name.lower()}"
                    ),
                )

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
            await self._discover()
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

    async def _discover(self) -> None:
        addresses = self._addresses()
        changed = False
        for worker in [w.worker for w in self.table.workers()]:
            if worker not in addresses:  # no longer announced (e.g. draining): no new jobs
                self.table.remove(worker)
                changed = True

        async def ask(address: str) -> None:
            nonlocal changed
            start = trio.current_time()
            try:
                info = await self.node.ref(address).ask(
                    DescribeWorker(), timeout=max(self.refresh_interval, 0.5)
                )
            except AskTimeout:
                return  # slow, not gone: keep what we knew
            except (TrioactorsError, ValueError) as exc:
                if self.table.remove(address):
                    changed = True
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
