"""A bounded, single-consumer mailbox tuned for actors.

It behaves like ``trio.open_memory_channel(capacity)`` with one receiver, with
two differences that make actor messaging fast without giving up Trio's rules:

- ``put`` on a mailbox with room appends and returns without a trip through
  the scheduler. It is still a cancellation point (``checkpoint_if_cancelled``),
  and it yields whenever the mailbox is full, so a fast sender runs ahead by at
  most ``capacity`` messages and then waits: backpressure.
- The consumer takes messages one at a time from the shared queue and only
  parks when the queue is empty, so after one wake-up it drains everything
  that piled up (a batch) at the cost of a single context switch.

The queue belongs to the mailbox, not to the consumer: if the consumer dies
mid-batch, the messages it has not taken stay queued for the next one.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Generic, TypeVar, final

import trio
from trio.lowlevel import (
    Abort,
    ParkingLot,
    Task,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

T = TypeVar("T")

__all__ = ["Mailbox"]


@final
class Mailbox(Generic[T]):
    __slots__ = ("_capacity", "_closed", "_queue", "_receiver", "_senders")

    def __init__(self, capacity: float) -> None:
        if not (capacity >= 1):
            raise ValueError(f"mailbox capacity must be >= 1 (or math.inf), not {capacity!r}")
        if capacity != math.inf and capacity != int(capacity):
            raise ValueError(f"mailbox capacity must be a whole number, not {capacity!r}")
        self._capacity = capacity
        self._queue: deque[T] = deque()
        self._receiver: Task | None = None
        self._senders = ParkingLot()
        self._closed = False

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._queue)

    def waiting_senders(self) -> int:
        return len(self._senders)

    # -- producer side ---------------------------------------------------------

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting while the mailbox is full.

        Raises:
          trio.ClosedResourceError: the mailbox is closed (also if it closes
            while we wait for room).
        """
        if self._closed:
            raise trio.ClosedResourceError("mailbox is closed")
        if len(self._queue) < self._capacity:
            await checkpoint_if_cancelled()
        else:
            while len(self._queue) >= self._capacity:
                await self._senders.park()
                if self._closed:
                    raise trio.ClosedResourceError("mailbox is closed")
        self._queue.append(item)
        if self._receiver is not None:
            task, self._receiver = self._receiver, None
            reschedule(task)

    def try_put(self, item: T) -> bool:
        """Queue ``item`` if the mailbox is open and has room; say whether it did."""
        if self._closed or len(self._queue) >= self._capacity:
            return False
        self._queue.append(item)
        if self._receiver is not None:
            task, self._receiver = self._receiver, None
            reschedule(task)
        return True

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` or raise ``trio.WouldBlock`` if the mailbox is full."""
        if self._closed:
            raise trio.ClosedResourceError("mailbox is closed")
        if len(self._queue) >= self._capacity:
            raise trio.WouldBlock
        self._queue.append(item)
        if self._receiver is not None:
            task, self._receiver = self._receiver, None
            reschedule(task)

    # -- consumer side ---------------------------------------------------------

    def take(self) -> T | None:
        """The next item, or ``None`` if the queue is empty. Never blocks."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        if self._senders:
            self._senders.unpark()
        return item

    async def wait_nonempty(self) -> None:
        """Park until an item arrives or :meth:`wake` is called.

        Returns at once if items are queued. It is always a checkpoint.
        """
        if self._queue:
            await trio.lowlevel.checkpoint()
            return
        if self._receiver is not None:
            raise trio.BusyResourceError("another task is already waiting on this mailbox")
        self._receiver = current_task()

        def abort(_: object) -> Abort:
            self._receiver = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def wake(self) -> None:
        """Wake the parked consumer, if any, without an item (e.g. to stop)."""
        if self._receiver is not None:
            task, self._receiver = self._receiver, None
            reschedule(task)

    def close(self) -> list[T]:
        """Close for good: wake everyone, return what was still queued."""
        self._closed = True
        left = list(self._queue)
        self._queue.clear()
        self._senders.unpark_all()
        self.wake()
        return left

    def reopen(self) -> None:
        self._closed = False
