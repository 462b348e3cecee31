"""The vocabulary of the Raft machine: its settings, roles, messages, actions and results.

Everything here is a frozen attrs class of plain fields (ints, strings, bytes,
tuples, enums), so messages can travel as typed payloads and actions can be
compared in tests. The rules that produce them are in
:mod:`trioactors._core._raft`, whose docstring says what each action asks of
the shell and in which order.
"""

from __future__ import annotations

import enum
import math
from typing import TypeAlias, final

import attrs

# (at run time: cattrs resolves the field types of the messages from this module)
from ._raft_log import Entry  # noqa: TC001

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "AppendToLog",
    "Apply",
    "ChangeRefused",
    "CompactLog",
    "InstallSnapshot",
    "NotLeader",
    "Persist",
    "Proposed",
    "RaftAction",
    "RaftConfig",
    "RaftMessage",
    "RaftRole",
    "RaftStatistics",
    "ReadFailed",
    "ReadReady",
    "RequestVote",
    "RoleChanged",
    "SaveSnapshot",
    "Send",
    "SnapshotResponse",
    "SnapshotWanted",
    "TimeoutNow",
    "TruncateLog",
    "VoteResponse",
]


def _positive_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number of seconds > 0, not {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, not {value!r}")


@final
@attrs.frozen(kw_only=True)
class RaftConfig:
    """Timers and limits of a Raft node; the timeouts are the paper's.

    Args:
      election_timeout_min: seconds, ``> 0``; each election timeout is drawn
        uniformly from ``[election_timeout_min, election_timeout_max]``.
      election_timeout_max: seconds, ``>= election_timeout_min``.
      heartbeat_interval: seconds between a leader's heartbeats, shorter than
        ``election_timeout_min`` (the paper's rule is an order of magnitude).
      max_entries_per_append: most entries in one :class:`AppendEntries`, ``>= 1``.
      snapshot_threshold: entries applied since the last snapshot at which the
        node asks for a new one (:class:`SnapshotWanted`), ``>= 1``.
      pre_vote: run the Pre-Vote phase before elections.
      check_quorum: a leader steps down when it has not heard from a majority
        within ``election_timeout_max``, and servers that hear from a leader
        ignore vote requests.

    Raises:
      ValueError: if a value is out of range.

    .. versionadded:: 0.1
    """

    election_timeout_min: float = attrs.field(default=0.15, validator=_positive_seconds)
    election_timeout_max: float = attrs.field(default=0.30, validator=_positive_seconds)
    heartbeat_interval: float = attrs.field(default=0.05, validator=_positive_seconds)
    max_entries_per_append: int = attrs.field(default=64, validator=_at_least_one)
    snapshot_threshold: int = attrs.field(default=1000, validator=_at_least_one)
    pre_vote: bool = True
    check_quorum: bool = True

    def __attrs_post_init__(self) -> None:
        if self.election_timeout_max < self.election_timeout_min:
            raise ValueError(
                f"election_timeout_max ({self.election_timeout_max}) must be >= "
                f"election_timeout_min ({self.election_timeout_min})"
            )
        if self.heartbeat_interval >= self.election_timeout_min:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be shorter than "
                f"election_timeout_min ({self.election_timeout_min}), or followers "
                "start elections while the leader is alive"
            )


class RaftRole(enum.Enum):
    """The role of a Raft node.

    .. versionadded:: 0.1
    """

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    """Asking for pre-votes: would it win an election? (No term changes yet.)"""
    CANDIDATE = "candidate"
    LEADER = "leader"


# -- messages ------------------------------------------------------------------------


@final
@attrs.frozen
class RequestVote:
    """A candidate asks for a vote (or, with ``pre_vote``, whether it would get one)."""

    term: int
    """The candidate's term; for a pre-vote, the term it would stand in."""
    candidate: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False
    """Sent because the leader handed over (:class:`TimeoutNow`): heard even
    by servers that have a leader."""


@final
@attrs.frozen
class VoteResponse:
    """The answer to a :class:`RequestVote`."""

    term: int
    """The voter's term; for a granted pre-vote, the request's term."""
    voter: str
    granted: bool
    pre_vote: bool = False


@final
@attrs.frozen
class AppendEntries:
    """A leader's entries (none for a heartbeat), with its commit index."""

    term: int
    leader: str
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    read_seq: int = 0
    """The leader's current ReadIndex round, echoed in the response."""


@final
@attrs.frozen
class AppendResponse:
    """The answer to an :class:`AppendEntries`."""

    term: int
    follower: str
    success: bool
    match_index: int
    """On success: the follower's log matches the leader's up to here."""
    read_seq: int = 0
    """The request's ``read_seq``."""
    conflict_index: int = 0
    """On a log mismatch: where the leader should retry from (the follower's
    last index + 1, or the first index of the conflicting term); 0 otherwise."""


@final
@attrs.frozen
class InstallSnapshot:
    """A leader's whole snapshot, for a follower that needs compacted entries."""

    term: int
    leader: str
    last_index: int
    last_term: int
    config: tuple[str, ...]
    data: bytes


@final
@attrs.frozen
class SnapshotResponse:
    """The answer to an :class:`InstallSnapshot`."""

    term: int
    follower: str
    last_index: int
    """The follower's log now matches the leader's up to here."""


@final
@attrs.frozen
class TimeoutNow:
    """A leader hands over: the receiver starts an election at once."""

    term: int
    leader: str


RaftMessage: TypeAlias = (
    RequestVote
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
)

# -- actions -------------------------------------------------------------------------


@final
@attrs.frozen
class Send:
    """Send ``message`` to the node ``to`` (best effort: it may be lost)."""

    to: str
    message: RaftMessage


@final
@attrs.frozen
class Persist:
    """Store the hard state durably before carrying out the next action."""

    term: int
    voted_for: str | None


@final
@attrs.frozen
class AppendToLog:
    """Append ``entries`` to the durable log (they follow its last entry)."""

    entries: tuple[Entry, ...]


@final
@attrs.frozen
class TruncateLog:
    """Delete the durable log's entries at ``from_index`` and after (never committed ones)."""

    from_index: int


@final
@attrs.frozen
class SaveSnapshot:
    """A snapshot arrived from the leader.

    Store it durably in place of the current one, delete the log entries up to
    ``index`` (the log keeps those after it), and reset the state machine to
    ``data``: the next :class:`Apply` starts at ``index + 1``.
    """

    index: int
    term: int
    config: tuple[str, ...]
    data: bytes


@final
@attrs.frozen
class CompactLog:
    """The snapshot the shell took at ``index`` is now the log's base.

    Store ``term`` and ``config`` with it, then delete the log entries up to ``index``.
    """

    index: int
    term: int
    config: tuple[str, ...]


@final
@attrs.frozen
class Apply:
    """Committed entries, in index order, each handed over once: apply the commands."""

    entries: tuple[Entry, ...]


@final
@attrs.frozen
class ReadReady:
    """The read ``request_id`` may be answered once the state machine has applied ``index``."""

    request_id: int
    index: int


@final
@attrs.frozen
class ReadFailed:
    """The read ``request_id`` cannot be confirmed: leadership was lost; retry elsewhere."""

    request_id: int


@final
@attrs.frozen
class RoleChanged:
    """The node's role, term or known leader changed (reported once per input, at the end)."""

    role: RaftRole
    term: int
    leader: str | None


@final
@attrs.frozen
class SnapshotWanted:
    """Many entries were applied since the last snapshot: take one, then call
    :meth:`RaftNode.snapshot_taken`."""

    applied_index: int


RaftAction: TypeAlias = (
    Send
    | Persist
    | AppendToLog
    | TruncateLog
    | SaveSnapshot
    | CompactLog
    | Apply
    | ReadReady
    | ReadFailed
    | RoleChanged
    | SnapshotWanted
)

# -- results of requests -------------------------------------------------------------


@final
@attrs.frozen
class NotLeader:
    """Refused: this node is not the leader. ``leader`` is its best guess, if any."""

    leader: str | None


@final
@attrs.frozen
class ChangeRefused:
    """A membership change was refused (the node is the leader); ``reason`` says why."""

    reason: str


@final
@attrs.frozen
class Proposed:
    """A leader appended an entry at ``(term, index)``.

    It is committed if and only if an :class:`Apply` later hands over an entry
    with this index *and* term; if an entry of another term is applied at the
    index, or a :class:`TruncateLog` removes it, it was lost.
    """

    term: int
    index: int
    actions: list[RaftAction]


@final
@attrs.frozen
class RaftStatistics:
    """Counters of a :class:`RaftNode` since it was created (see :meth:`RaftNode.statistics`)."""

    role: RaftRole
    term: int
    leader: str | None
    commit_index: int
    last_applied: int
    pre_votes_started: int
    elections_started: int
    elections_won: int
    step_downs: int
    """Times it stopped leading."""
    messages_received: int
    messages_sent: int
    stale_messages: int
    """Messages ignored because their term or content was out of date."""
    protocol_errors: int
    """Messages ignored because they broke the protocol (malformed, or contradicting
    a committed entry or this term's leader); always 0 between correct nodes."""
    entries_appended: int
    entries_applied: int
    snapshots_sent: int
    snapshots_installed: int
    snapshots_taken: int
    reads_ready: int
    reads_failed: int
