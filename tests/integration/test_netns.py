"""Membership across three hosts on a real (virtual) network, through a partition.

Each host is a Linux network namespace with its own ``eth0``, cabled by a veth
pair to a bridge that lives in a fourth, "switch" namespace (see ``_hosts.py``
for the picture); host i has the address 10.231.0.(i+1). Each host runs one
``trioactors node --events`` process listening on its own address, so every
message between nodes crosses the bridge, and unplugging a host's cable at the
switch cuts it off the way a failed link does: packets vanish, nothing is
refused.

The test forms a cluster, unplugs one host until both sides of the partition
have declared the other dead, plugs it back in, and expects the cluster to heal.
Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2; skipped otherwise.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
import trio
from _hosts import netns_unavailable, open_hosts
from _nodes import node_cluster

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _hosts import Network
    from _nodes import NodeProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux network namespaces")

# Default SWIM on three nodes: a silent member is suspected within a few 1 s
# periods and declared dead 4 s later; 20 s leaves room for a loaded machine.
DETECTION_TIMEOUT = 20
# One reconnect interval (30 s by default), after which each side has tried to
# sync with a member it holds dead, plus room for the refutations to be gossiped.
HEAL_TIMEOUT = 40


class NotHealed(AssertionError):
    """After the partition healed, the nodes did not all see each other alive again."""


def sees_others_alive(node: NodeProcess, names: set[str]) -> bool:
    return all(node.states.get(other) == "alive" for other in names - {node.name})


async def wait_all_alive(nodes: list[NodeProcess]) -> None:
    """Wait until every node sees every other alive, all at the same moment."""
    names = {node.name for node in nodes}
    while not all(sees_others_alive(node, names) for node in nodes):
        for node in nodes:
            await node.wait_until(lambda p: sees_others_alive(p, names))


def states_since(node: NodeProcess, mark: int, about: str) -> list[str]:
    """The states ``node`` reported for ``about`` in its events from index ``mark`` on."""
    return [event["state"] for event in node.events[mark:] if event["node"] == about]


@pytest.fixture
def network() -> Iterator[Network]:
    """Three hosts on one switch (a sync fixture, so a skip keeps its reason)."""
    if (reason := netns_unavailable()) is not None:
        pytest.skip(reason)
    with open_hosts(3) as network:
        yield network


# 30-45 s: in the faults session; the default run keeps a partitioned host on real links
# through tests/integration/test_job_faults_netns.py
@pytest.mark.faults
async def test_a_partitioned_host_is_declared_dead_then_rejoins_after_healing(
    network: Network,
) -> None:
    isolated_host = network.hosts[-1]
    async with node_cluster() as start:
        nodes: list[NodeProcess] = []
        with trio.fail_after(30):
            for i, host in enumerate(network.hosts, start=1):
                seeds = [(nodes[0].name, nodes[0].address)] if nodes else []
                node = await start(f"host-{i}", join=seeds, host=host.address, prefix=host.prefix)
                assert node.address.startswith(f"ws://{host.address}:")
                nodes.append(node)
            await wait_all_alive(nodes)

        *majority, isolated = nodes
        marks = {node.name: len(node.events) for node in nodes}
        network.unplug(isolated_host)
        with trio.fail_after(DETECTION_TIMEOUT):
            for node in majority:
                await node.wait_state(isolated.name, "dead")
            for node in majority:
                await isolated.wait_state(node.name, "dead")
        for node in majority:  # each side suspects the other first, then declares it dead
            found_out = ["suspect", "dead"]
            assert states_since(node, marks[node.name], isolated.name) == found_out
            assert states_since(isolated, marks[isolated.name], node.name) == found_out
        first, second = majority
        for node, peer in ((first, second), (second, first)):  # still talk to each other
            assert "dead" not in states_since(node, marks[node.name], peer.name)
            assert node.states[peer.name] == "alive"

        network.plug(isolated_host)
        with trio.move_on_after(HEAL_TIMEOUT) as healing:
            await wait_all_alive(nodes)
        if healing.cancelled_caught:
            views = {node.name: node.states for node in nodes}
            raise NotHealed(f"{HEAL_TIMEOUT} s after the partition healed, the views are {views}")
