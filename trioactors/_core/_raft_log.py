"""The Raft log: entries after a snapshot, and the configurations they carry.

Theory of operation
-------------------

A :class:`RaftLog` holds the entries after its *snapshot*: the prefix of the
log that has been compacted away. Index 0 is an empty snapshot whose
configuration is the bootstrap one (the voters the founding servers were
started with), so every server's log starts the same way and the first entry
has index 1. The snapshot remembers the index, term and configuration of the
last entry it covers; that is all the log needs to check the entry after it
(``prev_log_index`` and ``prev_log_term`` in :class:`AppendEntries
<trioactors._core._raft.AppendEntries>`) and to know the voters.

Entries come in three kinds (:class:`EntryKind`): ``COMMAND`` (opaque bytes for
the user's state machine), ``NOOP`` (the first entry of every leader, so that
it can commit the entries of earlier terms) and ``CONFIG`` (a new voter set,
:func:`encode_config`). A configuration takes effect as soon as its entry is
in the log, committed or not (the dissertation, section 4.1), so the current
voters are those of the last ``CONFIG`` entry, or the snapshot's.

Operations and invariants:

- :meth:`RaftLog.append` adds entries with consecutive indices after the last
  one; :meth:`RaftLog.truncate` drops a suffix (never the snapshot).
- :meth:`RaftLog.compact` moves the snapshot forward over entries the log has;
  :meth:`RaftLog.install` replaces the snapshot with a received one, keeping
  the entries after it only if the log has the snapshot's last entry.
- Indices are always ``snapshot_index + 1 .. last_index`` with no gap, and
  terms never decrease along the log.

The log is memory only: the Raft node reports every change as an action, and
the shell makes the same change on disk.
"""

from __future__ import annotations

import bisect
import enum
import json
from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "Entry",
    "EntryKind",
    "PersistentState",
    "RaftLog",
    "Snapshot",
    "decode_config",
    "encode_config",
]


class EntryKind(enum.Enum):
    """What a log entry is for.

    .. versionadded:: 0.1
    """

    COMMAND = "command"
    """Opaque bytes for the user's state machine."""
    NOOP = "noop"
    """A new leader's first entry (no data): committing it commits the log before it."""
    CONFIG = "config"
    """A membership change: ``data`` is the new voter set (:func:`encode_config`)."""


@final
@attrs.frozen
class Entry:
    """One entry of the replicated log.

    .. versionadded:: 0.1
    """

    term: int
    """The term of the leader that created the entry."""
    index: int
    """Its position in the log, from 1."""
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""
    """The command (``COMMAND``), nothing (``NOOP``) or the voters (``CONFIG``)."""


@final
@attrs.frozen
class Snapshot:
    """A snapshot of the state machine and the log position it covers.

    .. versionadded:: 0.1
    """

    index: int
    """The last entry the snapshot covers."""
    term: int
    """That entry's term."""
    config: tuple[str, ...]
    """The voters as of that entry."""
    data: bytes
    """The state machine, as the shell serialised it."""


@final
@attrs.frozen
class PersistentState:
    """What a Raft node keeps on disk, to be handed back when it restarts.

    The shell builds it by carrying out the storage actions
    (:class:`~trioactors._core._raft.Persist`,
    :class:`~trioactors._core._raft.AppendToLog`,
    :class:`~trioactors._core._raft.TruncateLog`,
    :class:`~trioactors._core._raft.SaveSnapshot`,
    :class:`~trioactors._core._raft.CompactLog`).

    .. versionadded:: 0.1
    """

    term: int = 0
    voted_for: str | None = None
    snapshot: Snapshot | None = None
    """``None`` before the first snapshot: the log starts at index 1."""
    entries: tuple[Entry, ...] = ()
    """The entries after the snapshot (older ones are ignored)."""


def encode_config(voters: Iterable[str]) -> bytes:
    """The ``data`` of a ``CONFIG`` entry naming ``voters`` (sorted, without duplicates)."""
    return json.dumps(sorted(set(voters))).encode()


def decode_config(data: bytes) -> tuple[str, ...]:
    """The voters named by a ``CONFIG`` entry's ``data``, sorted.

    Raises:
      ValueError: if ``data`` is not a list of node names.
    """
    try:
        voters: object = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a configuration must be a JSON list of names, not {data!r}") from exc
    if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
        raise ValueError(f"a configuration must be a JSON list of names, not {data!r}")
    return tuple(sorted({str(v) for v in voters}))


@final
class RaftLog:
    """The entries after a snapshot, with the configurations they carry.

    Args:
      snapshot_index: the last index the snapshot covers (0: none).
      snapshot_term: that entry's term (0 for index 0).
      snapshot_config: the voters as of the snapshot; for index 0 the bootstrap voters.
      entries: the entries after the snapshot; those at or before it are skipped.

    Raises:
      ValueError: if the entries do not follow the snapshot without a gap.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        snapshot_config: Iterable[str] = (),
        entries: Iterable[Entry] = (),
    ) -> None:
        if snapshot_index < 0 or snapshot_term < 0:
            raise ValueError("a snapshot's index and term must be >= 0")
        self._snapshot_index = snapshot_index
        self._snapshot_term = snapshot_term
        self._snapshot_config = tuple(sorted(set(snapshot_config)))
        self._entries: list[Entry] = []
        # (index, voters) of the CONFIG entries in _entries, in order
        self._configs: list[tuple[int, tuple[str, ...]]] = []
        self.append([e for e in entries if e.index > snapshot_index])

    def __repr__(self) -> str:
        return (
            f"RaftLog(snapshot=({self._snapshot_index}, {self._snapshot_term}), "
            f"last=({self.last_index}, {self.last_term}))"
        )

    def __len__(self) -> int:
        """The number of entries after the snapshot."""
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        """The entries after the snapshot, in order."""
        return iter(self._entries)

    # -- queries ---------------------------------------------------------------------

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    @property
    def snapshot_term(self) -> int:
        return self._snapshot_term

    @property
    def snapshot_config(self) -> tuple[str, ...]:
        return self._snapshot_config

    @property
    def last_index(self) -> int:
        return self._entries[-1].index if self._entries else self._snapshot_index

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``: the snapshot's term at its index,
        0 at index 0, ``None`` if compacted away or past the end."""
        if index == self._snapshot_index:
            return self._snapshot_term
        if self._snapshot_index < index <= self.last_index:
            return self._entries[index - self._snapshot_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        """The entry at ``index``.

        Raises:
          IndexError: if it is compacted away or past the end.
        """
        if not self._snapshot_index < index <= self.last_index:
            raise IndexError(f"no entry {index} in {self!r}")
        return self._entries[index - self._snapshot_index - 1]

    def entries(self, start: int, stop: int | None = None) -> list[Entry]:
        """The entries with ``start <= index < stop`` that the log has (``stop``: to the end)."""
        base = self._snapshot_index + 1
        lo = max(start - base, 0)
        hi = len(self._entries) if stop is None else max(stop - base, 0)
        return self._entries[lo:hi]

    @property
    def config(self) -> tuple[str, ...]:
        """The current voters: the last ``CONFIG`` entry's, committed or not, else the snapshot's."""
        return self._configs[-1][1] if self._configs else self._snapshot_config

    @property
    def config_index(self) -> int:
        """The index of the last ``CONFIG`` entry, or the snapshot's index if it has none."""
        return self._configs[-1][0] if self._configs else self._snapshot_index

    def config_at(self, index: int) -> tuple[str, ...]:
        """The voters as of ``index`` (``>= snapshot_index``)."""
        i = bisect.bisect_right(self._configs, index, key=lambda c: c[0])
        return self._configs[i - 1][1] if i else self._snapshot_config

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at ``(last_index, last_term)`` is at least as
        up-to-date as this one (the election restriction, section 5.4.1)."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """The first index, after the snapshot, of the run of entries that has
        the same term as the entry at ``index`` (for fast backtracking)."""
        term = self.term_at(index)
        while index - 1 > self._snapshot_index and self.term_at(index - 1) == term:
            index -= 1
        return index

    # -- changes ---------------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> None:
        """Add entries after the last one.

        Raises:
          ValueError: if an index does not follow the last one, or a term decreases.
        """
        for entry in entries:
            if entry.index != self.last_index + 1 or entry.term < self.last_term:
                raise ValueError(f"{entry!r} cannot follow {self!r}")
            if entry.kind is EntryKind.CONFIG:
                self._configs.append((entry.index, decode_config(entry.data)))
            self._entries.append(entry)

    def truncate(self, from_index: int) -> None:
        """Drop the entries at ``from_index`` and after (a conflicting suffix).

        Raises:
          ValueError: if that would drop the snapshot.
        """
        if from_index <= self._snapshot_index:
            raise ValueError(f"cannot truncate {self!r} from {from_index}: it is compacted")
        del self._entries[from_index - self._snapshot_index - 1 :]
        while self._configs and self._configs[-1][0] >= from_index:
            self._configs.pop()

    def compact(self, index: int) -> None:
        """Move the snapshot forward to ``index``, dropping the entries it covers.

        Raises:
          ValueError: if ``index`` is not an entry of the log after the snapshot.
        """
        term = self.term_at(index)
        if term is None or index <= self._snapshot_index:
            raise ValueError(f"cannot compact {self!r} to {index}: no such entry")
        config = self.config_at(index)
        del self._entries[: index - self._snapshot_index]
        self._configs = [c for c in self._configs if c[0] > index]
        self._snapshot_index, self._snapshot_term, self._snapshot_config = index, term, config

    def install(self, index: int, term: int, config: Iterable[str]) -> None:
        """Replace the snapshot with a received one ending at ``(index, term)``.

        The entries after it are kept if the log has that entry (section 7);
        otherwise the whole log is dropped.
        """
        if self.term_at(index) == term and index >= self._snapshot_index:
            del self._entries[: index - self._snapshot_index]
            self._configs = [c for c in self._configs if c[0] > index]
        else:
            self._entries.clear()
            self._configs.clear()
        self._snapshot_index, self._snapshot_term = index, term
        self._snapshot_config = tuple(sorted(set(config)))
