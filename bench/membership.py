"""Membership in simulated clusters (in-memory network, MockClock).

There is no raw Trio baseline for a gossip protocol: here ``baseline`` is the
target the project set, and ``ratio`` is still "higher is better" (target /
ours for times and rounds; 60 s / real seconds for the simulation speed).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import TYPE_CHECKING, Final, TypeVarTuple

import trio
import trio.testing

from trioactors import MembershipConfig, MemberState
from trioactors.testing import open_simulated_cluster

from ._common import Result

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["WORKLOADS"]

Ts = TypeVarTuple("Ts")

SIZE: Final = int(os.environ.get("TRIOACTORS_BENCH_CLUSTER", "200"))
"""Cluster size of the scale lines; the goal is 1000 (TRIOACTORS_BENCH_CLUSTER=1000), which
today takes minutes of real time to form, so the default stays at 200."""
LOSSY_SIZE: Final = 100
LOSSY_MINUTES: Final = 10


async def _scale(size: int) -> list[Result]:
    config = MembershipConfig(seed=1)
    async with open_simulated_cluster(size, seed=1, config=config) as cluster:
        await cluster.wait_until(lambda m: len(m.alive()) == size)
        # a join into the running cluster
        start = trio.current_time()
        await cluster.add("newcomer")
        await cluster.wait_until(lambda m: "newcomer" in m.alive())
        rounds = (trio.current_time() - start) / config.gossip_interval
        bound = 3 * math.log2(size + 1) + 5
        # one simulated minute of steady state
        wall = time.perf_counter()
        await trio.sleep(60)
        minute = time.perf_counter() - wall
        # a crash
        start = trio.current_time()
        cluster.crash("n3")
        await cluster.wait_until(lambda m: m.view.get("n3").state is MemberState.DEAD)  # type: ignore[union-attr]
        detected = trio.current_time() - start
        target = config.detection_time(size + 1) + 2 * config.swim.protocol_period
    return [
        Result(
            f"membership_join_rounds_{size}",
            round(rounds, 2),
            "rounds",
            round(bound, 2),
            round(bound / max(rounds, 1e-9), 3),
        ),
        Result(
            f"membership_crash_detected_by_all_{size}",
            round(detected, 2),
            "s",
            round(target, 2),
            round(target / detected, 3),
        ),
        Result(
            f"membership_sim_minute_real_time_{size}",
            round(minute, 2),
            "s",
            60.0,
            round(60.0 / minute, 3),
        ),
    ]


async def _lossy(size: int, minutes: int) -> list[Result]:
    async with open_simulated_cluster(size, seed=2) as cluster:
        await cluster.wait_until(lambda m: len(m.alive()) == size)
        cluster.network.drop(0.05)
        false_deaths: set[tuple[str, str]] = set()
        end = trio.current_time() + 60 * minutes
        while trio.current_time() < end:
            await trio.sleep(1)
            for name, membership in cluster.members.items():
                false_deaths.update(
                    (name, dead) for dead in membership.view.in_state(MemberState.DEAD)
                )
    count = len(false_deaths)
    return [
        Result(
            f"membership_false_deaths_{size}_nodes_{minutes}min_5pct_loss",
            count,
            "declarations",
            0,
            round(1 / (1 + count), 3),
        )
    ]


def _run(fn: Callable[[*Ts], Awaitable[list[Result]]], *args: *Ts) -> list[Result]:
    logging.disable(logging.WARNING)  # a crashed node makes its peers log every failed send
    try:
        return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logging.disable(logging.NOTSET)


def membership(rounds: int) -> list[Result]:
    del rounds  # one run each: these are simulated times, not noisy wall-clock ones
    return [*_run(_scale, SIZE), *_run(_lossy, LOSSY_SIZE, LOSSY_MINUTES)]


WORKLOADS: dict[str, Callable[[int], list[Result]]] = {"membership": membership}
