"""The fault-plan language: reading, writing, checking, and the strategies that draw plans."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioactors.testing import (
    Clear,
    Crash,
    Delay,
    Drop,
    Duplicate,
    FaultPlan,
    FaultPlanError,
    Heal,
    Partition,
    Reorder,
    Restart,
    Step,
)
from trioactors.testing.strategies import FAULT_KINDS, fault_plans, node_names, partitions

NODES = ["n0", "n1", "n2", "n3", "n4"]


def test_every_fault_reads_and_writes_back() -> None:
    text = """
        # a comment, then one step per line
        at 0 drop 0.1
        at 1.5 crash n1
        at 3 delay 0.05 0.2 between n0 | n1 n2
        at 3.5 delay 0.25
        at 4 partition n0 n1 | n2; at 4.5 partition n3   # two on one line
        at 5 duplicate 0.2; at 5 reorder 0.3; at 6 drop 0.5 between n4
        at 9 heal; at 10 clear
        at 12 restart n1
    """
    plan = FaultPlan.parse(text)
    assert [step.fault for step in plan] == [
        Drop(0.1),
        Crash("n1"),
        Delay(0.05, 0.2, between=(("n0",), ("n1", "n2"))),
        Delay(0.25),
        Partition(("n0", "n1"), ("n2",)),
        Partition(("n3",)),
        Duplicate(0.2),
        Reorder(0.3),
        Drop(0.5, between=(("n4",), ())),
        Heal(),
        Clear(),
        Restart("n1"),
    ]
    assert str(plan).splitlines()[2] == "at 3 delay 0.05 0.2 between n0 | n1 n2"
    assert FaultPlan.parse(str(plan)) == plan
    assert eval(repr(plan), {"FaultPlan": FaultPlan}) == plan
    assert repr(plan).startswith("FaultPlan.parse('at 0 drop 0.1; at 1.5 crash n1; ")
    assert plan.duration == 12
    assert plan.nodes() == set(NODES)
    assert len(plan) == 12


def test_steps_are_sorted_by_time_and_ties_keep_their_order() -> None:
    plan = FaultPlan([Step(5, Heal()), Step(1, Crash("n1")), Step(5, Restart("n1"))])
    assert [str(s) for s in plan] == ["at 1 crash n1", "at 5 heal", "at 5 restart n1"]
    assert FaultPlan.parse("at 2 heal; at 1 crash n0").steps[0].fault == Crash("n0")


def test_an_empty_plan() -> None:
    assert FaultPlan.parse("  \n# nothing\n;") == FaultPlan()
    assert str(FaultPlan()) == ""
    assert FaultPlan().duration == 0
    assert repr(FaultPlan()) == "FaultPlan.parse('')"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("crash n1", "a step reads 'at SECONDS FAULT"),
        ("at soon crash n1", "the time must be a number"),
        ("at -1 crash n1", "seconds >= 0"),
        ("at inf crash n1", "must be finite"),
        ("at 1 explode n1", "unknown fault 'explode'"),
        ("at 1 crash", "'crash' takes 1 argument(s), not 0"),
        ("at 1 crash n1 n2", "'crash' takes 1 argument(s), not 2"),
        ("at 1 heal now", "'heal' takes 0 argument(s)"),
        ("at 1 drop 1.5", "a rate is a probability between 0 and 1"),
        ("at 1 drop lots", "the rate must be a number"),
        ("at 1 delay 2 1", "0 <= low <= high"),
        ("at 1 delay", "'delay' takes 1 to 2 argument(s)"),
        ("at 1 partition n0 | n0", "on both sides"),
        ("at 1 partition | n0", "at least one node on its first side"),
        ("at 1 partition n0 | n1 | n2", "at most one '|'"),
        ("at 1 crash n$", "is not a node name"),
        ("at 1 drop 0.1 between", "at least one node"),
    ],
)
def test_bad_plans_say_which_step_and_why(text: str, says: str) -> None:
    with pytest.raises(FaultPlanError, match=r"step 1 .*") as info:
        FaultPlan.parse(f"at 0 heal\n{text}".replace("at 0 heal\n", ""))
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


def test_the_step_number_is_the_failing_one() -> None:
    with pytest.raises(FaultPlanError, match=r"^step 3 \('at 2 crash'\)"):
        FaultPlan.parse("at 0 heal; at 1 heal\nat 2 crash")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("at 1 crash n9", "no node named n9; the nodes are n0, n1, n2, n3, n4"),
        ("at 1 partition n0 | x", "no node named x"),
        ("at 1 crash n1; at 2 crash n1", "step 2 (at 2 crash n1): n1 is down already"),
        ("at 1 restart n1", "n1 is running; only a crashed node restarts"),
        ("at 1 crash n1; at 2 restart n1; at 3 restart n1", "step 3"),
    ],
)
def test_check_catches_plans_that_cannot_run(text: str, says: str) -> None:
    with pytest.raises(FaultPlanError) as info:
        FaultPlan.parse(text).check(NODES)
    assert says in str(info.value)


def test_check_knows_which_nodes_are_down_already() -> None:
    plan = FaultPlan.parse("at 1 restart n2")
    assert plan.check(NODES, down=["n2"]) is plan
    assert plan.down_at_end() == set()
    assert FaultPlan.parse("at 1 crash n1; at 2 crash n2; at 3 restart n1").down_at_end() == {"n2"}


# -- the strategies ----------------------------------------------------------------------


@given(fault_plans(NODES, max_steps=12))
def test_drawn_plans_read_back_and_can_run(plan: FaultPlan) -> None:
    assert FaultPlan.parse(str(plan)) == plan
    assert eval(repr(plan), {"FaultPlan": FaultPlan}) == plan
    plan.check(NODES)
    assert plan.down_at_end() == set()  # settled: every crashed node restarted
    assert plan.duration <= 60


@given(st.data())
def test_a_majority_stays_up_and_kinds_are_respected(data: st.DataObject) -> None:
    nodes = data.draw(st.integers(1, 7))
    kinds = data.draw(st.sets(st.sampled_from(FAULT_KINDS), min_size=1))
    plan = data.draw(fault_plans(nodes, kinds=kinds, settle=False, duration=10))
    down: set[str] = set()
    for step in plan:
        assert type(step.fault).__name__.lower() in kinds
        match step.fault:
            case Crash(node):
                down.add(node)
            case Restart(node):
                down.discard(node)
            case _:
                pass
        assert len(down) <= (nodes - 1) // 2


@given(fault_plans(3, max_down=2, kinds=["crash"], max_steps=5, duration=5))
def test_max_down_lets_a_majority_crash(plan: FaultPlan) -> None:
    assert len(plan.steps) <= 5 + 2 + 1  # faults, restarts and the final clear
    plan.check(node_names(3))


def test_strategy_arguments_are_checked() -> None:
    with pytest.raises(FaultPlanError, match="unknown fault kinds"):
        fault_plans(3, kinds=["meteor"])
    with pytest.raises(FaultPlanError, match="at least one node"):
        fault_plans(0)
    with pytest.raises(FaultPlanError, match="distinct"):
        fault_plans(["a", "a"])
    with pytest.raises(FaultPlanError, match="two nodes"):
        partitions(1)


@given(partitions(NODES))
def test_partitions_leave_someone_on_the_other_side(partition: Partition) -> None:
    assert 1 <= len(partition.a) < len(NODES)
    assert partition.b == ()
