"""Map, shuffle, reduce on the job queue.

:func:`map_reduce` splits the work the caller gives as a sequence of inputs:
each input becomes a *map* job (any worker), whose result is a mapping of
keys to values; as map results arrive they are *shuffled*: each key goes to
one of ``partitions`` groups by a stable hash of the key, collecting its
values from every map result; each group becomes a *reduce* job (keyed by its
partition number, so the ``consistent-hash`` strategy sends a partition to
the same worker every time), which folds each key's values into one; the
reduce results, whose keys are disjoint, are merged into the answer.

Keys are strings (they travel as JSON object keys). The first job that fails
fails the whole computation with its :exc:`~trioactors.JobError` (the other
jobs are abandoned): a partial answer would look like a whole one.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._core._jobs import JobKind
    from ._jobs import JobQueue

__all__ = ["map_reduce", "partition_of"]

P = TypeVar("P")
V = TypeVar("V")


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: stable across processes and runs."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


async def map_reduce(
    queue: JobQueue,
    inputs: Iterable[P],
    *,
    map_kind: JobKind[P, dict[str, V]],
    reduce_kind: JobKind[dict[str, list[V]], dict[str, V]],
    partitions: int = 8,
    timeout: float | None = None,
) -> dict[str, V]:
    """Run ``map_kind`` on every input, group the values by key, run
    ``reduce_kind`` on each group of keys, and merge the results.

    Args:
      queue: the job queue that runs the jobs.
      inputs: the parts of the work, one map job each (read lazily).
      map_kind: input -> ``{key: value}``.
      reduce_kind: ``{key: [value, ...]}`` -> ``{key: value}``, for the keys
        of one partition.
      partitions: how many reduce jobs at most (fewer if fewer keys).
      timeout: per job (default: the queue's ``default_timeout``).

    Raises:
      JobError: the first job that failed, as it failed.

    .. versionadded:: 0.1
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    groups: list[dict[str, list[V]]] = [{} for _ in range(partitions)]
    async with queue.submit_many(map_kind.job(i, timeout=timeout) for i in inputs) as results:
        async for result in results:
            for key, value in result.unwrap().items():
                groups[partition_of(key, partitions)].setdefault(key, []).append(value)
    reduces = [
        reduce_kind.job(group, key=f"partition-{i}", timeout=timeout)
        for i, group in enumerate(groups)
        if group
    ]
    answer: dict[str, V] = {}
    async with queue.submit_many(reduces) as results:
        async for result in results:
            answer.update(result.unwrap())
    return answer
