"""The runtime against a small pure model of OTP's supervision rules.

Hypothesis draws a supervision tree (depth <= 3, <= 4 children per supervisor)
and a sequence of events at increasing times ("actor X crashes", "actor X
exits normally"). The model below predicts, after each event, every child's
restart count and whether it is running, and how often each supervisor gave up.
Then one ``trio.run`` under a ``MockClock`` builds the same tree with the real
runtime, drives the events at the drawn times, lets the tree settle after each
one (``wait_all_tasks_blocked``; the clock only moves when we jump it), and
records the same observations from ``Supervisor.children()`` and the event feed.

The model is written from the rules, not from ``SupervisionPolicy``, which it
checks together with the runtime:

- PERMANENT children always restart, TRANSIENT ones only after a crash,
  TEMPORARY ones never (they are removed when they exit). A TRANSIENT child that
  exited normally stays in the tree, finished.
- ONE_FOR_ONE restarts the exited child; ONE_FOR_ALL also every running
  sibling; REST_FOR_ONE also the running siblings started after it. Temporary
  siblings caught by such a restart are removed instead.
- Every restart decision counts at time ``t``; more than ``intensity`` of them
  in ``[t - period, t]`` and the supervisor gives up.
- A supervisor that gives up crashes in its parent. A restarted supervisor
  starts with an empty history and starts all its non-finished children again in
  order, each counting one restart (recursively). A root that gives up ends
  everything.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass, field

import attrs
import trio
import trio.testing
from hypothesis import event as label
from hypothesis import example, given, note
from hypothesis import strategies as st

import trioactors as ta

MAX_DEPTH = 3  # the root is depth 1
MAX_CHILDREN = 4
TIME_STEPS = [0.0, 0.0, 0.5, 1.0, 2.0, 2.5, 5.0]  # exact in binary: boundaries compare exactly
PERIODS = [1.0, 2.0, 5.0]
# Mostly restartable children: temporary ones just disappear.
RESTARTS = st.sampled_from([ta.PERMANENT, ta.PERMANENT, ta.TRANSIENT, ta.TEMPORARY])

# -- the tree and the events ----------------------------------------------------------


@dataclass
class ActorSpec:
    name: str
    restart: ta.Restart


@dataclass
class SupSpec:
    name: str
    strategy: ta.Strategy
    intensity: int
    period: float
    restart: ta.Restart  # how its parent treats it (ignored for the root)
    children: list[ActorSpec | SupSpec] = field(default_factory=list)


@dataclass(frozen=True)
class Ev:
    at: float
    actor: str
    crash: bool  # False: a normal exit (context.stop())


@dataclass
class Scenario:
    tree: SupSpec
    events: list[Ev]

    def __repr__(self) -> str:
        # Printed by hypothesis for a failing example: enough to replay it by hand.
        lines = ["Scenario:"]
        lines += render(self.tree, "  ")
        lines.append("  events:")
        lines += [
            f"    t={e.at:<5} {e.actor} {'crashes' if e.crash else 'exits'}" for e in self.events
        ]
        return "\n".join(lines)


def render(sup: SupSpec, indent: str) -> list[str]:
    lines = [
        f"{indent}{sup.name}: supervisor {sup.strategy.value} intensity={sup.intensity} "
        f"period={sup.period} restart={sup.restart.value}"
    ]
    for child in sup.children:
        if isinstance(child, SupSpec):
            lines += render(child, indent + "  ")
        else:
            lines.append(f"{indent}  {child.name}: actor {child.restart.value}")
    return lines


def actors_of(sup: SupSpec) -> list[str]:
    out: list[str] = []
    for child in sup.children:
        out += actors_of(child) if isinstance(child, SupSpec) else [child.name]
    return out


def _sup_shape(depth: int) -> st.SearchStrategy[SupSpec]:
    # Names are placeholders here; `scenarios` numbers them once the shape is known.
    actor = st.builds(ActorSpec, st.just(""), RESTARTS)
    child = actor if depth >= MAX_DEPTH else st.one_of(actor, _sup_shape(depth + 1))
    return st.builds(
        SupSpec,
        name=st.just(""),
        strategy=st.sampled_from(ta.Strategy),
        intensity=st.integers(0, 3),
        period=st.sampled_from(PERIODS),
        restart=RESTARTS,
        children=st.lists(child, min_size=1 if depth == 1 else 0, max_size=MAX_CHILDREN),
    )


def _named(shape: SupSpec, name: str, numbers: itertools.count[int]) -> SupSpec:
    # Fresh objects (not mutated ones), so that hypothesis prints the real names.
    children: list[ActorSpec | SupSpec] = []
    for child in shape.children:
        if isinstance(child, SupSpec):
            children.append(_named(child, f"s{next(numbers)}", numbers))
        else:
            children.append(ActorSpec(f"a{next(numbers)}", child.restart))
    return dataclasses.replace(shape, name=name, children=children)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    numbers = itertools.count()
    tree = _named(draw(_sup_shape(1)), "root", numbers)
    if not actors_of(tree):
        tree.children.append(ActorSpec(f"a{next(numbers)}", draw(RESTARTS)))
    # Each event targets an actor that is running at that point (per the model),
    # so that no draw is wasted on a dead letter.
    model = Model(tree)
    now = 0.0
    events = []
    for _ in range(draw(st.integers(1, 20))):
        running = model.running_actors()
        if not running:
            break
        now += draw(st.sampled_from(TIME_STEPS))
        event = Ev(now, draw(st.sampled_from(running)), draw(st.sampled_from([True, True, False])))
        events.append(event)
        model.apply(event)
    return Scenario(tree, events)


# -- the model ------------------------------------------------------------------------


@dataclass
class Node:
    spec: ActorSpec | SupSpec
    parent: str | None
    restarts: int = 0
    status: str = "running"  # "running" | "finished" (transient, exited normally) | "removed"
    children: list[str] = field(default_factory=list)  # start order, without removed ones
    history: list[float] = field(default_factory=list)  # restart decisions (supervisors)
    gave_up: int = 0


# One observation: {child name: (state, restarts)} for every child reachable from
# the root, and {supervisor name: times it gave up}.
Snapshot = tuple[dict[str, tuple[str, int]], dict[str, int]]


class Model:
    def __init__(self, tree: SupSpec) -> None:
        self.nodes: dict[str, Node] = {}
        self.ended = False  # the root gave up
        self._add(tree, None)

    def _add(self, spec: ActorSpec | SupSpec, parent: str | None) -> None:
        self.nodes[spec.name] = Node(spec, parent)
        if parent is not None:
            self.nodes[parent].children.append(spec.name)
        if isinstance(spec, SupSpec):
            for child in spec.children:
                self._add(child, spec.name)

    def running_actors(self) -> list[str]:
        if self.ended:
            return []
        return [
            n
            for n, node in self.nodes.items()
            if isinstance(node.spec, ActorSpec) and node.status == "running"
        ]

    def apply(self, event: Ev) -> None:
        node = self.nodes[event.actor]
        if self.ended or node.status != "running":
            return  # not running: the message becomes a dead letter
        self._exited(node, crashed=event.crash, now=event.at)

    def _exited(self, node: Node, *, crashed: bool, now: float) -> None:
        assert node.parent is not None
        parent = self.nodes[node.parent]
        sup = parent.spec
        assert isinstance(sup, SupSpec)
        restart = node.spec.restart
        if restart is ta.TEMPORARY or (restart is ta.TRANSIENT and not crashed):
            if restart is ta.TEMPORARY:
                self._remove(node)
            else:
                node.status = "finished"
            return
        parent.history = [t for t in [*parent.history, now] if t >= now - sup.period]
        if len(parent.history) > sup.intensity:
            parent.gave_up += 1
            if parent.parent is None:
                self.ended = True
            else:
                self._exited(parent, crashed=True, now=now)
            return
        mine = parent.children.index(node.spec.name)
        running = [
            c for c in parent.children if c != node.spec.name and self.nodes[c].status == "running"
        ]
        match sup.strategy:
            case ta.ONE_FOR_ONE:
                siblings: list[str] = []
            case ta.ONE_FOR_ALL:
                siblings = running
            case ta.REST_FOR_ONE:
                siblings = [c for c in running if parent.children.index(c) > mine]
        for name in siblings:
            if self.nodes[name].spec.restart is ta.TEMPORARY:
                self._remove(self.nodes[name])
        again = {node.spec.name, *siblings}
        for name in list(parent.children):
            if name in again:
                self._restart(self.nodes[name])

    def _restart(self, node: Node) -> None:
        node.restarts += 1
        node.status = "running"
        node.history = []
        for name in node.children:
            child = self.nodes[name]
            if child.status != "finished":
                self._restart(child)

    def _remove(self, node: Node) -> None:
        # Removing a supervisor removes its whole subtree.
        assert node.parent is not None
        self.nodes[node.parent].children.remove(node.spec.name)
        todo = [node]
        while todo:
            gone = todo.pop()
            gone.status = "removed"
            todo += [self.nodes[c] for c in gone.children]

    def snapshot(self) -> Snapshot:
        children: dict[str, tuple[str, int]] = {}

        def walk(name: str) -> None:
            for child_name in self.nodes[name].children:
                child = self.nodes[child_name]
                state = "running" if child.status == "running" and not self.ended else "stopped"
                children[child_name] = (state, child.restarts)
                walk(child_name)

        walk("root")
        gave_up = {n: node.gave_up for n, node in self.nodes.items() if node.gave_up}
        return children, gave_up


def predict(scenario: Scenario) -> list[Snapshot]:
    """The model's snapshot after building the tree and after each event."""
    model = Model(scenario.tree)
    out = [model.snapshot()]
    for event in scenario.events:
        model.apply(event)
        out.append(model.snapshot())
        if model.ended:
            break
    return out


# -- the runtime ----------------------------------------------------------------------


@attrs.frozen
class Crash:
    pass


@attrs.frozen
class Exit:
    pass


@attrs.frozen
class Ping(ta.Request[str]):
    pass


Msg = Crash | Exit | Ping


class ModelCrash(Exception):
    pass


class Worker(ta.Actor[Msg]):
    def __init__(self, run: Run) -> None:
        self.run = run

    async def on_start(self) -> None:
        # every instance the runtime starts, and the restart count it is told
        self.run.starts[self.context.name] += 1
        self.run.told_restarts[self.context.name] = self.context.restarts

    async def receive(self, message: Msg) -> object:
        match message:
            case Crash():
                raise ModelCrash(self.context.name)
            case Exit():
                self.context.stop()
            case Ping():
                return "pong"
        return None


STATES = {ta.ChildState.RUNNING: "running", ta.ChildState.STOPPED: "stopped"}


class Run:
    """One execution of a scenario on the real runtime."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.clock = trio.testing.MockClock()  # rate 0: time moves only by clock.jump()
        self.snapshots: list[Snapshot] = []
        self.gave_up: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.told_restarts: dict[str, int] = {}
        self.pings: dict[str, str] = {}  # at the end, if the root still runs
        self.refs: dict[str, ta.ActorRef[Msg]] = {}

    def execute(self) -> None:
        trio.run(self._main, clock=self.clock)

    async def _build(self, sup: ta.Supervisor, spec: SupSpec) -> None:
        for child in spec.children:
            if isinstance(child, ActorSpec):
                self.refs[child.name] = await sup.start_actor(
                    Worker, self, name=child.name, restart=child.restart
                )
            else:
                nested = await sup.start_supervisor(
                    name=child.name,
                    strategy=child.strategy,
                    intensity=child.intensity,
                    period=child.period,
                    restart=child.restart,
                )
                await self._build(nested, child)

    def _observe(self, root: ta.Supervisor) -> None:
        children: dict[str, tuple[str, int]] = {}

        def walk(sup: ta.Supervisor) -> None:
            for info in sup.children():
                # anything but RUNNING/STOPPED after settling shows up as a mismatch
                children[info.name] = (STATES.get(info.state, info.state.value), info.restarts)
                if info.supervisor is not None:
                    walk(info.supervisor)

        walk(root)
        self.snapshots.append((children, {n: c for n, c in self.gave_up.items() if c}))

    async def _collect(self, events: ta.Subscription) -> None:
        async for event in events:
            assert not isinstance(event, ta.EventsLost)
            if isinstance(event, ta.SupervisorEscalated):
                self.gave_up[event.path.rsplit("/", 1)[-1]] += 1

    async def _ping_all(self) -> None:
        for name, ref in self.refs.items():
            try:
                self.pings[name] = await ref.ask(Ping(), timeout=1.0)
            except ta.ActorStopped:
                self.pings[name] = "stopped"
            except ta.AskTimeout:
                self.pings[name] = "timeout"

    async def _main(self) -> None:
        tree = self.scenario.tree
        system = ta.ActorSystem()
        root: ta.Supervisor | None = None
        # A deadlock fails instead of hanging: the clock moves only when we jump it
        # until the events are done, then autojump takes over for the shutdown.
        with trio.fail_after(10_000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._collect, system.subscribe())
                try:
                    async with ta.open_supervisor(
                        name="root",
                        strategy=tree.strategy,
                        intensity=tree.intensity,
                        period=tree.period,
                        system=system,
                    ) as root:
                        await self._build(root, tree)
                        await trio.testing.wait_all_tasks_blocked()
                        self._observe(root)
                        for event in self.scenario.events:
                            if event.at > trio.current_time():
                                self.clock.jump(event.at - trio.current_time())
                            assert trio.current_time() == event.at
                            await self.refs[event.actor].tell(Crash() if event.crash else Exit())
                            await trio.testing.wait_all_tasks_blocked()
                            self._observe(root)
                        self.clock.autojump_threshold = 0
                        await self._ping_all()
                except ta.SupervisorGaveUp as exc:
                    if exc.path != "/root":
                        raise
                    assert root is not None
                    await trio.testing.wait_all_tasks_blocked()
                    self._observe(root)
                nursery.cancel_scope.cancel()


# -- the test -------------------------------------------------------------------------


def describe(snapshots: list[Snapshot]) -> str:
    return "\n".join(f"  after {i}: {s[0]} gave_up={s[1]}" for i, s in enumerate(snapshots))


# Always run: a crash two levels down escalates through both nested supervisors to a
# one_for_all root, which restarts its running children (the whole subtree counts one
# restart each) but leaves the finished transient actor alone; then the root gives up.
ESCALATION = Scenario(
    SupSpec(
        "root",
        ta.ONE_FOR_ALL,
        1,
        5.0,
        ta.PERMANENT,
        [
            ActorSpec("a0", ta.TRANSIENT),
            SupSpec(
                "s1",
                ta.ONE_FOR_ONE,
                0,
                5.0,
                ta.PERMANENT,
                [
                    SupSpec(
                        "s2",
                        ta.REST_FOR_ONE,
                        0,
                        5.0,
                        ta.TRANSIENT,
                        [ActorSpec("a3", ta.PERMANENT), ActorSpec("a4", ta.TEMPORARY)],
                    ),
                    ActorSpec("a5", ta.PERMANENT),
                ],
            ),
            ActorSpec("a6", ta.TEMPORARY),
        ],
    ),
    [Ev(0.0, "a0", crash=False), Ev(1.0, "a3", crash=True), Ev(6.0, "a3", crash=True)],
)


@given(scenarios())
@example(ESCALATION)
def test_runtime_follows_the_model(scenario: Scenario) -> None:
    note(repr(scenario))
    expected = predict(scenario)
    run = Run(scenario)
    run.execute()
    actual = run.snapshots
    note(f"model:\n{describe(expected)}")
    note(f"runtime:\n{describe(actual)}")
    for step, (want, got) in enumerate(zip(expected, actual, strict=False)):
        where = "after building the tree" if step == 0 else f"after {scenario.events[step - 1]}"
        assert got[0] == want[0], f"children differ {where}"
        assert got[1] == want[1], f"gave-up counts differ {where}"
    assert len(actual) == len(expected), "the root gave up at a different step"

    final, gave_up = expected[-1]
    for name, (_state, restarts) in final.items():
        if name in run.starts:  # an actor: one instance per start, told its count
            assert run.starts[name] == restarts + 1, f"{name} was started {run.starts[name]}x"
            assert run.told_restarts[name] == restarts, f"{name}: context.restarts is wrong"
    if "root" not in gave_up:  # the root still ran: every actor answers or is gone
        alive = {n for n, (state, _) in final.items() if state == "running"}
        assert run.pings == {n: "pong" if n in alive else "stopped" for n in run.refs}

    label("root gave up" if "root" in gave_up else "root kept running")
    label(f"nested supervisors gave up: {sum(gave_up.values()) - ('root' in gave_up)}")
    label(f"max restarts: {max((r for _, r in final.values()), default=0)}")
