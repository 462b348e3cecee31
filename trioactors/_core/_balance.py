"""Load balancing: which worker gets a job, as pure, deterministic strategies.

Theory of operation
-------------------

The job coordinator knows, for each worker it could use, a :class:`Candidate`:
the worker's address and node, the capabilities it offers (``tags``), its
``capacity`` and jobs ``in_flight``, the ``load`` the worker last reported and
the round-trip time to its node, if measured. For each :class:`Job` it asks a
:class:`BalanceStrategy` to ``choose`` one candidate, or ``None``.

Every strategy first keeps the candidates that *fit* the job
(:meth:`Candidate.can_take`): the candidate offers every tag the job requires
and is not full (``in_flight < capacity``). If none fits, the answer is
``None`` and the coordinator keeps the job pending. Among the candidates that
fit, the strategies differ:

- :class:`RandomChoice`: uniformly at random.
- :class:`RoundRobin`: in turn, by worker address, with one turn per job kind.
- :class:`LeastLoaded`: the less loaded of two picked at random (the default),
  or the least loaded of all.
- :class:`LowestLatency`: the smallest measured round trip.
- :class:`ConsistentHash`: the first worker clockwise from the job's key on a
  hash ring, so the same key goes to the same worker while the set of workers
  stays the same (cache affinity).

The strategies do no I/O and read no clock. Randomness comes only from the
:class:`random.Random` passed in, so a seeded generator replays every choice.
State lives only where a strategy needs memory: :class:`RoundRobin` keeps the
last worker chosen per job kind; :class:`ConsistentHash` keeps its ring (a
cache, fully determined by the set of worker addresses).

Invariants (checked by the tests with hypothesis):

- ``choose`` returns one of the candidates given, and only one that fits the
  job; it returns ``None`` exactly when no candidate fits (except that
  :class:`ConsistentHash` without a fallback raises :exc:`ValueError` for a
  job without a key, whether or not a candidate fits);
- the choice depends only on the job, the candidates, the strategy's memory
  and the generator's state; :class:`RoundRobin` and :class:`ConsistentHash`
  ignore the order of the candidates (the others draw from it at random).

The caller gives each worker address at most once per call. (Given twice,
:class:`RoundRobin` takes the first of the two and :class:`ConsistentHash`
the last.)
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Protocol, final

import attrs

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Sequence

    from ._jobs import Job

__all__ = [
    "STRATEGY_NAMES",
    "BalanceStrategy",
    "Candidate",
    "ConsistentHash",
    "LeastLoaded",
    "LowestLatency",
    "RandomChoice",
    "RingStatistics",
    "RoundRobin",
    "eligible",
    "strategy_by_name",
]


def _tags(value: Iterable[str]) -> frozenset[str]:
    # A lone string is an iterable of its letters: "gpu" would become
    # {"g", "p", "u"}, a set of capabilities nobody offers.
    if isinstance(value, str):
        raise TypeError(
            f"tags must be a set of strings, not the string {value!r}; use {{{value!r}}}"
        )
    return frozenset(value)


@final
@attrs.frozen(kw_only=True)
class Candidate:
    """A worker that could take a job, as the coordinator last saw it.

    .. versionadded:: 0.1
    """

    worker: str
    """The worker's address, e.g. ``"worker@node-b"``; unique among candidates."""
    node: str
    """The node that hosts the worker."""
    load: float
    """The load the worker reported: jobs in flight / capacity (0 is idle)."""
    capacity: int
    """How many jobs the worker runs at once."""
    in_flight: int
    """Jobs the worker is running now; it is full at ``in_flight >= capacity``."""
    rtt: float | None = None
    """The measured round trip to the worker's node, in seconds (``None``: unknown)."""
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_tags)
    """The capabilities the worker offers, e.g. ``{"gpu"}`` (any iterable of strings)."""

    def __attrs_post_init__(self) -> None:
        if self.capacity < 0 or self.in_flight < 0:
            raise ValueError(
                f"capacity and in_flight must be >= 0, not {self.capacity} and {self.in_flight}"
            )
        if not (math.isfinite(self.load) and self.load >= 0):
            raise ValueError(f"load must be a finite number >= 0, not {self.load}")
        if self.rtt is not None and not (math.isfinite(self.rtt) and self.rtt >= 0):
            raise ValueError(f"rtt must be None or a finite number of seconds >= 0, not {self.rtt}")

    @property
    def full(self) -> bool:
        """Whether the worker runs as many jobs as it can."""
        return self.in_flight >= self.capacity

    def can_take(self, job: Job[object]) -> bool:
        """Whether the worker offers every tag the job requires and is not full."""
        return self.in_flight < self.capacity and job.tags <= self.tags


def eligible(job: Job[object], candidates: Iterable[Candidate]) -> list[Candidate]:
    """The candidates that can take ``job`` (see :meth:`Candidate.can_take`), in order.

    .. versionadded:: 0.1
    """
    return [c for c in candidates if c.can_take(job)]


class BalanceStrategy(Protocol):
    """Chooses a worker for a job.

    (Not called ``Strategy``: that name is the supervision strategy's.)

    .. versionadded:: 0.1
    """

    def choose(self, job: Job[object], candidates: Sequence[Candidate]) -> Candidate | None:
        """One of ``candidates`` that can take ``job``, or ``None`` if none can."""
        ...


# -- random -----------------------------------------------------------------------------


@final
class RandomChoice:
    """A candidate that fits, uniformly at random.

    .. versionadded:: 0.1
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __repr__(self) -> str:
        return "RandomChoice()"

    def choose(self, job: Job[object], candidates: Sequence[Candidate]) -> Candidate | None:
        fits = eligible(job, candidates)
        return self._rng.choice(fits) if fits else None


# -- round robin ------------------------------------------------------------------------


@final
class RoundRobin:
    """Candidates in turn, in the order of their addresses, one turn per job kind.

    The strategy remembers only the address it chose last for each kind, and
    takes the next address after it (wrapping around) among the candidates
    that fit. So candidates may come and go between calls: a new worker takes
    its turn when the cycle reaches its address, a worker that left is simply
    passed, and over an unchanging set of candidates every one of them is
    chosen once in each cycle. A worker that is full or lacks a tag when its
    turn comes loses that turn (it is not owed one later).

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._last: dict[str, str] = {}  # job kind -> address chosen last

    def __repr__(self) -> str:
        return f"RoundRobin(kinds={len(self._last)})"

    def choose(self, job: Job[object], candidates: Sequence[Candidate]) -> Candidate | None:
        last = self._last.get(job.kind)
        first: Candidate | None = None  # the smallest address that fits
        after: Candidate | None = None  # the smallest address after `last` that fits
        for c in candidates:
            if not c.can_take(job):
                continue
            if first is None or c.worker < first.worker:
                first = c
            if last is not None and c.worker > last and (after is None or c.worker < after.worker):
                after = c
        chosen = after if after is not None else first
        if chosen is not None:
            self._last[job.kind] = chosen.worker
        return chosen


# -- least loaded -----------------------------------------------------------------------


@final
class LeastLoaded:
    """The less loaded of ``sample`` candidates picked at random (default two).

    With ``sample=None`` every candidate that fits is compared and one of the
    least loaded is chosen, ties broken at random. The default compares only
    two, picked at random ("the power of two choices", Mitzenmacher): loads are
    *reported* by workers, so between two reports the coordinator sees the
    same numbers for every job it places. Choosing the global minimum then
    sends the whole burst to the one worker that looked idle, until it is
    full (the herd effect of stale information, Mitzenmacher, "How useful is
    old information?", 2000), while two random choices spread the burst and
    still avoid busy workers. With fresh loads two choices are nearly as good
    as all of them: placing ``n`` jobs on ``n`` workers, the busiest gets
    ``ln ln n / ln 2`` jobs plus a constant, against ``ln n / ln ln n`` at
    random (Azar, Broder, Karlin and Upfal, "Balanced allocations", 1999).
    So ``sample=None`` is the better choice only when every load is fresh,
    e.g. computed by the caller from its own count of the jobs in flight.

    In general the chosen candidate is at most as loaded as ``sample - 1``
    other candidates that fit (as many as there are, if fewer); with
    ``sample=2`` it is never the only most loaded one.

    Args:
      rng: the source of every random choice.
      sample: how many candidates to compare, ``>= 1``, or ``None`` for all.

    .. versionadded:: 0.1
    """

    def __init__(self, rng: random.Random, *, sample: int | None = 2) -> None:
        if sample is not None and sample < 1:
            raise ValueError(f"sample must be >= 1 (or None for all candidates), not {sample}")
        self._rng = rng
        self.sample = sample

    def __repr__(self) -> str:
        return f"LeastLoaded(sample={self.sample})"

    def choose(self, job: Job[object], candidates: Sequence[Candidate]) -> Candidate | None:
        fits = eligible(job, candidates)
        if not fits:
            return None
        if self.sample is None or self.sample >= len(fits):
            low = min(c.load for c in fits)
            return self._rng.choice([c for c in fits if c.load == low])
        # `sample` returns its picks in random order, so the first of the least
        # loaded among them is a random one of them: ties are broken at random.
        return min(self._rng.sample(fits, self.sample), key=_load)


def _load(candidate: Candidate) -> float:
    return candidate.load


# -- lowest latency ---------------------------------------------------------------------


@final
class LowestLatency:
    """The candidate with the smallest round-trip time; ties broken at random.

    A candidate whose round trip is unknown (``rtt is None``) counts as slower
    than any measured one, so it is chosen only when no candidate that fits
    has been measured. Only capacity stops the nearest worker from taking every
    job: once it is full the next nearest takes over.

    .. versionadded:: 0.1
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __repr__(self) -> str:
        return "LowestLatency()"

    def choose(self, job: Job[object], candidates: Sequence[Candidate]) -> Candidate | None:
        fits = eligible(job, candidates)
        if not fits:
            return None
        best = min(_latency(c) for c in fits)
        return self._rng.choice([c for c in fits if _latency(c) == best])


def _latency(candidate: Candidate) -> float:
    return math.inf if candidate.rtt is None else candidate.rtt


# -- consistent hashing -----------------------------------------------------------------


def _hash(text: str) -> int:
    # A stable 64-bit hash: the same in every process and every Python version
    # (hash() is salted per process). Changing it would move every key.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


# Above this many workers joining or leaving at once, the ring is rebuilt by one
# sort instead of point by point (each point inserted or deleted moves the tail
# of the ring's lists; a sort costs about as much as a few dozen of those).
_INCREMENTAL_LIMIT = 16


@final
@attrs.frozen
class RingStatistics:
    """Counters of a :class:`ConsistentHash` (``ConsistentHash.statistics()``).

    .. versionadded:: 0.1
    """

    workers: int
    """Workers on the ring now."""
    points: int
    """Virtual nodes on the ring now (``workers * replicas``)."""
    hashed: int
    """Virtual nodes hashed since the strategy was made."""
    rebuilds: int
    """Times the ring was sorted from scratch."""
    updates: int
    """Times workers were added or removed point by point."""


@final
class ConsistentHash:
    """The first worker clockwise from the job's key on a hash ring.

    Each worker address is hashed to ``replicas`` points ("virtual nodes") on
    a ring of 64-bit numbers (blake2b, stable across processes); a job's key
    is hashed onto the same ring and goes to the owner of the next point
    clockwise (Karger et al., 1997). Adding one worker to ``n`` moves only the
    keys it takes over, about ``1/(n + 1)`` of them, and removing one moves
    only its own keys; with 100 virtual nodes each worker owns its fair share
    of the ring within about 10% (one standard deviation).

    A worker that lacks a tag or is full is passed over and the walk goes on
    clockwise to the next worker that fits, so a busy worker sheds its keys to
    its neighbours only while it is busy (the idea of "consistent hashing
    with bounded loads", Mirrokni, Thorup and Zadimoghaddam, 2018). The ring
    itself is built over *every* candidate's address, fitting or not, so
    load never moves it.

    The ring is cached for the set of addresses last seen. When that set
    changes, only the workers that joined are hashed, and a few changes are
    applied point by point, so while membership is stable a call costs
    ``O(candidates)``, a binary search, and a walk past the points of the
    workers that do not fit.

    A job without a key goes to ``fallback`` if one is given; otherwise it is
    a :exc:`ValueError`, since a key is what this strategy is for and placing
    keyless jobs anywhere would hide the mistake.

    Args:
      replicas: virtual nodes per worker, ``>= 1``.
      fallback: the strategy for jobs without a key.

    .. versionadded:: 0.1
    """

    def __init__(self, replicas: int = 100, *, fallback: BalanceStrategy | None = None) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, not {replicas}")
        self.replicas = replicas
        self.fallback = fallback
        self._workers: frozenset[str] = frozenset()
        self._vnodes: dict[str, list[int]] = {}  # address -> its points, for each worker on it
        # The ring, sorted by (point, owner): two parallel lists, so that
        # bisect searches plain ints.
        self._points: list[int] = []
        self._owners: list[str] = []
        self._hashed = 0
        self._rebuilds = 0
        self._updates = 0

    def __repr__(self) -> str:
        return f"ConsistentHash(replicas={self.replicas}, workers={len(self._workers)})"

    def statistics(self) -> RingStatistics:
        """The ring's size and how much work keeping it up to date has cost."""
        return RingStatistics(
            workers=len(self._workers),
            points=len(self._points),
            hashed=self._hashed,
            rebuilds=self._rebuilds,
            updates=self._updates,
        )

    def choose(self, job: Job[object], candidates: Sequence[Candidate]) -> Candidate | None:
        if job.key is None:
            if self.fallback is not None:
                return self.fallback.choose(job, candidates)
            raise ValueError(
                f"consistent hashing needs a key, and this {job.kind!r} job has none: "
                "give the job a key (the data it works on, say), or make the strategy "
                "with ConsistentHash(fallback=...) to place keyless jobs another way"
            )
        fits = {c.worker: c for c in candidates if c.can_take(job)}
        if not fits:
            return None
        self._sync(frozenset(c.worker for c in candidates))
        points, owners = self._points, self._owners
        start = bisect_right(points, _hash(job.key))
        # Some owner fits, and every candidate is on the ring: the walk ends
        # within one turn.
        n = len(points)
        for step in range(n):
            chosen = fits.get(owners[(start + step) % n])
            if chosen is not None:
                return chosen
        raise AssertionError("unreachable: a fitting candidate is missing from the ring")

    def _sync(self, workers: frozenset[str]) -> None:
        if workers == self._workers:
            return
        joined = workers - self._workers
        left = self._workers - workers
        self._workers = workers
        if not self._points or len(joined) + len(left) > _INCREMENTAL_LIMIT:
            for worker in left:
                del self._vnodes[worker]
            for worker in joined:
                self._vnodes[worker] = self._hash_worker(worker)
            ring = sorted((p, w) for w, ps in self._vnodes.items() for p in ps)
            self._points = [p for p, _ in ring]
            self._owners = [w for _, w in ring]
            self._rebuilds += 1
            return
        points, owners = self._points, self._owners
        for worker in left:
            for p in self._vnodes.pop(worker):
                i = bisect_left(points, p)
                while owners[i] != worker:  # (another worker's point at the same place)
                    i += 1
                del points[i], owners[i]
        for worker in sorted(joined):
            vnodes = self._vnodes[worker] = self._hash_worker(worker)
            for p in vnodes:
                i = bisect_left(points, p)
                while i < len(points) and points[i] == p and owners[i] < worker:
                    i += 1
                points.insert(i, p)
                owners.insert(i, worker)
        self._updates += 1

    def _hash_worker(self, worker: str) -> list[int]:
        # "#" ends the address, so no (address, replica) pair spells another's.
        self._hashed += self.replicas
        return [_hash(f"{worker}#{i}") for i in range(self.replicas)]


# -- by name ----------------------------------------------------------------------------


_FACTORIES: dict[str, Callable[[random.Random], BalanceStrategy]] = {
    "random": RandomChoice,
    "round-robin": lambda rng: RoundRobin(),
    "least-loaded": LeastLoaded,
    "lowest-latency": LowestLatency,
    "consistent-hash": lambda rng: ConsistentHash(),
}

STRATEGY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
"""The names :func:`strategy_by_name` knows, e.g. for a command line's choices."""


def strategy_by_name(name: str, rng: random.Random) -> BalanceStrategy:
    """A new strategy with its default settings, by its configuration name.

    Args:
      name: one of :data:`STRATEGY_NAMES`: ``"random"``, ``"round-robin"``,
        ``"least-loaded"``, ``"lowest-latency"``, ``"consistent-hash"``.
      rng: the source of randomness (ignored by the strategies that need none).

    Raises:
      ValueError: ``name`` is not one of them; the message lists them.

    .. versionadded:: 0.1
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(
            f"unknown balancing strategy {name!r}; choose one of: {', '.join(STRATEGY_NAMES)}"
        )
    return factory(rng)
