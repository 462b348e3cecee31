"""Check that a history of operations on a concurrent object is linearizable.

Theory of operation
-------------------
A history is a list of :class:`Operation`: who called what, when the call
started (``call``), when it returned (``ret``) and what it returned. It is
*linearizable* (Herlihy & Wing) when each operation can be given a single
instant between its call and its return such that, in the order of those
instants, the operations are a legal sequential run of a :class:`Model`. Two
operations overlap when neither returned before the other was called; equal
times count as overlapping.

An operation that never returned (a timeout, a crashed client; ``ret`` is
``None``) may or may not have taken effect, at any time after its call: its
return is taken to be at +infinity and its output is unknown, so the model
applies it with :meth:`Model.step_pending`, which accepts any outcome. Once
every returned operation is placed, pending operations that are left over
are the ones that did not take effect. An operation that *certainly* did not
happen (a refused request) is simply left out (:meth:`History.fail`).

The search is Wing & Gong's, with Lowe's memoization, as in Porcupine:

- The calls and returns are sorted by time into a doubly linked list (calls
  before returns at equal times).
- Walk the list from its head. At a call, try to place its operation next: if
  the model accepts it from the current state *and* the pair (set of placed
  operations, new state) was never reached before, remember it, unlink the
  call and its return, push the operation and start again from the head.
- At a return, the operation it belongs to should have been placed already:
  backtrack by popping the last placed operation, relinking it and trying the
  call after it.
- The history is linearizable when every returned operation is placed, and
  not when the stack is empty at a return.

The memo of (set of placed operations, state) pairs stops the search from
re-exploring a situation it reached in another order, which keeps it close to
linear when few operations overlap. Porcupine keeps the set as a bitset of
all operations, which makes each step cost O(n); here the returned
operations are numbered in call order and the set is kept as a count (all
operations below it are placed) and a small bitset of the ones above it,
which spans only the operations overlapping the oldest unplaced one.
Pending operations get a bitset of their own. In general the problem is
NP-complete (many overlapping operations), hence the ``timeout``.

A :class:`Model` may split a history into independent parts
(:meth:`Model.partition`, one per key for :class:`KVModel`): a history is
linearizable exactly when each part is (linearizability is local), and each
part is searched on its own.

A failure reports the part that failed, the longest linearizable prefix the
search found in it, the state after that prefix, and the operations that
could have come next but could not be placed.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Generic, TypeVar, assert_never, cast, final

import attrs

from .._errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "CompareAndSet",
    "Delete",
    "Get",
    "History",
    "KVModel",
    "LinearizabilityResult",
    "Model",
    "Operation",
    "Put",
    "check_linearizable",
]

StateT = TypeVar("StateT", bound=Hashable)
InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


@final
@attrs.frozen
class Operation(Generic[InputT, OutputT]):
    """One operation of a history.

    Args:
      client: Who called it (only used in explanations).
      call: When the call started.
      ret: When it returned, or ``None`` if it never did (a timeout, a crashed
        client): it may then have taken effect at any time after ``call``.
      op: What was called (the model's input, such as :class:`Put`).
      output: What it returned; ignored when ``ret`` is ``None``.

    .. versionadded:: 0.1
    """

    client: str | int
    call: float
    ret: float | None
    op: InputT
    output: OutputT | None

    @property
    def pending(self) -> bool:
        """Whether the operation never returned."""
        return self.ret is None


@final
class History(Generic[InputT, OutputT]):
    """Record a history as it happens, to check it with :func:`check_linearizable`.

    ::

        history: History[Put | Get | Delete | CompareAndSet, object] = History()
        handle = history.invoke("c1", Put("x", 1), now=trio.current_time())
        ...  # send the request and wait for the answer
        history.complete(handle, None, now=trio.current_time())

    A handle that is neither completed nor failed stays pending: its outcome
    is unknown.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._calls: list[tuple[str | int, float, InputT]] = []
        self._ends: dict[int, tuple[float, OutputT] | None] = {}  # (None: failed)

    def invoke(self, client: str | int, op: InputT, now: float) -> int:
        """Record that ``client`` called ``op`` at time ``now``.

        Returns:
          A handle for :meth:`complete` or :meth:`fail`.
        """
        self._calls.append((client, now, op))
        return len(self._calls) - 1

    def _end(self, handle: int, now: float, end: tuple[float, OutputT] | None) -> None:
        if not 0 <= handle < len(self._calls):
            raise LocalProtocolError(f"no operation has handle {handle!r}")
        if handle in self._ends:
            raise LocalProtocolError(f"operation {handle} was completed or failed already")
        if now < self._calls[handle][1]:
            raise LocalProtocolError(
                f"operation {handle} ends at {now:g}, before its call at {self._calls[handle][1]:g}"
            )
        self._ends[handle] = end

    def complete(self, handle: int, output: OutputT, now: float) -> None:
        """Record that the operation returned ``output`` at time ``now``.

        Raises:
          LocalProtocolError: The handle is unknown or already finished, or
            ``now`` is before the call.
        """
        self._end(handle, now, (now, output))

    def fail(self, handle: int, now: float) -> None:
        """Record that the operation certainly did not take effect: it is left out.

        Raises:
          LocalProtocolError: As :meth:`complete`.
        """
        self._end(handle, now, None)

    def operations(self) -> list[Operation[InputT, OutputT]]:
        """The operations recorded so far, in call order, without the failed ones."""
        found: list[Operation[InputT, OutputT]] = []
        for handle, (client, call, op) in enumerate(self._calls):
            if handle not in self._ends:
                found.append(Operation(client, call, None, op, None))
            elif (end := self._ends[handle]) is not None:
                found.append(Operation(client, call, end[0], op, end[1]))
        return found


class Model(abc.ABC, Generic[StateT, InputT, OutputT]):
    """The sequential specification of an object: what each operation does.

    Subclass it and implement :meth:`init` and :meth:`step`; implement
    :meth:`step_pending` if histories may hold operations that never returned,
    and :meth:`partition` if the history splits into independent parts. States
    must be hashable and compare equal when they behave the same.

    .. versionadded:: 0.1
    """

    @abc.abstractmethod
    def init(self) -> StateT:
        """The initial state."""

    @abc.abstractmethod
    def step(self, state: StateT, input: InputT, output: OutputT) -> tuple[bool, StateT]:
        """Apply an operation that returned ``output``.

        Returns:
          Whether ``output`` is a legal answer to ``input`` in ``state``, and
          the state after it.
        """

    def step_pending(self, state: StateT, input: InputT) -> StateT:
        """Apply an operation whose output is unknown (it never returned).

        Returns:
          The state after it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot apply an operation that never returned: "
            "implement step_pending(), or record the operation as failed if it did not happen"
        )

    def partition(
        self, operations: Sequence[Operation[InputT, OutputT]]
    ) -> Sequence[Sequence[Operation[InputT, OutputT]]]:
        """Split a history into parts that do not affect each other (default: one part)."""
        return [operations]

    def describe_partition(self, operations: Sequence[Operation[InputT, OutputT]]) -> str:
        """A name for a part in explanations (``key 'x'``); empty for a default."""
        return ""

    def describe_state(self, state: StateT) -> str:
        """A state, as explanations show it."""
        return repr(state)


@final
@attrs.frozen
class Put:
    """Set ``key`` to ``value`` (``None`` deletes it); its output is ignored.

    .. versionadded:: 0.1
    """

    key: Hashable
    value: Hashable


@final
@attrs.frozen
class Get:
    """Read ``key``; the output is its value, or ``None`` if it is absent.

    .. versionadded:: 0.1
    """

    key: Hashable


@final
@attrs.frozen
class Delete:
    """Remove ``key``; its output is ignored.

    .. versionadded:: 0.1
    """

    key: Hashable


@final
@attrs.frozen
class CompareAndSet:
    """Set ``key`` to ``new`` if its value is ``expected`` (``None``: absent).

    The output is whether it did.

    .. versionadded:: 0.1
    """

    key: Hashable
    expected: Hashable
    new: Hashable


_KVInput = Put | Get | Delete | CompareAndSet


@final
class KVModel(Model[Hashable, _KVInput, object]):
    """A key-value store with :class:`Put`, :class:`Get`, :class:`Delete` and
    :class:`CompareAndSet`, each on one key; a history is checked key by key.

    ``None`` stands for an absent key: ``Get`` answers it, ``Put(k, None)``
    deletes, ``CompareAndSet(k, None, v)`` creates ``k`` only if absent. Values
    must be hashable. A state is the value of one key, as :meth:`partition`
    gives the model the operations of one key at a time.

    .. versionadded:: 0.1
    """

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: _KVInput, output: object) -> tuple[bool, Hashable]:
        match input:
            case Get():
                return state == output, state
            case CompareAndSet(_, expected, new):
                done = state == expected
                return output == done, new if done else state
            case _:
                return True, self.step_pending(state, input)

    def step_pending(self, state: Hashable, input: _KVInput) -> Hashable:
        match input:
            case Put(_, value):
                return value
            case Delete():
                return None
            case CompareAndSet(_, expected, new):
                return new if state == expected else state
            case Get():
                return state
            case _:
                assert_never(input)

    def partition(
        self, operations: Sequence[Operation[_KVInput, object]]
    ) -> list[list[Operation[_KVInput, object]]]:
        by_key: dict[Hashable, list[Operation[_KVInput, object]]] = {}
        for operation in operations:
            by_key.setdefault(operation.op.key, []).append(operation)
        return list(by_key.values())

    def describe_partition(self, operations: Sequence[Operation[_KVInput, object]]) -> str:
        keys = list(dict.fromkeys(operation.op.key for operation in operations))
        return f"key {keys[0]!r}" if len(keys) == 1 else f"keys {keys!r}"

    def describe_state(self, state: Hashable) -> str:
        return "absent" if state is None else repr(state)


@final
@attrs.frozen
class LinearizabilityResult(Generic[InputT, OutputT]):
    """What :func:`check_linearizable` found; ``str(result)`` explains it.

    ``bool(result)`` is true only when ``ok`` is true.

    Attributes:
      ok: ``True`` (linearizable), ``False`` (not), or ``None`` (unknown: the
        search ran out of time).
      linearization: When ``ok``, an order of the operations of each part of the
        history; pending operations left out of it did not take effect.
      partition: The part that failed (or ran out of time), as the model names it.
      prefix: In that part, the longest linearizable prefix that the search found.
      unplaced: The operations that could have come after ``prefix``, and could not.
      explanation: The text of ``str(result)``.

    .. versionadded:: 0.1
    """

    ok: bool | None
    linearization: tuple[tuple[Operation[InputT, OutputT], ...], ...] = ()
    partition: str = ""
    prefix: tuple[Operation[InputT, OutputT], ...] = ()
    unplaced: tuple[Operation[InputT, OutputT], ...] = ()
    explanation: str = ""

    def __bool__(self) -> bool:
        return self.ok is True

    def __str__(self) -> str:
        return self.explanation


class _Node:
    """An event of the linked list: a call (``match`` is its return) or a return."""

    __slots__ = ("id", "match", "next", "prev")

    def __init__(self, id: int, match: _Node | None) -> None:
        self.id = id
        self.match = match
        self.next: _Node = self
        self.prev: _Node = self


@final
class _Frame(Generic[StateT]):
    """A placed operation: its call, and what to restore when it is taken back."""

    __slots__ = ("base", "below", "entry", "pending_bits", "state", "window")

    def __init__(
        self,
        entry: _Node,
        state: StateT,
        placed: tuple[int, int, int],
        below: _Frame[StateT] | None,
    ) -> None:
        self.entry, self.state, self.below = entry, state, below
        self.base, self.window, self.pending_bits = placed

    @staticmethod
    def order(frame: _Frame[StateT] | None) -> list[int]:
        found = []
        while frame is not None:
            found.append(frame.entry.id)
            frame = frame.below
        return found[::-1]


@attrs.frozen
class _Search(Generic[StateT]):
    ok: bool | None
    order: list[int]  # the linearization when ok, else the longest prefix found
    state: StateT  # the state after it
    candidates: list[int]  # the calls that could come next, and could not


def _search(
    operations: Sequence[Operation[InputT, OutputT]],
    model: Model[StateT, InputT, OutputT],
    deadline: float | None,
) -> _Search[StateT]:
    n = len(operations)
    inputs = [operation.op for operation in operations]
    outputs = [cast("OutputT", operation.output) for operation in operations]
    pending = [operation.ret is None for operation in operations]
    events = sorted(
        [(operation.call, 0, i) for i, operation in enumerate(operations)]
        + [(math.inf if o.ret is None else o.ret, 1, i) for i, o in enumerate(operations)]
    )
    # The set of placed operations is kept small: the returned operations are numbered in
    # call order, and the set is ``base`` (all of 0..base-1 are placed) plus the bitset
    # ``window`` of the placed ones from ``base`` on. Operations placed while one is not are
    # called before it returns, so the window spans the operations that overlap the oldest
    # unplaced one. Pending operations (which may never be placed) have their own bitset.
    rank, counts = [0] * n, [0, 0]
    for _, kind, i in events:
        if not kind:
            rank[i] = counts[pending[i]]
            counts[pending[i]] += 1
    returns = [_Node(i, None) for i in range(n)]
    # between two sentinels, so that every event has a next and a previous one
    head = last = _Node(-1, None)
    for _, kind, i in events:
        node = returns[i] if kind else _Node(i, returns[i])
        node.prev, last.next, last = last, node, node
    tail = _Node(-1, None)
    tail.prev, last.next = last, tail

    state = model.init()
    base = window = pending_bits = 0  # the placed operations, as above
    seen: set[tuple[int, int, int, StateT]] = set()
    top: _Frame[StateT] | None = None  # the stack of placed operations
    remaining = counts[0]  # returned operations not placed yet
    depth, best_depth = 0, -1  # (of the stack, and of the longest prefix found)
    best: tuple[_Frame[StateT] | None, StateT, list[int]] = (None, state, [])
    entry = head.next
    steps = 0
    # (the tail is never reached: while a returned operation is left, so is its return)
    while remaining:
        steps += 1
        if deadline is not None and not steps & 0x3FF and time.monotonic() > deadline:
            return _Search(None, _Frame.order(best[0]), best[1], best[2])
        ret = entry.match
        if ret is not None:  # a call: try to place its operation now
            i = entry.id
            if pending[i]:
                ok, new = True, model.step_pending(state, inputs[i])
                placed = (base, window, pending_bits | 1 << rank[i])
            else:
                ok, new = model.step(state, inputs[i], outputs[i])
                b, w = base, window | 1 << (rank[i] - base)
                if w & 1:
                    ones = (w ^ (w + 1)).bit_length() - 1
                    b, w = b + ones, w >> ones
                placed = (b, w, pending_bits)
            if ok and (key := (*placed, new)) not in seen:
                seen.add(key)
                top = _Frame(entry, state, (base, window, pending_bits), top)
                state = new
                base, window, pending_bits = placed
                remaining -= not pending[i]
                depth += 1
                # unlink the call, then its return
                entry.prev.next, entry.next.prev = entry.next, entry.prev
                ret.prev.next, ret.next.prev = ret.next, ret.prev
                entry = head.next
            else:
                entry = entry.next
        else:  # a return whose operation is not placed: backtrack
            if depth > best_depth:
                candidates, node = [], head.next
                while node.match is not None:
                    candidates.append(node.id)
                    node = node.next
                best, best_depth = (top, state, candidates), depth
            if top is None:
                return _Search(False, _Frame.order(best[0]), best[1], best[2])
            entry, state = top.entry, top.state
            base, window, pending_bits = top.base, top.window, top.pending_bits
            top = top.below
            remaining += not pending[entry.id]
            depth -= 1
            ret = entry.match
            assert ret is not None
            # relink, in the reverse order
            ret.prev.next = ret.next.prev = ret
            entry.prev.next = entry.next.prev = entry
            entry = entry.next
    return _Search(True, _Frame.order(top), state, [])


_SHOWN = 10  # operations of the prefix that an explanation shows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _describe(operation: Operation[InputT, OutputT]) -> str:
    end = "..." if operation.ret is None else f"{operation.ret:g}"
    output = "? (never returned)" if operation.ret is None else repr(operation.output)
    interval = f"[{operation.call:g}, {end}]"
    return f"client {operation.client!s:<4} {interval:<20} {operation.op!r} -> {output}"


def _explain(
    ops: Sequence[Operation[InputT, OutputT]],
    model: Model[StateT, InputT, OutputT],
    name: str,
    found: _Search[StateT],
) -> str:
    verdict = "not linearizable" if found.ok is False else "unknown (the search ran out of time)"
    lines = [f"{verdict}: {name} ({_count(len(ops), 'operation')})"]
    if found.ok is None and not found.order:
        return lines[0]
    lines.append(
        f"the longest linearizable prefix found has {_count(len(found.order), 'operation')}"
    )
    shown = len(found.order) - min(len(found.order), _SHOWN)
    if shown:
        lines[-1] += f"; the last {_SHOWN} (all of them in result.prefix):"
    else:
        lines[-1] += ":"
    lines += [
        f"  {k + 1:>5}. {_describe(ops[found.order[k]])}" for k in range(shown, len(found.order))
    ]
    lines.append(f"after it, the state is {model.describe_state(found.state)}")
    if found.ok is False:
        lines.append("and none of these can come next (result.unplaced):")
        for i in found.candidates:
            op = ops[i]
            if op.ret is None or model.step(found.state, op.op, cast("OutputT", op.output))[0]:
                why = "allowed here, but the rest of the history cannot follow"
            else:
                why = "the model rejects it in this state"
            lines.append(f"         {_describe(op)}\n           ({why})")
    return "\n".join(lines)


def check_linearizable(
    history: History[InputT, OutputT] | Iterable[Operation[InputT, OutputT]],
    model: Model[StateT, InputT, OutputT],
    *,
    timeout: float | None = None,
) -> LinearizabilityResult[InputT, OutputT]:
    """Check whether a history is linearizable with respect to ``model``.

    ::

        result = check_linearizable(history, KVModel(), timeout=10)
        assert result.ok, str(result)

    Args:
      history: A :class:`History`, or the operations themselves.
      model: The sequential specification (for instance :class:`KVModel`).
      timeout: Give up after this many seconds of search (``ok`` is then
        ``None``); ``None`` searches until it knows.

    Returns:
      A :class:`LinearizabilityResult`. The first part of the history that is
      not linearizable stops the check.

    Raises:
      LocalProtocolError: An operation returns before its call, or never returns
        and ``model`` does not implement :meth:`Model.step_pending`.

    .. versionadded:: 0.1
    """
    operations = history.operations() if isinstance(history, History) else list(history)
    for operation in operations:
        if operation.ret is not None and not operation.ret >= operation.call:
            raise LocalProtocolError(f"{operation!r} returns before its call")
    if any(o.ret is None for o in operations) and type(model).step_pending is Model.step_pending:
        raise LocalProtocolError(
            f"{type(model).__name__} cannot apply an operation that never returned: implement "
            "step_pending(), or record the operation as failed if it certainly did not happen"
        )
    deadline = None if timeout is None else time.monotonic() + timeout
    parts = [list(part) for part in model.partition(operations)]
    orders: list[tuple[Operation[InputT, OutputT], ...]] = []
    unknown: LinearizabilityResult[InputT, OutputT] | None = None
    for number, part in enumerate(parts, 1):
        found = _search(part, model, deadline)
        if found.ok:
            orders.append(tuple(part[i] for i in found.order))
            continue
        name = model.describe_partition(part) or f"part {number} of {len(parts)}"
        result = LinearizabilityResult[InputT, OutputT](
            found.ok,
            partition=name,
            prefix=tuple(part[i] for i in found.order),
            unplaced=tuple(part[i] for i in found.candidates),
            explanation=_explain(part, model, name, found),
        )
        if found.ok is False:
            return result
        unknown = unknown or result
    if unknown is not None:
        return unknown
    placed = sum(len(order) for order in orders)
    lost = len(operations) - placed
    return LinearizabilityResult(
        True,
        linearization=tuple(orders),
        explanation=f"linearizable: {_count(len(operations), 'operation')}, checked in "
        f"{_count(len(parts), 'independent part')}"
        + (f"; {lost} that never returned took no effect" if lost else ""),
    )
