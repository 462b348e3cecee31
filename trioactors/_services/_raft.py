"""A Raft server on a node: the pure machine of ``_core/_raft.py`` driven by an actor.

The actor ``$raft`` on each server carries the machine's actions out: storage
actions are written to its :class:`~trioactors.RaftStore` (one transaction per
batch) *before* the messages that follow them are sent; messages go to
``$raft@<peer>`` as tells (Raft tolerates their loss, duplication and
reordering); committed commands are applied to a :class:`StateMachine`. A
background task of the actor sleeps until the machine's next deadline
(elections, heartbeats) - a cancel scope, never a polling loop.

Client requests (:class:`RaftCommand`, :class:`RaftQuery`, membership changes)
are asks to the leader's ``$raft``; the actor answers them later
(``reply_later``), when the entry is applied or the read index is reached, so
that it keeps handling Raft traffic meanwhile. A request to a server that is
not the leader is answered at once with ``status="not_leader"`` and the
leader's name, if known.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import TYPE_CHECKING, Protocol, final

import attrs
import trio

from .._core._raft import RaftConfig, RaftNode
from .._core._raft_log import Entry, EntryKind
from .._core._raft_messages import (
    AppendEntries,
    AppendResponse,
    AppendToLog,
    Apply,
    ChangeRefused,
    CompactLog,
    InstallSnapshot,
    NotLeader,
    Persist,
    RaftAction,
    RaftRole,
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
from .._errors import TrioactorsError
from .._runtime._actor import Actor, ReplyTo, Request
from .._wire._codec import _register_service_messages
from ._raftstore import MemoryRaftStore, RaftStore, StorageAction

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._runtime._node import Node
    from .._wire._codec import MessageRegistry

__all__ = [
    "ACTOR",
    "RaftCommand",
    "RaftMembership",
    "RaftQuery",
    "RaftReply",
    "RaftServer",
    "StateMachine",
    "start_raft",
]

logger = logging.getLogger("trioactors.raft")

ACTOR = "$raft"


class StateMachine(Protocol):
    """What Raft replicates: deterministic, fed the same commands in the same order everywhere."""

    def apply(self, index: int, command: bytes) -> str | None:
        """Apply a committed command; return its result (sent back to the proposer)."""
        ...

    def query(self, query: str) -> str | None:
        """Answer a read-only query from the current state."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, to restore from."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot (``b""``: the empty state)."""
        ...


# -- client messages -----------------------------------------------------------------------


@attrs.frozen
class RaftReply:
    """The answer to a client request.

    ``status`` is ``"ok"`` (``result`` holds the command's or query's result),
    ``"not_leader"`` (try ``leader``, if known) or ``"retry"`` (leadership
    changed before the request was decided: it may or may not have been
    applied; retry it with the same id so it is applied at most once).

    .. versionadded:: 0.1
    """

    status: str
    result: str | None = None
    leader: str | None = None


@attrs.frozen
class RaftCommand(Request[RaftReply]):
    """Propose a command (opaque to Raft; the state machine reads it).

    .. versionadded:: 0.1
    """

    command: bytes


@attrs.frozen
class RaftQuery(Request[RaftReply]):
    """A linearizable read: answered by the leader once its state is as new as
    its commit index when the query arrived (ReadIndex).

    .. versionadded:: 0.1
    """

    query: str


@attrs.frozen
class RaftMembership(Request[RaftReply]):
    """Add (``add=True``) or remove a voting server; answered once the change commits.

    .. versionadded:: 0.1
    """

    server: str
    add: bool


_RAFT_MESSAGES = (
    RequestVote,
    VoteResponse,
    AppendEntries,
    AppendResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)
_CLIENT_MESSAGES = (RaftCommand, RaftQuery, RaftMembership, RaftReply)


def register_raft_messages(registry: MessageRegistry) -> None:
    """Register ``$raft.*`` (the protocol's and the clients' messages) in ``registry``."""
    _register_service_messages(registry, ACTOR, (*_RAFT_MESSAGES, *_CLIENT_MESSAGES))


# -- the server ------------------------------------------------------------------------------


@attrs.define
class _Waiting:
    term: int
    reply: ReplyTo


@final
class RaftServer:
    """A running Raft server; see :func:`start_raft`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        voters: tuple[str, ...],
        state_machine: StateMachine,
        store: RaftStore,
        config: RaftConfig,
        seed: int | None,
    ) -> None:
        self.node = node
        self.state_machine = state_machine
        self.store = store
        persisted = store.load()
        if persisted.snapshot is not None:
            state_machine.restore(persisted.snapshot.data)
        else:
            state_machine.restore(b"")
        self.raft = RaftNode(
            node.name,
            voters,
            now=trio.current_time(),
            rng=random.Random(seed),
            config=config,
            persisted=persisted,
        )
        self._proposals: dict[int, _Waiting] = {}  # log index -> the client waiting
        self._reads: dict[int, ReplyTo] = {}  # read id -> the client waiting
        self._ready_reads: list[tuple[int, int]] = []  # (index, read id) awaiting apply
        self._queries: dict[int, str] = {}
        self._read_ids = 0
        self._snapshot_data = b""  # the latest snapshot this server took (for CompactLog)
        self._changed = trio.Event()
        self._role_changed = trio.Event()
        self.errors = 0

    # -- introspection ----------------------------------------------------------

    @property
    def role(self) -> RaftRole:
        return self.raft.role

    @property
    def leader(self) -> str | None:
        return self.raft.leader

    @property
    def term(self) -> int:
        return self.raft.term

    async def wait_role_changed(self) -> None:
        """Wait until this server's role, term or leader changes."""
        await self._role_changed.wait()

    # -- carrying out actions --------------------------------------------------------

    def run(self, actions: list[RaftAction]) -> None:
        """Carry out actions in order: storage first, then what depends on it."""
        storage: list[StorageAction] = []
        for action in actions:
            if isinstance(action, (Persist, AppendToLog, TruncateLog, SaveSnapshot, CompactLog)):
                storage.append(action)
                continue
            self._write(storage)
            storage = []
            self._carry_out(action)
        self._write(storage)
        self._changed.set()
        self._changed = trio.Event()

    def _write(self, storage: list[StorageAction]) -> None:
        if not storage:
            return
        self.store.write(storage, self._snapshot_data)
        for action in storage:
            if isinstance(action, SaveSnapshot):  # the leader's state replaces ours
                self.state_machine.restore(action.data)

    def _carry_out(self, action: RaftAction) -> None:
        match action:
            case Send(to, message):
                with contextlib.suppress(TrioactorsError, trio.WouldBlock):  # lost: sent again
                    self.node.ref(f"{ACTOR}@{to}").tell_nowait(message)
            case Apply(entries):
                for entry in entries:
                    self._apply(entry)
                self._release_reads()
            case ReadReady(request_id, index):
                self._ready_reads.append((index, request_id))
                self._release_reads()
            case ReadFailed(request_id):
                reply = self._reads.pop(request_id, None)
                self._queries.pop(request_id, None)
                if reply is not None:
                    reply.succeed(RaftReply("retry", leader=self.raft.leader))
            case RoleChanged(role, _, leader):
                if role is not RaftRole.LEADER:
                    self._fail_waiting(leader)
                self._role_changed.set()
                self._role_changed = trio.Event()
            case SnapshotWanted(applied):
                self._take_snapshot(applied)
            case _:
                pass

    def _apply(self, entry: Entry) -> None:
        result: str | None = None
        if entry.kind is EntryKind.COMMAND:
            try:
                result = self.state_machine.apply(entry.index, entry.data)
            except Exception:
                self.errors += 1
                logger.exception("%s: the state machine failed on entry %d", self.node, entry.index)
        waiting = self._proposals.pop(entry.index, None)
        if waiting is not None:
            if waiting.term == entry.term:
                waiting.reply.succeed(RaftReply("ok", result, self.node.name))
            else:  # another leader's entry took the index: ours was lost
                waiting.reply.succeed(RaftReply("retry", leader=self.raft.leader))

    def _release_reads(self) -> None:
        applied = self.raft.last_applied
        still = []
        for index, request_id in self._ready_reads:
            if index > applied:
                still.append((index, request_id))
                continue
            reply = self._reads.pop(request_id, None)
            query = self._queries.pop(request_id, "")
            if reply is not None:
                reply.succeed(RaftReply("ok", self.state_machine.query(query), self.node.name))
        self._ready_reads = still

    def _take_snapshot(self, applied: int) -> None:
        self._snapshot_data = self.state_machine.snapshot()
        self.run(self.raft.snapshot_taken(applied, self._snapshot_data, trio.current_time()))

    def _fail_waiting(self, leader: str | None) -> None:
        for waiting in self._proposals.values():
            waiting.reply.succeed(RaftReply("retry", leader=leader))
        self._proposals.clear()
        for reply in self._reads.values():
            reply.succeed(RaftReply("retry", leader=leader))
        self._reads.clear()
        self._queries.clear()
        self._ready_reads.clear()

    # -- requests --------------------------------------------------------------------

    def command(self, command: bytes, reply: ReplyTo) -> None:
        proposed = self.raft.propose(command, trio.current_time())
        if isinstance(proposed, NotLeader):
            reply.succeed(RaftReply("not_leader", leader=proposed.leader))
            return
        self._proposals[proposed.index] = _Waiting(proposed.term, reply)
        self.run(proposed.actions)

    def query(self, query: str, reply: ReplyTo) -> None:
        self._read_ids += 1
        request_id = self._read_ids
        self._reads[request_id] = reply
        self._queries[request_id] = query
        actions = self.raft.read_index(request_id, trio.current_time())
        if isinstance(actions, NotLeader):
            self._reads.pop(request_id)
            self._queries.pop(request_id)
            reply.succeed(RaftReply("not_leader", leader=actions.leader))
            return
        self.run(actions)

    def change(self, server: str, add: bool, reply: ReplyTo) -> None:
        now = trio.current_time()
        proposed = (
            self.raft.add_server(server, now) if add else self.raft.remove_server(server, now)
        )
        if isinstance(proposed, NotLeader):
            reply.succeed(RaftReply("not_leader", leader=proposed.leader))
        elif isinstance(proposed, ChangeRefused):
            reply.succeed(RaftReply("retry", proposed.reason, self.raft.leader))
        else:
            self._proposals[proposed.index] = _Waiting(proposed.term, reply)
            self.run(proposed.actions)

    async def timers(self) -> None:
        """Call the machine's tick at each deadline, until cancelled."""
        while True:
            deadline = self.raft.next_deadline()
            with trio.move_on_at(deadline):
                await self._changed.wait()
            if trio.current_time() >= self.raft.next_deadline():
                self.run(self.raft.tick(trio.current_time()))


_Message = (
    RequestVote
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
    | RaftCommand
    | RaftQuery
    | RaftMembership
)


class _RaftActor(Actor[_Message]):
    def __init__(self, server: RaftServer) -> None:
        self.server = server

    async def on_start(self) -> None:
        self.context.start_soon(self.server.timers)

    async def receive(self, message: _Message) -> object:
        server = self.server
        match message:
            case RaftCommand(command):
                reply = self.context.reply_later()
                if reply is not None:
                    server.command(command, reply)
            case RaftQuery(query):
                reply = self.context.reply_later()
                if reply is not None:
                    server.query(query, reply)
            case RaftMembership(other, add):
                reply = self.context.reply_later()
                if reply is not None:
                    server.change(other, add, reply)
            case _:
                server.run(server.raft.receive(message, trio.current_time()))
        return None


async def start_raft(
    node: Node,
    voters: Iterable[str],
    state_machine: StateMachine,
    *,
    store: RaftStore | None = None,
    config: RaftConfig | None = None,
    seed: int | None = None,
) -> RaftServer:
    """Start this node's Raft server, the actor ``$raft``, under ``node.root``.

    Args:
      voters: the names of the servers of the initial configuration (this node
        among them). A server joining a running cluster starts with the
        *current* voters, without itself: it takes part once a leader has
        added it (:class:`RaftMembership`), and never starts an election
        before.
      state_machine: what is replicated (see :class:`StateMachine`).
      store: where term, vote, log and snapshots are kept
        (default: in memory; use :class:`~trioactors.SqliteRaftStore` for
        anything that must survive a restart).
      config: timeouts (election 150-300 ms, heartbeats 50 ms by default).
      seed: seed of the randomised election timeouts.

    Raises:
      NameTaken: the node already runs ``$raft``.

    .. versionadded:: 0.1
    """
    register_raft_messages(node.codec.registry)
    server = RaftServer(
        node,
        tuple(voters),
        state_machine,
        store if store is not None else MemoryRaftStore(),
        config if config is not None else RaftConfig(),
        seed,
    )
    await node.root.start_actor(_RaftActor, server, name=ACTOR)
    return server
