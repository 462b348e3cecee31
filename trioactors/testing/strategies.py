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


_Raw = tuple[float, str, int, float, float]


def _interpret(
    raw: list[_Raw],
    names: list[str],
    duration: float,
    max_down: int,
    settle: bool,
    max_rate: float,
    max_delay: float,
) -> FaultPlan:
    """Turn drawn tuples into a valid plan, skipping steps that cannot run.

    Each step is drawn as plain numbers (time, kind, a number that picks the
    node or the partition, two fractions for rates and delays) so that
    hypothesis shrinks a plan by deleting steps and moving the rest towards
    time 0, the mildest kind and the first node, and every shrunk list is
    still a valid plan.
    """
    down: list[str] = []
    steps: list[Step] = []
    for at, kind, pick, x, y in sorted(raw, key=lambda r: r[0]):
        up = [name for name in names if name not in down]
        fault: Fault
        match kind:
            case "heal":
                fault = Heal()
            case "clear":
                fault = Clear()
            case "delay":
                low = round(x * max_delay, 3)
                fault = Delay(low, round(low + y * (max_delay - low), 3))
            case "drop":
                fault = Drop(round(x * max_rate, 3))
            case "duplicate":
                fault = Duplicate(round(x * max_rate, 3))
            case "reorder":
                fault = Reorder(round(x * max_rate, 3))
            case "partition":
                side = [name for i, name in enumerate(names) if pick >> i & 1]
                if len(names) < 2 or not side or len(side) == len(names):
                    continue
                fault = Partition(tuple(side))
            case "crash":
                if len(down) >= max_down or not up:
                    continue
                node = up[pick % len(up)]
                down.append(node)
                fault = Crash(node)
            case _:
                if not down:
                    continue
                node = down.pop(pick % len(down))
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
    # integers (milliseconds, thousandths) rather than floats: hypothesis shrinks them in
    # a few steps, so its shrinking budget goes to deleting and simplifying steps
    fraction = st.integers(0, 1000).map(lambda n: n / 1000)
    raw = st.lists(
        st.tuples(
            st.integers(0, round(duration * 1000)).map(lambda ms: ms / 1000),
            st.sampled_from([kind for kind in FAULT_KINDS if kind in chosen]),
            st.integers(0, 2 ** len(names) - 1),
            fraction,
            fraction,
        ),
        max_size=max_steps,
    )
    return raw.map(
        lambda r: _interpret(r, names, float(duration), down, settle, max_rate, max_delay)
    )
