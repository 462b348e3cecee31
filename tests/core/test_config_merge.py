"""The configuration replica: entries form a join-semilattice; Lamport versions; tombstones."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioactors._core._config import (
    BUCKETS,
    MAX_KEY_LENGTH,
    ConfigChange,
    ConfigEntry,
    ConfigError,
    ConfigState,
    bucket_of,
    check_value,
)
from trioactors._errors import TrioactorsError

if TYPE_CHECKING:
    import random

KEYS = ["a", "b", "c", "d"]
NODES = ["n0", "n1", "n2"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False, width=16)
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def config_entries(draw: st.DrawFn) -> ConfigEntry:
    deleted = draw(st.booleans())
    return ConfigEntry(
        key=draw(st.sampled_from(KEYS)),
        value=None if deleted else draw(json_values),
        # (few versions and nodes: the same (version, node) with different
        # values, as after a restart, comes up often)
        version=draw(st.integers(1, 4)),
        node=draw(st.sampled_from(NODES)),
        deleted=deleted,
    )


batches = st.lists(config_entries(), max_size=12)


def replica(*batches: list[ConfigEntry]) -> ConfigState:
    state = ConfigState()
    for batch in batches:
        state.merge(batch)
    return state


def join(x: ConfigState, y: ConfigState) -> ConfigState:
    return replica(x.entries(), y.entries())


def same(x: ConfigState, y: ConfigState) -> bool:
    return (
        x.entries() == y.entries()
        and x.summary() == y.summary()
        and x.snapshot() == y.snapshot()
        and x.clock == y.clock
    )


def exchange(a: ConfigState, b: ConfigState) -> None:
    """One push-pull exchange started by ``a``, as the service runs it."""
    buckets = b.differing(a.summary())
    theirs = b.digest(buckets)
    to_b = a.entries_newer_than(theirs, buckets=buckets)
    wanted = a.wanted(theirs)
    b.merge(to_b)
    found = [b.entry(k) for k in wanted]
    a.merge([e for e in found if e is not None])


# -- the semilattice laws -------------------------------------------------------------------


@given(batches)
def test_merge_is_idempotent(entries: list[ConfigEntry]) -> None:
    state = replica(entries)
    before = state.entries()
    assert state.merge(entries) == []
    assert state.merge(state.entries()) == []
    assert state.entries() == before


@given(batches, batches)
def test_merge_is_commutative(a: list[ConfigEntry], b: list[ConfigEntry]) -> None:
    assert same(replica(a, b), replica(b, a))
    x, y = replica(a), replica(b)
    assert same(join(x, y), join(y, x))


@given(batches, batches, batches)
def test_merge_is_associative(
    a: list[ConfigEntry], b: list[ConfigEntry], c: list[ConfigEntry]
) -> None:
    x, y, z = replica(a), replica(b), replica(c)
    assert same(join(join(x, y), z), join(x, join(y, z)))


@given(batches, st.randoms(use_true_random=False))
def test_replicas_that_saw_the_same_entries_agree(
    entries: list[ConfigEntry], rng: random.Random
) -> None:
    # each replica hears them in its own order, some twice, some in batches
    replicas = []
    for _ in range(3):
        heard = entries + rng.sample(entries, len(entries) // 2)
        rng.shuffle(heard)
        state = ConfigState()
        while heard:
            size = rng.randint(1, 4)
            state.merge(heard[:size])
            heard = heard[size:]
        replicas.append(state)
    for other in replicas[1:]:
        assert same(replicas[0], other)


@given(batches, batches)
def test_merge_never_loses_a_greater_entry(a: list[ConfigEntry], b: list[ConfigEntry]) -> None:
    merged = replica(a, b)
    for entry in a + b:
        winner = merged.entry(entry.key)
        assert winner is not None
        assert not entry.supersedes(winner)
        assert winner in a + b


@given(batches)
def test_the_winner_is_the_greatest_stamp(entries: list[ConfigEntry]) -> None:
    state = replica(entries)
    for key in KEYS:
        mine = [e for e in entries if e.key == key]
        if mine:
            assert state.entry(key) == max(mine, key=lambda e: e.stamp)
        else:
            assert state.entry(key) is None
    assert state.clock == max((e.version for e in entries), default=0)
    assert state.snapshot() == {
        k: e.value for k in sorted(KEYS) if (e := state.entry(k)) is not None and not e.deleted
    }


# -- local writes: a Lamport clock -------------------------------------------------------------


@given(batches, st.sampled_from(KEYS), json_values)
def test_a_local_write_beats_everything_seen(
    entries: list[ConfigEntry], key: str, value: object
) -> None:
    state = replica(entries)
    written = state.set(key, value, node="n0")
    assert written.version == max((e.version for e in entries), default=0) + 1
    assert state.clock == written.version
    assert all(written.supersedes(e) for e in entries if e.key == key)
    assert state.get(key) == value
    other = state.set("other", 1, node="n1")
    assert other.version == written.version + 1  # (one clock for every key)


@given(batches, st.sampled_from(KEYS), batches)
def test_a_deleted_key_stays_deleted_against_older_writes(
    seen: list[ConfigEntry], key: str, stale: list[ConfigEntry]
) -> None:
    state = replica(seen)
    tombstone = state.delete(key, node="n1")
    assert tombstone.deleted
    assert key not in state
    # copies of writes made before the delete (versions up to what it had
    # seen) arrive later, in any order: the key stays deleted
    older = [e for e in seen + stale if e.version < tombstone.version]
    assert all(c.key != key for c in state.merge(older))
    assert state.entry(key) == tombstone
    assert key not in state.snapshot()
    assert state.tombstones >= 1


def test_a_write_after_a_delete_brings_the_key_back() -> None:
    state = ConfigState()
    state.set("a", 1, node="n0")
    state.delete("a", node="n0")
    assert state.snapshot() == {}
    assert (len(state), state.tombstones) == (0, 1)
    state.set("a", 2, node="n1")
    assert state.snapshot() == {"a": 2}
    assert (len(state), state.tombstones) == (1, 0)


def test_concurrent_writes_are_resolved_by_version_then_node() -> None:
    left, right = ConfigState(), ConfigState()
    a = left.set("k", "left", node="n0")
    b = right.set("k", "right", node="n1")
    assert (a.version, b.version) == (1, 1)  # neither saw the other
    left.merge([b])
    right.merge([a])
    assert left.get("k") == right.get("k") == "right"  # ("n1" > "n0")
    c = left.set("k", "later", node="n0")  # saw both: wins whatever its node
    right.merge([c])
    assert right.get("k") == "later"


def test_one_node_writing_twice_at_one_version_still_converges() -> None:
    # a node that restarted with an empty replica reuses (version, node)
    one = ConfigEntry("k", 1, 1, "n0")
    other = ConfigEntry("k", True, 1, "n0")  # (equal to 1 in Python, not on the wire)
    assert one != other
    assert one.supersedes(other) != other.supersedes(one)
    assert replica([one, other]).entries() == replica([other, one]).entries()


def test_the_set_value_is_a_copy() -> None:
    state = ConfigState()
    value = {"hosts": ["a", "b"]}
    state.set("k", value, node="n0")
    value["hosts"].append("c")
    assert state.get("k") == {"hosts": ["a", "b"]}


# -- what merge reports -------------------------------------------------------------------------


def test_merge_reports_each_key_once_from_first_to_last() -> None:
    state = ConfigState()
    first = state.set("a", 1, node="n0")
    newer = [
        ConfigEntry("a", 2, 5, "n1"),
        ConfigEntry("b", 1, 2, "n1"),
        ConfigEntry("a", 3, 7, "n2"),
    ]
    changes = state.merge(newer)
    assert changes == [
        ConfigChange("a", first, newer[2]),
        ConfigChange("b", None, newer[1]),
    ]
    assert state.merge([ConfigEntry("a", 9, 6, "n1")]) == []  # loses: nothing to report
    assert state.clock == 7


@pytest.mark.parametrize(
    ("before", "after", "visible"),
    [
        (None, ConfigEntry("k", 1, 1, "n"), True),
        (None, ConfigEntry("k", None, 1, "n", deleted=True), False),
        (ConfigEntry("k", 1, 1, "n"), ConfigEntry("k", 1, 2, "m"), False),
        (ConfigEntry("k", 1, 1, "n"), ConfigEntry("k", 2, 2, "n"), True),
        (ConfigEntry("k", 1, 1, "n"), ConfigEntry("k", None, 2, "n", deleted=True), True),
        (ConfigEntry("k", None, 1, "n", deleted=True), ConfigEntry("k", None, 2, "n"), True),
        (ConfigEntry("k", None, 1, "n", deleted=True), ConfigEntry("k", None, 2, "n", True), False),
    ],
)
def test_visible_changes(before: ConfigEntry | None, after: ConfigEntry, visible: bool) -> None:
    assert ConfigChange("k", before, after).visible is visible


# -- anti-entropy --------------------------------------------------------------------------------


@given(batches, batches)
def test_one_exchange_makes_two_replicas_equal(a: list[ConfigEntry], b: list[ConfigEntry]) -> None:
    x, y = replica(a), replica(b)
    exchange(x, y)
    assert x.entries() == y.entries()
    assert x.summary() == y.summary()
    assert x.differing(y.summary()) == []
    assert same(x, join(replica(a), replica(b)))


@given(batches, batches)
def test_summaries_tell_equal_replicas_from_different_ones(
    a: list[ConfigEntry], b: list[ConfigEntry]
) -> None:
    x, y = replica(a), replica(b)
    differing = x.differing(y.summary())
    assert (differing == []) == (x.entries() == y.entries())
    for entry in x.entries():
        if y.entry(entry.key) != entry:
            assert bucket_of(entry.key) in differing
    assert replica(list(reversed(a))).summary() == x.summary()


@given(batches, batches)
def test_digests_say_who_lacks_what(a: list[ConfigEntry], b: list[ConfigEntry]) -> None:
    x, y = replica(a), replica(b)
    newer = x.entries_newer_than(y.digest())
    for entry in x.entries():
        theirs = y.entry(entry.key)
        assert (entry in newer) == (theirs is None or entry.supersedes(theirs))
    assert x.wanted(y.digest()) == sorted(e.key for e in y.entries_newer_than(x.digest()))


def test_a_summary_of_the_wrong_length_differs_where_it_is_short() -> None:
    state = ConfigState()
    assert state.differing(state.summary()) == []
    assert state.differing([]) == list(range(BUCKETS))
    assert len(state.summary()) == BUCKETS


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1: "a"},
        {"a": {2, 3}},
        b"bytes",
        float("nan"),
        [float("inf")],
        2**64,
        object(),
    ],
)
def test_values_that_are_not_plain_json_are_refused(value: object) -> None:
    state = ConfigState()
    with pytest.raises(ConfigError):
        state.set("k", value, node="n0")
    with pytest.raises(ConfigError):
        ConfigEntry("k", value, 1, "n0")
    assert state.entries() == []
    assert state.clock == 0


def test_deeply_nested_and_self_containing_values_are_refused() -> None:
    deep: list[object] = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ConfigError, match="deeper"):
        check_value(deep)
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ConfigError, match="deeper"):
        check_value(loop)


@pytest.mark.parametrize("key", ["", "x" * (MAX_KEY_LENGTH + 1), 3, None])
def test_bad_keys_are_refused(key: object) -> None:
    state = ConfigState()
    with pytest.raises(ConfigError, match="key"):
        state.set(key, 1, node="n0")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="key"):
        state.delete(key, node="n0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"key": "k", "value": 1, "version": 0, "node": "n"},
        {"key": "k", "value": 1, "version": True, "node": "n"},
        {"key": "k", "value": 1, "version": 2**63, "node": "n"},
        {"key": "k", "value": 1, "version": 1, "node": ""},
        {"key": "k", "value": 1, "version": 1, "node": "n", "deleted": 1},
        {"key": "k", "value": 1, "version": 1, "node": "n", "deleted": True},
    ],
)
def test_malformed_entries_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ConfigEntry(**fields)  # type: ignore[arg-type]


def test_oversize_values_are_refused() -> None:
    state = ConfigState(max_value_size=100)
    state.set("k", "x" * 98, node="n0")  # 100 bytes with its quotes
    with pytest.raises(ConfigError, match="limit is 100"):
        state.set("k", "x" * 99, node="n0")
    big = ConfigEntry("k", "é" * 60, 5, "n1")  # 122 bytes of UTF-8
    assert big.size == len(json.dumps("é" * 60, ensure_ascii=False).encode())
    with pytest.raises(ConfigError):
        state.check(big)
    with pytest.raises(ValueError, match="max_value_size"):
        ConfigState(max_value_size=0)


def test_config_error_is_a_value_error_and_ours() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, TrioactorsError)


# -- a state machine: replicas write, gossip and exchange in any order ---------------------------


class Replicas(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.replicas = [ConfigState() for _ in NODES]
        self.written: list[ConfigEntry] = []
        self.seen: list[dict[str, ConfigEntry]] = [{} for _ in NODES]

    @rule(i=st.integers(0, 2), key=st.sampled_from(KEYS), value=json_values)
    def write(self, i: int, key: str, value: object) -> None:
        entry = self.replicas[i].set(key, value, node=NODES[i])
        self.written.append(entry)

    @rule(i=st.integers(0, 2), key=st.sampled_from(KEYS))
    def delete(self, i: int, key: str) -> None:
        self.written.append(self.replicas[i].delete(key, node=NODES[i]))

    @precondition(lambda self: self.written)
    @rule(j=st.integers(0, 2), data=st.data())
    def gossip(self, j: int, data: st.DataObject) -> None:
        # some entry, old or new, reaches a replica (late, duplicated, out of order)
        self.replicas[j].merge([data.draw(st.sampled_from(self.written))])

    @rule(i=st.integers(0, 2), j=st.integers(0, 2))
    def sync(self, i: int, j: int) -> None:
        exchange(self.replicas[i], self.replicas[j])
        if i != j:
            assert self.replicas[i].entries() == self.replicas[j].entries()

    @invariant()
    def entries_never_get_smaller(self) -> None:
        for state, seen in zip(self.replicas, self.seen, strict=True):
            for entry in state.entries():
                previous = seen.get(entry.key)
                assert previous is None or not previous.supersedes(entry)
                seen[entry.key] = entry

    @invariant()
    def the_clock_covers_every_version(self) -> None:
        for state in self.replicas:
            assert all(e.version <= state.clock for e in state.entries())

    @invariant()
    def every_winner_was_written(self) -> None:
        for state in self.replicas:
            assert all(e in self.written for e in state.entries())

    def teardown(self) -> None:
        # a round of exchanges: everyone has the greatest entry of every key
        for i in range(3):
            for j in range(3):
                exchange(self.replicas[i], self.replicas[j])
        expected = replica(self.written)
        for state in self.replicas:
            assert state.entries() == expected.entries()
            assert state.snapshot() == expected.snapshot()


TestReplicas = Replicas.TestCase
TestReplicas.settings = settings(max_examples=50, stateful_step_count=30)
