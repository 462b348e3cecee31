"""ClusterMachine: stateful property tests that interleave a user's operations with faults."""

from __future__ import annotations

import functools

import attrs
import pytest
import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

import trioactors as ta
from trioactors.testing import FaultPlan, InvariantViolated, Ledger, Restart
from trioactors.testing.stateful import ClusterMachine


@ta.message(tag="tests.machine.Put")
@attrs.frozen
class Put(ta.Request[int]):
    id: str


class Store(ta.Actor[Put]):
    def __init__(self, ledger: Ledger, dedup: bool) -> None:
        self.ledger = ledger
        self.dedup = dedup
        self.seen: set[str] = set()

    async def receive(self, message: Put) -> int:
        if not (self.dedup and message.id in self.seen):
            self.seen.add(message.id)
            self.ledger.received(message.id)
        return len(self.seen)


class StoreMachine(ClusterMachine):
    """A store on n0; puts from any running node, retried for up to a minute."""

    dedup = True

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.acknowledged: set[str] = set()
        self.count = 0
        super().__init__()  # (starts the cluster, which calls setup_node)

    async def setup_node(self, node: ta.Node) -> None:
        if node.name == "n0":
            await node.root.start_actor(Store, self.ledger, self.dedup, name="store")

    async def _put(self, node: ta.Node, key: str) -> None:
        with trio.move_on_after(60):
            while True:
                try:
                    await node.ref("store@n0").ask(Put(key), timeout=1.0)
                except (ta.AskTimeout, ta.NodeUnreachable, ta.ActorNotFound, ta.ActorStopped):
                    await trio.sleep(0.5)
                else:
                    self.acknowledged.add(key)
                    return

    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.cluster.running()), label="from")
        self.count += 1
        key = f"k{self.count}"
        self.ledger.sent(key)
        self.run(self._put, self.cluster.nodes[name], key)

    @invariant()
    def recorded_at_most_once(self) -> None:
        self.ledger.check_no_duplicates()

    @invariant()
    def acknowledged_puts_were_recorded(self) -> None:
        assert not self.acknowledged & set(self.ledger.missing())


class NaiveStoreMachine(StoreMachine):
    dedup = False
    fault_kinds = frozenset({"drop", "heal"})


def test_a_deduplicating_store_holds_under_faults() -> None:
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_machine_finds_a_store_that_does_not_deduplicate_and_prints_its_faults() -> None:
    with pytest.raises(InvariantViolated, match="handled more than once") as info:
        run_state_machine_as_test(
            NaiveStoreMachine,
            settings=settings(
                max_examples=200,
                stateful_step_count=10,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                # finding it takes a few examples; shrinking it, some hundreds (~15 s)
                phases=[Phase.generate],
                derandomize=True,  # the same examples every run
            ),
        )
    notes = "\n".join(info.value.__notes__)
    assert "state = NaiveStoreMachine()" in notes  # hypothesis' steps replay it
    assert "state.drop_frames(rate=" in notes
    (applied,) = [line for line in notes.splitlines() if line.startswith("faults applied: ")]
    plan = eval(applied.removeprefix("faults applied: "), {"FaultPlan": FaultPlan})
    assert any(step.fault.text().startswith("drop") for step in plan)


class QuietMachine(ClusterMachine):
    """No faults at all: only time passes; membership stays converged."""

    fault_kinds = frozenset()
    node_count = 4

    @invariant()
    def converged(self) -> None:
        assert self.cluster.converged()


TestQuiet = QuietMachine.TestCase
TestQuiet.settings = settings(max_examples=5, stateful_step_count=5, deadline=None)


class CrashingMachine(ClusterMachine):
    """Crashes and restarts only: at most a minority down, restarted nodes rejoin."""

    fault_kinds = frozenset({"crash", "restart"})
    node_count = 5

    @invariant()
    def a_majority_is_up(self) -> None:
        assert len(self.cluster.running()) >= 3
        assert set(self.cluster.running()) | set(self.cluster.down()) == {f"n{i}" for i in range(5)}

    def teardown(self) -> None:
        for name in self.cluster.down():
            self.apply(Restart(name))
        self.run(functools.partial(self.cluster.wait_converged, timeout=120))
        super().teardown()


TestCrashing = CrashingMachine.TestCase
TestCrashing.settings = settings(
    max_examples=15,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
