"""Run a scenario on a simulated cluster under a fault plan, deterministically.

:func:`simulate` is the entry point for property-based fault tests: one call
is one ``trio.run`` under ``MockClock(autojump_threshold=0)``, so minutes of
simulated time pass in milliseconds, and the same seed and plan give the same
run. When the run fails, the exception carries a note that replays it.
"""

from __future__ import annotations

import collections
import functools
import random
from typing import TYPE_CHECKING, final

import trio
import trio.testing

from .._services._membership import MembershipConfig
from ..transports._memory import MemoryNetwork
from ._cluster import SimulatedCluster, open_simulated_cluster
from ._plan import FaultPlan, InvariantViolated

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence

    from .._runtime._node import Node

__all__ = ["Ledger", "eventually", "simulate"]


def _seed_scheduler(seed: int) -> None:
    # Trio shuffles each batch of runnable tasks with a private Random; hypothesis
    # seeds it per example, and so do we, so that a seed replays the same schedule.
    try:
        from trio._core import _run as run
    except ImportError:  # pragma: no cover (a future trio): schedules are then not replayed
        return
    rng = getattr(run, "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(seed)


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def simulate(
    scenario: Callable[[SimulatedCluster], Awaitable[object]],
    *,
    nodes: int = 3,
    seed: int = 0,
    plan: FaultPlan | str | None = None,
    invariants: Sequence[Callable[[SimulatedCluster], object]] = (),
    check_every: float | None = None,
    setup: Callable[[Node], Awaitable[None]] | None = None,
    config: MembershipConfig | None = None,
    latency: float = 0.001,
    formed: bool = True,
    timeout: float = 3600.0,
) -> None:
    """Run ``scenario(cluster)`` on ``nodes`` simulated nodes while ``plan`` runs.

    One ``trio.run`` under ``MockClock(autojump_threshold=0)``: the network,
    the membership and Trio's scheduler are all seeded from ``seed``, so a
    seed and a plan replay the same run. The plan starts with the scenario
    and runs to its end; ``invariants`` are checked after every step of the
    plan (and every ``check_every`` simulated seconds) and once more when
    both have finished.

    Args:
      scenario: an async function of the cluster: start work, wait for it,
        assert what must hold. It runs concurrently with the plan.
      nodes: how many nodes, named ``n0``, ``n1``, ...
      seed: seeds every random choice.
      plan: the faults (a :class:`FaultPlan` or its text); none by default.
      invariants: functions of the cluster that return ``False`` or raise
        ``AssertionError`` when something that must always hold does not.
      check_every: also check ``invariants`` this often (simulated seconds).
      setup: called with each node when it starts and after each restart:
        start your actors there.
      config: membership settings (default: ``MembershipConfig(seed=seed)``).
      latency: one-way delay of every frame, in simulated seconds.
      formed: the nodes start knowing each other (skip the joins).
      timeout: the whole run's limit in simulated seconds: a hang fails.

    Raises:
      InvariantViolated: an invariant did not hold.
      trio.TooSlowError: the run took more than ``timeout`` simulated seconds.
      FaultPlanError: the plan does not fit the nodes.
      Exception: whatever ``scenario`` raised (an ``AssertionError``, say).
      Every exception carries a note (``exc.__notes__``) with a call that
      replays the run.

    .. versionadded:: 0.1
    """
    if isinstance(plan, str):
        plan = FaultPlan.parse(plan)
    plan = plan if plan is not None else FaultPlan()

    async def main() -> None:
        network = MemoryNetwork(seed=seed, latency=latency, trace_limit=10_000)
        with trio.fail_after(timeout):
            async with open_simulated_cluster(
                nodes,
                seed=seed,
                network=network,
                config=config or MembershipConfig(seed=seed),
                formed=formed,
                setup=setup,
            ) as cluster:
                async with trio.open_nursery() as nursery:
                    if plan.steps:
                        nursery.start_soon(
                            functools.partial(
                                cluster.run_plan,
                                plan,
                                invariants=invariants,
                                check_every=check_every,
                            )
                        )
                    await scenario(cluster)
                cluster.check(invariants)
                nursery.cancel_scope.cancel()

    _seed_scheduler(seed)
    failure: Exception | None = None
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseException as exc:
        leaf = _leaf(exc)
        if not isinstance(leaf, Exception):
            raise
        name = getattr(scenario, "__qualname__", "scenario")
        leaf.add_note(
            f"replay: trioactors.testing.simulate({name}, nodes={nodes}, seed={seed}, "
            f"plan={plan!r})"
        )
        if leaf is exc:
            raise
        failure = leaf
    if failure is not None:
        # The one failure, not the nurseries around it; raised out here so that its
        # context is its own whichever nursery it came through (hypothesis tells
        # failures apart by their context: one bug stays one bug).
        raise failure


async def eventually(
    condition: Callable[[], object],
    *,
    within: float = 60.0,
    interval: float = 0.1,
    what: str = "",
) -> None:
    """Wait until ``condition()`` is true, checking every ``interval`` simulated seconds.

    For conditions that no event announces (the state of your actors, say).
    Under ``MockClock(autojump_threshold=0)`` the checks cost no real time and
    happen at the same simulated instants in every run. Prefer waiting on an
    event where there is one (``cluster.wait_converged()``).

    Raises:
      InvariantViolated: still false after ``within`` seconds.

    .. versionadded:: 0.1
    """
    deadline = trio.current_time() + within
    while not condition():
        if trio.current_time() >= deadline:
            name = what or getattr(condition, "__name__", "the condition")
            raise InvariantViolated(
                f"{name} did not hold within {within} s (simulated)", name=name, time=within
            )
        await trio.sleep(interval)


@final
class Ledger:
    """A record of what was sent and what arrived, to check delivery properties.

    Record each message's key as you send it (``sent``) and as it is handled
    (``received``), then check what your system promises: at-most-once
    (:meth:`check_no_duplicates`), nothing lost (:meth:`check_all_received`),
    nothing made up (:meth:`check_nothing_unexpected`).

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._sent: collections.Counter[Hashable] = collections.Counter()
        self._received: collections.Counter[Hashable] = collections.Counter()

    def sent(self, key: Hashable) -> None:
        """Record that the message ``key`` was sent (once more)."""
        self._sent[key] += 1

    def received(self, key: Hashable) -> None:
        """Record that the message ``key`` was handled (once more)."""
        self._received[key] += 1

    def missing(self) -> list[Hashable]:
        """Keys sent and never received."""
        return [key for key in self._sent if self._received[key] == 0]

    def duplicates(self) -> dict[Hashable, int]:
        """Keys received more often than they were sent, with how often."""
        return {key: n for key, n in self._received.items() if n > max(self._sent[key], 1)}

    def unexpected(self) -> list[Hashable]:
        """Keys received that were never sent."""
        return [key for key in self._received if self._sent[key] == 0]

    def check_no_duplicates(self) -> None:
        """Raise :class:`InvariantViolated` if a message was handled more than it was sent."""
        if dups := self.duplicates():
            raise InvariantViolated(
                f"handled more than once: {_few(dups.items())}", name="no duplicates"
            )

    def check_all_received(self) -> None:
        """Raise :class:`InvariantViolated` if a message sent was never handled."""
        if missing := self.missing():
            raise InvariantViolated(
                f"{len(missing)} of {len(self._sent)} never handled: {_few(missing)}",
                name="nothing lost",
            )

    def check_nothing_unexpected(self) -> None:
        """Raise :class:`InvariantViolated` if something was handled that nobody sent."""
        if unexpected := self.unexpected():
            raise InvariantViolated(
                f"handled but never sent: {_few(unexpected)}", name="nothing unexpected"
            )

    def __repr__(self) -> str:
        return (
            f"<Ledger sent={sum(self._sent.values())} received={sum(self._received.values())} "
            f"missing={len(self.missing())} duplicates={len(self.duplicates())}>"
        )


def _few(items: Iterable[object], limit: int = 10) -> str:
    listed = list(items)
    more = f" (and {len(listed) - limit} more)" if len(listed) > limit else ""
    return ", ".join(repr(item) for item in listed[:limit]) + more
