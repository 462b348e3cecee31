"""Jobs, their kinds and results, and the coordinator's table of workers.

Pure data and bookkeeping, no I/O: the job queue service
(``trioactors/_services/_jobs.py``) sends and receives; this module decides.

A :class:`Job` names its *kind* (the handler that runs it) and carries a
payload; a :class:`JobKind` binds a kind's name to its payload and result
types, so that submitter and worker agree on them and type checkers see them.
A :class:`JobResult` is how a job ended: a value or a
:class:`~trioactors.JobError`.

:class:`WorkerTable` is what a coordinator knows of the workers: for each, its
kinds and tags, its size, the jobs the coordinator has in flight there, the
load the worker last reported and the smoothed round-trip time to it. It
turns that into the :class:`~trioactors._core._balance.Candidate` list a
balancing strategy chooses from.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, final

import attrs

from ._balance import Candidate, _tags

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._errors import JobError
    from ._retry import RetryPolicy

__all__ = ["Job", "JobKind", "JobResult", "WorkerTable", "WorkerView"]

P = TypeVar("P")
R = TypeVar("R", covariant=True)  # (a phantom in Job: only what its result becomes)


class _Ids:
    """Job ids: a random prefix per process and a counter (a uuid4 costs several
    times more, and every job needs one). A forked child draws a new prefix."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self.counter):x}"


_new_id = _Ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id.reset)


def _check_timeout(
    _: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be None or a number of seconds > 0, not {value}")


@final
@attrs.frozen
class Job(Generic[R]):
    """A unit of work for some worker in the cluster.

    Make one directly (``Job("resize", {"path": ...})``) or, typed, from a
    :class:`JobKind` (``RESIZE.job(...)``); hand it to ``JobQueue.submit``.

    ``R`` is the type of the job's result (``object`` for a job made
    directly).

    .. versionadded:: 0.1
    """

    kind: str
    """Which handler runs the job (the name a worker pool registered it under)."""
    payload: object = None
    """The job's input: plain data or attrs classes (what cattrs can unstructure)."""
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_tags, kw_only=True)
    """Capabilities a worker must offer to take the job, e.g. ``{"gpu"}`` (any iterable)."""
    key: str | None = attrs.field(default=None, kw_only=True)
    """Affinity key: the ``consistent-hash`` strategy sends equal keys to the same worker."""
    timeout: float | None = attrs.field(default=None, kw_only=True, validator=_check_timeout)
    """Seconds from submission until the job fails with ``JobTimeout``
    (``None``: the queue's ``default_timeout``)."""
    id: str = attrs.field(factory=_new_id, kw_only=True)
    """Unique per job (a random per-process prefix and a counter); results are
    matched to jobs by it (idempotent completion)."""
    attempt: int = attrs.field(default=1, kw_only=True)
    """Which attempt at the job this is, from 1."""
    submitter: str | None = attrs.field(default=None, kw_only=True)
    """The address of the coordinator that submitted the job (set by the queue)."""
    result_type: object = attrs.field(default=None, kw_only=True, eq=False, repr=False)
    """What the result is structured into on arrival (``None``: left as plain data)."""
    retry: RetryPolicy | None = attrs.field(default=None, kw_only=True, eq=False)
    """How the job is retried (``None``: its queue's policy; ``NO_RETRY``: never)."""


@final
@attrs.frozen
class JobKind(Generic[P, R]):
    """A kind of job with its payload and result types.

    Define it once, where both submitters and workers import it::

        WORD_COUNT = JobKind("word-count", str, dict[str, int])

        # on a worker node
        pool.register(WORD_COUNT, count_words)
        # anywhere
        counts = await queue.submit(WORD_COUNT.job(text))  # counts: dict[str, int]

    The worker structures each payload into ``payload_type`` before calling
    the handler (a mismatch is :exc:`~trioactors.InvalidJobPayload`, sent back
    to the submitter); the submitter structures the result into
    ``result_type``.

    .. versionadded:: 0.1
    """

    name: str
    payload_type: type[P]
    """What payloads are structured into on the worker (``object``: left as plain data)."""
    result_type: type[R]
    """What results are structured into on the submitter (``object``: left as plain data)."""
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_tags, kw_only=True)
    """Tags every job of this kind requires (added to a job's own)."""
    retry: RetryPolicy | None = attrs.field(default=None, kw_only=True)
    """How jobs of this kind are retried (``None``: the queue's policy); e.g.
    ``NO_RETRY`` for work that must not run twice."""

    def job(
        self,
        payload: P,
        *,
        tags: Iterable[str] = (),
        key: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Job[R]:
        """A job of this kind (``retry``: instead of the kind's policy)."""
        return Job(
            self.name,
            payload,
            tags=self.tags | _tags(tags),
            key=key,
            timeout=timeout,
            result_type=self.result_type,
            retry=retry if retry is not None else self.retry,
        )


@final
@attrs.frozen
class JobResult(Generic[R]):
    """How a job ended: its ``value``, or its ``error``.

    .. versionadded:: 0.1
    """

    job: Job[R]
    """The job, as submitted."""
    value: R | None
    """The handler's return value (``None`` if the job failed)."""
    error: JobError | None
    """Why the job failed (``None`` if it succeeded)."""
    worker: str | None = None
    """The address of the worker pool that ran it (``None`` if it never reached one)."""
    attempt: int = 1
    """The attempt that produced this result (for a failure, the last one
    started). With an attempt timeout, an earlier attempt may answer first."""
    elapsed: float = 0.0
    """Seconds from submission to the result."""

    @property
    def ok(self) -> bool:
        """Whether the job succeeded."""
        return self.error is None

    def unwrap(self) -> R:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


# -- the coordinator's view of the workers -----------------------------------------------

RTT_GAIN = 0.125
"""Weight of a new round-trip sample in the smoothed value (TCP's SRTT gain, RFC 6298)."""


@final
@attrs.define(kw_only=True)
class WorkerView:
    """One worker pool as a coordinator sees it."""

    worker: str
    node: str
    kinds: frozenset[str]
    tags: frozenset[str]
    concurrency: int
    """Jobs the pool runs at once."""
    slots: int
    """Jobs the pool accepts at once (running and queued)."""
    reported: int = 0
    """Jobs running or queued at the pool when it last told us (from any coordinator)."""
    sent: int = 0
    """Jobs this coordinator has sent there and not yet heard back about."""
    rtt: float | None = None
    """Smoothed round-trip time to the pool, in seconds."""
    full_until_report: bool = False
    """The pool refused a job as busy: take it as full until it reports again."""

    def candidate(self) -> Candidate:
        # Room is counted in this coordinator's own jobs (exact and fresh);
        # jobs of other coordinators show in the reported load, and when they
        # fill the pool it refuses, which marks it full until it reports again.
        # (Counting reported jobs as taken slots would leave a coordinator
        # waiting on a stale report for up to a refresh interval.)
        in_flight = self.slots if self.full_until_report else self.sent
        return Candidate(
            worker=self.worker,
            node=self.node,
            load=max(self.sent, self.reported) / max(1, self.concurrency),
            capacity=self.slots,
            in_flight=min(in_flight, self.slots),
            rtt=self.rtt,
            tags=self.tags,
        )


@final
class WorkerTable:
    """The workers a coordinator knows, and its jobs in flight at each.

    Candidates are rebuilt from the table on each call; a worker is a
    candidate for a job when it handles the job's kind (its tags and room are
    the strategy's business: see ``Candidate.can_take``).
    """

    def __init__(self) -> None:
        self._workers: dict[str, WorkerView] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def __contains__(self, worker: str) -> bool:
        return worker in self._workers

    def get(self, worker: str) -> WorkerView | None:
        return self._workers.get(worker)

    def workers(self) -> list[WorkerView]:
        return list(self._workers.values())

    def describe(
        self,
        *,
        worker: str,
        node: str,
        kinds: Iterable[str],
        tags: Iterable[str],
        concurrency: int,
        slots: int,
        outstanding: int,
        rtt: float | None = None,
    ) -> bool:
        """Record what a worker said about itself; True if it is new or its
        kinds or tags changed."""
        view = self._workers.get(worker)
        new = view is None or view.kinds != frozenset(kinds) or view.tags != frozenset(tags)
        if view is None:
            view = self._workers[worker] = WorkerView(
                worker=worker,
                node=node,
                kinds=frozenset(kinds),
                tags=frozenset(tags),
                concurrency=concurrency,
                slots=slots,
            )
        else:
            view.kinds = frozenset(kinds)
            view.tags = frozenset(tags)
            view.concurrency = concurrency
            view.slots = slots
        self.report(worker, outstanding)
        if rtt is not None:
            view.rtt = rtt if view.rtt is None else view.rtt + RTT_GAIN * (rtt - view.rtt)
        return new

    def report(self, worker: str, outstanding: int) -> None:
        """The worker's own count of jobs running or queued there."""
        view = self._workers.get(worker)
        if view is not None:
            view.reported = outstanding
            view.full_until_report = False

    def busy(self, worker: str) -> None:
        """The worker refused a job as full."""
        view = self._workers.get(worker)
        if view is not None:
            view.full_until_report = True

    def sent(self, worker: str) -> None:
        view = self._workers.get(worker)
        if view is not None:
            view.sent += 1

    def finished(self, worker: str) -> None:
        view = self._workers.get(worker)
        if view is not None and view.sent > 0:
            view.sent -= 1

    def remove(self, worker: str) -> bool:
        return self._workers.pop(worker, None) is not None

    def remove_node(self, node: str) -> list[str]:
        """Forget every worker on ``node``; return their addresses."""
        gone = [w for w, v in self._workers.items() if v.node == node]
        for worker in gone:
            del self._workers[worker]
        return gone

    def candidates(self, kind: str) -> list[Candidate]:
        return [v.candidate() for v in self._workers.values() if kind in v.kinds]

    def has_room(self) -> bool:
        """Whether any worker could take another job (of some kind)."""
        return any(not v.full_until_report and v.sent < v.slots for v in self._workers.values())

    def placeable(self, job: Job[object]) -> Literal["yes", "kind", "tags"]:
        """Whether some worker could ever take ``job``: ``"yes"``, or why not:
        no worker handles its ``"kind"``, or none that does offers its ``"tags"``."""
        handlers = [v for v in self._workers.values() if job.kind in v.kinds]
        if not handlers:
            return "kind"
        if not any(job.tags <= v.tags and v.slots > 0 for v in handlers):
            return "tags"
        return "yes"
