"""One timer task per actor system that enforces ``ask`` deadlines.

A Trio ``CancelScope`` costs several microseconds to enter and leave: about
half of a whole local ask round trip. Most asks use one of a few timeouts
(usually the default), so their deadlines arrive in order. The timer keeps one
FIFO queue of pending replies per timeout value and sleeps, inside its own
cancel scope, until the earliest deadline at the head of a queue. When it wakes,
it fails every overdue reply with :class:`AskTimeout`; the asker, parked on the
reply, raises it. Nothing polls: between deadlines the timer is asleep, and a
shorter new deadline moves its scope's deadline earlier.

Completed replies are trimmed from the head of their queue by the asker, so
in the usual in-order case the queues hold only what is still in flight.

An ask falls back to a cancel scope of its own when no timer runs (outside a
running root supervisor), when its mailbox is full, or when too many distinct
timeout values are in use.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, final

import trio

from .._errors import ActorStopped

if TYPE_CHECKING:
    from ._actor import _Reply

__all__ = ["AskTimer"]

MAX_QUEUES = 16
"""Distinct timeout values served by the timer; others use their own scope."""


@final
class AskTimer:
    def __init__(self) -> None:
        self._queues: dict[float, deque[_Reply]] = {}
        self._sleep: trio.CancelScope | None = None
        self._closed = False

    def watch(self, reply: _Reply, timeout: float) -> bool:
        """Fail ``reply`` with a timeout after ``timeout`` s; False if not served."""
        sleep = self._sleep
        if sleep is None:
            return False
        queue = self._queues.get(timeout)
        if queue is None:
            if len(self._queues) >= MAX_QUEUES:
                return False
            queue = self._queues[timeout] = deque()
        deadline = trio.current_time() + timeout
        reply._deadline = deadline
        queue.append(reply)
        if deadline < sleep.deadline:
            sleep.deadline = deadline
        return True

    def trim(self, timeout: float) -> None:
        """Drop answered replies from the head of a queue (called by askers)."""
        queue = self._queues.get(timeout)
        while queue and queue[0]._done:
            queue.popleft()

    def _next_deadline(self) -> float:
        earliest = math.inf
        for queue in self._queues.values():
            while queue and queue[0]._done:
                queue.popleft()
            if queue and queue[0]._deadline < earliest:
                earliest = queue[0]._deadline
        return earliest

    def _expire(self, now: float) -> None:
        for queue in self._queues.values():
            while queue and (queue[0]._done or queue[0]._deadline <= now):
                reply = queue.popleft()
                if not reply._done:
                    reply.time_out()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._sleep = trio.CancelScope()
        task_status.started()
        try:
            while not self._closed:
                with self._sleep:
                    await trio.sleep_forever()
                self._expire(trio.current_time())
                self._sleep = trio.CancelScope(deadline=self._next_deadline())
        finally:
            self._sleep = None
            for queue in self._queues.values():
                for reply in queue:
                    reply.fail(ActorStopped("the actor system stopped before the reply"))
            self._queues.clear()

    def close(self) -> None:
        """Stop the timer; replies still waiting fail with ActorStopped."""
        self._closed = True
        if self._sleep is not None:
            self._sleep.cancel()
