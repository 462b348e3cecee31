"""Membership in simulated clusters (in-memory network, MockClock).

There is no raw Trio baseline for a gossip protocol: here ``baseline`` is the
target the project set, and ``ratio`` is still "higher is better" (target /
ours for times and rounds; 60 s / real seconds for the simulation speed).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, TypeVarTuple

import trio
import trio.testing

from trioactors import Actor, MemberChanged, MembershipConfig, MemberState
from trioactors.testing import SimulatedCluster, open_simulated_cluster

from ._common import Result

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

__all__ = ["WORKLOADS"]

Ts = TypeVarTuple("Ts")

SIZES: Final = tuple(
    int(n) for n in os.environ.get("TRIOACTORS_BENCH_CLUSTERS", "10,100,1000").split(",")
)
"""Cluster sizes measured (``TRIOACTORS_BENCH_CLUSTERS=10,100`` for a quicker run)."""
LOSSY_MINUTES: Final = int(os.environ.get("TRIOACTORS_BENCH_LOSSY_MINUTES", "10"))
"""Simulated minutes of the false-death runs, up to 300 nodes."""
LOSSY_MINUTES_LARGE: Final = int(os.environ.get("TRIOACTORS_BENCH_LOSSY_MINUTES_LARGE", "2"))
"""The same above 300 nodes: at 1000 nodes and 5% loss, suspicions and their
refutations keep every node gossiping, more than a second of real time per
simulated second: ten minutes would take a quarter of an hour."""


@asynccontextmanager
async def _formed(size: int, seed: int) -> AsyncIterator[SimulatedCluster]:
    """A running cluster of ``size`` (started formed: see ``open_simulated_cluster``)."""
    config = MembershipConfig(seed=seed)
    async with open_simulated_cluster(size, seed=seed, config=config, formed=True) as cluster:
        await cluster.wait_until(lambda m: len(m.alive()) == size)
        gc.freeze()  # size**2 member records: out of the collector's way (see the docstring)
        try:
            yield cluster
        finally:
            gc.unfreeze()


async def _scale(size: int) -> list[Result]:
    async with _formed(size, seed=1) as cluster:
        config = cluster.config
        # a join into the running cluster
        start = trio.current_time()
        await cluster.add("newcomer")
        await cluster.wait_until(lambda m: "newcomer" in m.alive())
        join_time = trio.current_time() - start
        rounds = join_time / config.gossip_interval
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
            f"membership_join_time_{size}",
            round(join_time, 2),
            "s",
            round(bound * config.gossip_interval, 2),
            round(bound * config.gossip_interval / max(join_time, 1e-9), 3),
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


class _DeathRecorder(Actor[MemberChanged]):
    """Records every "dead" declaration its node makes (a membership subscriber)."""

    def __init__(self, node: str, deaths: set[tuple[str, str]]) -> None:
        self.node = node
        self.deaths = deaths

    async def receive(self, message: MemberChanged) -> None:
        if message.after.state is MemberState.DEAD:
            self.deaths.add((self.node, message.node))


async def _lossy(size: int, minutes: int) -> list[Result]:
    false_deaths: set[tuple[str, str]] = set()
    async with _formed(size, seed=2) as cluster:
        for name, membership in cluster.members.items():
            recorder = await cluster.nodes[name].root.start_actor(
                _DeathRecorder, name, false_deaths, name="$deaths"
            )  # (a $-name is not announced to the cluster: no names to gossip)
            membership.subscribe(recorder)
        cluster.network.drop(0.05)
        await trio.sleep(60 * minutes)
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


def membership(rounds: int) -> Iterator[Result]:
    """One run each (simulated times are not noisy), printed as they come."""
    del rounds
    for size in SIZES:
        yield from _run(_scale, size)
        yield from _run(_lossy, size, LOSSY_MINUTES if size <= 300 else LOSSY_MINUTES_LARGE)


WORKLOADS: dict[str, Callable[[int], Iterable[Result]]] = {"membership": membership}
