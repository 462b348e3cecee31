"""How a job queue's coordinator learns the worker pools of the cluster.

Theory of operation
-------------------

:class:`Discovery` keeps the coordinator's :class:`~trioactors._core._jobs.WorkerTable`.
In *rounds*, it asks every pool it can find how it is (``DescribeWorker``):
the pools that membership knows on reachable members (by the pools' announced
name), the addresses it was given, and, without membership, a pool on its own
node. A round runs every ``refresh_interval`` seconds, and at once when asked
(:meth:`Discovery.wake`: a member joined, a job came that no known pool can
take). Each answer updates the pool's kinds, tags, size and load, and its
round trip, smoothed, is the pool's latency. A pool that is no longer found,
or answers with an error (no such actor, node unreachable), is forgotten; a
pool that answers late is kept as it was (slow is not gone).

Rounds are numbered, so that a caller can wait for a round that *starts*
after some moment (:meth:`Discovery.refresh`): the verdict "no pool handles
this kind" is only given after such a round.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast, final

import trio

from .._core._jobs import WorkerTable
from .._errors import ActorNotFound, AskTimeout, TrioactorsError
from ._workers import DescribeWorker, WorkerInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._runtime._node import Node
    from ._membership import Membership

__all__ = ["Discovery"]

logger = logging.getLogger("trioactors.jobs")


@final
class Discovery:
    """The worker pools a coordinator knows, and the rounds that keep them fresh."""

    def __init__(
        self,
        node: Node,
        membership: Membership | None,
        *,
        pool_name: str,
        workers: Iterable[str],
        refresh_interval: float,
        owner: str,
    ) -> None:
        self.node = node
        self.membership = membership
        self.pool_name = pool_name
        self.static_workers = list(workers)
        self.refresh_interval = refresh_interval
        self.owner = owner  # (for log lines)
        self.table = WorkerTable()
        self.pool_gone: Callable[[str], None] | None = None
        """Called with a pool's address when it answers that it does not exist."""
        self.rounds_started = 0
        self.rounds_done = 0
        self.ready = trio.Event()  # set after the first round
        self._wake = trio.Event()
        self._changed = trio.Event()  # set when the table changes
        self._round_done = trio.Event()

    def wake(self) -> None:
        """Start a round now (or right after the one running)."""
        self._wake.set()

    def changed(self) -> None:
        """The table changed (outside a round): wake whoever waits for workers."""
        self._changed.set()
        self._changed = trio.Event()

    async def refresh(self) -> None:
        """Return once a round that starts after this call is done."""
        target = self.rounds_started + 1
        self.wake()
        while self.rounds_done < target:
            await self._round_done.wait()

    async def wait_for_workers(self, count: int, kind: str | None) -> None:
        while True:
            workers = self.table.workers()
            if kind is not None:
                workers = [w for w in workers if kind in w.kinds]
            if len(workers) >= count:
                return
            self.wake()
            await self._changed.wait()

    async def run(self, after_round: Callable[[bool], None]) -> None:
        """Rounds forever; ``after_round(removed)`` after each (``removed``: a pool
        went away in it)."""
        while True:
            self.rounds_started += 1
            removed = await self._round()
            self.rounds_done += 1
            self._round_done.set()
            self._round_done = trio.Event()
            after_round(removed)
            self.ready.set()
            with trio.move_on_after(self.refresh_interval):
                await self._wake.wait()
            self._wake = trio.Event()

    def _addresses(self) -> set[str]:
        found = set(self.static_workers)
        if self.membership is not None:
            found.update(ref.address for ref in self.membership.lookup(self.pool_name))
        elif self.pool_name in self.node.system.names():
            found.add(f"{self.pool_name}@{self.node.name}")
        return found

    async def _round(self) -> bool:
        """Ask every pool how it is; return whether any pool went away."""
        table = self.table
        addresses = self._addresses()
        changed = removed = False
        for worker in [w.worker for w in table.workers()]:
            if worker not in addresses:  # no longer announced (e.g. draining): no new jobs
                table.remove(worker)
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
                if table.remove(address):
                    changed = removed = True
                if isinstance(exc, ActorNotFound) and self.pool_gone is not None:
                    self.pool_gone(address)
                logger.debug("%s: no worker pool at %s: %s", self.owner, address, exc)
                return
            if not isinstance(cast("object", info), WorkerInfo):
                return  # (a peer answered with some other registered type)
            changed |= table.describe(
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
            self.changed()
        return removed
