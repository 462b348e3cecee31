"""Worker pools of the job queue, and the queue's wire messages.

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

Jobs and results travel as short lists whose payload is left as plain data,
structured on arrival against the handler's payload type (on the worker) or
the job's result type (on the submitter), so that one message type carries
every kind of job. See ``_jobs.py`` for the coordinator.
"""

from __future__ import annotations

import inspect
import logging
import math
import typing
from collections import deque
from typing import TYPE_CHECKING, Any, Never, Protocol, TypeAlias, cast, final

import attrs
import cattrs
import trio

from .._errors import (
    InvalidJobPayload,
    JobError,
    JobFailed,
    JobTimeout,
    NodeUnreachable,
    NoMatchingWorker,
    NotSerializable,
    UnknownJobKind,
)
from .._runtime._actor import Actor, ActorRef, Request, read_only
from .._wire._codec import _converter, _register_service_messages

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._runtime._node import Node
    from .._wire._codec import MessageRegistry

__all__ = [
    "DescribeWorker",
    "JobDone",
    "RunJob",
    "WorkerInfo",
    "WorkerPool",
    "WorkerPoolStatistics",
    "register_job_messages",
    "start_worker_pool",
]

logger = logging.getLogger("trioactors.jobs")

POOL = "jobs:worker"
"""The default name of a node's worker pool (announced to the cluster)."""


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
    ticket: int
    """The coordinator's number for this sending of the job, echoed in the
    ``JobDone``: a result is matched to the sending it answers, not only to
    the job (the same job may be sent again)."""
    time_left: float | None
    submitter: str
    key: str | None


@final
@attrs.frozen
class JobDone:
    """How a job ended on a worker (internal wire message); ``error`` is ``""`` if ok."""

    id: str
    attempt: int
    ticket: int
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
    return [m.id, m.kind, m.payload, m.attempt, m.ticket, m.time_left, m.submitter, m.key]


def _run_job_from_wire(data: object, _: type) -> RunJob:
    if type(data) is list and len(data) == 8:
        id_, kind, payload, attempt, ticket, time_left, submitter, key = data
        if (
            type(id_) is str
            and type(kind) is str
            and type(attempt) is int
            and attempt >= 1
            and type(ticket) is int
            and (time_left is None or (type(time_left) in (int, float) and time_left >= 0))
            and type(submitter) is str
            and (key is None or type(key) is str)
        ):
            return RunJob(id_, kind, payload, attempt, ticket, time_left, submitter, key)
    raise ValueError(
        "a RunJob is [id, kind, payload, attempt, ticket, time_left, submitter, key], "
        f"not {data!r:.80}"
    )


def _job_done_to_wire(m: JobDone) -> list[object]:
    return [m.id, m.attempt, m.ticket, m.value, m.error, m.error_type, m.text, m.outstanding]


def _job_done_from_wire(data: object, _: type) -> JobDone:
    if type(data) is list and len(data) == 8:
        id_, attempt, ticket, value, error, error_type, text, outstanding = data
        if (
            type(id_) is str
            and type(attempt) is int
            and type(ticket) is int
            and type(error) is str
            and type(error_type) is str
            and type(text) is str
            and type(outstanding) is int
            and outstanding >= 0
        ):
            return JobDone(id_, attempt, ticket, value, error, error_type, text, outstanding)
    raise ValueError(
        "a JobDone is [id, attempt, ticket, value, error, error_type, text, outstanding], "
        f"not {data!r:.80}"
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
    _register_service_messages(registry, "$jobs", _CLASSES)


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
            # Not abandoned on cancel: a thread cannot be stopped, so the slot
            # stays taken until it ends, and the pool never runs more than
            # ``concurrency`` jobs (a deadline that passes meanwhile makes the
            # result late, and the submitter has had its JobTimeout).
            return await trio.to_thread.run_sync(target, payload)
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
        """What the pool answers to ``DescribeWorker``: kinds, tags, capacity and load."""
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
        """A snapshot of the pool's counters, and of its jobs running and queued."""
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
                job.id,
                job.attempt,
                job.ticket,
                None,
                _BUSY,
                "",
                "no free slot",
                self._outstanding(),
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
            return JobDone(
                job.id, job.attempt, job.ticket, None, error.__name__, error_type, text, 0
            )

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
        return JobDone(job.id, job.attempt, job.ticket, value, "", "", "", 0)

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
                        done.ticket,
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
    handlers: Mapping[str, Handler] | Mapping[str | _Kind, Handler] | None = None,
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
    node._work_counters.append(pool._outstanding)  # a drain waits for the pool's jobs
    return pool
