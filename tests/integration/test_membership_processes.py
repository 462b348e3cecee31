"""Membership across real OS processes on 127.0.0.1."""

from __future__ import annotations

import sys

import pytest
import trio
from _nodes import node_cluster

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


async def test_four_processes_join_agree_on_a_death_and_see_a_fifth_join() -> None:
    with trio.fail_after(90):
        async with node_cluster() as start:
            seed = await start("n1")
            nodes = [seed]
            for name in ("n2", "n3", "n4"):
                nodes.append(await start(name, join=[("n1", seed.address)]))
            names = {n.name for n in nodes}
            for node in nodes:  # everyone learns of everyone through the one seed
                await node.wait_until(
                    lambda p: all(p.states.get(o) == "alive" for o in names - {p.name})
                )

            victim = nodes[2]
            victim.kill()  # SIGKILL: no goodbye
            survivors = [n for n in nodes if n is not victim]
            for node in survivors:
                await node.wait_state(victim.name, "dead")

            late = await start("n5", join=[("n1", seed.address)])
            for node in survivors:
                await node.wait_state("n5", "alive")
            live = {n.name for n in survivors}
            await late.wait_until(lambda p: all(p.states.get(o) == "alive" for o in live))
            assert late.state_of(victim.name) in (None, "dead")

            for node in survivors:  # nobody but the victim was ever declared dead
                assert {e["node"] for e in node.deaths()} == {victim.name}
