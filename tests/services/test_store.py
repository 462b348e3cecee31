"""The job store of the persistent retry queue.

Both stores pass the same round trips; the SQLite store keeps exactly what was
saved and not finished across a real SIGKILL of the process that wrote it;
under random sequences of operations, with the file closed and reopened
between them, it behaves exactly like the in-memory store (the model); and
every way the file can be unusable is a ``StoreError`` that names it.
"""

from __future__ import annotations

import inspect
import math
import signal
import sqlite3
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trioactors._errors import StoreError
from trioactors._services._store import (
    JobStore,
    MemoryJobStore,
    SqliteJobStore,
    StoredJob,
    StoredOutcome,
    StoreStatistics,
    open_job_store,
)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator


def job(name: str, *, attempt: int = 0, payload: object = None, **changes: object) -> StoredJob:
    stored = StoredJob(
        id=name,
        kind="echo",
        payload={"name": name, "n": [1, 2.5, -0.0, 1e300], "text": "héllo ☃ 日本"}
        if payload is None
        else payload,
        tags=("cpu", "eu"),
        key=None,
        attempt=attempt,
        deadline=1_700_000_060.25,
        submitter="$jobs:queue@n0",
        submitted=1_700_000_000.5,
    )
    return attrs.evolve(stored, **changes)


def ok(name: str, value: object = "done", *, finished: float = 1_700_000_010.0) -> StoredOutcome:
    return StoredOutcome(
        id=name, ok=True, value=value, error="", message="", attempts=1, finished=finished
    )


def failed(name: str, *, finished: float = 1_700_000_020.0) -> StoredOutcome:
    return StoredOutcome(
        id=name,
        ok=False,
        value=None,
        error="JobFailed",
        message="ValueError: bad input",
        attempts=3,
        finished=finished,
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    opened = open_job_store(None if request.param == "memory" else tmp_path / "jobs.db")
    yield opened
    opened.close()


def stats(store: JobStore) -> dict[str, int]:
    return attrs.asdict(store.statistics())


# -- round trips ---------------------------------------------------------------------------


def test_open_job_store(tmp_path: Path) -> None:
    memory = open_job_store(None)
    assert isinstance(memory, MemoryJobStore)
    sqlite = open_job_store(tmp_path / "jobs.db", synchronous="full")
    assert isinstance(sqlite, SqliteJobStore)
    assert sqlite.synchronous == "full"
    assert "jobs.db" in repr(sqlite)
    sqlite.close()
    assert "closed" in repr(sqlite)
    again = SqliteJobStore(str(tmp_path / "jobs.db"))  # a str path works too
    assert again.pending() == []
    again.close()


def test_round_trip(store: JobStore) -> None:
    a, b, c = job("a"), job("b", key="k1", deadline=None), job("c", tags=())
    store.save([a, b])
    store.save([c])
    assert store.pending() == [a, b, c]
    assert store.statistics() == StoreStatistics(
        pending=3, outcomes=0, saved=3, finished=0, ignored=0, pruned=0
    )

    # saving a pending job again replaces it and keeps its place
    b2 = attrs.evolve(b, attempt=1, payload=[1, {"x": None}])
    store.save([b2])
    assert store.pending() == [a, b2, c]

    # finish: a pending job's outcome is recorded; others (unknown, twice) are ignored
    store.finish([ok("a", {"sum": 3}), failed("c"), ok("nobody"), ok("a", "again")])
    assert store.pending() == [b2]
    assert store.outcome("a") == ok("a", {"sum": 3})
    assert store.outcome("c") == failed("c")
    assert store.outcome("b") is None
    assert store.outcome("nobody") is None
    store.finish([ok("c")])
    assert store.outcome("c") == failed("c")
    assert store.statistics() == StoreStatistics(
        pending=1, outcomes=2, saved=4, finished=2, ignored=3, pruned=0
    )

    # prune: strictly before the given time
    assert store.prune(1_700_000_010.0) == 0
    assert store.prune(1_700_000_010.5) == 1
    assert store.outcome("a") is None
    assert store.outcome("c") == failed("c")
    assert store.prune(math.inf) == 1
    assert store.statistics() == StoreStatistics(
        pending=1, outcomes=0, saved=4, finished=2, ignored=3, pruned=2
    )

    # saving a finished job makes it pending again (at the end) and forgets its outcome
    store.finish([ok("b")])
    store.save([a, c, b])
    store.finish([failed("c")])
    assert store.outcome("b") is None
    assert store.pending() == [a, b]

    # empty batches are no-ops
    store.save([])
    store.finish([])
    assert store.pending() == [a, b]

    with pytest.raises(TypeError, match="finished_before"):
        store.prune("tomorrow")  # type: ignore[arg-type]


def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    store.save([job(f"j{i}") for i in range(10)])
    store.save([job("j3", attempt=2)])
    store.finish([ok("j1"), failed("j5"), ok("j7", finished=5.0)])
    store.close()
    assert not Path(f"{path}-wal").exists()  # a clean close merges the log into the file

    store = SqliteJobStore(path)
    expected = [job(f"j{i}", attempt=2 if i == 3 else 0) for i in (0, 2, 3, 4, 6, 8, 9)]
    assert store.pending() == expected
    assert store.outcome("j1") == ok("j1")
    assert store.outcome("j5") == failed("j5")
    # counters are per opening; the contents are the file's
    assert store.statistics() == StoreStatistics(
        pending=7, outcomes=3, saved=0, finished=0, ignored=0, pruned=0
    )
    assert store.prune(10.0) == 1
    store.close()


def test_strings_that_are_not_utf8_round_trip(store: JobStore) -> None:
    # os.fsdecode gives lone surrogates for undecodable file names; keep them exactly
    odd = "caf\udce9 \ud800"
    stored = job(odd, kind=odd, key=odd, submitter=odd, tags=(odd,), payload={odd: [odd]})
    plain = job("cafe")
    store.save([stored, plain])
    assert store.pending() == [stored, plain]
    outcome = attrs.evolve(failed(odd), error=odd, message=odd, value=odd)
    store.finish([outcome])
    assert store.outcome(odd) == outcome
    assert store.outcome("caf\udce9 ") is None
    assert store.pending() == [plain]


def test_json_conversions(store: JobStore) -> None:
    # what JSON cannot tell apart comes back as json.loads gives it (cattrs structures it back)
    store.save([job("a", payload={"t": (1, 2), 3: "x", "f": 0.1 + 0.2})])
    (pending,) = store.pending()
    assert pending.payload == {"t": [1, 2], "3": "x", "f": 0.30000000000000004}
    # an int time comes back as a float
    store.save([job("b", submitted=5, deadline=7)])
    assert store.pending()[1].submitted == 5.0
    assert isinstance(store.pending()[1].deadline, float)


JSON_TEXT = st.text(st.characters(exclude_categories=()), max_size=6)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_TEXT, inner, max_size=3),
    max_leaves=8,
)
TIMES = st.floats(allow_nan=False)


def stored_jobs(ids: st.SearchStrategy[str] = JSON_TEXT) -> st.SearchStrategy[StoredJob]:
    return st.builds(
        StoredJob,
        id=ids,
        kind=JSON_TEXT,
        payload=JSON,
        tags=st.lists(JSON_TEXT, max_size=3).map(tuple),
        key=st.none() | JSON_TEXT,
        attempt=st.integers(0, 2**63 - 1),
        deadline=st.none() | TIMES,
        submitter=JSON_TEXT,
        submitted=TIMES,
    )


def stored_outcomes(
    ids: st.SearchStrategy[str] = JSON_TEXT, finished: st.SearchStrategy[float] = TIMES
) -> st.SearchStrategy[StoredOutcome]:
    return st.builds(
        StoredOutcome,
        id=ids,
        ok=st.booleans(),
        value=JSON,
        error=JSON_TEXT,
        message=JSON_TEXT,
        attempts=st.integers(0, 2**63 - 1),
        finished=finished,
    )


@settings(max_examples=50)
@given(stored=stored_jobs(), outcome=stored_outcomes())
def test_values_round_trip(stored: StoredJob, outcome: StoredOutcome) -> None:
    outcome = attrs.evolve(outcome, id=stored.id)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "jobs.db")
        for store in (MemoryJobStore(), SqliteJobStore(path)):
            store.save([stored])
            assert store.pending() == [stored]
            store.close()
        store = SqliteJobStore(path)
        assert store.pending() == [stored]
        store.finish([outcome])
        store.close()
        store = SqliteJobStore(path)
        assert store.outcome(stored.id) == outcome
        assert store.pending() == []
        store.close()


# -- durability across SIGKILL ------------------------------------------------------------


def crash_plan(rounds: int, n: int, k: int, m: int) -> list[tuple[str, list[object]]]:
    """What the child does before it kills itself: ``rounds`` rounds of saving
    ``n`` new jobs, finishing ``k`` of them (with an outcome for a job finished
    in an earlier round and one for an unknown job, both ignored) and saving
    one of them again; then saving ``m`` new jobs. (Runs in the child too.)"""
    from trioactors._services._store import StoredJob, StoredOutcome

    def new(r: int, i: int) -> StoredJob:
        return StoredJob(
            id=f"r{r}-{i}",
            kind="crash",
            payload={"r": r, "i": i, "f": i / 7, "s": "☃" * (i % 3), "l": [[i], {}]},
            tags=("t",) if i % 2 else (),
            key=f"k{i % 5}" if i % 3 else None,
            attempt=0,
            deadline=None if i % 4 else 1e9 + i,
            submitter="$jobs:queue@n0",
            submitted=r * 1000.0 + i,
        )

    def done(r: int, i: int) -> StoredOutcome:
        return StoredOutcome(
            id=f"r{r}-{i}",
            ok=i % 2 == 0,
            value={"i": i} if i % 2 == 0 else None,
            error="" if i % 2 == 0 else "JobFailed",
            message="" if i % 2 == 0 else f"failure {i}",
            attempts=1 + i % 3,
            finished=r * 1000.0 + 500 + i,
        )

    steps: list[tuple[str, list[object]]] = []
    for r in range(rounds):
        steps.append(("save", [new(r, i) for i in range(n)]))
        outcomes: list[object] = [done(r, i) for i in range(k)]
        if r:
            outcomes.append(done(r - 1, 0))
        outcomes.append(done(-1, 0))
        steps.append(("finish", outcomes))
        if k < n:
            steps.append(("save", [attrs.evolve(new(r, k), attempt=1)]))
    steps.append(("save", [new(rounds, i) for i in range(m)]))
    return steps


CHILD = (
    textwrap.dedent(
        """
        import os, signal, sys
        import attrs
        from trioactors._services._store import SqliteJobStore

        """
    )
    + inspect.getsource(crash_plan)
    + textwrap.dedent(
        """
        path, synchronous, *counts = sys.argv[1:]
        store = SqliteJobStore(path, synchronous=synchronous)
        for op, batch in crash_plan(*map(int, counts)):
            getattr(store, op)(batch)
        # the last step was a save: die the moment it returns
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_pending_jobs_survive_sigkill(tmp_path: Path) -> None:
    runs = [
        ("normal", 1, 1, 0, 1),
        ("normal", 3, 10, 4, 5),
        ("normal", 2, 200, 150, 100),
        ("full", 4, 20, 20, 3),
    ]
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def crash(n: int, synchronous: str, *counts: int) -> None:
        args = [str(tmp_path / f"jobs{n}.db"), synchronous, *map(str, counts)]
        results[n] = await trio.run_process(
            [sys.executable, "-c", CHILD, *args],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n, run in enumerate(runs):
                nursery.start_soon(crash, n, *run)

    for n, (_, *counts) in enumerate(runs):
        result = results[n]
        assert result.returncode == -signal.SIGKILL, result.stderr.decode()
        path = tmp_path / f"jobs{n}.db"
        assert Path(f"{path}-wal").exists()  # it did not close: the log is replayed now

        model = MemoryJobStore()
        for op, batch in crash_plan(*counts):
            getattr(model, op)(batch)

        store = SqliteJobStore(path)
        assert store.pending() == model.pending()
        ids = {job.id for _, batch in crash_plan(*counts) for job in batch}  # type: ignore[attr-defined]
        for job_id in ids:
            assert store.outcome(job_id) == model.outcome(job_id)
        assert store.statistics().pending == model.statistics().pending
        assert store.statistics().outcomes == model.statistics().outcomes
        store.close()


# -- SQLite against the model -----------------------------------------------------------

IDS = [*(f"j{i}" for i in range(6)), "j\udcff"]


class SqliteAgainstModel(RuleBasedStateMachine):
    """Random saves, finishes and prunes on both stores, with the file
    closed and reopened in between: the SQLite store answers exactly as the
    in-memory one."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name, "jobs.db")
        self.model = MemoryJobStore()
        self.real = SqliteJobStore(self.path)
        self.since = self.model.statistics()  # the model's counters when the file was opened

    @rule(jobs=st.lists(stored_jobs(st.sampled_from(IDS)), max_size=4))
    def save(self, jobs: list[StoredJob]) -> None:
        self.model.save(jobs)
        self.real.save(jobs)

    @rule(outcomes=st.lists(stored_outcomes(st.sampled_from(IDS), st.floats(0, 10)), max_size=4))
    def finish(self, outcomes: list[StoredOutcome]) -> None:
        self.model.finish(outcomes)
        self.real.finish(outcomes)

    @rule(
        jobs=st.lists(stored_jobs(st.sampled_from(IDS)), max_size=3),
        at=st.integers(0, 3),
        bad=st.sampled_from([{1, 2}, float("nan"), [math.inf], {(1,): 2}]),
    )
    def save_unstorable(self, jobs: list[StoredJob], at: int, bad: object) -> None:
        batch = [*jobs[:at], job("bad", payload=bad), *jobs[at:]]
        for store in (self.model, self.real):
            with pytest.raises(StoreError, match="'bad'"):
                store.save(batch)

    @rule(before=st.floats(0, 11))
    def prune(self, before: float) -> None:
        assert self.real.prune(before) == self.model.prune(before)

    @rule(synchronous=st.sampled_from(["normal", "full"]))
    def reopen(self, synchronous: str) -> None:
        self.real.close()
        self.real = SqliteJobStore(self.path, synchronous=synchronous)  # type: ignore[arg-type]
        self.since = self.model.statistics()

    @invariant()
    def same(self) -> None:
        assert self.real.pending() == self.model.pending()
        for job_id in IDS:
            assert self.real.outcome(job_id) == self.model.outcome(job_id)
        model, since = self.model.statistics(), self.since
        assert self.real.statistics() == StoreStatistics(
            pending=model.pending,
            outcomes=model.outcomes,
            saved=model.saved - since.saved,
            finished=model.finished - since.finished,
            ignored=model.ignored - since.ignored,
            pruned=model.pruned - since.pruned,
        )

    def teardown(self) -> None:
        self.real.close()
        self.directory.cleanup()


TestSqliteAgainstModel = SqliteAgainstModel.TestCase
TestSqliteAgainstModel.settings = settings(
    TestSqliteAgainstModel.settings, max_examples=60, stateful_step_count=20
)


# -- errors -----------------------------------------------------------------------------


def test_directory_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(StoreError, match="does not exist") as caught:
        SqliteJobStore(path)
    assert str(path) in str(caught.value)
    assert not path.parent.exists()


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        SqliteJobStore(tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_text("not a database, just some text\n" * 200)
    with pytest.raises(StoreError, match="not a SQLite database") as caught:
        SqliteJobStore(path)
    assert str(path) in str(caught.value)


def test_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE pending (x)")
    db.close()
    with pytest.raises(StoreError, match="not a trioactors job store") as caught:
        SqliteJobStore(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("version", [0, 2, 99])
def test_other_schema_version(tmp_path: Path, version: int) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    store.save([job("a")])
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()
    with pytest.raises(
        StoreError, match=f"schema version {version}, and .* reads version 1"
    ) as caught:
        SqliteJobStore(path)
    assert str(path) in str(caught.value)


def corrupt_pages(path: Path) -> None:
    """Overwrite the header of every b-tree page but the first."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size, len(data), page_size):
        data[offset : offset + 12] = b"\xa5" * 12
    path.write_bytes(data)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [corrupt_pages, truncate])
def test_corrupt_file(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    store.save([job(f"j{i}", payload="x" * 100) for i in range(500)])
    store.close()
    damage(path)
    with pytest.raises(StoreError, match="corrupt") as caught:
        SqliteJobStore(path)
    assert str(path) in str(caught.value)


def test_corrupt_record(tmp_path: Path) -> None:
    # SQLite cannot see inside our columns: a damaged one fails when it is read
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    store.save([job("a"), job("b")])
    store.finish([ok("a")])
    store.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE pending SET payload = '{\"half\": ['")
        db.execute("UPDATE outcomes SET value = x'ff'")
    db.close()
    store = SqliteJobStore(path)
    with pytest.raises(StoreError, match="a record is corrupt"):
        store.pending()
    with pytest.raises(StoreError, match="a record is corrupt"):
        store.outcome("a")
    store.close()


def test_one_store_per_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteJobStore(path)
    with pytest.raises(StoreError, match="open in another store") as caught:
        SqliteJobStore(path)
    assert str(path) in str(caught.value)
    first.save([job("a")])
    first.close()
    second = SqliteJobStore(path)
    assert second.pending() == [job("a")]
    second.close()


def test_synchronous_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'normal' or 'full'"):
        SqliteJobStore(tmp_path / "jobs.db", synchronous="off")  # type: ignore[arg-type]
    assert not (tmp_path / "jobs.db").exists()


class Unserialisable:
    pass


circular: list[object] = []
circular.append(circular)


@pytest.mark.parametrize(
    "payload", [Unserialisable(), {1, 2}, float("nan"), [math.inf], {(1, 2): 3}, circular]
)
def test_unstorable_payload(store: JobStore, payload: object) -> None:
    store.save([job("a")])
    before = stats(store)
    with pytest.raises(StoreError, match=r"cannot store job 'b'.*payload.*nothing was written"):
        store.save([job("c"), job("b", payload=payload), job("a", attempt=5)])
    assert store.pending() == [job("a")]
    assert stats(store) == before


@pytest.mark.parametrize(
    "changes",
    [
        {"deadline": math.nan},
        {"submitted": math.nan},
        {"submitted": 10**400},
        {"attempt": 2**63},
        {"attempt": 1.5},
        {"kind": None},
        {"tags": ["a"]},
        {"tags": ("a", 1)},
    ],
)
def test_unstorable_job(store: JobStore, changes: dict[str, object]) -> None:
    with pytest.raises(StoreError, match="cannot store job 'b'"):
        store.save([job("a"), job("b", **changes)])
    assert store.pending() == []


@pytest.mark.parametrize(
    "changes",
    [{"value": Unserialisable()}, {"value": math.inf}, {"finished": math.nan}, {"ok": 1}],
)
def test_unstorable_outcome(store: JobStore, changes: dict[str, object]) -> None:
    store.save([job("a"), job("b")])
    before = stats(store)
    with pytest.raises(StoreError, match="cannot store job 'b'"):
        store.finish([ok("a"), attrs.evolve(ok("b"), **changes)])
    assert store.pending() == [job("a"), job("b")]
    assert store.outcome("a") is None
    assert stats(store) == before


def test_closed(store: JobStore) -> None:
    store.save([job("a")])
    store.close()
    store.close()  # closing twice is fine
    calls = [
        lambda: store.save([job("b")]),
        lambda: store.finish([ok("a")]),
        store.pending,
        lambda: store.outcome("a"),
        lambda: store.prune(0.0),
        store.statistics,
    ]
    for call in calls:
        with pytest.raises(StoreError, match="is closed"):
            call()
