"""Jobs, kinds, results and the coordinator's table of workers: pure checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioactors as ta
from trioactors._core._jobs import RTT_GAIN, WorkerTable


def table(**workers: dict[str, object]) -> WorkerTable:
    t = WorkerTable()
    for name, spec in workers.items():
        t.describe(
            worker=f"jobs:worker@{name}",
            node=name,
            kinds=spec.get("kinds", {"echo"}),  # type: ignore[arg-type]
            tags=spec.get("tags", set()),  # type: ignore[arg-type]
            concurrency=spec.get("concurrency", 2),  # type: ignore[arg-type]
            slots=spec.get("slots", 4),  # type: ignore[arg-type]
            outstanding=spec.get("outstanding", 0),  # type: ignore[arg-type]
            rtt=spec.get("rtt"),  # type: ignore[arg-type]
        )
    return t


def test_job_defaults_and_checks() -> None:
    job = ta.Job("echo", 1)
    assert (job.attempt, job.timeout, job.key, job.tags, job.submitter) == (
        1,
        None,
        None,
        frozenset(),
        None,
    )
    prefix, _, number = job.id.partition("-")
    assert len(prefix) == 16
    assert int(number, 16) >= 1
    assert job.id != ta.Job("echo", 1).id
    with pytest.raises(TypeError, match="not the string 'gpu'"):
        ta.Job("echo", tags="gpu")
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            ta.Job("echo", timeout=bad)


def test_kind_makes_typed_jobs() -> None:
    kind = ta.JobKind("resize", str, bytes, tags={"gpu"})
    job = kind.job("cat.png", tags={"big"}, key="cat", timeout=3)
    assert job.kind == "resize"
    assert job.payload == "cat.png"
    assert job.tags == {"gpu", "big"}
    assert job.key == "cat"
    assert job.timeout == 3
    assert job.result_type is bytes


def test_result_unwrap() -> None:
    job = ta.Job("echo", 1)
    assert ta.JobResult(job, 1, None).unwrap() == 1
    failed = ta.JobResult(job, None, ta.JobFailed("boom", "KeyError"))
    assert not failed.ok
    with pytest.raises(ta.JobFailed, match="boom"):
        failed.unwrap()


def test_candidates_count_own_jobs_for_room_and_reports_for_load() -> None:
    t = table(a={"outstanding": 3}, b={})
    a, b = t.candidates("echo")
    assert (a.in_flight, a.capacity, a.load) == (0, 4, 1.5)  # others' jobs: load, not room
    t.sent("jobs:worker@b")
    t.sent("jobs:worker@b")
    b = t.candidates("echo")[1]
    assert (b.in_flight, b.load) == (2, 1.0)
    t.finished("jobs:worker@b")
    t.finished("jobs:worker@b")
    t.finished("jobs:worker@b")  # (never below zero)
    assert t.candidates("echo")[1].in_flight == 0


def test_busy_until_the_next_report() -> None:
    t = table(a={})
    t.busy("jobs:worker@a")
    assert t.candidates("echo")[0].full
    assert not t.has_room()
    t.report("jobs:worker@a", 1)
    assert not t.candidates("echo")[0].full
    assert t.has_room()


def test_placeable() -> None:
    t = table(a={"kinds": {"echo"}, "tags": {"gpu"}}, b={"kinds": {"sleep"}})
    assert t.placeable(ta.Job("echo")) == "yes"
    assert t.placeable(ta.Job("echo", tags={"gpu"})) == "yes"
    assert t.placeable(ta.Job("sleep", tags={"gpu"})) == "tags"
    assert t.placeable(ta.Job("resize")) == "kind"
    assert [c.worker for c in t.candidates("sleep")] == ["jobs:worker@b"]


def test_remove_node() -> None:
    t = table(a={}, b={})
    assert t.remove_node("a") == ["jobs:worker@a"]
    assert t.remove_node("a") == []
    assert [w.worker for w in t.workers()] == ["jobs:worker@b"]


@given(st.lists(st.floats(min_value=0, max_value=10), min_size=1, max_size=30))
def test_rtt_is_smoothed_like_tcp(samples: list[float]) -> None:
    t = WorkerTable()
    expected: float | None = None
    for rtt in samples:
        t.describe(
            worker="w@a",
            node="a",
            kinds=(),
            tags=(),
            concurrency=1,
            slots=1,
            outstanding=0,
            rtt=rtt,
        )
        expected = rtt if expected is None else expected + RTT_GAIN * (rtt - expected)
    view = t.get("w@a")
    assert view is not None
    assert view.rtt == pytest.approx(expected)
    assert min(samples) - 1e-9 <= view.rtt <= max(samples) + 1e-9
