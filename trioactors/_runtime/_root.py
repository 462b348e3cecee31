"""Roots of supervision trees: ``open_supervisor``."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .._core._supervision import Backoff, Strategy
from ._deadlines import AskTimer
from ._supervisor import Supervisor, _serve_started, _unwrapping_nursery
from ._system import ActorSystem

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["open_supervisor"]


@asynccontextmanager
async def open_supervisor(
    *,
    name: str = "root",
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 1,
    period: float = 5.0,
    backoff: Backoff | None = None,
    system: ActorSystem | None = None,
) -> AsyncIterator[Supervisor]:
    """Open a root supervisor for use with ``async with``.

    Start children inside the block. Leaving the block normally (or by an
    ordinary exception) stops every child gracefully in reverse start order,
    each within its shutdown timeout; a cancellation cancels them at once.
    When the block is left, no task of the tree is still running, every
    mailbox is closed and what was left in them is recorded as dead letters.

    If the supervisor gives up (more than ``intensity`` restarts within
    ``period`` seconds; OTP's defaults are 1 and 5), the block is cancelled and
    :class:`SupervisorGaveUp` is raised from it.

    Args:
      name: the root's name; children's paths start with ``/<name>``.
      strategy: ``ONE_FOR_ONE`` (default), ``ONE_FOR_ALL`` or ``REST_FOR_ONE``.
      intensity: restarts allowed within ``period`` (default 1).
      period: the intensity window, in seconds (default 5).
      backoff: optional delay before restarts (default none).
      system: the :class:`ActorSystem` to use (default: a new one).

    .. versionadded:: 0.1
    """
    if system is None:
        system = ActorSystem()
    root = Supervisor(
        system,
        name,
        f"/{name}",
        strategy=strategy,
        intensity=intensity,
        period=period,
        backoff=backoff,
    )
    previous_root, system.root = system.root, root
    timer: AskTimer | None = None
    try:
        async with _unwrapping_nursery() as nursery:
            if system._timer is None:
                timer = system._timer = AskTimer()
                await nursery.start(timer.run)
            await nursery.start(_serve_started, root)
            graceful = True
            try:
                yield root
            except Exception:
                raise
            except BaseException:
                graceful = False
                raise
            finally:
                if graceful:
                    await root._shutdown()
                if timer is not None:
                    timer.close()
    finally:
        root._close("stopped")
        system.root = previous_root
        if timer is not None:
            system._timer = None
