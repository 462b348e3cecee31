"""Raft, driven by hand and in simulated clusters of pure machines: no trio, no clock."""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import random
from typing import TYPE_CHECKING

import attrs
import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioactors._core._raft import (
    AppendEntries,
    AppendResponse,
    AppendToLog,
    Apply,
    ChangeRefused,
    CompactLog,
    Entry,
    EntryKind,
    InstallSnapshot,
    NotLeader,
    Persist,
    PersistentState,
    Proposed,
    RaftAction,
    RaftConfig,
    RaftMessage,
    RaftNode,
    RaftRole,
    ReadFailed,
    ReadReady,
    RequestVote,
    RoleChanged,
    SaveSnapshot,
    Send,
    Snapshot,
    SnapshotResponse,
    SnapshotWanted,
    TimeoutNow,
    TruncateLog,
    VoteResponse,
)
from trioactors._core._raft_log import RaftLog, decode_config, encode_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

LEADER = RaftRole.LEADER
FOLLOWER = RaftRole.FOLLOWER
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"


# -- the simulated cluster -----------------------------------------------------------


@attrs.define
class Disk:
    """What a node has on disk: built only from its storage actions."""

    term: int = 0
    voted_for: str | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.Factory(list)

    @property
    def base(self) -> tuple[int, int]:
        return (0, 0) if self.snapshot is None else (self.snapshot.index, self.snapshot.term)

    def last(self) -> tuple[int, int]:
        return (self.entries[-1].index, self.entries[-1].term) if self.entries else self.base

    def term_at(self, index: int) -> int:
        if index == self.base[0]:
            return self.base[1]
        return self.entries[index - self.base[0] - 1].term

    def state(self) -> PersistentState:
        return PersistentState(self.term, self.voted_for, self.snapshot, tuple(self.entries))


def encode_state(applied: list[Entry]) -> bytes:
    """A snapshot of the test's state machine: everything it applied."""
    return json.dumps([[e.term, e.index, e.kind.value, e.data.hex()] for e in applied]).encode()


def decode_state(data: bytes) -> list[Entry]:
    return [
        Entry(term, index, EntryKind(kind), bytes.fromhex(hexdata))
        for term, index, kind, hexdata in json.loads(data)
    ]


@attrs.define(order=True)
class Flight:
    """A message in the network, to be delivered at ``at`` (ties: in sending order)."""

    at: float
    seq: int
    src: str = attrs.field(order=False)
    dst: str = attrs.field(order=False)
    message: RaftMessage = attrs.field(order=False)


class Cluster:
    """Pure Raft nodes, a network with faults, and the safety checks.

    Every action a node returns is carried out in order: storage actions go to
    its :class:`Disk`, messages into the network, applied entries into its
    state machine (the list of entries it applied). A crash drops the node
    object (its volatile state); a restart builds a new one from the disk.
    Safety properties are checked as the actions are carried out, so a
    violation fails at the step that causes it.
    """

    def __init__(
        self,
        founders: list[str],
        spares: Iterable[str] = (),
        *,
        config: RaftConfig | None = None,
        seed: int = 0,
        auto_snapshot: bool = True,
    ) -> None:
        self.config = config if config is not None else RaftConfig()
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.auto_snapshot = auto_snapshot
        self.bootstrap = {n: tuple(founders) for n in founders} | dict.fromkeys(spares, ())
        self.ids = list(self.bootstrap)
        self.disks = {n: Disk() for n in self.ids}
        self.nodes: dict[str, RaftNode | None] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.incarnation = dict.fromkeys(self.ids, 0)
        self.network: list[Flight] = []
        self.seqs = itertools.count()
        self.group = dict.fromkeys(self.ids, 0)
        self.loss = 0.0
        self.duplication = 0.0
        self.latency = (0.001, 0.01)
        self.cut: dict[str, int] = {}
        self.snapshot_data: dict[tuple[str, int], bytes] = {}
        # history, for the safety checks
        self.leaders: dict[int, str] = {}  # term -> its leader, ever
        self.chosen: dict[int, Entry] = {}  # index -> the entry applied there
        self.committed_by: dict[int, int] = {}  # index -> a term by which it was committed
        self.links: dict[tuple[int, int], tuple[int, EntryKind, bytes]] = {}
        self.read_floor: dict[int, tuple[str, int]] = {}  # read id -> (node, least index)
        self.reads_ready: dict[int, int] = {}
        self.reads_failed: set[int] = set()
        self.read_ids = itertools.count(1)
        self.commits: dict[str, int] = {}
        self.checked_leaders: set[int] = set()  # terms whose leader was checked for completeness
        self.events = 0
        # a workload within runs: events per second of each kind, drawn from self.rng
        self.workload = Workload()
        self.next_client = math.inf
        self.restarts: list[tuple[float, str]] = []  # (when, node) after a workload crash
        for n in self.ids:
            self.start(n)

    # -- nodes --

    def node(self, n: str) -> RaftNode:
        node = self.nodes[n]
        assert node is not None, f"{n} is down"
        return node

    def live(self) -> list[RaftNode]:
        return [node for node in self.nodes.values() if node is not None]

    def start(self, n: str) -> None:
        self.incarnation[n] += 1
        rng = random.Random(f"{self.seed}/{n}/{self.incarnation[n]}")
        disk = self.disks[n]
        node = RaftNode(
            n, self.bootstrap[n], now=self.now, rng=rng, config=self.config, persisted=disk.state()
        )
        self.nodes[n] = node
        snap = disk.snapshot
        self.applied[n] = [] if snap is None else decode_state(snap.data)
        self.commits[n] = node.commit_index
        self.check_node(n)

    def crash(self, n: str) -> None:
        self.nodes[n] = None
        self.cut.pop(n, None)

    def leader(self) -> RaftNode | None:
        """The live leader of the highest term, if any."""
        leaders = [node for node in self.live() if node.role is LEADER]
        return max(leaders, key=lambda node: node.term, default=None)

    # -- carrying out actions --

    def carry_out(self, n: str, actions: list[RaftAction]) -> None:
        cut = self.cut.pop(n, None)
        for i, action in enumerate(actions):
            if cut is not None and i >= cut:
                self.crash(n)  # the process died half-way through the list
                return
            self.carry_out_one(n, action)
        if self.nodes[n] is not None:
            self.check_node(n)

    def carry_out_one(self, n: str, action: RaftAction) -> None:
        disk = self.disks[n]
        node = self.node(n)
        match action:
            case Send(to, message):
                assert to != n
                self.check_durable(n, to, message)
                if self.rng.random() < self.loss:
                    return
                copies = 2 if self.rng.random() < self.duplication else 1
                for _ in range(copies):
                    at = self.now + self.rng.uniform(*self.latency)
                    heapq.heappush(self.network, Flight(at, next(self.seqs), n, to, message))
            case Persist(term, voted_for):
                assert term >= disk.term, f"{n}: the term went back to {term}"
                if term == disk.term and disk.voted_for is not None:
                    assert voted_for == disk.voted_for, f"{n} voted twice in term {term}"
                disk.term, disk.voted_for = term, voted_for
            case AppendToLog(entries):
                for entry in entries:
                    last_index, last_term = disk.last()
                    assert entry.index == last_index + 1, f"{n}: gap before {entry}"
                    # Log matching: an entry (index, term) always follows the same
                    # term and holds the same thing, in every log, ever.
                    link = (last_term, entry.kind, entry.data)
                    known = self.links.setdefault((entry.index, entry.term), link)
                    assert known == link, f"log matching: {entry} after {last_term} vs {known}"
                    disk.entries.append(entry)
            case TruncateLog(from_index):
                assert from_index > self.commits[n], f"{n} truncated its committed log"
                for entry in disk.entries:
                    if entry.index >= from_index:
                        assert self.chosen.get(entry.index) != entry, f"{n} truncated {entry}"
                disk.entries = [e for e in disk.entries if e.index < from_index]
            case SaveSnapshot(index, term, config, data):
                assert index > disk.base[0]
                disk.snapshot = Snapshot(index, term, config, data)
                disk.entries = [e for e in disk.entries if e.index > index]
                state = decode_state(data)
                assert len(state) == index
                for entry in state:
                    assert self.chosen[entry.index] == entry
                self.applied[n] = state
            case CompactLog(index, term, config):
                assert index > disk.base[0]
                assert disk.term_at(index) == term
                data = self.snapshot_data.pop((n, index))
                disk.snapshot = Snapshot(index, term, config, data)
                disk.entries = [e for e in disk.entries if e.index > index]
            case Apply(entries):
                applied = self.applied[n]
                for entry in entries:
                    assert entry.index == len(applied) + 1, f"{n} applied {entry} out of order"
                    # State machine safety: one entry per index, everywhere.
                    assert self.chosen.setdefault(entry.index, entry) == entry, (
                        f"{n} applied {entry}, another server {self.chosen[entry.index]}"
                    )
                    by = self.committed_by.get(entry.index, node.term)
                    self.committed_by[entry.index] = min(by, node.term)
                    applied.append(entry)
                for other in self.live():
                    if other.role is LEADER:
                        self.check_complete(other, [e.index for e in entries])
            case ReadReady(request_id, index):
                origin, floor = self.read_floor.pop(request_id)
                assert origin == n
                # Linearizable: the read sees everything committed before it began.
                assert index >= floor, f"read {request_id} at {index} misses {floor}"
                assert index <= node.commit_index
                self.reads_ready[request_id] = index
            case ReadFailed(request_id):
                origin, _ = self.read_floor.pop(request_id)
                assert origin == n
                self.reads_failed.add(request_id)
            case RoleChanged(role, term, leader):
                assert (role, term, leader) == (node.role, node.term, node.leader)
                if role is LEADER:
                    assert leader == n
            case SnapshotWanted(applied_index):
                assert applied_index == node.last_applied
                if self.auto_snapshot:
                    self.take_snapshot(n)

    def check_durable(self, n: str, to: str, message: RaftMessage) -> None:
        """What a message says about its sender is already on the sender's disk."""
        disk = self.disks[n]
        match message:
            case RequestVote(pre_vote=True) | VoteResponse(pre_vote=True, granted=True):
                return  # (about the next term, which it does not take)
            case RequestVote(term=term):
                assert (disk.term, disk.voted_for) == (term, n), (
                    f"{n} asks before voting for itself"
                )
            case VoteResponse(term=term, granted=True):
                assert (disk.term, disk.voted_for) == (term, to), f"{n} votes before storing it"
            case (
                AppendResponse(success=True, match_index=index) | SnapshotResponse(last_index=index)
            ):
                assert disk.last()[0] >= index, f"{n} acknowledges {index} before storing it"
            case AppendEntries(prev_log_index=prev, entries=entries):
                assert disk.last()[0] >= prev + len(entries), f"{n} sends entries not on its disk"
            case _:
                pass
        assert disk.term >= message.term, f"{n} sends term {message.term} before storing it"

    def take_snapshot(self, n: str) -> None:
        node = self.node(n)
        index = node.last_applied
        if index <= node.log.snapshot_index:
            return
        self.snapshot_data[n, index] = encode_state(self.applied[n][:index])
        for action in node.snapshot_taken(index, self.snapshot_data[n, index], self.now):
            self.carry_out_one(n, action)

    # -- checks --

    def check_complete(self, leader: RaftNode, indices: list[int]) -> None:
        """Leader completeness: a committed entry is in every later leader's log."""
        log = leader.log
        for index in indices:
            if self.committed_by[index] < leader.term and index > log.snapshot_index:
                entry = self.chosen[index]
                assert log.term_at(index) == entry.term, (
                    f"leader {leader.id} of term {leader.term} lacks committed {entry}"
                )

    def check_node(self, n: str) -> None:
        """The node's memory agrees with its disk and its own history."""
        node = self.node(n)
        disk = self.disks[n]
        assert (node.term, node.voted_for) == (disk.term, disk.voted_for)
        assert (node.log.snapshot_index, node.log.snapshot_term) == disk.base
        assert list(node.log) == disk.entries
        assert node.commit_index >= self.commits[n], "the commit index went back"
        self.commits[n] = node.commit_index
        assert node.log.snapshot_index <= node.last_applied == node.commit_index
        assert node.commit_index <= node.log.last_index
        assert len(self.applied[n]) == node.last_applied
        assert node.statistics().protocol_errors == 0
        if node.role is LEADER:
            assert self.leaders.setdefault(node.term, n) == n, (
                f"two leaders in term {node.term}: {self.leaders[node.term]} and {n}"
            )
            if node.term not in self.checked_leaders:
                self.checked_leaders.add(node.term)
                self.check_complete(node, list(self.chosen))

    def check_all(self) -> None:
        for n, node in self.nodes.items():
            if node is not None:
                self.check_node(n)

    # -- time and the network --

    def deliver(self, flight: Flight) -> None:
        node = self.nodes[flight.dst]
        if node is None or self.group[flight.src] != self.group[flight.dst]:
            return
        self.events += 1
        self.carry_out(flight.dst, node.receive(flight.message, self.now))

    def tick(self, n: str) -> None:
        self.events += 1
        self.carry_out(n, self.node(n).tick(self.now))
        node = self.nodes[n]
        if node is not None:
            assert node.next_deadline() > self.now, f"{n} would be ticked again at once"

    def set_workload(self, workload: Workload) -> None:
        self.workload = workload
        self.next_client = self.now + self.client_pause()

    def client_pause(self) -> float:
        rate = self.workload.total
        return self.rng.expovariate(rate) if rate > 0 else math.inf

    def client(self) -> None:
        """One random request or crash of the workload."""
        workload = self.workload
        kind = self.rng.choices(
            ["propose", "read", "change", "crash"],
            [workload.propose, workload.read, workload.change, workload.crash],
        )[0]
        leader = self.leader()
        target = leader.id if leader is not None and self.rng.random() < 0.9 else None
        target = target or self.rng.choice(self.ids)
        if self.nodes[target] is None:
            return
        match kind:
            case "propose":
                self.propose(target, b"w%d" % self.events)
            case "read":
                self.read(target)
            case "change":
                self.change(target, self.rng.choice(self.ids), add=self.rng.random() < 0.5)
            case _:
                # crash somewhere in its next action list, and come back a bit later
                self.cut[target] = self.rng.randrange(4)
                heapq.heappush(self.restarts, (self.now + self.rng.uniform(0.05, 1.0), target))

    def run(self, duration: float) -> None:
        """Advance the clock by ``duration``: deliver, tick, and run the workload in time order."""
        end = self.now + duration
        while True:
            due = min(((node.next_deadline(), node.id) for node in self.live()), default=None)
            t_node = due[0] if due is not None else math.inf
            t_message = self.network[0].at if self.network else math.inf
            t_restart = self.restarts[0][0] if self.restarts else math.inf
            t = min(t_node, t_message, t_restart, self.next_client)
            if t > end:
                break
            self.now = max(self.now, t)
            if t == t_message:
                self.deliver(heapq.heappop(self.network))
            elif t == t_node:
                assert due is not None
                self.tick(due[1])
            elif t == t_restart:
                _, n = heapq.heappop(self.restarts)
                if self.nodes[n] is None:
                    self.start(n)
            else:
                self.client()
                self.next_client = self.now + self.client_pause()
        self.now = end

    def run_until(
        self, condition: Callable[[], bool], limit: float = 10.0, step: float = 0.05
    ) -> bool:
        deadline = self.now + limit
        while self.now < deadline:
            if condition():
                return True
            self.run(step)
        return bool(condition())

    def partition(self, *groups: list[str]) -> None:
        self.group = dict.fromkeys(self.ids, 0)
        for i, members in enumerate(groups, start=1):
            for n in members:
                self.group[n] = i

    def heal(self) -> None:
        self.group = dict.fromkeys(self.ids, 0)

    # -- requests --

    def propose(self, n: str, data: bytes) -> Proposed | NotLeader:
        result = self.node(n).propose(data, self.now)
        if isinstance(result, Proposed):
            self.carry_out(n, result.actions)
        return result

    def read(self, n: str) -> int | NotLeader:
        rid = next(self.read_ids)
        floor = max((e.index for e in self.chosen.values()), default=0)
        floor = max([floor, *(node.commit_index for node in self.live())])
        result = self.node(n).read_index(rid, self.now)
        if isinstance(result, NotLeader):
            return result
        self.read_floor[rid] = (n, floor)
        self.carry_out(n, result)
        return rid

    def change(self, n: str, server: str, *, add: bool) -> Proposed | NotLeader | ChangeRefused:
        node = self.node(n)
        result = node.add_server(server, self.now) if add else node.remove_server(server, self.now)
        if isinstance(result, Proposed):
            self.carry_out(n, result.actions)
        return result

    def applied_data(self, n: str) -> list[bytes]:
        return [e.data for e in self.applied[n] if e.kind is EntryKind.COMMAND]


@attrs.frozen
class Workload:
    """Requests and crashes per second, during :meth:`Cluster.run`."""

    propose: float = 0.0
    read: float = 0.0
    change: float = 0.0
    crash: float = 0.0

    @property
    def total(self) -> float:
        return self.propose + self.read + self.change + self.crash


def make_cluster(n: int = 3, spares: int = 0, **kwargs: object) -> Cluster:
    founders = [f"n{i}" for i in range(n)]
    others = [f"n{i}" for i in range(n, n + spares)]
    return Cluster(founders, others, **kwargs)  # type: ignore[arg-type]


def elect(cluster: Cluster, limit: float = 5.0) -> RaftNode:
    assert cluster.run_until(lambda: cluster.leader() is not None, limit)
    leader = cluster.leader()
    assert leader is not None
    # its NOOP commits
    assert cluster.run_until(lambda: leader.log.term_at(leader.commit_index) == leader.term)
    return leader


def sends(actions: list[RaftAction]) -> list[tuple[str, RaftMessage]]:
    return [(a.to, a.message) for a in actions if isinstance(a, Send)]


def lone(n: str = "a", voters: tuple[str, ...] = ("a", "b", "c"), **kwargs: object) -> RaftNode:
    """A node driven by hand, with its peers played by the test."""
    return RaftNode(n, voters, now=0.0, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def entries(*terms: int, start: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(t, i, EntryKind.COMMAND, b"%d" % i) for i, t in enumerate(terms, start))


def lone_leader(**kwargs: object) -> tuple[RaftNode, float]:
    """Node "a" of ("a", "b", "c"), made leader by hand; its NOOP is not committed."""
    a = lone("a", **kwargs)
    now = a.next_deadline()
    a.tick(now)
    a.receive(VoteResponse(a.term + 1, "b", True, pre_vote=True), now)
    a.receive(VoteResponse(a.term, "b", True), now)
    assert a.role is LEADER
    return a, now


# -- configuration and the log -------------------------------------------------------


def test_config_defaults_are_the_papers() -> None:
    config = RaftConfig()
    assert (config.election_timeout_min, config.election_timeout_max) == (0.15, 0.30)
    assert config.heartbeat_interval == 0.05
    assert (config.max_entries_per_append, config.snapshot_threshold) == (64, 1000)
    assert config.pre_vote
    assert config.check_quorum


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"election_timeout_min": 0.0}, "election_timeout_min must be a finite number"),
        ({"election_timeout_max": math.inf}, "election_timeout_max must be a finite number"),
        ({"heartbeat_interval": -1.0}, "heartbeat_interval must be a finite number"),
        ({"election_timeout_max": 0.1}, r"election_timeout_max \(0.1\) must be >="),
        ({"heartbeat_interval": 0.2}, r"heartbeat_interval \(0.2\) must be shorter"),
        ({"max_entries_per_append": 0}, "max_entries_per_append must be an integer >= 1"),
        ({"snapshot_threshold": 0}, "snapshot_threshold must be an integer >= 1"),
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RaftConfig(**kwargs)  # type: ignore[arg-type]


def test_the_log_appends_truncates_compacts_and_tracks_configurations() -> None:
    log = RaftLog(snapshot_config=["b", "a"])
    assert (log.last_index, log.last_term, log.config, log.config_index) == (0, 0, ("a", "b"), 0)
    log.append(entries(1, 1, 2))
    with pytest.raises(ValueError, match="cannot follow"):
        log.append([Entry(2, 5)])  # a gap
    with pytest.raises(ValueError, match="cannot follow"):
        log.append([Entry(1, 4)])  # an older term
    log.append([Entry(2, 4, EntryKind.CONFIG, encode_config(["c", "a", "b"]))])
    assert (log.config, log.config_index) == (("a", "b", "c"), 4)
    assert log.config_at(3) == ("a", "b")
    assert (log.first_index_of_term(3), log.first_index_of_term(2)) == (3, 1)
    assert log.is_up_to_date(4, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(9, 1)
    log.truncate(4)
    assert (log.config, log.last_index) == (("a", "b"), 3)
    log.compact(2)
    assert (log.snapshot_index, log.snapshot_term, log.snapshot_config) == (2, 1, ("a", "b"))
    assert (log.term_at(1), log.term_at(2), log.term_at(3), log.term_at(4)) == (None, 1, 2, None)
    assert log.entries(1) == [entries(1, 1, 2)[2]]
    with pytest.raises(IndexError):
        log.entry(2)
    with pytest.raises(ValueError, match="compacted"):
        log.truncate(2)
    with pytest.raises(ValueError, match="no such entry"):
        log.compact(7)
    log.install(3, 2, ["x"])  # the log has (3, 2): what follows is kept (nothing here)
    assert (log.snapshot_index, log.last_index, log.config) == (3, 3, ("x",))
    log.append(entries(2, 2, start=4))
    log.install(4, 9, ["y"])  # a different entry at 4: the whole log goes
    assert (log.last_index, log.last_term, len(log)) == (4, 9, 0)


@pytest.mark.parametrize("data", [b"{", b'{"a": 1}', b"[1]", b"\xff"])
def test_a_configuration_entry_must_name_voters(data: bytes) -> None:
    with pytest.raises(ValueError, match="JSON list of names"):
        decode_config(data)
    assert decode_config(encode_config(["b", "a", "b"])) == ("a", "b")


def test_a_restarted_node_resumes_from_its_disk() -> None:
    state = PersistentState(
        term=4,
        voted_for="b",
        snapshot=Snapshot(2, 1, ("a", "b", "c"), b"state"),
        entries=(*entries(1, 1), *entries(3, 4, start=3)),
    )
    a = lone("a", voters=(), persisted=state)
    assert (a.term, a.voted_for, a.voters) == (4, "b", ("a", "b", "c"))
    assert (a.log.snapshot_index, a.log.last_index, a.log.last_term) == (2, 4, 4)
    assert a.commit_index == a.last_applied == 2  # the shell restores the state from the snapshot
    assert a.next_deadline() <= RaftConfig().election_timeout_max


# -- elections -----------------------------------------------------------------------


def test_a_cluster_elects_one_leader_whose_first_entry_is_a_noop() -> None:
    cluster = make_cluster(3)
    leader = elect(cluster)
    assert [node.role for node in cluster.live()].count(LEADER) == 1
    first = leader.log.entry(1)
    assert (first.kind, first.term) == (EntryKind.NOOP, leader.term)
    cluster.run(0.1)
    assert {(node.term, node.leader) for node in cluster.live()} == {(leader.term, leader.id)}
    stats = leader.statistics()
    assert (stats.role, stats.elections_won, stats.protocol_errors) == (LEADER, 1, 0)
    assert stats.messages_sent > 0
    assert stats.entries_applied == 1


def test_a_vote_is_persisted_before_it_is_sent_and_given_once_per_term() -> None:
    a = lone("a")
    actions = a.receive(RequestVote(1, "b", 0, 0), 0.0)
    assert actions == [
        Persist(1, "b"),
        Send("b", VoteResponse(1, "a", True)),
        RoleChanged(FOLLOWER, 1, None),
    ]
    # the same request again (a duplicate) is granted again; another candidate is refused
    assert a.receive(RequestVote(1, "b", 0, 0), 0.0) == [Send("b", VoteResponse(1, "a", True))]
    assert a.receive(RequestVote(1, "c", 9, 1), 0.0) == [Send("c", VoteResponse(1, "a", False))]
    # a stale candidate learns the term
    assert a.receive(RequestVote(0, "c", 9, 1), 0.0) == [Send("c", VoteResponse(1, "a", False))]
    assert a.voted_for == "b"


def test_votes_are_refused_to_logs_less_up_to_date() -> None:
    a = lone("a", persisted=PersistentState(term=2, entries=entries(1, 2)))
    refused = a.receive(RequestVote(3, "b", 5, 1), 0.0)  # an older last term
    assert sends(refused) == [("b", VoteResponse(3, "a", False))]
    refused = a.receive(RequestVote(3, "b", 1, 2), 0.0)  # the same last term, shorter
    assert sends(refused) == [("b", VoteResponse(3, "a", False))]
    assert (a.term, a.voted_for) == (3, None)  # the term moved on, the vote did not
    granted = a.receive(RequestVote(3, "c", 2, 2), 0.0)
    assert sends(granted) == [("c", VoteResponse(3, "a", True))]


def test_pre_vote_asks_for_the_next_term_without_taking_it() -> None:
    a = lone("a")
    now = a.next_deadline()
    actions = a.tick(now)
    assert (a.role, a.term) == (RaftRole.PRE_CANDIDATE, 0)
    assert not any(isinstance(action, Persist) for action in actions)
    request = RequestVote(1, "a", 0, 0, pre_vote=True)
    assert sends(actions) == [("b", request), ("c", request)]
    # a voter answers without changing its own state
    b = lone("b")
    assert b.receive(request, now) == [Send("a", VoteResponse(1, "b", True, pre_vote=True))]
    assert (b.term, b.voted_for, b.role) == (0, None, FOLLOWER)
    # with its own, one pre-vote is a majority: now a stands for term 1
    actions = a.receive(VoteResponse(1, "b", True, pre_vote=True), now)
    assert (a.role, a.term, a.voted_for) == (RaftRole.CANDIDATE, 1, "a")
    assert actions[0] == Persist(1, "a")
    assert sends(actions) == [("b", RequestVote(1, "a", 0, 0)), ("c", RequestVote(1, "a", 0, 0))]
    # a pre-vote that comes late changes nothing
    assert a.receive(VoteResponse(1, "c", True, pre_vote=True), now) == []
    assert a.statistics().stale_messages == 1


def test_a_refused_pre_vote_from_a_later_term_makes_a_follower() -> None:
    a = lone("a")
    now = a.next_deadline()
    a.tick(now)
    actions = a.receive(VoteResponse(5, "b", False, pre_vote=True), now)
    assert (a.role, a.term) == (FOLLOWER, 5)
    assert actions == [Persist(5, None), RoleChanged(FOLLOWER, 5, None)]


def test_a_server_that_hears_from_its_leader_refuses_to_help_elect_another() -> None:
    config = RaftConfig()
    b = lone("b")
    b.receive(AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    assert (b.leader, b.term) == ("a", 1)
    # within the lease: pre-votes refused, votes ignored (dissertation 4.2.3) ...
    refused = b.receive(RequestVote(2, "c", 0, 0, pre_vote=True), 1.05)
    assert refused == [Send("c", VoteResponse(1, "b", False, pre_vote=True))]
    assert b.receive(RequestVote(2, "c", 0, 0), 1.05) == []
    assert b.term == 1
    # ... unless the leader handed over
    granted = b.receive(RequestVote(2, "c", 0, 0, transfer=True), 1.05)
    assert sends(granted) == [("c", VoteResponse(2, "b", True))]
    # once the leader has been silent for election_timeout_min, pre-votes are granted
    later = 1.0 + config.election_timeout_min
    c = lone("c")
    c.receive(AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    assert sends(c.receive(RequestVote(2, "b", 0, 0, pre_vote=True), later)) == [
        ("b", VoteResponse(2, "c", True, pre_vote=True))
    ]


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_server_rejoining_after_a_partition_disrupts_the_leader_only_without_pre_vote(
    pre_vote: bool,
) -> None:
    cluster = make_cluster(3, config=RaftConfig(pre_vote=pre_vote, check_quorum=False), seed=1)
    leader = elect(cluster)
    term = leader.term
    lonely = next(n for n in cluster.ids if n != leader.id)
    cluster.partition([lonely])
    cluster.run(3.0)
    stats = cluster.node(lonely).statistics()
    if pre_vote:
        assert (stats.term, stats.elections_started) == (term, 0)
        assert stats.pre_votes_started >= 10
    else:
        assert stats.term >= term + 10
    cluster.heal()
    cluster.run(2.0)
    after = elect(cluster)
    if pre_vote:
        assert (after, after.term) == (leader, term)
    else:
        assert after.term > term


def test_a_leader_that_loses_its_majority_steps_down_and_fails_its_reads() -> None:
    cluster = make_cluster(3)
    leader = elect(cluster)
    cluster.partition([leader.id])
    rid = cluster.read(leader.id)
    assert isinstance(rid, int)
    cluster.run(RaftConfig().election_timeout_max + 0.06)
    assert leader.role is FOLLOWER
    assert rid in cluster.reads_failed
    assert leader.statistics().step_downs == 1
    assert leader.statistics().reads_failed == 1
    # the majority elects a new leader meanwhile
    assert cluster.run_until(lambda: (new := cluster.leader()) is not None and new != leader)


def test_without_check_quorum_an_isolated_leader_keeps_its_role() -> None:
    cluster = make_cluster(3, config=RaftConfig(check_quorum=False))
    leader = elect(cluster)
    cluster.partition([leader.id])
    cluster.run(2.0)
    assert leader.role is LEADER
    rid = cluster.read(leader.id)
    cluster.run(1.0)
    assert rid not in cluster.reads_ready  # it cannot confirm a read without a majority
    cluster.heal()
    cluster.run(0.2)
    assert leader.role is FOLLOWER
    assert rid in cluster.reads_failed


# -- log replication -----------------------------------------------------------------


def test_a_follower_replaces_a_conflicting_suffix_on_disk_before_answering() -> None:
    b = lone("b", persisted=PersistentState(term=2, entries=entries(1, 2, 2)))
    new = entries(1, 3, 3)[1:]
    actions = b.receive(AppendEntries(3, "a", 1, 1, new, leader_commit=1), 1.0)
    assert actions == [
        Persist(3, None),
        TruncateLog(2),
        AppendToLog(new),
        Send("a", AppendResponse(3, "b", True, 3)),
        Apply(entries(1)),
        RoleChanged(FOLLOWER, 3, "a"),
    ]
    # an older message delivered late truncates nothing
    late = AppendEntries(3, "a", 1, 1, new[:1], leader_commit=1)
    assert b.receive(late, 1.01) == [Send("a", AppendResponse(3, "b", True, 2))]
    assert list(b.log) == [*entries(1), *new]


def test_a_follower_commits_no_further_than_what_it_knows_matches() -> None:
    b = lone("b", persisted=PersistentState(term=2, entries=entries(1, 1, 2, 2)))
    # the leader's commit index is 4, but only entries up to 2 are known to match
    b.receive(AppendEntries(3, "a", 2, 1, (), leader_commit=4), 1.0)
    assert b.commit_index == 2


def test_rejections_tell_the_leader_where_to_retry() -> None:
    b = lone("b", persisted=PersistentState(term=3, entries=entries(1, 2, 2, 2)))
    too_far = b.receive(AppendEntries(3, "a", 9, 3, (), 0, read_seq=4), 1.0)
    assert sends(too_far) == [("a", AppendResponse(3, "b", False, 0, 4, conflict_index=5))]
    wrong_term = b.receive(AppendEntries(3, "a", 4, 3, (), 0), 1.0)
    assert sends(wrong_term) == [("a", AppendResponse(3, "b", False, 0, 0, conflict_index=2))]
    stale = b.receive(AppendEntries(2, "c", 4, 2, (), 0), 1.0)
    assert sends(stale) == [("c", AppendResponse(3, "b", False, 0, 0))]


def test_a_leader_backs_off_to_the_hint_and_repairs_the_follower() -> None:
    a, now = lone_leader(persisted=PersistentState(term=1, entries=entries(1, 1, 1)))
    a.propose(b"x", now)  # index 5, after the NOOP; peers are probed from 4
    retry = a.receive(AppendResponse(2, "b", False, 0, 0, conflict_index=2), now)
    [(to, message)] = sends(retry)
    assert to == "b"
    assert isinstance(message, AppendEntries)
    assert (message.prev_log_index, message.prev_log_term) == (1, 1)
    assert [e.index for e in message.entries] == [2, 3, 4, 5]
    # a stale rejection (its hint is not below what is being sent) is ignored
    assert sends(a.receive(AppendResponse(2, "b", False, 0, 0, conflict_index=4), now)) == []
    assert a.receive(AppendResponse(2, "b", True, 5), now) == [Apply(tuple(a.log.entries(1)))]


def test_a_follower_never_truncates_committed_entries_nor_serves_two_leaders() -> None:
    b = lone("b", persisted=PersistentState(term=2, entries=entries(1, 2)))
    b.receive(AppendEntries(2, "a", 2, 2, (), leader_commit=2), 1.0)
    assert b.commit_index == 2
    # a message that contradicts the committed entries is ignored (and counted)
    other = (Entry(2, 1, EntryKind.COMMAND, b"other"),)
    assert b.receive(AppendEntries(2, "a", 0, 0, other, leader_commit=2), 1.0) == []
    # so is a second leader for the same term, and a malformed message
    assert b.receive(AppendEntries(2, "c", 2, 2, (), leader_commit=2), 1.0) == []
    assert b.receive(AppendEntries(2, "a", 2, 2, entries(1, start=7), 2), 1.0) == []
    assert b.statistics().protocol_errors == 3
    assert list(b.log) == list(entries(1, 2))


def test_a_leader_commits_an_earlier_terms_entry_only_through_one_of_its_own() -> None:
    # Figure 8: the entry of term 2 on a majority is not committed by counting.
    a, now = lone_leader(persisted=PersistentState(term=3, entries=entries(1, 2)))
    assert (a.term, a.log.entry(3).kind) == (4, EntryKind.NOOP)
    a.receive(AppendResponse(4, "b", True, 2), now)
    assert a.commit_index == 0
    actions = a.receive(AppendResponse(4, "b", True, 3), now)
    assert a.commit_index == 3
    assert Apply(tuple(a.log.entries(1))) in actions


def test_a_single_server_leads_commits_and_reads_alone() -> None:
    node = lone("a", voters=("a",))
    start = node.next_deadline()
    actions = node.tick(start)
    assert node.role is LEADER
    assert [type(action) for action in actions] == [Persist, AppendToLog, Apply, RoleChanged]
    result = node.propose(b"x", start)
    assert isinstance(result, Proposed)
    entry = Entry(1, 2, EntryKind.COMMAND, b"x")
    assert (result.term, result.index) == (1, 2)
    assert result.actions == [AppendToLog((entry,)), Apply((entry,))]  # on disk, then applied
    assert node.read_index(1, start) == [ReadReady(1, 2)]
    # its only timer is the heartbeat (it cannot lose a majority of one)
    assert node.next_deadline() == start + RaftConfig().heartbeat_interval
    assert node.tick(node.next_deadline()) == []


def test_followers_refuse_requests_and_name_the_leader() -> None:
    b = lone("b")
    assert b.propose(b"x", 0.0) == NotLeader(None)
    b.receive(AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    assert b.propose(b"x", 1.0) == NotLeader("a")
    assert b.read_index(1, 1.0) == NotLeader("a")
    assert b.add_server("d", 1.0) == NotLeader("a")
    assert b.remove_server("c", 1.0) == NotLeader("a")


def test_a_leader_sends_at_most_max_entries_per_append() -> None:
    a, now = lone_leader(config=RaftConfig(max_entries_per_append=2))
    for i in range(4):
        a.propose(b"%d" % i, now)
    [(_, message), _] = sends(a.tick(a.next_deadline()))
    assert isinstance(message, AppendEntries)
    assert [e.index for e in message.entries] == [1, 2]
    more = a.receive(AppendResponse(1, "b", True, 2), now)
    assert [[e.index for e in m.entries] for _, m in sends(more)] == [[3, 4]]  # type: ignore[union-attr]


# -- reads ---------------------------------------------------------------------------


def test_read_index_waits_for_the_terms_first_commit_and_a_heartbeat_round() -> None:
    a, now = lone_leader()
    assert a.read_index(7, now) == []  # the NOOP is not committed yet
    # b acknowledges the NOOP: it commits, and the read's heartbeat round starts
    actions = a.receive(AppendResponse(1, "b", True, 1, read_seq=0), now)
    assert a.commit_index == 1
    assert [(to, m.read_seq) for to, m in sends(actions)] == [("b", 1), ("c", 1)]  # type: ignore[union-attr]
    assert not any(isinstance(action, ReadReady) for action in actions)
    # answers to the previous round confirm nothing; a read arriving now waits for the next
    assert a.receive(AppendResponse(1, "c", True, 1, read_seq=0), now) == []
    assert a.read_index(8, now) == []
    # a majority answered round 1: read 7 is ready at index 1, and round 2 starts for read 8
    actions = a.receive(AppendResponse(1, "c", False, 0, read_seq=1, conflict_index=2), now)
    assert actions[0] == ReadReady(7, 1)
    assert [(to, m.read_seq) for to, m in sends(actions)] == [("b", 2), ("c", 2)]  # type: ignore[union-attr]
    assert ReadReady(8, 1) in a.receive(AppendResponse(1, "b", True, 1, read_seq=2), now)
    assert a.statistics().reads_ready == 2


def test_a_read_in_a_cluster_sees_every_earlier_write() -> None:
    cluster = make_cluster(5)
    leader = elect(cluster)
    result = cluster.propose(leader.id, b"w")
    assert isinstance(result, Proposed)
    cluster.run(0.05)
    rid = cluster.read(leader.id)
    assert isinstance(rid, int)
    assert cluster.run_until(lambda: rid in cluster.reads_ready, limit=0.2)
    assert cluster.reads_ready[rid] >= result.index


# -- snapshots -----------------------------------------------------------------------


def test_snapshot_taken_compacts_the_log() -> None:
    node = lone("a", voters=("a",), config=RaftConfig(snapshot_threshold=3))
    node.tick(node.next_deadline())  # leader; the NOOP is applied
    actions = node.propose(b"1", 1.0).actions  # type: ignore[union-attr]
    assert not any(isinstance(action, SnapshotWanted) for action in actions)
    actions = node.propose(b"2", 1.0).actions  # type: ignore[union-attr]
    assert actions[-1] == SnapshotWanted(3)
    with pytest.raises(ValueError, match="only 3 entries are applied"):
        node.snapshot_taken(4, b"", 1.0)
    assert node.snapshot_taken(2, b"two", 1.0) == [CompactLog(2, 1, ("a",))]
    assert node.snapshot_taken(1, b"one", 1.0) == []  # older than the one it has
    assert (node.log.snapshot_index, len(node.log)) == (2, 1)
    # asked again threshold entries after it asked (the snapshot taken was older)
    node.propose(b"3", 1.0)
    node.propose(b"4", 1.0)
    actions = node.propose(b"5", 1.0).actions  # type: ignore[union-attr]
    assert actions[-1] == SnapshotWanted(6)
    node.snapshot_taken(6, b"six", 1.0)
    for data in (b"6", b"7"):
        node.propose(data, 1.0)
    actions = node.propose(b"8", 1.0).actions  # type: ignore[union-attr]
    assert actions[-1] == SnapshotWanted(9)
    assert node.statistics().snapshots_taken == 2


def test_a_follower_that_missed_compacted_entries_gets_the_snapshot() -> None:
    cluster = make_cluster(3, config=RaftConfig(snapshot_threshold=5))
    leader = elect(cluster)
    lagging = next(n for n in cluster.ids if n != leader.id)
    cluster.crash(lagging)
    for i in range(12):
        cluster.propose(leader.id, b"%d" % i)
    cluster.run(0.2)
    assert leader.log.snapshot_index >= 5
    cluster.start(lagging)
    node = cluster.node(lagging)
    assert cluster.run_until(lambda: node.last_applied == leader.commit_index)
    assert node.statistics().snapshots_installed == 1
    assert leader.statistics().snapshots_sent >= 1
    assert cluster.applied[lagging] == cluster.applied[leader.id]
    assert cluster.disks[lagging].snapshot is not None


def test_installing_a_snapshot_keeps_a_matching_log_and_drops_a_conflicting_one() -> None:
    snap = InstallSnapshot(2, "a", 2, 1, ("a", "b", "c"), b"s")
    b = lone("b", persisted=PersistentState(term=2, entries=entries(1, 1, 2)))
    actions = b.receive(snap, 1.0)
    assert actions[:2] == [
        SaveSnapshot(2, 1, ("a", "b", "c"), b"s"),
        Send("a", SnapshotResponse(2, "b", 2)),
    ]
    assert (b.log.snapshot_index, b.log.last_index, b.commit_index, b.last_applied) == (2, 3, 2, 2)
    c = lone("c", persisted=PersistentState(term=2, entries=entries(1, 2, 2)))
    actions = c.receive(snap, 1.0)
    assert actions[:2] == [TruncateLog(3), SaveSnapshot(2, 1, ("a", "b", "c"), b"s")]
    assert (c.log.snapshot_index, c.log.last_index) == (2, 2)
    # a snapshot the follower has already committed past is only acknowledged
    assert b.receive(snap, 1.1) == [Send("a", SnapshotResponse(2, "b", 2))]


# -- membership ----------------------------------------------------------------------


def test_a_new_server_catches_up_and_becomes_a_voter() -> None:
    cluster = make_cluster(3, spares=1, config=RaftConfig(snapshot_threshold=4))
    leader = elect(cluster)
    for i in range(10):
        cluster.propose(leader.id, b"%d" % i)
    cluster.run(0.2)
    new = cluster.node("n3")
    assert new.next_deadline() == math.inf  # not a voter: it never stands
    result = cluster.change(leader.id, "n3", add=True)
    assert isinstance(result, Proposed)
    assert leader.voters == ("n0", "n1", "n2", "n3")  # at once, before it commits
    refused = cluster.change(leader.id, "n2", add=False)
    assert refused == ChangeRefused("a configuration change is in progress: wait until it commits")
    assert cluster.run_until(lambda: new.last_applied == leader.commit_index >= result.index)
    assert new.voters == leader.voters
    assert new.next_deadline() < math.inf
    assert cluster.applied_data("n3") == cluster.applied_data(leader.id)
    # it counts: with two of the four down there is no majority
    followers = [n for n in cluster.ids if n not in (leader.id, "n3")]
    cluster.crash(followers[0])
    last = cluster.propose(leader.id, b"three of four")
    assert isinstance(last, Proposed)
    assert cluster.run_until(lambda: leader.commit_index >= last.index, limit=0.5)
    cluster.crash("n3")
    stuck = cluster.propose(leader.id, b"two of four")
    assert isinstance(stuck, Proposed)
    cluster.run(0.2)
    assert leader.commit_index < stuck.index


def test_a_removed_follower_stops_counting_and_never_stands() -> None:
    cluster = make_cluster(3)
    leader = elect(cluster)
    gone = next(n for n in cluster.ids if n != leader.id)
    result = cluster.change(leader.id, gone, add=False)
    assert isinstance(result, Proposed)
    assert cluster.run_until(lambda: cluster.node(gone).voters == leader.voters)
    assert gone not in leader.voters
    assert cluster.node(gone).next_deadline() == math.inf
    cluster.run(2.0)  # no heartbeats reach it, and it stays quiet
    assert cluster.node(gone).statistics().pre_votes_started == 0
    assert leader.role is LEADER
    cluster.crash(gone)
    last = cluster.propose(leader.id, b"x")
    assert isinstance(last, Proposed)
    assert cluster.run_until(lambda: leader.commit_index >= last.index, limit=0.5)


def test_a_leader_that_removes_itself_steps_down_once_committed_and_hands_over() -> None:
    cluster = make_cluster(3)
    leader = elect(cluster)
    old = leader.id
    result = cluster.change(old, old, add=False)
    assert isinstance(result, Proposed)
    assert leader.role is LEADER  # it leads on, without counting itself
    # TimeoutNow: the successor stands at once, before any election timeout
    limit = RaftConfig().election_timeout_min / 2
    assert cluster.run_until(
        lambda: (new := cluster.leader()) is not None and new.id != old, limit=limit, step=0.005
    )
    new = cluster.leader()
    assert new is not None
    assert (leader.role, leader.next_deadline()) == (FOLLOWER, math.inf)
    assert old not in new.voters
    assert len(new.voters) == 2
    assert new.statistics().elections_started == 1
    assert new.statistics().pre_votes_started == 0
    after = cluster.propose(new.id, b"after")
    assert isinstance(after, Proposed)
    assert cluster.run_until(lambda: new.commit_index >= after.index)


def test_membership_changes_are_refused_when_unsafe() -> None:
    a, now = lone_leader()
    refused = a.add_server("d", now)
    assert refused == ChangeRefused("the new leader has not committed an entry of its term yet")
    a.receive(AppendResponse(1, "b", True, 1), now)
    assert a.add_server("b", now) == ChangeRefused("'b' is already a voter")
    assert a.remove_server("d", now) == ChangeRefused("'d' is not a voter")
    alone = lone("a", voters=("a",))
    alone.tick(alone.next_deadline())
    assert alone.remove_server("a", 1.0) == ChangeRefused("'a' is the last voter")


def test_timeout_now_starts_an_election_at_once_and_only_for_a_voter() -> None:
    b = lone("b")
    b.receive(AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    actions = b.receive(TimeoutNow(1, "a"), 1.0)
    assert (b.role, b.term) == (RaftRole.CANDIDATE, 2)
    assert sends(actions) == [
        ("a", RequestVote(2, "b", 0, 0, transfer=True)),
        ("c", RequestVote(2, "b", 0, 0, transfer=True)),
    ]
    assert b.receive(TimeoutNow(1, "a"), 1.0) == []  # stale
    outsider = lone("d")
    assert outsider.receive(TimeoutNow(1, "a"), 1.0)[-1] == RoleChanged(FOLLOWER, 1, "a")
    assert outsider.role is FOLLOWER


def test_restarting_every_server_keeps_what_was_committed() -> None:
    cluster = make_cluster(3)
    leader = elect(cluster)
    for i in range(3):
        cluster.propose(leader.id, b"%d" % i)
    cluster.run(0.2)
    before = cluster.applied_data(leader.id)
    assert len(before) == 3
    for n in cluster.ids:
        cluster.crash(n)
    for n in cluster.ids:
        cluster.start(n)
        assert cluster.node(n).last_applied == 0
    again = elect(cluster)
    assert again.term > leader.term
    assert cluster.run_until(lambda: all(cluster.applied_data(n) == before for n in cluster.ids))


# -- simulated clusters under faults -------------------------------------------------

NODES = ["n0", "n1", "n2", "n3", "n4"]
nodes = st.sampled_from(NODES)


class RaftClusterMachine(RuleBasedStateMachine):
    """Five servers (some founders, the rest spares to add), under every fault.

    Hypothesis chooses the faults: crashes (also half-way through an action
    list, to test the order of the storage actions), restarts from disk,
    partitions, message loss, duplication, delay and reordering (by delivering
    any message in flight next); and the requests: proposals, reads,
    membership changes, snapshots. It also sets a :class:`Workload` of
    requests and crashes that the cluster's seeded random generator spreads
    over the runs, so that they meet elections and replication at every point.
    The cluster checks safety as it carries out each action (see
    :class:`Cluster`); every step ends with a full check, and :meth:`quiet`
    checks liveness.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cluster = make_cluster(3)
        self.commands = itertools.count()
        self.quiet_periods = itertools.count()

    @initialize(
        founders=st.sampled_from([3, 3, 1, 2, 4, 5]),
        cluster_seed=st.integers(0, 2**32 - 1),
        pre_vote=st.booleans(),
        check_quorum=st.booleans(),
        threshold=st.integers(2, 8),
        max_entries=st.sampled_from([1, 3, 64]),
        warm_up=st.sampled_from([1.0, 0.0]),
    )
    def setup(
        self,
        founders: int,
        cluster_seed: int,
        pre_vote: bool,
        check_quorum: bool,
        threshold: int,
        max_entries: int,
        warm_up: float,
    ) -> None:
        config = RaftConfig(
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            snapshot_threshold=threshold,
            max_entries_per_append=max_entries,
        )
        self.cluster = Cluster(NODES[:founders], NODES[founders:], config=config, seed=cluster_seed)
        self.cluster.run(warm_up)  # (most examples start with a leader)

    # -- time and the network --

    @rule(duration=st.sampled_from([0.01, 0.02, 0.05, 0.1]))
    def run(self, duration: float) -> None:
        self.cluster.run(duration)

    @rule(duration=st.sampled_from([0.3, 1.0, 2.0]))
    def run_long(self, duration: float) -> None:
        self.cluster.run(duration)

    @rule(
        loss=st.sampled_from([0.0, 0.05, 0.3]),
        duplication=st.sampled_from([0.0, 0.1, 0.3]),
        latency=st.sampled_from([0.005, 0.05, 0.25]),
    )
    def network_faults(self, loss: float, duplication: float, latency: float) -> None:
        self.cluster.loss = loss
        self.cluster.duplication = duplication
        self.cluster.latency = (0.001, latency)

    @rule(
        propose=st.sampled_from([0.0, 5.0, 50.0]),
        read=st.sampled_from([0.0, 5.0, 50.0]),
        change=st.sampled_from([0.0, 1.0, 5.0]),
        crash=st.sampled_from([0.0, 1.0, 5.0]),
    )
    def workload(self, propose: float, read: float, change: float, crash: float) -> None:
        """Requests and crashes at random times during the runs."""
        config = self.cluster.config
        if not (config.pre_vote or config.check_quorum):
            change = 0.0  # (see change_membership)
        self.cluster.set_workload(Workload(propose, read, change, crash))

    def pick_flight(self, data: st.DataObject) -> Flight:
        network = self.cluster.network
        flight = network.pop(data.draw(st.integers(0, len(network) - 1), label="message"))
        heapq.heapify(network)
        return flight

    @precondition(lambda self: self.cluster.network)
    @rule(data=st.data())
    def deliver_out_of_order(self, data: st.DataObject) -> None:
        self.cluster.deliver(self.pick_flight(data))

    @precondition(lambda self: self.cluster.network)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        self.pick_flight(data)

    @precondition(lambda self: self.cluster.network)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        flight = self.pick_flight(data)
        self.cluster.deliver(flight)
        heapq.heappush(self.cluster.network, flight)

    @rule(groups=st.lists(st.integers(0, 2), min_size=len(NODES), max_size=len(NODES)))
    def partition(self, groups: list[int]) -> None:
        self.cluster.group = dict(zip(NODES, groups, strict=True))

    @rule()
    def heal(self) -> None:
        self.cluster.heal()

    # -- processes --

    @rule(n=nodes)
    def crash(self, n: str) -> None:
        if self.cluster.nodes[n] is not None:
            self.cluster.crash(n)

    @rule(n=nodes, cut=st.integers(0, 4))
    def crash_midway(self, n: str, cut: int) -> None:
        """Crash after carrying out only ``cut`` actions of the node's next list."""
        if self.cluster.nodes[n] is not None:
            self.cluster.cut[n] = cut

    @rule(n=nodes)
    def restart(self, n: str) -> None:
        if self.cluster.nodes[n] is None:
            self.cluster.start(n)

    # -- requests --

    def up(self, n: str) -> bool:
        return self.cluster.nodes[n] is not None

    @rule(n=nodes)
    def propose(self, n: str) -> None:
        if self.up(n):
            result = self.cluster.propose(n, b"c%d" % next(self.commands))
            if isinstance(result, NotLeader):
                assert self.cluster.node(n).role is not LEADER

    @rule(count=st.integers(1, 5))
    def propose_to_leader(self, count: int) -> None:
        for _ in range(count):
            leader = self.cluster.leader()
            if leader is not None:
                self.cluster.propose(leader.id, b"c%d" % next(self.commands))

    @rule(n=nodes)
    def read(self, n: str) -> None:
        if self.up(n):
            self.cluster.read(n)

    @rule()
    def read_from_leader(self) -> None:
        leader = self.cluster.leader()
        if leader is not None:
            self.cluster.read(leader.id)

    # A server removed while cut off never learns it: without Pre-Vote or
    # check-quorum it disrupts the cluster until it is stopped (4.2.3).
    @precondition(lambda self: self.cluster.config.pre_vote or self.cluster.config.check_quorum)
    @rule(server=nodes, add=st.booleans())
    def change_membership(self, server: str, add: bool) -> None:
        leader = self.cluster.leader()
        if leader is not None:
            result = self.cluster.change(leader.id, server, add=add)
            if isinstance(result, Proposed):
                assert (server in leader.voters) == add

    @rule(n=nodes)
    def snapshot(self, n: str) -> None:
        if self.up(n):
            self.cluster.take_snapshot(n)

    # -- liveness --

    def config_of(self, n: str) -> tuple[str, ...]:
        node = self.cluster.nodes[n]
        if node is not None:
            return node.voters
        disk = self.cluster.disks[n]
        snap = disk.snapshot
        log = RaftLog(
            snapshot_index=0 if snap is None else snap.index,
            snapshot_term=0 if snap is None else snap.term,
            snapshot_config=self.cluster.bootstrap[n] if snap is None else snap.config,
            entries=disk.entries,
        )
        return log.config

    @rule(down=st.sets(nodes, max_size=2))
    def quiet(self, down: set[str]) -> None:
        """Faults stop and a majority of every configuration is up and connected:
        a leader is elected, and a new command commits and reaches every voter."""
        cluster = self.cluster
        configs = {self.config_of(n) for n in NODES} - {()}
        if not all(2 * len(set(config) - down) > len(config) for config in configs):
            down = set()
        cluster.heal()
        cluster.loss = cluster.duplication = 0.0
        cluster.latency = (0.001, 0.01)
        cluster.cut.clear()
        cluster.restarts.clear()
        busy = cluster.workload  # requests go on; crashes and membership changes stop
        cluster.set_workload(Workload(propose=busy.propose, read=busy.read))
        for n in NODES:
            if n in down and self.up(n):
                cluster.crash(n)
            elif n not in down and not self.up(n):
                cluster.start(n)
        marker = b"quiet%d" % next(self.quiet_periods)
        proposed: set[int] = set()
        start = cluster.now
        while cluster.now < start + 20.0:
            leader = cluster.leader()
            if leader is not None:
                voters = [v for v in (*leader.voters, leader.id) if v not in down]
                if all(marker in cluster.applied_data(v) for v in voters):
                    return
                if leader.term not in proposed:
                    proposed.add(leader.term)
                    cluster.propose(leader.id, marker)
            cluster.run(0.05)
        raise AssertionError(
            f"no progress in 20 s of quiet: {[repr(node) for node in cluster.live()]}"
        )

    @invariant()
    def safe(self) -> None:
        self.cluster.check_all()


RaftClusterMachine.TestCase.settings = settings(
    max_examples=3000 if DEEP else 300,
    stateful_step_count=100 if DEEP else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if not DEEP:  # the default run replays one fixed search; the deep profile explores anew
    seed(20140101)(RaftClusterMachine)
TestRaftCluster = RaftClusterMachine.TestCase
