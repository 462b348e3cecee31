"""Timing helpers and result printing shared by the workloads.

Every measurement is one ``trio.run`` that returns the wall time (from
``time.perf_counter``) of the work alone: setup such as starting actors and
teardown such as stopping them are outside the timed region. Candidates are
run interleaved, in an order that rotates every round, and the best (lowest)
time of each is kept: on a noisy machine the minimum is the estimate least
disturbed by other processes.
"""

from __future__ import annotations

import gc
import json
import sys
from typing import TYPE_CHECKING, Final, TypeVarTuple, final

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["GUARD", "Result", "best_of", "emit", "latency", "throughput", "timed_run"]

Ts = TypeVarTuple("Ts")

GUARD: Final = 60.0
"""Seconds any single measurement may take before it fails instead of hanging."""


def timed_run(fn: Callable[[*Ts], Awaitable[float]], *args: *Ts) -> float:
    """Run ``fn(*args)`` in a fresh ``trio.run`` and return the seconds it reports.

    A full collection first, so garbage left by the previous run is not
    charged to this one. The garbage collector stays enabled while it runs:
    allocation is part of the cost being measured.
    """
    gc.collect()

    async def guarded() -> float:
        with trio.fail_after(GUARD):
            return await fn(*args)

    return trio.run(guarded)


def best_of(rounds: int, candidates: Mapping[str, Callable[[], float]]) -> dict[str, float]:
    """The lowest time of each candidate over ``rounds`` interleaved rounds.

    Each round runs every candidate once; the starting candidate rotates from
    round to round so neither side always runs first (warm caches, a busy
    neighbour) and the sides share the machine's noise.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, not {rounds}")
    names = list(candidates)
    best = dict.fromkeys(names, float("inf"))
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            best[name] = min(best[name], candidates[name]())
    return best


@final
@attrs.frozen
class Result:
    """One output line. ``ratio`` is always "higher is better" for trioactors."""

    name: str
    value: float
    unit: str
    baseline: float
    ratio: float


def throughput(name: str, count: int, ours: float, baseline: float, unit: str) -> Result:
    """Items per second; ratio = ours / baseline. Times are in seconds."""
    ours_rate = count / ours
    base_rate = count / baseline
    return Result(
        name, round(ours_rate, 1), unit, round(base_rate, 1), round(ours_rate / base_rate, 3)
    )


def latency(name: str, count: int, ours: float, baseline: float) -> Result:
    """Microseconds per operation; ratio = baseline time / our time."""
    ours_us = ours / count * 1e6
    base_us = baseline / count * 1e6
    return Result(name, round(ours_us, 2), "us", round(base_us, 2), round(base_us / ours_us, 3))


def emit(result: Result) -> None:
    """Print ``result`` as one JSON object on its own line, and flush."""
    sys.stdout.write(json.dumps(attrs.asdict(result)) + "\n")
    sys.stdout.flush()
