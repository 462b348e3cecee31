"""A node that stops dead for a while (SIGSTOP), shorter than the suspicion timeout.

The situation Lifeguard was built for, taken to the extreme: the paused node
answers nothing, so the others suspect it; when it wakes it finds acks that
are late and rumours about itself. It must refute them in time, and nobody,
the paused node included, may declare a live member dead.

``TRIOACTORS_FAULTS_PAUSES`` sets how many pauses (default 10) and
``TRIOACTORS_FAULTS_PAUSE`` their length in seconds (default 2.5; the
suspicion timeout of four nodes is 4 s).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import pytest
import trio
from _nodes import NodeProcess, node_cluster
from test_cpu_contention import Tally

if TYPE_CHECKING:
    from collections.abc import Callable

PAUSES = int(os.environ.get("TRIOACTORS_FAULTS_PAUSES", "10"))
PAUSE = float(os.environ.get("TRIOACTORS_FAULTS_PAUSE", "2.5"))
NAMES = ("n1", "n2", "n3", "n4")

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


def everyone_alive(node: NodeProcess) -> bool:
    return all(node.states.get(other) == "alive" for other in NAMES if other != node.name)


async def test_pauses_shorter_than_the_suspicion_timeout_never_kill(
    record_property: Callable[[str, Any], None],
) -> None:
    with trio.fail_after(60 + PAUSES * (PAUSE + 30)):
        async with node_cluster() as start:
            seed = await start("n1")
            nodes = [seed]
            for name in NAMES[1:]:
                nodes.append(await start(name, join=[("n1", seed.address)]))
            for node in nodes:
                await node.wait_until(everyone_alive)

            paused = nodes[2]
            for _ in range(PAUSES):
                paused.process.send_signal(signal.SIGSTOP)
                # the pause itself: the fault being injected, not a wait for something
                await trio.sleep(PAUSE)
                paused.process.send_signal(signal.SIGCONT)
                with trio.fail_after(30):  # every suspicion refuted before the next pause
                    for node in nodes:
                        await node.wait_until(everyone_alive)

            tallies = [Tally.of(node) for node in nodes]
            print(f"\n{PAUSES} pauses of {PAUSE}s of {paused.name}")
            for tally in tallies:
                print(tally.line())
                record_property(f"{tally.node}_suspects", tally.suspects.total())
            false_deaths = {t.node: t.deaths for t in tallies if t.deaths}
            assert not false_deaths, f"live members declared dead: {false_deaths}"
