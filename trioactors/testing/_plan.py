"""Fault plans: a small language for what goes wrong, and when.

Theory of operation
-------------------
A plan is a list of steps, each a simulated time (seconds since the plan
started) and a fault. Its text form is one step per line (or ``;``-separated)::

    at 0    drop 0.1
    at 1.5  crash n1
    at 4    partition n0 n1 | n2
    at 9    heal
    at 12   restart n1

Faults and their effect on a :class:`~trioactors.testing.MemoryNetwork`:

=========================================  ==================================================
``crash NODE``                             the node's process dies: its tasks are cancelled,
                                           frames to and from it are lost
``restart NODE``                           a crashed node starts again, empty, and rejoins
``partition A B | C``                      frames between the groups are cut (``partition A``:
                                           ``A`` against everyone else); partitions add up
``heal``                                   every partition is removed
``drop RATE [between A | B]``              each frame is lost with probability ``RATE``
``delay LOW [HIGH] [between A | B]``       each frame takes ``uniform(LOW, HIGH)`` s more
``duplicate RATE``                         each frame arrives twice with probability ``RATE``
``reorder RATE``                           frames overtake each other with probability ``RATE``
``clear``                                  every fault but crashes is removed
=========================================  ==================================================

A plan is pure data: :meth:`FaultPlan.parse` reads the text, ``str(plan)``
writes it back in a canonical form, and ``repr(plan)`` is a Python expression
that rebuilds it, so a failing property test prints a plan you can paste to
replay it. :meth:`FaultPlan.check` validates it against the node names
(only running nodes crash, only crashed ones restart).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Protocol, final

import attrs

from .._errors import LocalProtocolError, TrioactorsError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "Clear",
    "Crash",
    "Delay",
    "Drop",
    "Duplicate",
    "Fault",
    "FaultPlan",
    "FaultPlanError",
    "Heal",
    "InvariantViolated",
    "Partition",
    "Reorder",
    "Restart",
    "Step",
]


class FaultPlanError(LocalProtocolError, ValueError):
    """A fault plan that cannot be read or cannot run on the given nodes.

    The message says which step is wrong and why (``step 3 (at 4 restart n1):
    n1 is running; only a crashed node restarts``).

    .. versionadded:: 0.1
    """


class InvariantViolated(TrioactorsError, AssertionError):
    """An invariant did not hold during a simulation.

    ``name`` is the invariant's name, ``time`` the simulated time since the
    simulation started, ``step`` how many steps of the fault plan had been
    applied. The exception's notes say how to replay the run.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, name: str = "", time: float = 0.0, step: int = 0) -> None:
        super().__init__(message)
        self.name = name
        self.time = time
        self.step = step


# -- faults -----------------------------------------------------------------------------

_Group = tuple[str, ...]


def _number(value: float) -> str:
    """The shortest text that reads back as ``value`` (``0.1``, ``2``, ``1e-05``)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _between(between: tuple[_Group, _Group] | None) -> str:
    if between is None:
        return ""
    a, b = between
    return f" between {' '.join(a)}" + (f" | {' '.join(b)}" if b else "")


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise FaultPlanError(f"a rate is a probability between 0 and 1, not {rate!r}")
    return float(rate)


def _group(names: Iterable[str]) -> _Group:
    group = tuple(names)
    if len(set(group)) != len(group):
        raise FaultPlanError(f"a group names a node twice: {' '.join(group)}")
    return group


@final
@attrs.frozen
class Crash:
    """Crash a running node (see :meth:`SimulatedCluster.crash`).

    .. versionadded:: 0.1
    """

    node: str

    def text(self) -> str:
        return f"crash {self.node}"


@final
@attrs.frozen
class Restart:
    """Start a crashed node again; it rejoins the cluster.

    .. versionadded:: 0.1
    """

    node: str

    def text(self) -> str:
        return f"restart {self.node}"


@final
@attrs.frozen
class Partition:
    """Cut the link between two groups (``b`` empty: ``a`` against everyone else).

    .. versionadded:: 0.1
    """

    a: _Group = attrs.field(converter=_group)
    b: _Group = attrs.field(default=(), converter=_group)

    def __attrs_post_init__(self) -> None:
        if not self.a:
            raise FaultPlanError("a partition needs at least one node on its first side")
        if set(self.a) & set(self.b):
            raise FaultPlanError(f"a node is on both sides of a partition: {self.text()}")

    def text(self) -> str:
        return f"partition {' '.join(self.a)}" + (f" | {' '.join(self.b)}" if self.b else "")


@final
@attrs.frozen
class Heal:
    """Remove every partition.

    .. versionadded:: 0.1
    """

    def text(self) -> str:
        return "heal"


@final
@attrs.frozen
class Clear:
    """Remove every fault but crashes: partitions, drops, delays, duplicates, reordering.

    .. versionadded:: 0.1
    """

    def text(self) -> str:
        return "clear"


def _between_field(
    value: tuple[Iterable[str], Iterable[str]] | None,
) -> tuple[_Group, _Group] | None:
    if value is None:
        return None
    a, b = value
    between = _group(a), _group(b)
    if not between[0]:
        raise FaultPlanError("'between' needs at least one node on its first side")
    return between


@final
@attrs.frozen
class Drop:
    """Lose each frame from now on with probability ``rate`` (optionally only ``between`` groups).

    .. versionadded:: 0.1
    """

    rate: float = attrs.field(converter=_check_rate)
    between: tuple[_Group, _Group] | None = attrs.field(default=None, converter=_between_field)

    def text(self) -> str:
        return f"drop {_number(self.rate)}{_between(self.between)}"


@final
@attrs.frozen
class Delay:
    """Delay each frame from now on by ``uniform(low, high)`` more seconds (``delay 0``: off).

    .. versionadded:: 0.1
    """

    low: float
    high: float | None = None
    between: tuple[_Group, _Group] | None = attrs.field(default=None, converter=_between_field)

    def __attrs_post_init__(self) -> None:
        high = self.low if self.high is None else self.high
        object.__setattr__(self, "high", high)  # one spelling per delay: equal plans compare equal
        if not 0.0 <= self.low <= high < math.inf:
            raise FaultPlanError(f"a delay needs 0 <= low <= high < inf, not {self.text()!r}")

    def text(self) -> str:
        high = "" if self.high is None or self.high == self.low else f" {_number(self.high)}"
        return f"delay {_number(self.low)}{high}{_between(self.between)}"


@final
@attrs.frozen
class Duplicate:
    """Deliver each frame from now on twice with probability ``rate``.

    .. versionadded:: 0.1
    """

    rate: float = attrs.field(converter=_check_rate)

    def text(self) -> str:
        return f"duplicate {_number(self.rate)}"


@final
@attrs.frozen
class Reorder:
    """Let frames overtake each other with probability ``rate``.

    .. versionadded:: 0.1
    """

    rate: float = attrs.field(converter=_check_rate)

    def text(self) -> str:
        return f"reorder {_number(self.rate)}"


Fault = Crash | Restart | Partition | Heal | Clear | Drop | Delay | Duplicate | Reorder
"""Any fault a plan step can apply."""


@final
@attrs.frozen
class Step:
    """One step of a plan: ``fault`` at ``at`` simulated seconds after the plan started.

    .. versionadded:: 0.1
    """

    at: float
    fault: Fault

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.at < math.inf:
            raise FaultPlanError(f"a step's time is a finite number of seconds >= 0, not {self.at}")

    def __str__(self) -> str:
        return f"at {_number(self.at)} {self.fault.text()}"


# -- the plan ---------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def _parse_names(words: Sequence[str], where: str) -> _Group:
    for word in words:
        if not _NAME.match(word):
            raise FaultPlanError(f"{where}: {word!r} is not a node name")
    return tuple(words)


def _parse_groups(words: Sequence[str], where: str) -> tuple[_Group, _Group]:
    if words.count("|") > 1:
        raise FaultPlanError(f"{where}: at most one '|' separates two groups")
    if "|" in words:
        i = words.index("|")
        return _parse_names(words[:i], where), _parse_names(words[i + 1 :], where)
    return _parse_names(words, where), ()


def _parse_float(word: str, where: str, what: str) -> float:
    try:
        value = float(word)
    except ValueError:
        raise FaultPlanError(f"{where}: {what} must be a number, not {word!r}") from None
    if not math.isfinite(value):
        raise FaultPlanError(f"{where}: {what} must be finite, not {word!r}")
    return value


def _split_between(words: list[str], where: str) -> tuple[list[str], tuple[_Group, _Group] | None]:
    if "between" not in words:
        return words, None
    i = words.index("between")
    return words[:i], _parse_groups(words[i + 1 :], where)


def _parse_fault(words: list[str], where: str) -> Fault:
    verb, args = words[0], words[1:]

    def arity(low: int, high: int) -> None:
        if not low <= len(args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise FaultPlanError(f"{where}: {verb!r} takes {want} argument(s), not {len(args)}")

    match verb:
        case "crash" | "restart":
            arity(1, 1)
            (node,) = _parse_names(args, where)
            return Crash(node) if verb == "crash" else Restart(node)
        case "partition":
            a, b = _parse_groups(args, where)
            return Partition(a, b)
        case "heal" | "clear":
            arity(0, 0)
            return Heal() if verb == "heal" else Clear()
        case "drop":
            args, between = _split_between(args, where)
            arity(1, 1)
            return Drop(_parse_float(args[0], where, "the rate"), between)
        case "delay":
            args, between = _split_between(args, where)
            arity(1, 2)
            low = _parse_float(args[0], where, "the delay")
            high = _parse_float(args[1], where, "the delay") if len(args) == 2 else None
            return Delay(low, high, between)
        case "duplicate" | "reorder":
            arity(1, 1)
            rate = _parse_float(args[0], where, "the rate")
            return Duplicate(rate) if verb == "duplicate" else Reorder(rate)
        case _:
            raise FaultPlanError(
                f"{where}: unknown fault {verb!r}; one of crash, restart, partition, heal, "
                "drop, delay, duplicate, reorder, clear"
            )


def _parse_step(text: str, number: int) -> Step:
    where = f"step {number} ({text!r})"
    words = text.replace("|", " | ").split()
    if len(words) < 3 or words[0] != "at":
        raise FaultPlanError(
            f"{where}: a step reads 'at SECONDS FAULT ...', e.g. 'at 2.5 crash n1'"
        )
    at = _parse_float(words[1], where, "the time")
    try:
        return Step(at, _parse_fault(words[2:], where))
    except FaultPlanError as exc:
        if str(exc).startswith(where):
            raise
        raise FaultPlanError(f"{where}: {exc}") from None


def _sorted_steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(sorted(steps, key=lambda step: step.at))


@final
@attrs.frozen
class FaultPlan:
    """A schedule of faults: :class:`Step` objects in time order.

    Build one from text with :meth:`parse`, from steps with
    ``FaultPlan([Step(1.0, Crash("n1")), ...])`` (sorted by time, stable), or
    let hypothesis draw them (:func:`trioactors.testing.strategies.fault_plans`).
    Run it with :meth:`SimulatedCluster.run_plan` or :func:`simulate`.

    .. versionadded:: 0.1
    """

    steps: tuple[Step, ...] = attrs.field(default=(), converter=_sorted_steps)

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Read a plan: one step per line or ``;``-separated; ``#`` starts a comment.

        Raises:
          FaultPlanError: a step cannot be read; the message names it.
        """
        steps: list[Step] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for part in line.split(";"):
                if part.strip():
                    steps.append(_parse_step(part.strip(), len(steps) + 1))
        return cls(steps)

    @property
    def duration(self) -> float:
        """The time of the last step (0 for an empty plan)."""
        return self.steps[-1].at if self.steps else 0.0

    def nodes(self) -> set[str]:
        """Every node name the plan mentions."""
        names: set[str] = set()
        for step in self.steps:
            match step.fault:
                case Crash(node) | Restart(node):
                    names.add(node)
                case Partition(a, b):
                    names.update(a, b)
                case Drop(between=between) | Delay(between=between) if between is not None:
                    names.update(*between)
                case _:
                    pass
        return names

    def check(self, nodes: Iterable[str], *, down: Iterable[str] = ()) -> FaultPlan:
        """Validate the plan against a cluster of ``nodes`` (all running but ``down``).

        Returns the plan itself, so ``FaultPlan.parse(text).check(names)`` reads well.

        Raises:
          FaultPlanError: a step names an unknown node, crashes a node that
            is down or restarts one that is running.
        """
        known = set(nodes)
        down = set(down)
        for number, step in enumerate(self.steps, 1):
            where = f"step {number} ({step})"
            unknown = FaultPlan([step]).nodes() - known
            if unknown:
                raise FaultPlanError(
                    f"{where}: no node named {', '.join(sorted(unknown))}; "
                    f"the nodes are {', '.join(sorted(known))}"
                )
            match step.fault:
                case Crash(node) if node in down:
                    raise FaultPlanError(f"{where}: {node} is down already")
                case Crash(node):
                    down.add(node)
                case Restart(node) if node not in down:
                    raise FaultPlanError(
                        f"{where}: {node} is running; only a crashed node restarts"
                    )
                case Restart(node):
                    down.discard(node)
                case _:
                    pass
        return self

    def down_at_end(self) -> set[str]:
        """The nodes the plan leaves crashed."""
        down: set[str] = set()
        for step in self.steps:
            match step.fault:
                case Crash(node):
                    down.add(node)
                case Restart(node):
                    down.discard(node)
                case _:
                    pass
        return down

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __str__(self) -> str:
        return "\n".join(str(step) for step in self.steps)

    def __repr__(self) -> str:
        return f"FaultPlan.parse({'; '.join(str(step) for step in self.steps)!r})"

    def _repr_pretty_(self, printer: _Printer, cycle: bool) -> None:
        # hypothesis (and IPython) print falsifying examples through this: keep it pasteable
        printer.text(repr(self))


class _Printer(Protocol):
    def text(self, obj: str) -> None: ...
