"""Simulated clusters under MockClock: the issue's membership targets."""

from __future__ import annotations

import logging
import math

import pytest
import trio
import trio.testing

from trioactors import MembershipConfig, MemberState
from trioactors.testing import open_simulated_cluster


@pytest.fixture(autouse=True)
def _quiet() -> object:
    # a crashed node makes its peers log every failed send; that is expected here
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("size", [20, 100])
async def test_a_cluster_forms_by_joins_through_one_seed(
    autojump_clock: trio.testing.MockClock, size: int
) -> None:
    with trio.fail_after(120):
        async with open_simulated_cluster(size, seed=size) as cluster:
            await cluster.wait_until(lambda m: len(m.alive()) == size)


@pytest.mark.parametrize("size", [20, 100, 200])
async def test_join_spreads_and_a_crash_is_detected_by_all(
    autojump_clock: trio.testing.MockClock, size: int
) -> None:
    config = MembershipConfig(seed=size)
    with trio.fail_after(600):
        async with open_simulated_cluster(size, seed=size, config=config, formed=True) as cluster:
            # a node joins a running cluster: every member learns of it
            start = trio.current_time()
            await cluster.add("newcomer")
            await cluster.wait_until(lambda m: "newcomer" in m.alive())
            rounds = (trio.current_time() - start) / config.gossip_interval
            assert rounds <= 3 * math.log2(size + 1) + 5

            # a node crashes: every survivor declares it dead and stops routing to it
            start = trio.current_time()
            cluster.crash("n3")
            await cluster.wait_until(lambda m: m.view.get("n3").state is MemberState.DEAD)  # type: ignore[union-attr]
            detected = trio.current_time() - start
            assert detected <= config.detection_time(size + 1) + 2 * config.swim.protocol_period
            for name in cluster.running():
                membership = cluster.members[name]
                assert "n3" not in membership.node.transport.peers()
                assert len(membership.alive()) == size


async def test_a_healed_partition_rejoins(autojump_clock: trio.testing.MockClock) -> None:
    size = 12
    config = MembershipConfig(seed=7)
    with trio.fail_after(600):
        async with open_simulated_cluster(size, seed=7, config=config, formed=True) as cluster:
            minority = ["n0", "n1", "n2"]
            majority = [n for n in cluster.running() if n not in minority]
            cluster.network.partition(minority)
            # each side declares the other dead and takes it out of routing
            await cluster.wait_until(
                lambda m: all(
                    m.view.get(other).state is MemberState.DEAD  # type: ignore[union-attr]
                    for other in (majority if m.node.name in minority else minority)
                )
            )
            for name in majority:
                assert not set(minority) & set(cluster.members[name].node.transport.peers())
            false_deaths: list[tuple[str, str]] = []

            async def watch(name: str) -> None:
                # (the other side's old verdicts must not kill anyone on this side)
                membership = cluster.members[name]
                while True:
                    for other in majority:
                        member = membership.view.get(other)
                        if member is not None and member.state is MemberState.DEAD:
                            false_deaths.append((name, other))
                    await membership.wait_changed()

            async with trio.open_nursery() as watchers:
                for name in majority:
                    watchers.start_soon(watch, name)
                cluster.network.heal()
                # within a reconnect interval (plus gossip), everyone is back
                start = trio.current_time()
                await cluster.wait_until(lambda m: len(m.alive()) == size)
                assert trio.current_time() - start <= config.reconnect_interval + 10
                watchers.cancel_scope.cancel()
            assert false_deaths == []


async def test_no_false_deaths_under_message_loss(autojump_clock: trio.testing.MockClock) -> None:
    size = 30
    with trio.fail_after(600):
        async with open_simulated_cluster(size, seed=5) as cluster:
            await cluster.wait_until(lambda m: len(m.alive()) == size)
            cluster.network.drop(0.05)
            end = trio.current_time() + 120
            while trio.current_time() < end:
                await trio.sleep(1)
                for membership in cluster.members.values():
                    assert membership.view.in_state(MemberState.DEAD) == []
