"""Raft consensus as a pure state machine.

Theory of operation
-------------------

A :class:`RaftNode` is one server of a Raft cluster (Ongaro and Ousterhout,
"In Search of an Understandable Consensus Algorithm", 2014, whose Figure 2 it
follows rule by rule; and Ongaro's dissertation, 2014, for Pre-Vote,
check-quorum, ReadIndex and single-server membership changes). It does no I/O
and reads no clock: every input takes ``now``, in seconds, and returns the
*actions* the shell must carry out, in order.

States (:class:`RaftRole`)::

         election timeout           pre-votes from a majority
   FOLLOWER ---------> PRE_CANDIDATE ---------> CANDIDATE ---------> LEADER
      ^   (pre_vote=False, or TimeoutNow: straight to CANDIDATE)      |
      |            votes from a majority                               |
      +---- a higher term, a leader of this term, or (leader) no majority heard
            within an election timeout (check_quorum), or removed from the config

Driving it (the shell)
----------------------

Construction: ``RaftNode(id, voters, now=..., rng=..., config=RaftConfig(...),
persisted=...)``. ``voters`` is the bootstrap configuration, identical on the
founding servers, empty on a server that will be added later; ``persisted`` is
the :class:`PersistentState` the shell kept (term, vote, snapshot, log), or
``None`` the first time. After a restart the shell resets its state machine
to the snapshot's data; the node applies the log again from the snapshot on.

Inputs (events in), each returning the list of actions:

- :meth:`~RaftNode.tick` when :meth:`~RaftNode.next_deadline` has come (the
  election timeout, drawn from ``rng`` in ``[election_timeout_min,
  election_timeout_max]``; a leader's heartbeat and its check-quorum). The
  deadline can move after any input: ask again each time. Nothing else is
  timed, so the shell never polls.
- :meth:`~RaftNode.receive` a message (:data:`RaftMessage`) from a peer.
- Requests, which a non-leader refuses with :class:`NotLeader` (the best known
  leader, for a redirect): :meth:`~RaftNode.propose` (a ``COMMAND`` entry,
  :class:`Proposed` gives its term and index), :meth:`~RaftNode.read_index`,
  :meth:`~RaftNode.add_server` and :meth:`~RaftNode.remove_server` (which may
  also be :class:`ChangeRefused`).
- :meth:`~RaftNode.snapshot_taken` once the shell has snapshotted its state
  machine (best after a :class:`SnapshotWanted`).

Actions (:data:`RaftAction`) must be carried out *in list order*:

- storage: :class:`Persist` (term and vote), :class:`TruncateLog`,
  :class:`AppendToLog`, :class:`SaveSnapshot` (a snapshot received: store it,
  drop the log up to it, reset the state machine to it) and
  :class:`CompactLog` (the shell's own snapshot is now the log's base). Each
  must be durable before any later action is carried out. The node puts them
  before whatever depends on them: the hard state before any message, a vote
  before it is sent, entries before they are acknowledged, a leader's own
  entries before they are applied (so it counts itself in a majority). Every
  prefix of a list is a state the node could have been in, so a crash between
  two actions is safe.
- :class:`Send`: best effort; loss, duplication and reordering are harmless.
- :class:`Apply`: committed entries of every kind, in index order, each index
  once in the life of the node object. A proposal ``(term, index)`` succeeded
  if and only if an applied entry has that index *and* term; another term at
  that index, or a :class:`TruncateLog` of it, means it was lost.
- :class:`ReadReady` (answer the read once the state machine has applied
  ``index``) or :class:`ReadFailed` (leadership lost: retry elsewhere).
- :class:`RoleChanged`: role, term or known leader changed; at most one per
  input, at the end.
- :class:`SnapshotWanted`: ``snapshot_threshold`` entries were applied since
  the last snapshot (repeated every as many entries until one is taken).

Rules beyond Figure 2
---------------------

- Pre-Vote (dissertation 9.6, ``pre_vote``): before a real election a server
  asks whether it *would* win, for the term after its own, without changing
  any term. A server grants a pre-vote only to an up-to-date log, and only if
  it has not heard from a leader within ``election_timeout_min``. So a server
  that rejoins after a partition cannot disrupt a working leader.
- Check-quorum (dissertation 6.2, ``check_quorum``): a leader that has not
  heard from a majority of voters within ``election_timeout_max`` steps down;
  and while a server has heard from a leader within ``election_timeout_min``
  it ignores requests for real votes (dissertation 4.2.3), unless they come
  from a leadership transfer.
- Leaders commit only entries of their own term by counting replicas (5.4.2),
  and start each term with a ``NOOP`` entry. A follower commits no further
  than the last entry it knows to match the leader's, and never truncates a
  committed entry: a message that would make it (or that names a second
  leader for a term) is ignored and counted in ``protocol_errors``.
- Replication: a leader probes a follower with one append per heartbeat, backs
  off to the follower's hint (``conflict_index``: its last index + 1, or the
  first index of its conflicting term), then pipelines up to
  ``max_entries_per_append`` entries per message; a follower that needs
  compacted entries gets the snapshot, whole, in one :class:`InstallSnapshot`.
- ReadIndex (dissertation 6.4): a read waits until the leader has committed an
  entry of its term, takes the commit index, and is released
  (:class:`ReadReady`) once a majority has answered a heartbeat round sent
  after the read arrived; rounds are numbered by ``read_seq``. A leader that
  steps down fails its pending reads (:class:`ReadFailed`).
- Membership (dissertation 4.1): one voter added or removed at a time; a
  ``CONFIG`` entry takes effect as soon as it is in a log; a leader accepts a
  change only when the previous one is committed and it has committed an entry
  of its own term (the fix for the single-server change bug found after the
  dissertation). A server stands for election only if it is a voter, or was
  one before a change it does not know to be committed (it may be needed to
  commit it, dissertation 4.2.2). A leader keeps sending to a server it
  removed until it has told it that the change is committed. A leader that
  removes itself leads on without counting itself, steps down once the change
  commits, and hands over with :class:`TimeoutNow` to its most up-to-date peer.

Invariants (checked by the tests after every step of simulated clusters
under crashes, partitions, loss, duplication and reordering): at most one
leader per term; logs that share an entry ``(index, term)`` are equal up to
it; every committed entry is in the log of every leader of a later term; no
two servers apply different entries at an index; a read sees every write
committed before it began; commit and applied indices never decrease; what a
message says about its sender is already on the sender's disk; after
:meth:`~RaftNode.tick`, :meth:`~RaftNode.next_deadline` is in the future.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, assert_never, final

import attrs

from ._raft_log import Entry, EntryKind, PersistentState, RaftLog, Snapshot, encode_config
from ._raft_messages import (
    AppendEntries,
    AppendResponse,
    AppendToLog,
    Apply,
    ChangeRefused,
    CompactLog,
    InstallSnapshot,
    NotLeader,
    Persist,
    Proposed,
    RaftAction,
    RaftConfig,
    RaftMessage,
    RaftRole,
    RaftStatistics,
    ReadFailed,
    ReadReady,
    RequestVote,
    RoleChanged,
    SaveSnapshot,
    Send,
    SnapshotResponse,
    SnapshotWanted,
    TimeoutNow,
    TruncateLog,
    VoteResponse,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Iterable

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "AppendToLog",
    "Apply",
    "ChangeRefused",
    "CompactLog",
    "Entry",
    "EntryKind",
    "InstallSnapshot",
    "NotLeader",
    "Persist",
    "PersistentState",
    "Proposed",
    "RaftAction",
    "RaftConfig",
    "RaftMessage",
    "RaftNode",
    "RaftRole",
    "RaftStatistics",
    "ReadFailed",
    "ReadReady",
    "RequestVote",
    "RoleChanged",
    "SaveSnapshot",
    "Send",
    "Snapshot",
    "SnapshotResponse",
    "SnapshotWanted",
    "TimeoutNow",
    "TruncateLog",
    "VoteResponse",
]


@attrs.define
class _Progress:
    """A leader's view of one peer."""

    next: int
    match: int = 0
    replicating: bool = False  # probing: one append per round; replicating: pipelined
    heard_at: float = 0.0
    read_seq: int = 0


@attrs.define
class _Read:
    request_id: int
    index: int  # -1 until an entry of the leader's term is committed
    seq: int


@attrs.define
class _Counters:
    """The counters of :class:`RaftStatistics`."""

    pre_votes_started: int = 0
    elections_started: int = 0
    elections_won: int = 0
    step_downs: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    stale_messages: int = 0
    protocol_errors: int = 0
    entries_appended: int = 0
    entries_applied: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    snapshots_taken: int = 0
    reads_ready: int = 0
    reads_failed: int = 0


@final
class RaftNode:
    """One Raft server (see the module docstring).

    Args:
      id: this server's name, as peers address it.
      voters: the bootstrap configuration: the same on every founding server,
        empty for a server that will be added later (it learns its
        configuration from the leader). Used only while the log and snapshot
        hold no configuration, so pass the same value on every restart.
      now: the current time, to start the election timer.
      rng: draws the election timeouts.
      config: timers and limits (default :class:`RaftConfig()`).
      persisted: what the node had on disk, when it restarts.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        id: str,
        voters: Iterable[str] = (),
        *,
        now: float,
        rng: random.Random,
        config: RaftConfig | None = None,
        persisted: PersistentState | None = None,
    ) -> None:
        self.id = id
        self.config = config if config is not None else RaftConfig()
        self._rng = rng
        state = persisted if persisted is not None else PersistentState()
        self._term = state.term
        self._voted_for = state.voted_for
        self._persisted = (state.term, state.voted_for)
        snap = state.snapshot
        if snap is None:
            self.log = RaftLog(snapshot_config=voters, entries=state.entries)
            self._snapshot_data = b""
        else:
            self.log = RaftLog(
                snapshot_index=snap.index,
                snapshot_term=snap.term,
                snapshot_config=snap.config,
                entries=state.entries,
            )
            self._snapshot_data = snap.data
        self._commit = self._applied = self._wanted_at = self.log.snapshot_index
        self._role = RaftRole.FOLLOWER
        self._leader: str | None = None
        self._leader_heard_at = -math.inf
        self._election_deadline = 0.0
        self._reset_election_timer(now)
        self._heartbeat_due = math.inf
        self._votes: set[str] = set()
        self._progress: dict[str, _Progress] = {}
        self._reads: list[_Read] = []
        self._read_seq = 0
        self._reported: tuple[RaftRole, int, str | None] = (self._role, self._term, self._leader)
        self._counts = _Counters()

    def __repr__(self) -> str:
        return (
            f"RaftNode({self.id!r}, {self._role.value}, term={self._term}, "
            f"commit={self._commit}, {self.log!r})"
        )

    # -- queries ---------------------------------------------------------------------

    @property
    def role(self) -> RaftRole:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def leader(self) -> str | None:
        """The leader of the current term, if this node knows it."""
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def last_applied(self) -> int:
        return self._applied

    @property
    def voters(self) -> tuple[str, ...]:
        """The current configuration (the last one in the log, committed or not)."""
        return self.log.config

    def statistics(self) -> RaftStatistics:
        """Counters and the current state, as a frozen snapshot."""
        return RaftStatistics(
            role=self._role,
            term=self._term,
            leader=self._leader,
            commit_index=self._commit,
            last_applied=self._applied,
            **attrs.asdict(self._counts),
        )

    def next_deadline(self) -> float:
        """When :meth:`tick` must be called next (``math.inf``: not until another input).

        A leader's next heartbeat, or the time its majority goes silent for too
        long; a voter's election timeout. A server outside its configuration has none.
        """
        if self._role is RaftRole.LEADER:
            deadline = self._heartbeat_due
            if self.config.check_quorum:
                heard = self._quorum_heard_at(math.inf)
                deadline = min(deadline, heard + self.config.election_timeout_max)
            return deadline
        if not self._promotable():
            return math.inf
        return self._election_deadline

    # -- inputs ----------------------------------------------------------------------

    def tick(self, now: float) -> list[RaftAction]:
        """Fire the timers that are due at ``now``.

        Returns:
          the actions, in the order to carry them out.
        """
        out: list[RaftAction] = []
        if self._role is RaftRole.LEADER:
            quorum_lost = now >= self._quorum_heard_at(now) + self.config.election_timeout_max
            if self.config.check_quorum and quorum_lost:
                self._become_follower(self._term, None, now, out)
            elif now >= self._heartbeat_due:
                self._heartbeat_due = now + self.config.heartbeat_interval
                self._broadcast(now, out)
        elif now >= self._election_deadline:
            if not self._promotable():
                self._reset_election_timer(now)
            elif self.config.pre_vote:
                self._pre_campaign(now, out)
            else:
                self._campaign(now, out, transfer=False)
        return self._finish(out)

    def receive(self, message: RaftMessage, now: float) -> list[RaftAction]:
        """Handle a message from a peer.

        Returns:
          the actions, in the order to carry them out.
        """
        self._counts.messages_received += 1
        out: list[RaftAction] = []
        match message:
            case RequestVote():
                self._on_request_vote(message, now, out)
            case VoteResponse():
                self._on_vote_response(message, now, out)
            case AppendEntries():
                self._on_append_entries(message, now, out)
            case AppendResponse():
                self._on_append_response(message, now, out)
            case InstallSnapshot():
                self._on_install_snapshot(message, now, out)
            case SnapshotResponse():
                self._on_snapshot_response(message, now, out)
            case TimeoutNow():
                self._on_timeout_now(message, now, out)
            case _:
                assert_never(message)
        return self._finish(out)

    def propose(self, data: bytes, now: float) -> Proposed | NotLeader:
        """Append a ``COMMAND`` entry, if this node is the leader.

        Returns:
          :class:`Proposed` with the entry's term, index and the actions; or
          :class:`NotLeader` with a hint of where to go.
        """
        if self._role is not RaftRole.LEADER:
            return NotLeader(self._leader)
        out: list[RaftAction] = []
        entry = self._append_own(EntryKind.COMMAND, data, now, out)
        return Proposed(entry.term, entry.index, self._finish(out))

    def read_index(self, request_id: int, now: float) -> list[RaftAction] | NotLeader:
        """Start a linearizable read (ReadIndex): :class:`ReadReady` or
        :class:`ReadFailed` for ``request_id`` follows, now or from a later input.

        Returns:
          the actions, or :class:`NotLeader`.
        """
        if self._role is not RaftRole.LEADER:
            return NotLeader(self._leader)
        out: list[RaftAction] = []
        if self.log.term_at(self._commit) == self._term:
            self._queue_reads([request_id], now, out)
        else:  # wait for the NOOP of this term to commit
            self._reads.append(_Read(request_id, -1, -1))
        return self._finish(out)

    def add_server(self, server: str, now: float) -> Proposed | NotLeader | ChangeRefused:
        """Make ``server`` a voter, with a ``CONFIG`` entry (dissertation 4.1).

        Start the new server with no voters; it learns them from the leader.

        Returns:
          :class:`Proposed` (the change takes effect at once, and is done when
          committed), :class:`NotLeader`, or :class:`ChangeRefused`.
        """
        if server in self.log.config:
            return ChangeRefused(f"{server!r} is already a voter")
        return self._change_config((*self.log.config, server), now)

    def remove_server(self, server: str, now: float) -> Proposed | NotLeader | ChangeRefused:
        """Remove ``server`` from the voters, with a ``CONFIG`` entry.

        A leader may remove itself: it steps down once the change is
        committed and hands over to its most up-to-date peer.

        Returns:
          :class:`Proposed`, :class:`NotLeader`, or :class:`ChangeRefused`.
        """
        voters = self.log.config
        if server not in voters:
            return ChangeRefused(f"{server!r} is not a voter")
        if len(voters) == 1:
            return ChangeRefused(f"{server!r} is the last voter")
        return self._change_config(tuple(v for v in voters if v != server), now)

    def snapshot_taken(self, last_index: int, data: bytes, now: float) -> list[RaftAction]:
        """The shell snapshotted its state machine as of ``last_index``: compact the log.

        Args:
          last_index: the last entry applied to the snapshotted state; at most
            :attr:`last_applied`. A snapshot no newer than the current one is ignored.
          data: the snapshot, sent as is to followers that need it.
          now: the current time.

        Returns:
          the actions: :class:`CompactLog`, or nothing.

        Raises:
          ValueError: if ``last_index`` has not been applied.
        """
        if last_index > self._applied:
            raise ValueError(
                f"cannot snapshot at {last_index}: only {self._applied} entries are applied"
            )
        if last_index <= self.log.snapshot_index:
            return []
        config = self.log.config_at(last_index)
        self.log.compact(last_index)
        self._snapshot_data = data
        self._counts.snapshots_taken += 1
        return [CompactLog(last_index, self.log.snapshot_term, config)]

    # -- elections -------------------------------------------------------------------

    def _reset_election_timer(self, now: float) -> None:
        config = self.config
        timeout = self._rng.uniform(config.election_timeout_min, config.election_timeout_max)
        self._election_deadline = now + timeout

    def _quorum(self) -> int:
        return len(self.log.config) // 2 + 1

    def _won(self) -> bool:
        return len(self._votes.intersection(self.log.config)) >= self._quorum()

    def _promotable(self) -> bool:
        """Whether this server may stand for election: it is a voter, or it was
        one until a change that is not committed yet (it may be needed to commit
        it, dissertation 4.2.2)."""
        log = self.log
        if self.id in log.config:
            return True
        return log.config_index > self._commit and self.id in log.config_at(log.config_index - 1)

    def _in_lease(self, now: float) -> bool:
        """Whether this node knows of a live leader (itself, or one heard from lately)."""
        if self._role is RaftRole.LEADER:
            return True
        recent = now < self._leader_heard_at + self.config.election_timeout_min
        return self._leader is not None and recent

    def _ask_votes(self, term: int, pre_vote: bool, transfer: bool, out: list[RaftAction]) -> None:
        log = self.log
        request = RequestVote(term, self.id, log.last_index, log.last_term, pre_vote, transfer)
        for voter in log.config:
            if voter != self.id:
                self._send(voter, request, out)

    def _pre_campaign(self, now: float, out: list[RaftAction]) -> None:
        self._role = RaftRole.PRE_CANDIDATE
        self._leader = None
        self._votes = {self.id}
        self._reset_election_timer(now)
        self._counts.pre_votes_started += 1
        if self._won():
            self._campaign(now, out, transfer=False)
        else:
            self._ask_votes(self._term + 1, True, False, out)

    def _campaign(self, now: float, out: list[RaftAction], *, transfer: bool) -> None:
        self._term += 1
        self._voted_for = self.id
        self._role = RaftRole.CANDIDATE
        self._leader = None
        self._votes = {self.id}
        self._reset_election_timer(now)
        self._counts.elections_started += 1
        if self._won():
            self._become_leader(now, out)
        else:
            self._ask_votes(self._term, False, transfer, out)

    def _become_follower(
        self, term: int, leader: str | None, now: float, out: list[RaftAction]
    ) -> None:
        if term > self._term:
            self._term = term
            self._voted_for = None
        if self._role is RaftRole.LEADER:
            self._counts.step_downs += 1
            self._progress.clear()
            self._heartbeat_due = math.inf
            self._reset_election_timer(now)
            for read in self._reads:
                out.append(ReadFailed(read.request_id))
            self._counts.reads_failed += len(self._reads)
            self._reads.clear()
        self._role = RaftRole.FOLLOWER
        self._leader = leader
        self._votes.clear()

    def _become_leader(self, now: float, out: list[RaftAction]) -> None:
        self._role = RaftRole.LEADER
        self._leader = self.id
        self._counts.elections_won += 1
        self._progress = {}
        self._read_seq = 0
        self._heartbeat_due = now + self.config.heartbeat_interval
        self._sync_progress(now)
        self._append_own(EntryKind.NOOP, b"", now, out)
        self._broadcast(now, out)

    def _on_request_vote(self, m: RequestVote, now: float, out: list[RaftAction]) -> None:
        up_to_date = self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        if m.pre_vote:
            # Never changes our state: we only say whether we would vote.
            grant = m.term > self._term and up_to_date and not self._in_lease(now)
            answer = VoteResponse(m.term if grant else self._term, self.id, grant, pre_vote=True)
            self._send(m.candidate, answer, out)
            return
        if m.term > self._term:
            if self.config.check_quorum and not m.transfer and self._in_lease(now):
                self._counts.stale_messages += 1  # a disruptive server (4.2.3)
                return
            self._become_follower(m.term, None, now, out)
        grant = m.term == self._term and self._voted_for in (None, m.candidate) and up_to_date
        if grant:
            self._voted_for = m.candidate
            self._reset_election_timer(now)
        self._send(m.candidate, VoteResponse(self._term, self.id, grant), out)

    def _on_vote_response(self, m: VoteResponse, now: float, out: list[RaftAction]) -> None:
        if m.pre_vote and m.granted:
            if self._role is RaftRole.PRE_CANDIDATE and m.term == self._term + 1:
                self._votes.add(m.voter)
                if self._won():
                    self._campaign(now, out, transfer=False)
            else:
                self._counts.stale_messages += 1
        elif m.term > self._term:
            self._become_follower(m.term, None, now, out)
        elif (
            not m.pre_vote
            and m.granted
            and self._role is RaftRole.CANDIDATE
            and m.term == self._term
        ):
            self._votes.add(m.voter)
            if self._won():
                self._become_leader(now, out)
        else:
            self._counts.stale_messages += 1

    def _on_timeout_now(self, m: TimeoutNow, now: float, out: list[RaftAction]) -> None:
        if m.term < self._term:
            self._counts.stale_messages += 1
            return
        if m.term > self._term:
            self._become_follower(m.term, m.leader, now, out)
        if self._role is RaftRole.FOLLOWER and self._promotable():
            self._campaign(now, out, transfer=True)

    # -- followers -------------------------------------------------------------------

    def _heard_from_leader(self, term: int, leader: str, now: float, out: list[RaftAction]) -> bool:
        """Follow ``leader`` of ``term`` (``>=`` ours); False if that contradicts what we know."""
        if term == self._term and (
            self._role is RaftRole.LEADER or self._leader not in (None, leader)
        ):
            self._counts.protocol_errors += 1  # two leaders in one term
            return False
        if term > self._term or self._role is not RaftRole.FOLLOWER:
            self._become_follower(term, leader, now, out)
        self._leader = leader
        self._leader_heard_at = now
        self._reset_election_timer(now)
        return True

    def _on_append_entries(self, m: AppendEntries, now: float, out: list[RaftAction]) -> None:
        if m.term < self._term:
            self._counts.stale_messages += 1
            self._send(m.leader, AppendResponse(self._term, self.id, False, 0, m.read_seq), out)
            return
        entries = m.entries
        if any(
            e.index != m.prev_log_index + 1 + i or e.term > m.term for i, e in enumerate(entries)
        ):
            self._counts.protocol_errors += 1  # malformed
            return
        if not self._heard_from_leader(m.term, m.leader, now, out):
            return
        log = self.log
        prev = m.prev_log_index
        if prev > log.last_index:
            reply = AppendResponse(self._term, self.id, False, 0, m.read_seq, log.last_index + 1)
            self._send(m.leader, reply, out)
            return
        if prev >= log.snapshot_index and log.term_at(prev) != m.prev_log_term:
            conflict = max(log.first_index_of_term(prev), self._commit + 1)
            reply = AppendResponse(self._term, self.id, False, 0, m.read_seq, conflict)
            self._send(m.leader, reply, out)
            return
        # Entries before prev_log_index are the leader's: skip those we have.
        new: list[Entry] = []
        for entry in entries:
            if entry.index <= log.snapshot_index:
                continue
            if not new:
                term = log.term_at(entry.index)
                if term == entry.term:
                    continue
                if term is not None:
                    if entry.index <= self._commit:
                        self._counts.protocol_errors += 1  # would lose a committed entry
                        return
                    log.truncate(entry.index)
                    self._store(TruncateLog(entry.index), out)
            new.append(entry)
        if new:
            log.append(new)
            self._store(AppendToLog(tuple(new)), out)
            self._counts.entries_appended += len(new)
        last_new = prev + len(entries)
        self._commit = max(self._commit, min(m.leader_commit, last_new))
        self._send(m.leader, AppendResponse(self._term, self.id, True, last_new, m.read_seq), out)

    def _on_install_snapshot(self, m: InstallSnapshot, now: float, out: list[RaftAction]) -> None:
        if m.term < self._term:
            self._counts.stale_messages += 1
            self._send(m.leader, SnapshotResponse(self._term, self.id, 0), out)
            return
        if not self._heard_from_leader(m.term, m.leader, now, out):
            return
        log = self.log
        if m.last_index > self._commit:
            if log.term_at(m.last_index) != m.last_term and log.last_index > m.last_index:
                self._store(TruncateLog(m.last_index + 1), out)  # (uncommitted: past our commit)
            self._store(SaveSnapshot(m.last_index, m.last_term, m.config, m.data), out)
            log.install(m.last_index, m.last_term, m.config)
            self._snapshot_data = m.data
            self._commit = self._applied = self._wanted_at = m.last_index
            self._counts.snapshots_installed += 1
        else:
            self._counts.stale_messages += 1
        self._send(m.leader, SnapshotResponse(self._term, self.id, m.last_index), out)

    # -- leaders ---------------------------------------------------------------------

    def _sync_progress(self, now: float) -> list[str]:
        """Track the voters of the current configuration other than us.

        A removed peer keeps its progress, and is sent entries, until one
        message has told it that the change removing it is committed (see
        :meth:`_send_append`): then it stops standing for election.

        Returns:
          the peers added.
        """
        peers = [v for v in self.log.config if v != self.id]
        added = [peer for peer in peers if peer not in self._progress]
        for peer in added:
            self._progress[peer] = _Progress(next=self.log.last_index + 1, heard_at=now)
        return added

    def _append_own(self, kind: EntryKind, data: bytes, now: float, out: list[RaftAction]) -> Entry:
        entry = Entry(self._term, self.log.last_index + 1, kind, data)
        self.log.append([entry])
        self._store(AppendToLog((entry,)), out)
        self._counts.entries_appended += 1
        added = self._sync_progress(now) if kind is EntryKind.CONFIG else []
        for peer, progress in list(self._progress.items()):
            if progress.replicating or peer in added:
                self._send_append(peer, now, out)
        self._advance_commit(now, out)
        return entry

    def _change_config(
        self, voters: tuple[str, ...], now: float
    ) -> Proposed | NotLeader | ChangeRefused:
        if self._role is not RaftRole.LEADER:
            return NotLeader(self._leader)
        if self.log.config_index > self._commit:
            return ChangeRefused("a configuration change is in progress: wait until it commits")
        if self.log.term_at(self._commit) != self._term:
            return ChangeRefused("the new leader has not committed an entry of its term yet")
        out: list[RaftAction] = []
        entry = self._append_own(EntryKind.CONFIG, encode_config(voters), now, out)
        return Proposed(entry.term, entry.index, self._finish(out))

    def _broadcast(self, now: float, out: list[RaftAction]) -> None:
        for peer in list(self._progress):
            self._send_append(peer, now, out)

    def _send_append(self, peer: str, now: float, out: list[RaftAction]) -> None:
        progress = self._progress[peer]
        log = self.log
        if progress.next <= log.snapshot_index:
            snapshot = InstallSnapshot(
                self._term,
                self.id,
                log.snapshot_index,
                log.snapshot_term,
                log.snapshot_config,
                self._snapshot_data,
            )
            self._send(peer, snapshot, out)
            self._counts.snapshots_sent += 1
            progress.next = log.snapshot_index + 1
            progress.replicating = False
            return
        prev = progress.next - 1
        entries = log.entries(progress.next, progress.next + self.config.max_entries_per_append)
        prev_term = log.term_at(prev)
        assert prev_term is not None  # (prev >= the snapshot's index)
        message = AppendEntries(
            self._term, self.id, prev, prev_term, tuple(entries), self._commit, self._read_seq
        )
        self._send(peer, message, out)
        if progress.replicating and entries:
            progress.next = entries[-1].index + 1  # optimistic: lost ones come back as rejections
        index = log.config_index
        if peer not in log.config and progress.match >= index and self._commit >= index:
            del self._progress[peer]  # this message told it that its removal is committed

    def _on_append_response(self, m: AppendResponse, now: float, out: list[RaftAction]) -> None:
        progress = self._leader_progress(m.term, m.follower, now, out)
        if progress is None:
            return
        progress.read_seq = max(progress.read_seq, m.read_seq)
        if m.success:
            advanced = m.match_index > progress.match
            progress.match = max(progress.match, m.match_index)
            progress.next = max(progress.next, progress.match + 1)
            progress.replicating = True
            if progress.next <= self.log.last_index:
                self._send_append(m.follower, now, out)
            if advanced:
                self._advance_commit(now, out)
        else:
            retry = max(progress.match + 1, m.conflict_index)
            if retry < progress.next:
                progress.next = retry
                progress.replicating = False
                self._send_append(m.follower, now, out)
            else:
                self._counts.stale_messages += 1
        if self._role is RaftRole.LEADER:
            self._check_reads(now, out)

    def _on_snapshot_response(self, m: SnapshotResponse, now: float, out: list[RaftAction]) -> None:
        progress = self._leader_progress(m.term, m.follower, now, out)
        if progress is None:
            return
        advanced = m.last_index > progress.match
        progress.match = max(progress.match, m.last_index)
        progress.next = max(progress.next, progress.match + 1)
        progress.replicating = True
        if progress.next <= self.log.last_index:
            self._send_append(m.follower, now, out)
        if advanced:
            self._advance_commit(now, out)

    def _leader_progress(
        self, term: int, peer: str, now: float, out: list[RaftAction]
    ) -> _Progress | None:
        """The progress of ``peer`` if a response of ``term`` is for this leader."""
        if term > self._term:
            self._become_follower(term, None, now, out)
            return None
        progress = self._progress.get(peer)
        if self._role is not RaftRole.LEADER or term < self._term or progress is None:
            self._counts.stale_messages += 1
            return None
        progress.heard_at = now
        return progress

    def _quorum_heard_at(self, me: float) -> float:
        """The latest time by which a majority of voters had been heard from (we count as ``me``)."""
        times = [me if v == self.id else self._progress[v].heard_at for v in self.log.config]
        times.sort(reverse=True)
        return times[self._quorum() - 1]

    def _advance_commit(self, now: float, out: list[RaftAction]) -> None:
        log = self.log
        matches = [log.last_index if v == self.id else self._progress[v].match for v in log.config]
        matches.sort(reverse=True)
        n = matches[self._quorum() - 1]
        if n <= self._commit or log.term_at(n) != self._term:
            return  # only entries of the current term are committed by counting (5.4.2)
        self._commit = n
        waiting = [r.request_id for r in self._reads if r.index < 0]
        if waiting:
            self._reads = [r for r in self._reads if r.index >= 0]
            self._queue_reads(waiting, now, out)
        if self.id not in log.config and self._commit >= log.config_index:
            # Removed ourselves: hand over to the most up-to-date voter.
            heir = max(log.config, key=lambda p: (self._progress[p].match, p))
            self._become_follower(self._term, None, now, out)
            self._send(heir, TimeoutNow(self._term, self.id), out)

    # -- reads -----------------------------------------------------------------------

    def _queue_reads(self, request_ids: list[int], now: float, out: list[RaftAction]) -> None:
        """Record reads at the commit index; they wait for the next heartbeat round."""
        seq = self._read_seq + 1
        in_flight = any(r.seq == self._read_seq for r in self._reads)
        self._reads += [_Read(rid, self._commit, seq) for rid in request_ids]
        if not in_flight:
            self._start_read_round(now, out)

    def _start_read_round(self, now: float, out: list[RaftAction]) -> None:
        self._read_seq += 1
        self._broadcast(now, out)
        self._check_reads(now, out)  # (a majority of one is ready at once)

    def _check_reads(self, now: float, out: list[RaftAction]) -> None:
        if not self._reads:
            return
        seqs = [math.inf if v == self.id else self._progress[v].read_seq for v in self.log.config]
        seqs.sort(reverse=True)
        confirmed = seqs[self._quorum() - 1]
        ready = [r for r in self._reads if 0 <= r.seq <= confirmed]
        if not ready:
            return
        self._reads = [r for r in self._reads if not 0 <= r.seq <= confirmed]
        out += [ReadReady(r.request_id, r.index) for r in ready]
        self._counts.reads_ready += len(ready)
        if any(r.seq == self._read_seq + 1 for r in self._reads):
            self._start_read_round(now, out)

    # -- output ----------------------------------------------------------------------

    def _flush(self, out: list[RaftAction]) -> None:
        hard = (self._term, self._voted_for)
        if hard != self._persisted:
            self._persisted = hard
            out.append(Persist(*hard))

    def _store(
        self, action: TruncateLog | AppendToLog | SaveSnapshot, out: list[RaftAction]
    ) -> None:
        self._flush(out)  # the hard state first: then every prefix of the actions is safe
        out.append(action)

    def _send(self, to: str, message: RaftMessage, out: list[RaftAction]) -> None:
        self._flush(out)  # the hard state is on disk before anything leaves
        out.append(Send(to, message))
        self._counts.messages_sent += 1

    def _finish(self, out: list[RaftAction]) -> list[RaftAction]:
        self._flush(out)
        if self._commit > self._applied:
            entries = tuple(self.log.entries(self._applied + 1, self._commit + 1))
            out.append(Apply(entries))
            self._applied = self._commit
            self._counts.entries_applied += len(entries)
            since = self._applied - max(self._wanted_at, self.log.snapshot_index)
            if since >= self.config.snapshot_threshold:
                self._wanted_at = self._applied
                out.append(SnapshotWanted(self._applied))
        reported = (self._role, self._term, self._leader)
        if reported != self._reported:
            self._reported = reported
            out.append(RoleChanged(*reported))
        return out
