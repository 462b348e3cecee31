"""simulate(): a scenario on a simulated cluster under a fault plan, as users write fault tests.

The system under test is the kind users build: a store actor on ``n0`` and
clients on the other nodes that ``ask`` it to record values, retrying on
timeouts. A retried ask whose first reply was lost records twice unless the
store deduplicates by request id: the fault search must find that.
"""

from __future__ import annotations

import attrs
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, seed, settings

import trioactors as ta
from trioactors.testing import (
    Clear,
    FaultPlan,
    FaultPlanError,
    Heal,
    InvariantViolated,
    Ledger,
    MemoryNetwork,
    SimulatedCluster,
    TraceEvent,
    eventually,
    open_simulated_cluster,
    simulate,
)
from trioactors.testing.strategies import fault_plans


@ta.message(tag="tests.simulate.Record")
@attrs.frozen
class Record(ta.Request[int]):
    id: str


class Store(ta.Actor[Record]):
    """Records each request; with ``dedup`` a retried request is recorded once."""

    def __init__(self, ledger: Ledger, dedup: bool) -> None:
        self.ledger = ledger
        self.dedup = dedup
        self.seen: set[str] = set()

    async def receive(self, message: Record) -> int:
        if not (self.dedup and message.id in self.seen):
            self.seen.add(message.id)
            self.ledger.received(message.id)
        return len(self.seen)


class System:
    """One store on n0, clients on n1 and n2 that retry until acknowledged."""

    def __init__(self, *, dedup: bool, requests: int = 10, pace: float = 0.0) -> None:
        self.ledger = Ledger()
        self.dedup = dedup
        self.requests = requests
        self.pace = pace  # seconds between a client's requests
        self.acknowledged = 0

    async def setup(self, node: ta.Node) -> None:
        if node.name == "n0":
            await node.root.start_actor(Store, self.ledger, self.dedup, name="store")

    async def client(self, cluster: SimulatedCluster, name: str) -> None:
        for i in range(self.requests):
            key = f"{name}-{i}"
            self.ledger.sent(key)
            while True:
                node = cluster.nodes.get(name)
                try:
                    if node is None:
                        raise ta.NodeUnreachable(name)
                    await node.ref("store@n0").ask(Record(key), timeout=1.0)
                    break
                except (ta.AskTimeout, ta.NodeUnreachable, ta.ActorNotFound, ta.ActorStopped):
                    await trio.sleep(0.5)  # (simulated) back off and retry
            self.acknowledged += 1
            await trio.sleep(self.pace)

    async def scenario(self, cluster: SimulatedCluster) -> None:
        async with trio.open_nursery() as nursery:
            for name in ("n1", "n2"):
                nursery.start_soon(self.client, cluster, name)
        self.ledger.check_all_received()

    def no_duplicates(self, cluster: SimulatedCluster) -> None:
        self.ledger.check_no_duplicates()


def test_a_scenario_runs_under_a_plan_in_simulated_time() -> None:
    system = System(dedup=True, requests=20)
    simulate(
        system.scenario,
        seed=1,
        setup=system.setup,
        plan="at 0 drop 0.3; at 2 duplicate 0.3; at 5 partition n1; at 20 heal; at 25 clear",
        invariants=[system.no_duplicates],
        check_every=1.0,
    )
    assert system.acknowledged == 40
    assert system.ledger.missing() == []


def test_the_same_seed_and_plan_replay_the_same_run() -> None:
    def run(seed: int) -> list[TraceEvent]:
        traces: list[TraceEvent] = []

        system = System(dedup=True)

        async def scenario(cluster: SimulatedCluster) -> None:
            await system.scenario(cluster)
            traces.extend(cluster.network.trace())

        simulate(
            scenario,
            seed=seed,
            setup=system.setup,
            plan="at 0 drop 0.2; at 1 reorder 0.3; at 3 crash n2; at 8 restart n2",
        )
        return traces

    first = run(7)
    assert len(first) > 100
    assert run(7) == first
    assert run(8) != first


def test_an_invariant_that_fails_names_itself_and_prints_the_replay() -> None:
    system = System(dedup=False)
    plan = FaultPlan.parse("at 0 drop 0.4; at 30 clear")
    with pytest.raises(InvariantViolated) as info:
        simulate(
            system.scenario,
            seed=3,
            setup=system.setup,
            plan=plan,
            invariants=[system.no_duplicates],
            check_every=0.5,
        )
    error = info.value
    assert error.name == "no_duplicates"
    assert "handled more than once" in str(error)
    assert isinstance(error.__cause__, InvariantViolated)  # the Ledger's own report
    (note,) = error.__notes__
    assert note == (
        "replay: trioactors.testing.simulate(System.scenario, nodes=3, seed=3, "
        "plan=FaultPlan.parse('at 0 drop 0.4; at 30 clear'))"
    )


def test_a_failing_scenario_raises_its_own_error_not_a_group() -> None:
    async def scenario(cluster: SimulatedCluster) -> None:
        await trio.sleep(5)
        assert len(cluster.running()) == 3, "n1 is down"

    with pytest.raises(AssertionError, match="n1 is down") as info:
        simulate(scenario, plan="at 1 crash n1")
    assert "replay: trioactors.testing.simulate(" in info.value.__notes__[-1]


def test_a_hang_fails_after_the_simulated_timeout() -> None:
    async def scenario(cluster: SimulatedCluster) -> None:
        await trio.sleep_forever()

    with pytest.raises(trio.TooSlowError) as info:
        simulate(scenario, timeout=600)
    assert "replay" in info.value.__notes__[-1]


def test_a_plan_that_does_not_fit_the_nodes_is_refused() -> None:
    async def scenario(cluster: SimulatedCluster) -> None:
        pass

    with pytest.raises(FaultPlanError, match="no node named n7"):
        simulate(scenario, plan="at 1 crash n7")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate, Phase.target],
)
@seed(20261130)
@given(plan=fault_plans(3, duration=20, max_steps=4))
def test_deduplicating_store_holds_under_any_plan(plan: FaultPlan) -> None:
    system = System(dedup=True, requests=5)
    simulate(system.scenario, setup=system.setup, plan=plan, invariants=[system.no_duplicates])


def search_naive_store(phases: list[Phase]) -> tuple[InvariantViolated, list[FaultPlan]]:
    found: list[FaultPlan] = []

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=phases,
    )
    @seed(1)
    @given(
        plan=fault_plans(
            3, duration=20, max_steps=4, kinds=["drop", "duplicate", "partition", "heal"]
        )
    )
    def test_naive(plan: FaultPlan) -> None:
        system = System(dedup=False, requests=5, pace=1.0)  # (so that faults meet requests)
        try:
            simulate(
                system.scenario, setup=system.setup, plan=plan, invariants=[system.no_duplicates]
            )
        except InvariantViolated:
            found.append(plan)
            raise

    with pytest.raises(InvariantViolated) as info:
        test_naive()
    return info.value, found


def test_the_search_finds_the_store_that_does_not_deduplicate() -> None:
    """What a user sees: hypothesis finds a plan that breaks the naive store, and prints it."""
    error, found = search_naive_store([Phase.generate])
    notes = "\n".join(error.__notes__)
    assert f"plan={found[-1]!r}" in notes  # hypothesis' falsifying example, pasteable
    assert "replay: trioactors.testing.simulate(" in notes


@pytest.mark.faults
def test_the_search_shrinks_the_failing_plan() -> None:
    # shrinking takes some hundred runs of ~0.1 s: the faults session runs this one
    _, found = search_naive_store([Phase.generate, Phase.shrink])
    # one fault that loses or duplicates frames; harmless heals may be left over
    effective = [s for s in found[-1] if not isinstance(s.fault, (Heal, Clear))]
    assert len(effective) == 1, found[-1]


async def test_restarted_nodes_rejoin_and_run_setup_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started: list[str] = []

    async def setup(node: ta.Node) -> None:
        started.append(node.name)

    async with open_simulated_cluster(3, seed=2, formed=True, setup=setup) as cluster:
        await cluster.run_plan("at 1 crash n2")
        assert cluster.running() == ["n0", "n1"]
        assert cluster.down() == ["n2"]
        await cluster.wait_converged()
        await cluster.run_plan("at 0 restart n2")
        await cluster.wait_converged()
        assert cluster.running() == ["n0", "n1", "n2"]
        assert started == ["n0", "n1", "n2", "n2"]
        with pytest.raises(ta.LocalProtocolError, match="running"):
            await cluster.restart("n2")
        with pytest.raises(FaultPlanError, match="n2 is running"):
            await cluster.run_plan("at 0 restart n2")


@ta.message(tag="tests.simulate.Echo")
@attrs.frozen
class Echo(ta.Request[str]):
    text: str


class Echoer(ta.Actor[Echo]):
    async def receive(self, message: Echo) -> str:
        return message.text


async def start_echo(node: ta.Node) -> None:
    await node.root.start_actor(Echoer, name="echo")


async def test_each_network_fault_has_its_effect(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=5, latency=0.001)
    async with open_simulated_cluster(
        3, seed=5, formed=True, network=network, setup=start_echo
    ) as cluster:
        before = network.statistics()
        await cluster.run_plan("at 0 drop 0.5; at 0 duplicate 0.5; at 0 reorder 0.5; at 10 clear")
        after = network.statistics()
        assert after.frames_dropped > before.frames_dropped
        assert after.frames_duplicated > before.frames_duplicated
        assert after.frames_reordered > before.frames_reordered
        await cluster.run_plan("at 0 partition n0 | n1 n2; at 20 heal")
        assert network.statistics().frames_partitioned > after.frames_partitioned
        await cluster.run_plan("at 0 clear")
        await cluster.wait_converged()

        await cluster.run_plan("at 0 delay 2 between n0 | n1")
        start = trio.current_time()
        assert await cluster.nodes["n0"].ref("echo@n1").ask(Echo("hi"), timeout=10) == "hi"
        assert trio.current_time() - start >= 4  # there and back, 2 s each way
        start = trio.current_time()
        assert await cluster.nodes["n0"].ref("echo@n2").ask(Echo("hi"), timeout=10) == "hi"
        assert trio.current_time() - start < 0.1  # only n0 <-> n1 is slow


async def test_eventually(autojump_clock: trio.testing.MockClock) -> None:
    ready = [False]

    async def later() -> None:
        await trio.sleep(5)
        ready[0] = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        await eventually(lambda: ready[0], within=10)
    start = trio.current_time()
    with pytest.raises(InvariantViolated, match="never did not hold within 3 s"):
        await eventually(lambda: False, within=3, what="never")
    assert trio.current_time() - start == pytest.approx(3, abs=0.2)


def test_ledger() -> None:
    ledger = Ledger()
    for key in "abc":
        ledger.sent(key)
    ledger.received("a")
    ledger.received("a")
    ledger.received("z")
    assert ledger.missing() == ["b", "c"]
    assert ledger.duplicates() == {"a": 2}
    assert ledger.unexpected() == ["z"]
    with pytest.raises(InvariantViolated, match="2 of 3 never handled: 'b', 'c'"):
        ledger.check_all_received()
    with pytest.raises(InvariantViolated, match=r"handled more than once: \('a', 2\)"):
        ledger.check_no_duplicates()
    with pytest.raises(InvariantViolated, match="never sent: 'z'"):
        ledger.check_nothing_unexpected()
    assert repr(ledger) == "<Ledger sent=3 received=3 missing=2 duplicates=1>"
