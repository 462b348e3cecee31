"""Streams of job results: what ``JobQueue.submit_many`` returns.

A :class:`ResultStream` hands jobs to its queue's coordinator a window at a
time and yields their results in the order they arrive. It needs no task of
its own: each result the coordinator finishes is appended to the stream's
queue, and each result the consumer takes lets the next job in. Leaving it
early (``aclose``, the end of its ``async with``) abandons the jobs still
out: the coordinator forgets them and counts their results as late.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, cast, final

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .._core._jobs import Job, JobResult
    from ._jobs import JobQueue

__all__ = ["ResultStream"]

R = TypeVar("R")


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
