"""A word count as map, shuffle and reduce across the cluster.

Each part of the text is counted by a map job (:func:`count_words`), the
counts are grouped by word into partitions, and each partition's counts are
summed by a reduce job (:func:`sum_counts`)::

    counts = await word_count(queue, text, parts=16)

Workers need both handlers: ``start_worker_pool(node, HANDLERS)`` from
:mod:`trioactors.examples` registers them.

.. versionadded:: 0.1
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

from .._core._jobs import JobKind
from .._services._mapreduce import map_reduce

if TYPE_CHECKING:
    from .._services._jobs import JobQueue

__all__ = [
    "WORD_COUNT_MAP",
    "WORD_COUNT_REDUCE",
    "count_words",
    "split_text",
    "sum_counts",
    "word_count",
]

WORD_COUNT_MAP = JobKind("wordcount.map", str, dict[str, int])
"""A part of the text -> how often each word occurs in it."""
WORD_COUNT_REDUCE = JobKind("wordcount.reduce", dict[str, list[int]], dict[str, int])
"""Each word's counts from every part -> its total."""

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")


def count_words(text: str) -> dict[str, int]:
    """How often each word occurs in ``text`` (case-folded; letters and apostrophes)."""
    return dict(Counter(w.casefold() for w in _WORD.findall(text)))


def sum_counts(groups: dict[str, list[int]]) -> dict[str, int]:
    """Each word's total."""
    return {word: sum(counts) for word, counts in groups.items()}


def split_text(text: str, parts: int) -> list[str]:
    """``text`` cut into at most ``parts`` pieces of about equal size, at line ends."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, not {parts}")
    lines = text.splitlines(keepends=True)
    size = max(1, -(-len(lines) // parts))
    return ["".join(lines[i : i + size]) for i in range(0, len(lines), size)]


async def word_count(
    queue: JobQueue, text: str, *, parts: int = 16, partitions: int = 4
) -> dict[str, int]:
    """Count the words of ``text`` on the cluster's workers."""
    return await map_reduce(
        queue,
        split_text(text, parts),
        map_kind=WORD_COUNT_MAP,
        reduce_kind=WORD_COUNT_REDUCE,
        partitions=partitions,
    )
