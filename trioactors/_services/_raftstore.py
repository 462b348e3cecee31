"""Where a Raft server keeps what must survive a crash: term, vote, log and snapshot.

:class:`SqliteRaftStore` is the default: one SQLite file per server, in WAL
mode. Each batch of storage actions from the Raft machine is one transaction,
committed before the messages that depend on it are sent (see
:mod:`trioactors._core._raft`). With ``synchronous=NORMAL`` (the default) a
commit survives the process being killed (the OS has the data); with
``durable=True`` (``synchronous=FULL``) it also survives a power loss, at the
cost of an fsync per batch. :class:`MemoryRaftStore` keeps the same state in
memory, for simulations where a "crash" drops the server but not its store.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, final

from .._core._raft_log import Entry, EntryKind, PersistentState, Snapshot
from .._core._raft_messages import (
    AppendToLog,
    CompactLog,
    Persist,
    SaveSnapshot,
    TruncateLog,
)
from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MemoryRaftStore", "RaftStore", "SqliteRaftStore", "StorageAction"]

StorageAction = Persist | AppendToLog | TruncateLog | SaveSnapshot | CompactLog


class RaftStore:
    """What a Raft server persists; subclass for another medium.

    .. versionadded:: 0.1
    """

    def load(self) -> PersistentState:
        """The state as last written (empty for a new store)."""
        raise NotImplementedError

    def write(self, actions: Sequence[StorageAction], snapshot_data: bytes | None) -> None:
        """Carry out ``actions`` in order, atomically and durably, before returning.

        ``snapshot_data`` is the state machine's snapshot for a
        :class:`CompactLog` among them (the shell took it).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the store."""


@final
class MemoryRaftStore(RaftStore):
    """A store in memory: it survives a simulated crash of its server, not of the process.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self.state = PersistentState()
        self.writes = 0

    def load(self) -> PersistentState:
        return self.state

    def write(self, actions: Sequence[StorageAction], snapshot_data: bytes | None) -> None:
        term, voted_for = self.state.term, self.state.voted_for
        snapshot = self.state.snapshot
        entries = list(self.state.entries)
        for action in actions:
            match action:
                case Persist(t, v):
                    term, voted_for = t, v
                case AppendToLog(new):
                    if new:
                        first = new[0].index
                        entries = [e for e in entries if e.index < first]
                        entries.extend(new)
                case TruncateLog(start):
                    entries = [e for e in entries if e.index < start]
                case SaveSnapshot(index, t, config, data):
                    snapshot = Snapshot(index, t, config, data)
                    entries = [e for e in entries if e.index > index]
                case CompactLog(index, t, config):
                    snapshot = Snapshot(index, t, config, snapshot_data or b"")
                    entries = [e for e in entries if e.index > index]
        self.state = PersistentState(term, voted_for, snapshot, tuple(entries))
        self.writes += 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS hard (one INTEGER PRIMARY KEY CHECK (one = 1), term INTEGER NOT NULL,
                                 voted_for TEXT);
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                                kind TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (one INTEGER PRIMARY KEY CHECK (one = 1),
                                     idx INTEGER NOT NULL, term INTEGER NOT NULL,
                                     config TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_VERSION = "1"


@final
class SqliteRaftStore(RaftStore):
    """A Raft server's state in one SQLite file (WAL mode).

    Args:
      path: the file; created if missing. One server per file: a second
        process opening it is refused by SQLite's locking only while it
        writes, so give each server its own.
      durable: ``synchronous=FULL`` (survive power loss) instead of ``NORMAL``
        (survive a killed process).

    Raises:
      StoreError: the file cannot be opened or was written by an incompatible
        version.

    .. versionadded:: 0.1
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('version', ?)", (_VERSION,))
            elif row[0] != _VERSION:
                raise StoreError(
                    f"{self.path}: a Raft store of version {row[0]}, this is version {_VERSION}"
                )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the Raft store: {exc}") from exc

    def load(self) -> PersistentState:
        db = self._db
        hard = db.execute("SELECT term, voted_for FROM hard").fetchone()
        snap = db.execute("SELECT idx, term, config, data FROM snapshot").fetchone()
        snapshot = None
        if snap is not None:
            snapshot = Snapshot(snap[0], snap[1], tuple(json.loads(snap[2])), bytes(snap[3]))
        entries = tuple(
            Entry(term, idx, EntryKind[kind], bytes(data))
            for idx, term, kind, data in db.execute(
                "SELECT idx, term, kind, data FROM log ORDER BY idx"
            )
        )
        term, voted_for = (0, None) if hard is None else (hard[0], hard[1])
        return PersistentState(term, voted_for, snapshot, entries)

    def write(self, actions: Sequence[StorageAction], snapshot_data: bytes | None) -> None:
        db = self._db
        try:
            db.execute("BEGIN")
            for action in actions:
                match action:
                    case Persist(term, voted_for):
                        db.execute(
                            "INSERT INTO hard VALUES (1, ?, ?) ON CONFLICT(one) DO UPDATE "
                            "SET term = excluded.term, voted_for = excluded.voted_for",
                            (term, voted_for),
                        )
                    case AppendToLog(entries):
                        if entries:
                            db.execute("DELETE FROM log WHERE idx >= ?", (entries[0].index,))
                            db.executemany(
                                "INSERT INTO log VALUES (?, ?, ?, ?)",
                                [(e.index, e.term, e.kind.name, e.data) for e in entries],
                            )
                    case TruncateLog(start):
                        db.execute("DELETE FROM log WHERE idx >= ?", (start,))
                    case SaveSnapshot(index, term, config, data):
                        self._snapshot(index, term, config, data)
                    case CompactLog(index, term, config):
                        self._snapshot(index, term, config, snapshot_data or b"")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _snapshot(self, index: int, term: int, config: tuple[str, ...], data: bytes) -> None:
        self._db.execute(
            "INSERT INTO snapshot VALUES (1, ?, ?, ?, ?) ON CONFLICT(one) DO UPDATE SET "
            "idx = excluded.idx, term = excluded.term, config = excluded.config, "
            "data = excluded.data",
            (index, term, json.dumps(list(config)), data),
        )
        self._db.execute("DELETE FROM log WHERE idx <= ?", (index,))

    def close(self) -> None:
        self._db.close()
