"""The linearizability checker: hand-made histories, generated ones, and a brute-force reference."""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trioactors import LocalProtocolError
from trioactors.testing import (
    CompareAndSet,
    Delete,
    Get,
    History,
    KVModel,
    LinearizabilityResult,
    Model,
    Operation,
    Put,
    check_linearizable,
)

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

KVOp = Put | Get | Delete | CompareAndSet
KVOperation = Operation[KVOp, object]


def op(
    client: str | int, call: float, ret: float | None, input: KVOp, output: object = None
) -> KVOperation:
    return Operation(client, call, ret, input, output)


def check(ops: Sequence[KVOperation], **kwargs: float) -> LinearizabilityResult[KVOp, object]:
    result = check_linearizable(ops, KVModel(), **kwargs)
    if result.ok:
        assert_valid_linearization(ops, result.linearization)
    return result


def apply(store: dict[Hashable, Hashable], input: KVOp) -> object:
    """Run one operation on a real dict; return its output."""
    match input:
        case Put(key, value):
            store[key] = value
            return None
        case Get(key):
            return store.get(key)
        case Delete(key):
            store.pop(key, None)
            return None
        case CompareAndSet(key, expected, new):
            done = store.get(key) == expected
            if done:
                store[key] = new
            return done
    raise AssertionError(input)


def agrees(input: KVOp, output: object, recorded: object) -> bool:
    """Whether a recorded output is right (the outputs of Put and Delete are ignored)."""
    return isinstance(input, Put | Delete) or output == recorded


def normalize(store: dict[Hashable, Hashable]) -> None:
    for key in [k for k, v in store.items() if v is None]:
        del store[key]  # (None is an absent key)


def assert_valid_linearization(
    ops: Sequence[KVOperation], orders: tuple[tuple[KVOperation, ...], ...]
) -> None:
    """A certificate check: each order respects real time and replays on a dict."""
    placed = [o for order in orders for o in order]
    assert len({id(o) for o in placed}) == len(placed)
    assert (
        {id(o) for o in ops if o.ret is not None} <= {id(o) for o in placed} <= {id(o) for o in ops}
    )
    for order in orders:
        assert len({o.op.key for o in order}) <= 1
        store: dict[Hashable, Hashable] = {}
        # nothing placed later returned before this one was called
        earliest_later_return = math.inf
        for o in reversed(order):
            assert earliest_later_return >= o.call, o
            earliest_later_return = min(earliest_later_return, math.inf if o.ret is None else o.ret)
        for o in order:
            output = apply(store, o.op)
            normalize(store)
            if o.ret is not None:
                assert agrees(o.op, output, o.output), (o, output)


# -- hand-made histories ----------------------------------------------------------------


def test_sequential_history_is_linearizable() -> None:
    ops = [
        op(1, 0, 1, Put("x", 1)),
        op(2, 2, 3, Get("x"), 1),
        op(1, 4, 5, Delete("x")),
        op(2, 6, 7, Get("x"), None),
        op(1, 8, 9, CompareAndSet("x", None, 2), True),
        op(2, 10, 11, CompareAndSet("x", 1, 3), False),
        op(1, 12, 13, Get("x"), 2),
    ]
    result = check(ops)
    assert result.ok is True
    assert bool(result)
    assert result.linearization == (tuple(ops),)
    assert str(result) == "linearizable: 7 operations, checked in 1 independent part"


def test_empty_history_is_linearizable() -> None:
    assert check([]).ok is True


def test_concurrent_history_is_linearizable() -> None:
    # the write takes effect somewhere between the two reads of client 2
    ops = [
        op(1, 0, 10, Put("x", 1)),
        op(2, 1, 2, Get("x"), None),
        op(2, 3, 4, Get("x"), 1),
        op(3, 1, 5, Get("x"), None),  # overlaps the write, may read before it
        op(3, 6, 7, Get("x"), 1),
    ]
    result = check(ops)
    assert result.ok is True
    [order] = result.linearization
    assert order.index(ops[0]) in (2, 3)


def test_equal_times_count_as_overlapping() -> None:
    # the read is called exactly when the write returns: either order is allowed
    assert check([op(1, 0, 1, Put("x", 1)), op(2, 1, 2, Get("x"), None)]).ok is True
    assert check([op(1, 0, 1, Put("x", 1)), op(2, 1.5, 2, Get("x"), None)]).ok is False


def test_stale_read_after_a_completed_write() -> None:
    ops = [
        op(1, 0, 1, Put("x", 1)),
        op(1, 2, 3, Put("x", 2)),
        op(2, 4, 5, Get("x"), 1),
    ]
    result = check(ops)
    assert result.ok is False
    assert not result
    assert result.partition == "key 'x'"
    assert result.prefix == (ops[0], ops[1])
    assert result.unplaced == (ops[2],)
    text = str(result)
    assert text.startswith("not linearizable: key 'x' (3 operations)")
    assert "after it, the state is 2\n" in text
    assert "Get(key='x') -> 1" in text
    assert "the model rejects it in this state" in text


def test_read_of_a_value_never_written() -> None:
    ops = [op(1, 0, 1, Put("x", 1)), op(2, 0, 2, Get("x"), 7)]
    result = check(ops)
    assert result.ok is False
    assert ops[1] in result.unplaced


def test_reads_observing_writes_in_opposite_orders() -> None:
    ops = [
        op("w1", 0, 10, Put("x", 1)),
        op("w2", 0, 10, Put("x", 2)),
        op("r1", 1, 2, Get("x"), 1),
        op("r1", 3, 4, Get("x"), 2),
        op("r2", 1, 2, Get("x"), 2),
        op("r2", 3, 4, Get("x"), 1),
    ]
    result = check(ops)
    assert result.ok is False
    # one reader alone is fine
    assert check(ops[:4]).ok is True


def test_two_compare_and_sets_cannot_both_win() -> None:
    race = [
        op(1, 0, 2, CompareAndSet("x", None, 1), True),
        op(2, 0, 2, CompareAndSet("x", None, 2), True),
    ]
    assert check(race).ok is False
    fair = [
        op(1, 0, 2, CompareAndSet("x", None, 1), True),
        op(2, 0, 2, CompareAndSet("x", None, 2), False),
        op(3, 3, 4, Get("x"), 1),
    ]
    assert check(fair).ok is True
    assert check([*fair[:2], op(3, 3, 4, Get("x"), 2)]).ok is False


@pytest.mark.parametrize(
    "ops",
    [
        # succeeds although the value was never the expected one
        [op(1, 0, 1, Put("x", 1)), op(2, 2, 3, CompareAndSet("x", 5, 6), True)],
        # fails although the value was the expected one
        [op(1, 0, 1, Put("x", 1)), op(2, 2, 3, CompareAndSet("x", 1, 2), False)],
        # succeeds, then a later read misses its write
        [
            op(1, 0, 1, Put("x", 1)),
            op(2, 2, 3, CompareAndSet("x", 1, 2), True),
            op(1, 4, 5, Get("x"), 1),
        ],
    ],
    ids=["wins-on-a-wrong-value", "loses-on-the-right-value", "lost-write"],
)
def test_compare_and_set_anomalies(ops: list[KVOperation]) -> None:
    assert check(ops).ok is False


def test_a_pending_write_that_must_have_happened() -> None:
    ops = [op(1, 0, None, Put("x", 1)), op(2, 5, 6, Get("x"), 1)]
    result = check(ops)
    assert result.ok is True
    assert result.linearization == ((ops[0], ops[1]),)
    # ... and, once it happened, it cannot be undone
    assert check([*ops, op(2, 7, 8, Get("x"), None)]).ok is False


def test_a_pending_write_that_must_not_have_happened() -> None:
    ops = [op(1, 0, None, Put("x", 1)), op(2, 5, 6, Get("x"), None)]
    result = check(ops)
    assert result.ok is True
    assert result.linearization == ((ops[1],),)
    assert str(result).endswith("; 1 that never returned took no effect")


def test_a_pending_write_cannot_take_effect_before_its_call() -> None:
    ops = [op(2, 0, 1, Get("x"), 1), op(1, 2, None, Put("x", 1))]
    assert check(ops).ok is False


def test_a_pending_compare_and_set_and_delete() -> None:
    ops = [
        op(1, 0, 1, Put("x", 1)),
        op(2, 2, None, CompareAndSet("x", 1, 2)),
        op(3, 2, None, Delete("x")),
        op(4, 3, 4, Get("x"), 2),
        op(4, 5, 6, Get("x"), None),
    ]
    result = check(ops)
    assert result.ok is True
    [order] = result.linearization
    assert order == (ops[0], ops[1], ops[3], ops[2], ops[4])


def test_keys_are_checked_independently() -> None:
    ops = [
        op(1, 0, 1, Put("x", 1)),
        op(1, 0, 1, Put("y", 1)),
        op(2, 2, 3, Get("y"), 1),
        op(2, 4, 5, Get("x"), 2),
    ]
    result = check(ops)
    assert result.ok is False
    assert result.partition == "key 'x'"
    ok = check(ops[:3])
    assert ok.ok is True
    assert ok.linearization == ((ops[0],), (ops[1], ops[2]))


def test_none_is_an_absent_key() -> None:
    ops = [
        op(1, 0, 1, Put("x", 1)),
        op(1, 2, 3, Put("x", None)),
        op(1, 4, 5, CompareAndSet("x", None, 2), True),
    ]
    assert check(ops).ok is True


# -- the recorder and errors --------------------------------------------------------------


def test_history_records_completed_failed_and_pending_operations() -> None:
    history: History[KVOp, object] = History()
    put = history.invoke("c1", Put("x", 1), now=0.0)
    refused = history.invoke("c2", Put("x", 2), now=0.5)
    lost = history.invoke("c3", Put("x", 3), now=0.7)
    get = history.invoke("c1", Get("x"), now=2.0)
    history.complete(put, None, now=1.0)
    history.fail(refused, now=1.5)
    history.complete(get, 1, now=3.0)
    assert history.operations() == [
        Operation("c1", 0.0, 1.0, Put("x", 1), None),
        Operation("c3", 0.7, None, Put("x", 3), None),
        Operation("c1", 2.0, 3.0, Get("x"), 1),
    ]
    assert history.operations()[1].pending
    assert check_linearizable(history, KVModel()).ok is True
    with pytest.raises(LocalProtocolError, match="already"):
        history.complete(put, None, now=4.0)
    with pytest.raises(LocalProtocolError, match="before its call"):
        history.complete(lost, None, now=0.1)
    with pytest.raises(LocalProtocolError, match="no operation"):
        history.fail(99, now=5.0)


def test_an_operation_that_returns_before_its_call_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="returns before its call"):
        check([op(1, 2, 1, Get("x"), None)])


@attrs.frozen
class Enqueue:
    value: int


@attrs.frozen
class Dequeue:
    pass


class QueueModel(Model[tuple[int, ...], Enqueue | Dequeue, int | None]):
    """A FIFO queue, as a user would write a model (no partitions, no pending support)."""

    def init(self) -> tuple[int, ...]:
        return ()

    def step(
        self, state: tuple[int, ...], input: Enqueue | Dequeue, output: int | None
    ) -> tuple[bool, tuple[int, ...]]:
        if isinstance(input, Enqueue):
            return True, (*state, input.value)
        if not state:
            return output is None, state
        return output == state[0], state[1:]


def test_a_model_of_ones_own() -> None:
    ops: list[Operation[Enqueue | Dequeue, int | None]] = [
        Operation(1, 0, 1, Enqueue(1), None),
        Operation(2, 0.5, 2, Enqueue(2), None),
        Operation(3, 3, 4, Dequeue(), 2),
    ]
    assert check_linearizable(ops, QueueModel()).ok is True  # the enqueues overlap
    ops[1] = Operation(2, 1.5, 2, Enqueue(2), None)
    result = check_linearizable(ops, QueueModel())
    assert result.ok is False
    assert result.partition == "part 1 of 1"
    assert "the state is (1, 2)" in str(result)
    with pytest.raises(LocalProtocolError, match="step_pending"):
        check_linearizable([Operation(1, 0, None, Enqueue(1), None)], QueueModel())


# -- generated histories ------------------------------------------------------------------


KEYS = ["x", "y", "z"]
VALUES = [0, 1, 2]


def inputs(keys: Sequence[str] = KEYS) -> st.SearchStrategy[KVOp]:
    key = st.sampled_from(keys)
    value = st.sampled_from(VALUES)
    return st.one_of(
        st.builds(Put, key, value),
        st.builds(Get, key),
        st.builds(Delete, key),
        st.builds(CompareAndSet, key, st.sampled_from([None, *VALUES]), value),
    )


@st.composite
def executions(
    draw: st.DrawFn, max_ops: int = 40, keys: Sequence[str] = KEYS, lost: int = 3
) -> list[KVOperation]:
    """Histories of a real dict: operation k takes effect at time k, inside its interval.

    Each client's intervals are disjoint; a client's last operation may never
    return (it took effect), and a few operations of crashed clients never
    returned and never took effect.
    """
    clients = draw(st.integers(1, 5))
    steps = draw(st.lists(st.tuples(st.integers(0, clients - 1), inputs(keys)), max_size=max_ops))
    store: dict[Hashable, Hashable] = {}
    by_client: dict[int, list[tuple[int, KVOp, object]]] = {}
    for point, (client, input) in enumerate(steps, 1):
        output = apply(store, input)
        by_client.setdefault(client, []).append((point, input, output))
    fraction = st.sampled_from([0, 0.25, 0.5, 0.75, 1])  # (0 and 1 give equal times)
    ops: list[KVOperation] = []
    for client, mine in by_client.items():
        for j, (point, input, output) in enumerate(mine):
            before = mine[j - 1][0] if j else 0
            call = point - draw(fraction) * (point - before) / 2
            if j + 1 < len(mine):
                ops.append(
                    op(
                        client,
                        call,
                        point + draw(fraction) * (mine[j + 1][0] - point) / 2,
                        input,
                        output,
                    )
                )
            elif draw(st.booleans()):
                ops.append(op(client, call, point + draw(fraction) * 3, input, output))
            else:
                ops.append(op(client, call, None, input))
    for k, input in enumerate(draw(st.lists(inputs(keys), max_size=lost))):
        ops.append(op(f"lost{k}", draw(st.integers(0, len(steps) + 1)), None, input))
    return draw(st.permutations(ops))


@given(executions())
def test_executions_of_a_real_dict_are_linearizable(ops: list[KVOperation]) -> None:
    result = check(ops)
    assert result.ok is True, str(result)


@given(executions(), st.data())
def test_a_read_of_a_value_never_written_is_found(
    ops: list[KVOperation], data: st.DataObject
) -> None:
    reads = [i for i, o in enumerate(ops) if isinstance(o.op, Get) and o.ret is not None]
    assume(reads)
    i = data.draw(st.sampled_from(reads))
    ops[i] = attrs.evolve(ops[i], output="never written")
    result = check(ops)
    assert result.ok is False
    assert result.partition == f"key {ops[i].op.key!r}"
    assert ops[i] not in result.prefix
    assert result.unplaced
    assert str(result).startswith(f"not linearizable: key {ops[i].op.key!r}")


def brute_force(ops: Sequence[KVOperation]) -> bool:
    """Is there an order of the operations, consistent with real time, that a dict replays?

    Every returned operation is in it; an operation that never returned may be
    left out. Tries every such order, one operation at a time.
    """

    def extend(left: list[KVOperation], store: dict[Hashable, Hashable]) -> bool:
        if all(o.ret is None for o in left):
            return True
        for o in left:
            if any(other.ret is not None and other.ret < o.call for other in left):
                continue  # something else returned before this was called: it comes first
            after = dict(store)
            output = apply(after, o.op)
            normalize(after)
            if o.ret is not None and not agrees(o.op, output, o.output):
                continue
            if extend([other for other in left if other is not o], after):
                return True
        return False

    return extend(list(ops), {})


def small_histories() -> st.SearchStrategy[list[KVOperation]]:
    output = st.sampled_from([None, True, False, *VALUES])
    time = st.integers(0, 6)
    arbitrary = st.lists(
        st.builds(
            lambda client, call, length, input, output: op(
                client, call, None if length is None else call + length, input, output
            ),
            st.integers(0, 3),
            time,
            st.one_of(st.none(), st.integers(0, 4)),
            inputs(["x", "y"]),
            output,
        ),
        max_size=7,
    )

    @st.composite
    def mutated(draw: st.DrawFn) -> list[KVOperation]:
        ops = draw(executions(max_ops=6, keys=["x", "y"], lost=1))
        for i in draw(st.lists(st.integers(0, max(len(ops) - 1, 0)), max_size=2)):
            if ops:
                ops[i] = attrs.evolve(ops[i], output=draw(output))
        return ops

    return st.one_of(arbitrary, mutated())


@given(small_histories())
def test_agrees_with_a_brute_force_search(ops: list[KVOperation]) -> None:
    assert check(ops).ok is brute_force(ops)


# -- size and time ------------------------------------------------------------------------


def workload(n: int, keys: int, clients: int, seed: int) -> list[KVOperation]:
    """``n`` operations of ``clients`` clients, each with at most one call outstanding."""
    rng = random.Random(seed)
    store: dict[Hashable, Hashable] = {}
    by_client: dict[int, list[tuple[int, KVOp, object]]] = {}
    for point in range(1, n + 1):
        key = f"k{rng.randrange(keys)}"
        input = rng.choice(
            [
                Put(key, rng.randrange(5)),
                Get(key),
                Delete(key),
                CompareAndSet(key, rng.choice([None, 0, 1, 2, 3, 4]), rng.randrange(5)),
            ]
        )
        output = apply(store, input)
        by_client.setdefault(rng.randrange(clients), []).append((point, input, output))
    ops = []
    for client, mine in by_client.items():
        for j, (point, input, output) in enumerate(mine):
            before = mine[j - 1][0] if j else 0
            after = mine[j + 1][0] if j + 1 < len(mine) else point + 5
            call = point - rng.random() * (point - before) / 2
            ops.append(op(client, call, point + rng.random() * (after - point) / 2, input, output))
    rng.shuffle(ops)
    return ops


@pytest.mark.parametrize(("n", "keys"), [(2000, 10), (2000, 1)])
def test_thousands_of_operations_check_quickly(n: int, keys: int) -> None:
    ops = workload(n, keys, clients=5, seed=1)
    start = time.perf_counter()
    result = check_linearizable(ops, KVModel())
    passed = time.perf_counter() - start
    assert result.ok is True
    assert_valid_linearization(ops, result.linearization)
    i = next(i for i, o in enumerate(ops) if isinstance(o.op, Get))
    ops[i] = attrs.evolve(ops[i], output="never written")
    start = time.perf_counter()
    assert check_linearizable(ops, KVModel()).ok is False
    failed = time.perf_counter() - start
    # (about 0.01 s and 0.05 s on one core: the bounds leave room for slow machines)
    assert passed < 1.0
    assert failed < 1.0


def test_a_timeout_gives_an_unknown_result() -> None:
    ops = workload(2000, 1, clients=5, seed=2)
    result = check_linearizable(ops, KVModel(), timeout=0)
    assert result.ok is None
    assert not result
    assert result.partition == "key 'k0'"
    assert str(result).startswith("unknown (the search ran out of time): key 'k0'")
    # a part that is known to fail still decides the result
    bad = [op(1, 0, 1, Put("other", 1)), op(2, 2, 3, Get("other"), 2)]
    assert check_linearizable(ops + bad, KVModel(), timeout=0).ok is False
