"""Four node processes share the CPU with a busy loop: suspicion is allowed, false deaths are not.

A pure-Python busy loop in another process holds one of the machine's cores
for the whole observation window, so the nodes' probes and acks run late.
SWIM may then suspect a live member (the member refutes it at a higher
incarnation); it must never declare a live member dead.

``TRIOACTORS_FAULTS_DURATION`` sets the observation window in seconds
(default 120); ``TRIOACTORS_FAULTS_BUSY_CORES`` the number of busy loops
(default 1). Each node's suspect and dead counts are printed (``nox -s faults``
runs pytest with ``-s``, which shows them) and recorded as test properties.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from _nodes import NodeProcess, node_cluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

DURATION = float(os.environ.get("TRIOACTORS_FAULTS_DURATION", "120"))
BUSY_CORES = int(os.environ.get("TRIOACTORS_FAULTS_BUSY_CORES", "1"))
NAMES = frozenset({"n1", "n2", "n3", "n4"})
SETTLE = 30  # seconds for the views to agree again once the window closes

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes"),
]


@asynccontextmanager
async def busy_cores(count: int) -> AsyncIterator[None]:
    """Keep ``count`` cores busy with busy-loop processes; kill them on exit."""
    loops: list[trio.Process] = []
    try:
        for _ in range(count):
            command = [sys.executable, "-c", "while True: pass"]
            loops.append(await trio.lowlevel.open_process(command))
        yield
    finally:
        with trio.CancelScope(shield=True):
            for loop in loops:
                loop.kill()
                await loop.wait()


def everyone_alive(node: NodeProcess) -> bool:
    return all(node.states.get(other) == "alive" for other in NAMES - {node.name})


@attrs.frozen
class Tally:
    """What one node saw of the others during the run."""

    node: str
    suspects: Counter[str]  # suspected member -> how often
    refuted: int  # suspicions ended by the member showing up alive again
    deaths: list[str]  # "n3 at 41.2s (suspected at 37.1s)", in this node's own clock

    @classmethod
    def of(cls, node: NodeProcess) -> Tally:
        suspects: Counter[str] = Counter()
        suspected_at: dict[str, float] = {}
        refuted = 0
        deaths = []
        for event in node.events:
            member, state, time = event["node"], event["state"], event["time"]
            if state == "suspect":
                suspects[member] += 1
                suspected_at[member] = time
            elif state == "alive" and member in suspected_at:
                refuted += 1
                del suspected_at[member]
            elif state == "dead":
                since = suspected_at.pop(member, None)
                how = f"suspected at {since:.3f}s" if since is not None else "never suspected"
                deaths.append(
                    f"{member} at {time:.3f}s ({how}, incarnation {event['incarnation']})"
                )
        return cls(node.name, suspects, refuted, deaths)

    def line(self) -> str:
        by_member = ", ".join(f"{m}x{k}" for m, k in sorted(self.suspects.items()))
        return (
            f"{self.node}: {self.suspects.total()} suspect ({by_member or 'none'}), "
            f"{self.refuted} refuted, {len(self.deaths)} dead"
            + "".join(f"\n    dead: {d}" for d in self.deaths)
        )


async def test_a_busy_core_causes_suspicion_at_most_never_a_false_death(
    record_property: Callable[[str, Any], None],
) -> None:
    with trio.fail_after(DURATION + 180):
        async with busy_cores(BUSY_CORES), node_cluster() as start:
            seed = await start("n1")
            nodes = [seed]
            for name in sorted(NAMES - {"n1"}):
                nodes.append(await start(name, join=[("n1", seed.address)]))
            for node in nodes:  # everyone learns of everyone through the one seed
                await node.wait_until(everyone_alive)
            formed = trio.current_time()

            # The observation window itself, not a wait for something: the
            # cluster runs on its own under contention for this long, and what
            # it did meanwhile is in each node's events.
            await trio.sleep(DURATION)

            observed = trio.current_time() - formed
            exited = {
                n.name: n.process.returncode for n in nodes if n.process.returncode is not None
            }
            tallies = [Tally.of(node) for node in nodes]
            print(
                f"\n{len(nodes)} nodes, {BUSY_CORES} busy core(s), "
                f"observed {observed:.1f}s after the cluster formed "
                "(times below: seconds since that node started)"
            )
            for tally in tallies:
                print(tally.line())
                record_property(f"{tally.node}_suspects", tally.suspects.total())
                record_property(f"{tally.node}_deaths", len(tally.deaths))
            record_property("suspects", sum(t.suspects.total() for t in tallies))
            record_property("deaths", sum(len(t.deaths) for t in tallies))
            record_property("observed_seconds", round(observed, 1))

            assert not exited, f"node processes exited during the run: {exited}"
            false_deaths = {t.node: t.deaths for t in tallies if t.deaths}
            assert not false_deaths, f"live members declared dead: {false_deaths}"
            with trio.fail_after(SETTLE):  # every suspicion still open gets refuted
                for node in nodes:
                    await node.wait_until(everyone_alive)
