"""Balancing strategies: pure choices, checked with hypothesis and seeded statistics."""

from __future__ import annotations

import functools
import random
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioactors._core._balance import (
    STRATEGY_NAMES,
    BalanceStrategy,
    Candidate,
    ConsistentHash,
    LeastLoaded,
    LowestLatency,
    RandomChoice,
    RingStatistics,
    RoundRobin,
    eligible,
    strategy_by_name,
)
from trioactors._core._jobs import Job

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def cand(
    worker: str,
    *,
    load: float = 0.0,
    capacity: int = 1_000_000,
    in_flight: int = 0,
    rtt: float | None = None,
    tags: frozenset[str] = frozenset(),
) -> Candidate:
    return Candidate(
        worker=worker,
        node=worker.partition("@")[2] or "node",
        load=load,
        capacity=capacity,
        in_flight=in_flight,
        rtt=rtt,
        tags=tags,
    )


def fits(job: Job, c: Candidate) -> bool:
    """The rule, restated independently of the module."""
    return all(tag in c.tags for tag in job.tags) and c.in_flight < c.capacity


TAGS = ["gpu", "ssd"]
WORKERS = [f"w{i}@n{i % 3}" for i in range(10)]

tag_sets = st.frozensets(st.sampled_from(TAGS))
candidates = st.builds(
    Candidate,
    worker=st.sampled_from(WORKERS),
    node=st.just("n"),
    # few distinct values, so that ties are common
    load=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5]),
    capacity=st.integers(0, 3),
    in_flight=st.integers(0, 2),
    rtt=st.sampled_from([None, 0.001, 0.01, 0.1]),
    tags=tag_sets,
)
candidate_lists = st.lists(candidates, max_size=6, unique_by=lambda c: c.worker)
jobs = st.builds(
    Job,
    kind=st.sampled_from(["resize", "index"]),
    tags=tag_sets,
    key=st.text(max_size=5),
)

MAKERS: dict[str, Callable[[random.Random], BalanceStrategy]] = {
    "random": RandomChoice,
    "round-robin": lambda rng: RoundRobin(),
    "least-loaded": LeastLoaded,
    "least-loaded-all": lambda rng: LeastLoaded(rng, sample=None),
    "least-loaded-1": lambda rng: LeastLoaded(rng, sample=1),
    "least-loaded-3": lambda rng: LeastLoaded(rng, sample=3),
    "lowest-latency": LowestLatency,
    "consistent-hash": lambda rng: ConsistentHash(replicas=10),
}


def picks(strategy: BalanceStrategy, job: Job, cs: Sequence[Candidate], n: int) -> list[str]:
    out = []
    for _ in range(n):
        chosen = strategy.choose(job, cs)
        assert chosen is not None
        out.append(chosen.worker)
    return out


# -- candidates and jobs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"capacity": -1},
        {"in_flight": -1},
        {"load": -0.1},
        {"load": float("nan")},
        {"load": float("inf")},
        {"rtt": -1.0},
        {"rtt": float("nan")},
    ],
)
def test_a_candidate_rejects_nonsense(bad: dict[str, float]) -> None:
    fields: dict[str, float] = {"load": 0.0, "capacity": 1, "in_flight": 0, **bad}
    with pytest.raises(ValueError, match="must be"):
        Candidate(
            worker="w@n",
            node="n",
            load=fields["load"],
            capacity=int(fields["capacity"]),
            in_flight=int(fields["in_flight"]),
            rtt=fields.get("rtt"),
        )


def test_tags_are_sets_and_a_lone_string_is_refused() -> None:
    assert Job("resize", tags=["gpu", "gpu"]).tags == frozenset({"gpu"})
    with pytest.raises(TypeError, match="not the string 'gpu'"):
        Job("resize", tags="gpu")
    with pytest.raises(TypeError, match="set of strings"):
        cand("w@n", tags="gpu")  # type: ignore[arg-type]


def test_a_candidate_fits_when_it_offers_every_tag_and_has_room() -> None:
    job = Job("train", tags=frozenset({"gpu"}))
    assert cand("w@n", tags=frozenset({"gpu", "ssd"})).can_take(job)
    assert not cand("w@n", tags=frozenset({"ssd"})).can_take(job)
    full = cand("w@n", capacity=2, in_flight=2, tags=frozenset({"gpu"}))
    assert full.full
    assert not full.can_take(job)
    assert not cand("w@n", capacity=0).can_take(Job("any"))  # capacity 0: never takes a job


# -- every strategy ---------------------------------------------------------------------


@given(
    rounds=st.lists(st.tuples(jobs, candidate_lists), min_size=1, max_size=4), seed=st.integers()
)
def test_chooses_a_candidate_that_fits_and_none_only_when_none_does(
    rounds: list[tuple[Job, list[Candidate]]], seed: int
) -> None:
    # every strategy on the same rounds, several rounds each, so that a
    # strategy's memory (turns, ring) is used
    for name, make in MAKERS.items():
        strategy = make(random.Random(seed))
        for job, cs in rounds:
            chosen = strategy.choose(job, cs)
            fitting = [c for c in cs if fits(job, c)]
            assert eligible(job, cs) == fitting
            if fitting:
                assert chosen is not None, name
                assert any(chosen is c for c in fitting), name
            else:
                assert chosen is None, name


def test_strategies_by_name() -> None:
    assert STRATEGY_NAMES == (
        "random",
        "round-robin",
        "least-loaded",
        "lowest-latency",
        "consistent-hash",
    )
    rng = random.Random(0)
    made = {name: strategy_by_name(name, rng) for name in STRATEGY_NAMES}
    assert isinstance(made["random"], RandomChoice)
    assert isinstance(made["round-robin"], RoundRobin)
    assert isinstance(made["least-loaded"], LeastLoaded)
    assert made["least-loaded"].sample == 2
    assert isinstance(made["lowest-latency"], LowestLatency)
    assert isinstance(made["consistent-hash"], ConsistentHash)
    assert made["consistent-hash"].replicas == 100
    assert strategy_by_name("round-robin", rng) is not made["round-robin"]  # a new one each time


def test_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown balancing strategy 'fastest'") as info:
        strategy_by_name("fastest", random.Random(0))
    for name in STRATEGY_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LeastLoaded(random.Random(0), sample=0),
        lambda: ConsistentHash(replicas=0),
    ],
    ids=["sample", "replicas"],
)
def test_options_are_checked(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        make()


# -- random -----------------------------------------------------------------------------


def test_random_is_uniform() -> None:
    strategy = RandomChoice(random.Random(0))
    cs = [cand(w) for w in WORKERS]
    counts = Counter(picks(strategy, Job("resize"), cs, 10_000))
    expected = 10_000 / len(cs)
    chi2 = sum((counts[c.worker] - expected) ** 2 / expected for c in cs)
    # 27.88 is the chi-square bound for 9 degrees of freedom at p = 0.001
    assert chi2 < 27.88


def test_random_replays_with_the_same_seed() -> None:
    cs = [cand(w) for w in WORKERS]
    first = picks(RandomChoice(random.Random(7)), Job("resize"), cs, 50)
    assert picks(RandomChoice(random.Random(7)), Job("resize"), cs, 50) == first


# -- round robin ------------------------------------------------------------------------


def test_round_robin_cycles_in_address_order_whatever_the_candidate_order() -> None:
    names = ["b@n", "d@n", "a@n", "c@n"]
    strategy = RoundRobin()
    chosen = []
    for i in range(12):
        random.Random(i).shuffle(names)
        chosen.append(strategy.choose(Job("resize"), [cand(w) for w in names]))
    assert [c.worker for c in chosen if c is not None] == ["a@n", "b@n", "c@n", "d@n"] * 3


def test_round_robin_keeps_one_turn_per_kind() -> None:
    strategy = RoundRobin()
    cs = [cand(w) for w in ["a@n", "b@n", "c@n"]]
    order = [(kind, strategy.choose(Job(kind), cs)) for kind in ["x", "x", "y", "x", "y"]]
    assert [(kind, c.worker) for kind, c in order if c is not None] == [
        ("x", "a@n"),
        ("x", "b@n"),
        ("y", "a@n"),
        ("x", "c@n"),
        ("y", "b@n"),
    ]


def test_round_robin_carries_on_as_workers_come_and_go() -> None:
    strategy = RoundRobin()
    job = Job("resize")

    def choose(*names: str) -> str:
        chosen = strategy.choose(job, [cand(w) for w in names])
        assert chosen is not None
        return chosen.worker

    assert choose("a", "b", "c", "d") == "a"
    assert choose("a", "b", "c", "d") == "b"
    # c (next in turn) leaves and bb joins: bb's turn comes before c's place
    assert choose("a", "b", "bb", "d") == "bb"
    # b (the last chosen) leaves too: the turn still continues after it
    assert choose("a", "bb", "d") == "d"
    assert choose("a", "bb", "d") == "a"
    # c comes back and takes its turn in address order
    assert [choose("a", "bb", "c", "d") for _ in range(4)] == ["bb", "c", "d", "a"]


def test_round_robin_passes_over_a_full_worker() -> None:
    strategy = RoundRobin()
    job = Job("resize")
    cs = [cand("a"), cand("b", capacity=1, in_flight=1), cand("c")]
    assert picks(strategy, job, cs, 4) == ["a", "c", "a", "c"]
    cs[1] = cand("b", capacity=1, in_flight=0)  # b has room again: no turn is owed to it
    assert picks(strategy, job, cs, 3) == ["a", "b", "c"]


@given(cs=candidate_lists, job=jobs, seed=st.integers())
def test_round_robin_is_fair_over_a_stable_set(cs: list[Candidate], job: Job, seed: int) -> None:
    fitting = sorted(c.worker for c in cs if fits(job, c))
    strategy = RoundRobin()
    shuffler = random.Random(seed)
    chosen = []
    for _ in range(3 * len(fitting) + 1):
        shuffler.shuffle(cs)  # the order of the candidates does not matter
        c = strategy.choose(job, cs)
        chosen.append(None if c is None else c.worker)
    if not fitting:
        assert set(chosen) == {None}
        return
    # each window of len(fitting) consecutive picks holds every fitting worker once
    k = len(fitting)
    for start in range(len(chosen) - k + 1):
        assert sorted(chosen[start : start + k]) == fitting  # type: ignore[type-var]
    assert chosen[:k] == fitting  # in address order, starting from the first


@given(
    rounds=st.lists(
        st.dictionaries(st.sampled_from(WORKERS), st.booleans(), max_size=5), max_size=6
    )
)
def test_round_robin_never_repeats_while_another_worker_fits(
    rounds: list[dict[str, bool]],
) -> None:
    # workers come and go between rounds, and have room (True) or not
    strategy = RoundRobin()
    job = Job("resize")
    last = None
    for room in rounds:
        cs = [cand(w, capacity=1, in_flight=int(not ok)) for w, ok in room.items()]
        chosen = strategy.choose(job, cs)
        others = [c for c in cs if fits(job, c) and c.worker != last]
        if chosen is not None:
            if others:
                assert chosen.worker != last
            last = chosen.worker


# -- least loaded -----------------------------------------------------------------------


@given(cs=candidate_lists, job=jobs, seed=st.integers())
def test_least_loaded_and_lowest_latency_choose_by_their_measure(
    cs: list[Candidate], job: Job, seed: int
) -> None:
    fitting = [c for c in cs if fits(job, c)]
    for sample in [None, 1, 2, 3]:
        chosen = LeastLoaded(random.Random(seed), sample=sample).choose(job, cs)
        if chosen is None:
            assert not fitting
            continue
        # the chosen one is at most as loaded as (sample - 1) others that fit
        # (all of them if there are fewer): with sample=None it is a minimum,
        # and with sample=2 and two or more fitting it is never the only most loaded
        at_least_as_loaded = [c for c in fitting if c.load >= chosen.load]
        assert len(at_least_as_loaded) >= min(sample or len(fitting), len(fitting))
        if sample is None:
            assert chosen.load == min(c.load for c in fitting)

    chosen = LowestLatency(random.Random(seed)).choose(job, cs)
    if chosen is None:
        assert not fitting
        return
    # the smallest round trip; an unknown one only if none is known
    known = [c.rtt for c in fitting if c.rtt is not None]
    if known:
        assert chosen.rtt == min(known)
    else:
        assert chosen.rtt is None


def test_least_loaded_breaks_ties_at_random() -> None:
    strategy = LeastLoaded(random.Random(0), sample=None)
    cs = [cand("a", load=0.5), cand("b", load=0.2), cand("c", load=0.2), cand("d", load=0.2)]
    counts = Counter(picks(strategy, Job("resize"), cs, 3000))
    assert counts["a"] == 0
    assert all(800 <= counts[w] <= 1200 for w in "bcd")  # 1000 each expected


def _busiest_after(sample: int, seed: int) -> int:
    """Place 1000 jobs on 100 workers, loads kept exact; the most jobs on one worker."""
    strategy = LeastLoaded(random.Random(seed), sample=sample)
    cs = [cand(f"w{i:02}", capacity=100) for i in range(100)]
    index = {c.worker: i for i, c in enumerate(cs)}
    for _ in range(1000):
        chosen = strategy.choose(Job("resize"), cs)
        assert chosen is not None
        n = chosen.in_flight + 1
        cs[index[chosen.worker]] = cand(chosen.worker, in_flight=n, load=n / 100, capacity=100)
    return max(c.in_flight for c in cs)


def test_two_choices_keep_the_busiest_worker_close_to_the_mean() -> None:
    # mean 10 per worker; theory: two choices ~ 10 + ln ln 100 / ln 2 = 12.2,
    # a single random choice ~ 10 + sqrt(2 * 10 * ln 100) = 19.6
    two, one = _busiest_after(2, seed=0), _busiest_after(1, seed=0)
    assert two <= 13
    assert two < one


def test_two_choices_avoid_the_herd_on_stale_loads() -> None:
    # Loads reported once and not updated between jobs (as between two reports):
    # the global minimum sends every job to the same worker, two choices spread
    # them, the least loaded worker taking 2/n of the jobs.
    cs = [cand(f"w{i}", load=i / 10) for i in range(10)]
    everyone = Counter(picks(LeastLoaded(random.Random(0), sample=None), Job("x"), cs, 1000))
    assert everyone == {"w0": 1000}
    two = Counter(picks(LeastLoaded(random.Random(0)), Job("x"), cs, 1000))
    assert max(two.values()) <= 250  # 200 expected
    assert "w9" not in two  # the most loaded never wins a comparison


# -- lowest latency ---------------------------------------------------------------------


def test_lowest_latency_breaks_ties_at_random_and_spills_when_full() -> None:
    strategy = LowestLatency(random.Random(0))
    cs = [cand("far", rtt=0.05), cand("near-a", rtt=0.001), cand("near-b", rtt=0.001)]
    counts = Counter(picks(strategy, Job("x"), [*cs, cand("unknown")], 2000))
    assert counts.keys() == {"near-a", "near-b"}
    assert min(counts.values()) >= 800
    cs[1] = cand("near-a", rtt=0.001, capacity=1, in_flight=1)
    cs[2] = cand("near-b", rtt=0.001, capacity=0)
    assert picks(strategy, Job("x"), [cand("unknown"), *cs], 3) == ["far"] * 3
    assert picks(strategy, Job("x"), [cand("unknown")], 1) == ["unknown"]


# -- consistent hashing -----------------------------------------------------------------


def _owners(strategy: ConsistentHash, workers: Sequence[str], keys: Sequence[str]) -> list[str]:
    cs = [cand(w) for w in workers]
    return [c.worker for k in keys if (c := strategy.choose(Job("x", key=k), cs)) is not None]


KEYS = [f"key-{i}" for i in range(10_000)]
TEN = [f"worker-{i}@node-{i % 3}" for i in range(10)]


@functools.cache
def _ten_owners() -> tuple[str, ...]:
    """The owners of KEYS with the TEN workers (computed once: the ring is stable)."""
    return tuple(_owners(ConsistentHash(), TEN, KEYS))


def test_the_ring_is_stable_across_processes_and_versions() -> None:
    # blake2b, not hash(): these owners must never change, or every key moves
    keys = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    assert _owners(ConsistentHash(), ["a@n", "b@n", "c@n"], keys) == [
        "a@n",
        "a@n",
        "a@n",
        "c@n",
        "c@n",
        "b@n",
    ]


@given(
    workers=st.lists(st.sampled_from(WORKERS), min_size=1, unique=True),
    key=st.text(max_size=8),
    seed=st.integers(),
)
def test_the_same_key_goes_to_the_same_worker(workers: list[str], key: str, seed: int) -> None:
    strategy = ConsistentHash(replicas=10)
    first = strategy.choose(Job("x", key=key), [cand(w) for w in workers])
    assert first is not None
    # in any order, with any loads, for any kind, from the same strategy or a new one
    rng = random.Random(seed)
    rng.shuffle(workers)
    again = [cand(w, load=rng.uniform(0, 2), capacity=4, in_flight=3) for w in workers]
    for s in (strategy, ConsistentHash(replicas=10)):
        chosen = s.choose(Job("other-kind", key=key), again)
        assert chosen is not None
        assert chosen.worker == first.worker


def test_a_job_without_a_key_is_refused_or_goes_to_the_fallback() -> None:
    with pytest.raises(ValueError, match="needs a key, and this 'resize' job has none"):
        ConsistentHash().choose(Job("resize"), [cand("a@n")])
    # refused even when nothing fits: a misuse, not a lack of workers
    with pytest.raises(ValueError, match="fallback"):
        ConsistentHash().choose(Job("resize"), [])
    strategy = ConsistentHash(fallback=RoundRobin())
    cs = [cand("a@n"), cand("b@n")]
    assert picks(strategy, Job("resize"), cs, 3) == ["a@n", "b@n", "a@n"]


def test_keys_spread_evenly_over_the_workers() -> None:
    counts = Counter(_ten_owners())
    # With 100 virtual nodes a worker's share of the ring varies by about
    # 1/sqrt(100) = 10% (one standard deviation): every worker within 25% of the mean.
    assert counts.keys() == set(TEN)
    assert all(750 <= n <= 1250 for n in counts.values()), counts


def test_adding_a_worker_moves_about_one_in_n_plus_one_keys_all_to_it() -> None:
    strategy = ConsistentHash()
    before = _ten_owners()
    after = _owners(strategy, [*TEN, "worker-10@node-1"], KEYS)
    moved = [b for a, b in zip(before, after, strict=True) if a != b]
    assert set(moved) == {"worker-10@node-1"}
    # 1/11 of 10,000 keys is 909; allow the new worker's share to be 50% off
    assert 0.5 * 10_000 / 11 <= len(moved) <= 1.5 * 10_000 / 11


def test_removing_a_worker_moves_only_its_keys() -> None:
    strategy = ConsistentHash()
    before = _ten_owners()
    gone = TEN[3]
    after = _owners(strategy, [w for w in TEN if w != gone], KEYS)
    for a, b in zip(before, after, strict=True):
        assert a in (b, gone)
        assert b != gone
    assert before.count(gone) > 0


@given(
    workers=st.lists(st.sampled_from(WORKERS), min_size=2, unique=True),
    keys=st.lists(st.text(max_size=4), min_size=1, max_size=10),
    data=st.data(),
)
def test_membership_changes_move_only_the_keys_they_must(
    workers: list[str], keys: list[str], data: st.DataObject
) -> None:
    strategy = ConsistentHash(replicas=10)
    before = _owners(strategy, workers, keys)
    gone = data.draw(st.sampled_from(workers))
    fewer = [w for w in workers if w != gone]
    after = _owners(strategy, fewer, keys)
    assert all(a == b for a, b in zip(before, after, strict=True) if a != gone)
    # adding it back restores every key (the ring depends only on the set)
    assert _owners(strategy, [*fewer, gone], keys) == before


def test_a_full_worker_sheds_its_keys_clockwise_only_while_full() -> None:
    strategy = ConsistentHash()
    keys = KEYS[:2000]
    before = _owners(strategy, TEN, keys)
    busy = TEN[5]
    cs = [cand(w, capacity=1, in_flight=int(w == busy)) for w in TEN]
    during = [c.worker for k in keys if (c := strategy.choose(Job("x", key=k), cs)) is not None]
    assert len(during) == len(keys)
    for a, b in zip(before, during, strict=True):
        assert a in (b, busy)
        assert b != busy
    assert strategy.statistics().rebuilds == 1  # fullness never touches the ring
    assert _owners(strategy, TEN, keys) == before


def test_a_job_goes_to_the_first_worker_clockwise_that_offers_its_tags() -> None:
    strategy = ConsistentHash()
    cs = [cand(w, tags=frozenset({"gpu"}) if w in TEN[:2] else frozenset()) for w in TEN]
    counts = Counter(
        c.worker
        for k in KEYS[:1000]
        if (c := strategy.choose(Job("x", tags=frozenset({"gpu"}), key=k), cs)) is not None
    )
    assert counts.keys() == set(TEN[:2])
    assert sum(counts.values()) == 1000


NAMES = [f"w{i:02}@n" for i in range(30)]


@given(
    start=st.frozensets(st.sampled_from(NAMES), min_size=1),
    toggles=st.lists(st.frozensets(st.sampled_from(NAMES), max_size=24), max_size=4),
)
def test_the_cached_ring_always_matches_a_fresh_one(
    start: frozenset[str], toggles: list[frozenset[str]]
) -> None:
    # each step toggles some workers (they leave if present, join if not):
    # up to 16 changes are applied point by point, more by a rebuild; either
    # way the ring is the one a new strategy builds
    strategy = ConsistentHash(replicas=5)
    workers = start
    for toggle in [frozenset[str](), *toggles]:
        workers ^= toggle
        if not workers:
            continue
        cs = [cand(w) for w in sorted(workers)]
        fresh = ConsistentHash(replicas=5)
        for s in (strategy, fresh):
            s.choose(Job("x", key="k"), cs)
        # the ring itself: comparing the owners of some keys could miss a misplaced point
        assert strategy._points == fresh._points
        assert strategy._owners == fresh._owners
        stats = strategy.statistics()
        assert (stats.workers, stats.points) == (len(workers), 5 * len(workers))


def test_the_ring_is_cached_and_updated_incrementally() -> None:
    strategy = ConsistentHash(replicas=10)
    workers = [f"w{i:04}@n{i % 7}" for i in range(1000)]
    job = Job("x", key="k")
    strategy.choose(job, [cand(w) for w in workers])
    assert strategy.statistics() == RingStatistics(
        workers=1000, points=10_000, hashed=10_000, rebuilds=1, updates=0
    )
    # the same set, in another order and with other loads: nothing is hashed
    strategy.choose(job, [cand(w, load=0.5) for w in reversed(workers)])
    assert strategy.statistics().hashed == 10_000
    # one leaves and one joins: only the newcomer is hashed, point by point
    workers = [*workers[1:], "new@n"]
    strategy.choose(job, [cand(w) for w in workers])
    assert strategy.statistics() == RingStatistics(
        workers=1000, points=10_000, hashed=10_010, rebuilds=1, updates=1
    )
    # a hundred join at once: hashed once each, then one sort
    more = [*workers, *(f"more{i}@n" for i in range(100))]
    strategy.choose(job, [cand(w) for w in more])
    assert strategy.statistics() == RingStatistics(
        workers=1100, points=11_000, hashed=11_010, rebuilds=2, updates=1
    )
