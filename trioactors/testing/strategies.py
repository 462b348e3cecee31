"""Hypothesis strategies that draw fault plans (needs ``hypothesis``: ``pip install trioactors[test]``).

::

    from hypothesis import given, settings
    from trioactors.testing import simulate
    from trioactors.testing.strategies import fault_plans

    @settings(max_examples=50, deadline=None)
    @given(plan=fault_plans(3, duration=60))
    def test_my_actors_survive(plan):
        simulate(my_scenario, nodes=3, plan=plan)

Every plan drawn is valid for its nodes (only running nodes crash, only
crashed ones restart), keeps a majority of the nodes up unless told
otherwise, and by default ends by *settling*: every fault cleared and every
crashed node restarted, so that what must hold "eventually" can be checked
after it. Hypothesis shrinks a failing plan towards fewer, earlier, milder
faults and prints it as ``FaultPlan.parse('...')``, which replays it.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import strategies as st

from ._plan import (
    Clear,
    Crash,
    Delay,
    Drop,
    Duplicate,
    Fault,
    FaultPlan,
    FaultPlanError,
    Heal,
    Partition,
    Reorder,
    Restart,
    Step,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["FAULT_KINDS", "fault_plans", "node_names", "partitions"]

# in the order hypothesis shrinks towards: milder first
FAULT_KINDS: tuple[str, ...] = (
    "heal",
    "clear",
    "delay",
    "drop",
    "duplicate",
    "reorder",
    "partition",
    "crash",
    "restart",
)
"""Every fault a drawn plan may contain, mildest first."""


def node_names(nodes: int | Sequence[str]) -> list[str]:
    """``["n0", "n1", ...]`` for a count (the names :func:`simulate` gives), or the names given."""
    if isinstance(nodes, int):
        if nodes < 1:
            raise FaultPlanError(f"a cluster needs at least one node, not {nodes}")
        return [f"n{i}" for i in range(nodes)]
    names = list(nodes)
    if not names or len(set(names)) != len(names):
        raise FaultPlanError(f"node names must be distinct and not empty: {names}")
    return names


def partitions(nodes: int | Sequence[str]) -> st.SearchStrategy[Partition]:
    """A :class:`Partition` of some of ``nodes`` against the rest (both sides non-empty)."""
    names = node_names(nodes)
    if len(names) < 2:
        raise FaultPlanError("a partition needs at least two nodes")
    return (
        st.lists(st.sampled_from(names), min_size=1, max_size=len(names) - 1, unique=True)
        .map(sorted)
        .map(lambda side: Partition(tuple(side)))
    )


def _rates(high: float) -> st.SearchStrategy[float]:
    return st.floats(0.0, high).map(lambda rate: round(rate, 3))


@st.composite
def _plan(
    draw: st.DrawFn,
    names: list[str],
    duration: float,
    max_steps: int,
    kinds: frozenset[str],
    max_down: int,
    settle: bool,
    max_rate: float,
    max_delay: float,
) -> FaultPlan:
    count = draw(st.integers(0, max_steps))
    times = sorted(
        draw(
            st.lists(
                st.floats(0.0, duration).map(lambda t: round(t, 3)),
                min_size=count,
                max_size=count,
            )
        )
    )
    down: list[str] = []
    steps: list[Step] = []
    for at in times:
        up = [name for name in names if name not in down]
        possible = [
            kind
            for kind in FAULT_KINDS
            if kind in kinds
            and (kind != "crash" or len(down) < max_down)
            and (kind != "restart" or down)
            and (kind != "partition" or len(names) >= 2)
        ]
        if not possible:
            break
        kind = draw(st.sampled_from(possible))
        fault: Fault
        match kind:
            case "heal":
                fault = Heal()
            case "clear":
                fault = Clear()
            case "delay":
                low = round(draw(st.floats(0.0, max_delay)), 3)
                fault = Delay(low, round(draw(st.floats(low, max_delay)), 3))
            case "drop":
                fault = Drop(draw(_rates(max_rate)))
            case "duplicate":
                fault = Duplicate(draw(_rates(max_rate)))
            case "reorder":
                fault = Reorder(draw(_rates(max_rate)))
            case "partition":
                fault = draw(partitions(names))
            case "crash":
                node = draw(st.sampled_from(up))
                down.append(node)
                fault = Crash(node)
            case _:
                node = draw(st.sampled_from(down))
                down.remove(node)
                fault = Restart(node)
        steps.append(Step(at, fault))
    if settle:
        steps.append(Step(duration, Clear()))
        steps.extend(Step(duration, Restart(node)) for node in sorted(down))
    return FaultPlan(steps)


def fault_plans(
    nodes: int | Sequence[str] = 3,
    *,
    duration: float = 60.0,
    max_steps: int = 8,
    kinds: Iterable[str] = FAULT_KINDS,
    max_down: int | None = None,
    settle: bool = True,
    max_rate: float = 0.5,
    max_delay: float = 1.0,
) -> st.SearchStrategy[FaultPlan]:
    """Fault plans for a cluster of ``nodes`` (a count, or the names).

    Args:
      nodes: how many nodes (named ``n0``, ``n1``, ... as :func:`simulate`
        names them) or their names.
      duration: steps fall within ``[0, duration]`` simulated seconds.
      max_steps: at most this many faults (before settling).
      kinds: which faults to draw, from :data:`FAULT_KINDS`.
      max_down: at most this many nodes crashed at once (default: a
        minority, ``(len(nodes) - 1) // 2``, so a majority stays up).
      settle: end with ``clear`` and a restart of every crashed node at
        ``duration``.
      max_rate: the highest drop, duplicate and reorder rate drawn.
      max_delay: the longest extra delay drawn, in seconds.

    Raises:
      FaultPlanError: an unknown kind, or no nodes.

    .. versionadded:: 0.1
    """
    names = node_names(nodes)
    chosen = frozenset(kinds)
    if unknown := chosen - set(FAULT_KINDS):
        raise FaultPlanError(
            f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}"
        )
    if not duration > 0.0:
        raise FaultPlanError(f"duration must be positive, not {duration}")
    down = (len(names) - 1) // 2 if max_down is None else max_down
    return _plan(names, float(duration), max_steps, chosen, down, settle, max_rate, max_delay)
