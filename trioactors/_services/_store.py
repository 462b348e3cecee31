"""Storage for the persistent retry queue: pending jobs survive a crash of the coordinator.

Theory of operation
-------------------

A coordinator that persists its jobs writes through a :class:`JobStore`.
Each job is in one of two places:

- **pending**: saved (:meth:`~JobStore.save`) and not yet finished. On start
  the coordinator reads them back (:meth:`~JobStore.pending`, in the order
  they were first saved) and runs them again: at-least-once delivery.
- **finished**: its :class:`StoredOutcome` is recorded (:meth:`~JobStore.finish`)
  and the job is no longer pending. An outcome for a job that is not pending
  (already finished, or never saved) is ignored and counted: completion is
  idempotent, so a job's effect is recorded once.

Saving a job that is already pending replaces it in place (its ``attempt``
grows); saving a finished job makes it pending again and forgets its
outcome. So a job id is never both pending and finished. Outcomes stay
until :meth:`~JobStore.prune` drops the old ones.

Every call is synchronous and is one transaction: the caller batches (one
``save`` per dispatch round, one ``finish`` per batch of results), so the
cost of a commit is paid per batch, not per job. Nothing is written unless
the whole batch can be: payloads and values are encoded (JSON) and checked
first, and a value that cannot be stored raises :exc:`~trioactors.StoreError`
naming the job.

Encoding
~~~~~~~~

``payload``, ``value`` and ``tags`` are stored as JSON (the standard
library's, compact, and like the wire format without NaN or infinities), so
they come back as :func:`json.loads` returns them: floats exactly, tuples as
lists, non-string dict keys as strings (cattrs structures all of these back
into the declared types). Strings that are not valid UTF-8 (lone
surrogates, as :func:`os.fsdecode` produces for undecodable file names) are
kept exactly too. :class:`MemoryJobStore` encodes the same way, so both
stores hand back equal values and refuse the same ones.

Durability (:class:`SqliteJobStore`)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

The file is a SQLite database in WAL mode (write-ahead log). A commit
appends the transaction to the log file with ``write()``; when the call
returns, the data is in the operating system's page cache, which belongs to
the kernel, not to the process. So with the default ``synchronous="normal"``
a commit survives the *process* dying in any way (an exception, ``SIGKILL``,
the OOM killer): the next open replays the log. It does not necessarily
survive the *machine* stopping (power loss, kernel panic, a VM killed):
``normal`` only calls ``fsync`` at checkpoints, so the last transactions
before the loss may be rolled back (the database stays consistent; it is
just older). ``synchronous="full"`` calls ``fsync`` on the log at every
commit, so a returned ``save`` survives power loss too (on a disk that
honours ``fsync``), at the price of one flush per commit: about a
millisecond on an SSD, more on network storage.

The store holds an exclusive lock on the file while open (SQLite's
``locking_mode=EXCLUSIVE``): two coordinators on one file would both recover
and run the same pending jobs, so the second open fails with
:exc:`~trioactors.StoreError` at once. The lock dies with the process.

On open the store checks that the file is a SQLite database, that it is a
job store of the schema version this code reads (``PRAGMA user_version``,
with ``PRAGMA application_id`` marking the file as ours), and runs SQLite's
``quick_check`` to find damage to SQLite's own structures at start rather
than halfway through a recovery (about 80 ms for a 37 MB file; damage inside a
record shows up when the record is read). Any of these failing raises
:exc:`~trioactors.StoreError` naming the file and saying what to do.
``statistics()`` counts the rows (a millisecond or two at 200,000).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol, TypeAlias, cast, final

import attrs

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "JobStore",
    "MemoryJobStore",
    "SqliteJobStore",
    "StoreStatistics",
    "StoredJob",
    "StoredOutcome",
    "open_job_store",
]

SCHEMA_VERSION = 1
"""The layout of the tables; stored in the file as ``PRAGMA user_version``."""
APPLICATION_ID = 0x54414A53  # "TAJS": trioactors job store (``PRAGMA application_id``)

Synchronous: TypeAlias = Literal["normal", "full"]


@final
@attrs.frozen
class StoredJob:
    """A job as a :class:`JobStore` keeps it while it is pending.

    .. versionadded:: 0.1
    """

    id: str
    kind: str
    payload: object
    """Plain JSON data (already unstructured)."""
    tags: tuple[str, ...]
    key: str | None
    attempt: int
    """Attempts already started (0: never sent)."""
    deadline: float | None
    """Wall-clock time (:func:`time.time`) at which the job times out, or ``None``."""
    submitter: str
    submitted: float
    """Wall-clock time of submission."""
    retry: object = None
    """The job's retry policy as plain JSON data (the fields of
    :class:`~trioactors.RetryPolicy`), or ``None`` for the queue's: a job that
    must not run twice stays so across a restart."""


@final
@attrs.frozen
class StoredOutcome:
    """How a job ended, as a :class:`JobStore` records it.

    .. versionadded:: 0.1
    """

    id: str
    ok: bool
    value: object
    """The result as plain JSON data if ``ok`` (else usually ``None``)."""
    error: str
    """The name of the error's class if not ``ok`` (``""`` if ``ok``)."""
    message: str
    """The error's text if not ``ok`` (``""`` if ``ok``)."""
    attempts: int
    finished: float
    """Wall-clock time (:func:`time.time`) the job ended."""


@final
@attrs.frozen
class StoreStatistics:
    """Counters of a :class:`JobStore` (``store.statistics()``).

    ``pending`` and ``outcomes`` count what the store holds; the others count
    since this store object was opened.

    .. versionadded:: 0.1
    """

    pending: int
    """Jobs pending now."""
    outcomes: int
    """Outcomes recorded now (not yet pruned)."""
    saved: int
    """Jobs saved (new or replaced)."""
    finished: int
    """Outcomes recorded (each finished a pending job)."""
    ignored: int
    """Outcomes ignored: their job was not pending (finished already, or unknown)."""
    pruned: int
    """Outcomes deleted by :meth:`JobStore.prune`."""


class JobStore(Protocol):
    """Where a job queue keeps its pending jobs and their outcomes.

    Implementations: :class:`SqliteJobStore` (a file; survives a restart)
    and :class:`MemoryJobStore` (nothing survives). Get one from
    :func:`open_job_store`. Calls are synchronous; each is one transaction.

    .. versionadded:: 0.1
    """

    def save(self, jobs: Sequence[StoredJob]) -> None:
        """Make ``jobs`` pending, replacing any saved under the same ids, in one
        transaction; durable when it returns.

        Raises:
          StoreError: a job cannot be stored (the message names it; nothing
            was written), or the store is closed or failed.
        """
        ...

    def finish(self, outcomes: Sequence[StoredOutcome]) -> None:
        """For each outcome whose job is pending: remove the job from pending
        and record the outcome, in one transaction. Outcomes for other ids
        (finished already, or never saved) are ignored and counted.

        Raises:
          StoreError: a value cannot be stored (nothing was written), or the
            store is closed or failed.
        """
        ...

    def pending(self) -> list[StoredJob]:
        """The pending jobs, in the order they were first saved."""
        ...

    def outcome(self, job_id: str) -> StoredOutcome | None:
        """The recorded outcome of a job (``None`` if it has none: pending,
        unknown or pruned)."""
        ...

    def prune(self, finished_before: float) -> int:
        """Delete the outcomes of jobs that finished before ``finished_before``
        (wall-clock); return how many."""
        ...

    def statistics(self) -> StoreStatistics:
        """What the store holds, and what it has done since it was opened."""
        ...

    def close(self) -> None:
        """Close the store; any later call but ``close`` raises ``StoreError``."""
        ...


def open_job_store(
    path: str | os.PathLike[str] | None, *, synchronous: Synchronous = "normal"
) -> JobStore:
    """A :class:`SqliteJobStore` on ``path``, or a :class:`MemoryJobStore` if it is ``None``.

    Raises:
      StoreError: see :class:`SqliteJobStore`.

    .. versionadded:: 0.1
    """
    if path is None:
        return MemoryJobStore()
    return SqliteJobStore(path, synchronous=synchronous)


# -- encoding, shared by both stores -------------------------------------------------------

# What a column holds: a string that is not valid UTF-8 is stored as a BLOB (see _text).
_Text: TypeAlias = "str | bytes"
_JobRow: TypeAlias = (
    "tuple[_Text, _Text, _Text, _Text, _Text | None, int, float | None, _Text, float, _Text | None]"
)
_OutcomeRow: TypeAlias = "tuple[_Text, int, _Text, _Text, _Text, int, float]"

_INT64 = range(-(2**63), 2**63)


def _text(s: str) -> str | bytes:
    # sqlite3 binds a str as UTF-8 and raises on a lone surrogate; keep such a
    # string losslessly as a BLOB instead (never equal to any TEXT value).
    if s.isascii():
        return s
    try:
        s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")
    return s


def _untext(v: str | bytes) -> str:
    return v if isinstance(v, str) else v.decode("utf-8", "surrogatepass")


# like the wire's JSON; made once (json.dumps with options builds an encoder per call)
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _dumps(value: object) -> str | bytes:
    return _text(_encode_json(value))


def _loads(v: str | bytes) -> object:
    loaded: object = json.loads(_untext(v))
    return loaded


def _bad(job_id: object, what: str, cause: Exception | None = None) -> NoReturn:
    raise StoreError(f"cannot store job {job_id!r}: {what}; nothing was written") from cause


def _string(job_id: object, field: str, value: object) -> str | bytes:
    if not isinstance(value, str):
        _bad(job_id, f"its {field} must be a str, not {type(value).__name__}")
    return _text(value)


def _integer(job_id: object, field: str, value: object) -> int:
    if not isinstance(value, int) or value not in _INT64:
        _bad(job_id, f"its {field} must be an int that fits in 64 bits, not {value!r}")
    return int(value)


def _time(job_id: object, field: str, value: object) -> float:
    # (SQLite would store NaN as NULL)
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            pass
        else:
            if not math.isnan(seconds):
                return seconds
    _bad(job_id, f"its {field} must be a number of seconds, not {value!r}")


def _json(job_id: object, field: str, value: object) -> str | bytes:
    try:
        return _dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        _bad(job_id, f"its {field} is not plain JSON data ({exc})", exc)


def _encode_job(job: StoredJob) -> _JobRow:
    i = job.id
    tags = job.tags
    if not isinstance(tags, tuple) or not all(isinstance(t, str) for t in tags):
        _bad(i, f"its tags must be a tuple of str, not {tags!r}")
    return (
        _string(i, "id", i),
        _string(i, "kind", job.kind),
        _json(i, "payload", job.payload),
        _dumps(tags) if tags else "[]",
        None if job.key is None else _string(i, "key", job.key),
        _integer(i, "attempt", job.attempt),
        None if job.deadline is None else _time(i, "deadline", job.deadline),
        _string(i, "submitter", job.submitter),
        _time(i, "submitted", job.submitted),
        None if job.retry is None else _json(i, "retry", job.retry),
    )


def _decode_job(row: _JobRow) -> StoredJob:
    id_, kind, payload, tags, key, attempt, deadline, submitter, submitted, retry = row
    return StoredJob(
        id=_untext(id_),
        kind=_untext(kind),
        payload=_loads(payload),
        tags=tuple(cast("list[str]", _loads(tags))),
        key=None if key is None else _untext(key),
        attempt=attempt,
        deadline=deadline,
        submitter=_untext(submitter),
        submitted=submitted,
        retry=None if retry is None else _loads(retry),
    )


def _encode_outcome(outcome: StoredOutcome) -> _OutcomeRow:
    i = outcome.id
    if not isinstance(outcome.ok, bool):
        _bad(i, f"its ok must be a bool, not {outcome.ok!r}")
    return (
        _string(i, "id", i),
        int(outcome.ok),
        _json(i, "value", outcome.value),
        _string(i, "error", outcome.error),
        _string(i, "message", outcome.message),
        _integer(i, "attempts", outcome.attempts),
        _time(i, "finished", outcome.finished),
    )


def _decode_outcome(row: _OutcomeRow) -> StoredOutcome:
    id_, ok, value, error, message, attempts, finished = row
    return StoredOutcome(
        id=_untext(id_),
        ok=bool(ok),
        value=_loads(value),
        error=_untext(error),
        message=_untext(message),
        attempts=attempts,
        finished=finished,
    )


def _before(finished_before: float) -> float:
    if not isinstance(finished_before, (int, float)):
        raise TypeError(f"finished_before must be a time in seconds, not {finished_before!r}")
    return finished_before


def _closed(what: str) -> NoReturn:
    raise StoreError(f"{what} is closed; open it again (open_job_store) to use it")


# -- in memory --------------------------------------------------------------------------


@final
class MemoryJobStore:
    """A :class:`JobStore` in memory: nothing survives the process.

    The default when no persistence is wanted, and the model the SQLite store
    is tested against. It encodes and checks what it is given exactly as
    :class:`SqliteJobStore` does, so both return equal values and refuse the
    same ones.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._pending: dict[str, _JobRow] | None = {}
        self._outcomes: dict[str, _OutcomeRow] = {}
        self._saved = self._finished = self._ignored = self._pruned = 0

    def __repr__(self) -> str:
        state = "closed" if self._pending is None else f"pending={len(self._pending)}"
        return f"<MemoryJobStore {state}>"

    def _live(self) -> dict[str, _JobRow]:
        if self._pending is None:
            _closed("the memory job store")
        return self._pending

    def save(self, jobs: Sequence[StoredJob]) -> None:
        pending = self._live()
        rows = [(job.id, _encode_job(job)) for job in jobs]
        for job_id, row in rows:
            pending[job_id] = row  # a replaced job keeps its place, as in SQLite
            self._outcomes.pop(job_id, None)
        self._saved += len(rows)

    def finish(self, outcomes: Sequence[StoredOutcome]) -> None:
        pending = self._live()
        rows = [(outcome.id, _encode_outcome(outcome)) for outcome in outcomes]
        for job_id, row in rows:
            if pending.pop(job_id, None) is None:
                self._ignored += 1
            else:
                self._outcomes[job_id] = row
                self._finished += 1

    def pending(self) -> list[StoredJob]:
        return [_decode_job(row) for row in self._live().values()]

    def outcome(self, job_id: str) -> StoredOutcome | None:
        self._live()
        row = self._outcomes.get(job_id)
        return None if row is None else _decode_outcome(row)

    def prune(self, finished_before: float) -> int:
        self._live()
        before = _before(finished_before)
        old = [i for i, row in self._outcomes.items() if row[6] < before]
        for job_id in old:
            del self._outcomes[job_id]
        self._pruned += len(old)
        return len(old)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            pending=len(self._live()),
            outcomes=len(self._outcomes),
            saved=self._saved,
            finished=self._finished,
            ignored=self._ignored,
            pruned=self._pruned,
        )

    def close(self) -> None:
        self._pending = None
        self._outcomes = {}


# -- SQLite -------------------------------------------------------------------------------

_SCHEMA = (
    """
CREATE TABLE pending (
    seq INTEGER PRIMARY KEY,  -- the order jobs were first saved in
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,    -- JSON
    tags TEXT NOT NULL,       -- JSON list of str
    key TEXT,
    attempt INTEGER NOT NULL,
    deadline REAL,
    submitter TEXT NOT NULL,
    submitted REAL NOT NULL,
    retry TEXT                -- JSON, or NULL: the queue's policy
)""",
    """
CREATE TABLE outcomes (
    id TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    value TEXT NOT NULL,      -- JSON
    error TEXT NOT NULL,
    message TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    finished REAL NOT NULL
) WITHOUT ROWID""",
    "CREATE INDEX outcomes_by_finished ON outcomes (finished)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
    f"PRAGMA application_id = {APPLICATION_ID}",
)
_JOB_COLUMNS = "id, kind, payload, tags, key, attempt, deadline, submitter, submitted, retry"
_SAVE = f"""
INSERT INTO pending ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    kind = excluded.kind, payload = excluded.payload, tags = excluded.tags,
    key = excluded.key, attempt = excluded.attempt, deadline = excluded.deadline,
    submitter = excluded.submitter, submitted = excluded.submitted, retry = excluded.retry
"""
_OUTCOME_COLUMNS = "id, ok, value, error, message, attempts, finished"
_FINISH = f"INSERT INTO outcomes ({_OUTCOME_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"


@final
class SqliteJobStore:
    """A :class:`JobStore` in a SQLite file: pending jobs survive a crash and a restart.

    Args:
      path: the database file; it is created if missing, in a directory that
        must exist. One open store per file at a time.
      synchronous: ``"normal"`` (default): a returned call survives a crash
        of the process; ``"full"``: it also survives a crash of the machine
        or a power loss, at the cost of an ``fsync`` per call (see the
        module's docstring).

    Raises:
      StoreError: the directory does not exist; the file cannot be opened, is
        not a SQLite database, is corrupt, is another application's database,
        was written with another schema version, or is open in another
        process.

    .. versionadded:: 0.1
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Synchronous = "normal"
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous: Synchronous = synchronous
        self._saved = self._finished = self._ignored = self._pruned = 0
        self._db: sqlite3.Connection | None = None
        directory = Path(self.path).parent
        if not directory.is_dir():
            raise StoreError(
                f"cannot open the job store {self.path!r}: the directory {str(directory)!r} "
                "does not exist (create it first)"
            )
        if Path(self.path).is_dir():
            raise StoreError(
                f"cannot open the job store {self.path!r}: it is a directory; give a file name"
            )
        try:
            # timeout=0: a file locked by another store fails at once instead of waiting
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error("cannot open the job store", exc) from exc
        try:
            self._open(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _open(self, db: sqlite3.Connection) -> None:
        try:
            # Exclusive before the first read: WAL then keeps its index in
            # memory (no -shm file) and the file stays locked while we're open.
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise StoreError(
                    f"cannot open the job store {self.path!r}: SQLite could not switch it "
                    f"to WAL mode (journal mode is {mode!r})"
                )
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.execute("BEGIN IMMEDIATE")
            try:
                self._check_schema(db)
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.Error as exc:
            raise self._error("cannot open the job store", exc) from exc
        if problems != ["ok"]:
            raise StoreError(
                f"cannot open the job store {self.path!r}: it is corrupt "
                f"(SQLite quick_check: {'; '.join(map(str, problems))}); "
                "move it away and start with a new file, or restore a copy"
            )

    def _check_schema(self, db: sqlite3.Connection) -> None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (app,) = db.execute("PRAGMA application_id").fetchone()
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_schema").fetchall()]
        if version == 0 and app == 0 and not tables:
            for statement in _SCHEMA:
                db.execute(statement)
        elif app != APPLICATION_ID:
            raise StoreError(
                f"cannot open the job store {self.path!r}: it is a SQLite database but not "
                "a trioactors job store (another application's file?); give another path"
            )
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"cannot open the job store {self.path!r}: it has schema version {version}, and "
                f"this trioactors reads version {SCHEMA_VERSION} (the file was written by another "
                "version of trioactors); open it with that version, or move it away to start afresh"
            )

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "file is not a database" in text:
            reason = "it is not a SQLite database (or its header is corrupt); give another path"
        elif "malformed" in text or "corrupt" in text:
            reason = "it is corrupt; move it away and start with a new file, or restore a copy"
        elif "database is locked" in text:
            reason = (
                "it is open in another store (in this or another process); "
                "each coordinator needs a file of its own"
            )
        else:
            reason = text
        return StoreError(f"{what} {self.path!r}: {reason} (sqlite3: {text})")

    def __repr__(self) -> str:
        state = "closed" if self._db is None else self.synchronous
        return f"<SqliteJobStore {self.path!r} {state}>"

    def _live(self) -> sqlite3.Connection:
        if self._db is None:
            _closed(f"the job store {self.path!r}")
        return self._db

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(what, exc) from exc

    @contextlib.contextmanager
    def _corrupt_records(self) -> Iterator[None]:
        # SQLite checks its own structures, not our columns: a damaged or
        # hand-edited record shows up when it is decoded.
        try:
            yield
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"cannot read the job store {self.path!r}: a record is corrupt ({exc!r}); "
                "move the file away and start with a new one, or restore a copy"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        with self._errors("cannot write to the job store"):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- the JobStore protocol ----------------------------------------------------------

    def save(self, jobs: Sequence[StoredJob]) -> None:
        db = self._live()
        rows = [_encode_job(job) for job in jobs]
        if not rows:
            return
        with self._transaction(db):
            db.executemany(_SAVE, rows)
            db.executemany("DELETE FROM outcomes WHERE id = ?", [(row[0],) for row in rows])
        self._saved += len(rows)

    def finish(self, outcomes: Sequence[StoredOutcome]) -> None:
        db = self._live()
        rows = [_encode_outcome(outcome) for outcome in outcomes]
        if not rows:
            return
        finished = 0
        with self._transaction(db):
            for row in rows:
                if db.execute("DELETE FROM pending WHERE id = ?", row[:1]).rowcount:
                    db.execute(_FINISH, row)
                    finished += 1
        self._finished += finished
        self._ignored += len(rows) - finished

    def pending(self) -> list[StoredJob]:
        db = self._live()
        with self._errors("cannot read the job store"):
            rows: list[_JobRow] = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM pending ORDER BY seq"
            ).fetchall()
        with self._corrupt_records():
            return [_decode_job(row) for row in rows]

    def outcome(self, job_id: str) -> StoredOutcome | None:
        db = self._live()
        with self._errors("cannot read the job store"):
            row: _OutcomeRow | None = db.execute(
                f"SELECT {_OUTCOME_COLUMNS} FROM outcomes WHERE id = ?", (_text(job_id),)
            ).fetchone()
        if row is None:
            return None
        with self._corrupt_records():
            return _decode_outcome(row)

    def prune(self, finished_before: float) -> int:
        db = self._live()
        with self._transaction(db):
            count: int = db.execute(
                "DELETE FROM outcomes WHERE finished < ?", (_before(finished_before),)
            ).rowcount
        self._pruned += count
        return count

    def statistics(self) -> StoreStatistics:
        db = self._live()
        with self._errors("cannot read the job store"):
            counts: tuple[int, int] = db.execute(
                "SELECT (SELECT count(*) FROM pending), (SELECT count(*) FROM outcomes)"
            ).fetchone()
        return StoreStatistics(
            pending=counts[0],
            outcomes=counts[1],
            saved=self._saved,
            finished=self._finished,
            ignored=self._ignored,
            pruned=self._pruned,
        )

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with self._errors("cannot close the job store"):
                db.close()  # the last connection: checkpoints the log into the file
