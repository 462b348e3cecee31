"""Job kinds and handlers that ship with trioactors, with a use.

``trioactors node --workers N`` registers :data:`HANDLERS` on its worker
pool, so the command line, the tests, the benchmarks and the demo can send
these jobs to any node of a cluster:

- :data:`ECHO`: returns its payload (measures the queue's own cost);
- :data:`SLEEP`: sleeps the given seconds, returns them (simulates I/O-bound work);
- :data:`DIGEST`: the SHA-256 of a text, hashed ``rounds`` times (CPU-bound work);
- :data:`~trioactors.examples.wordcount.WORD_COUNT_MAP` and
  :data:`~trioactors.examples.wordcount.WORD_COUNT_REDUCE`: a word count as
  map, shuffle and reduce (see :mod:`trioactors.examples.wordcount`).

.. versionadded:: 0.1
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import attrs
import trio

from .._core._jobs import JobKind
from .wordcount import WORD_COUNT_MAP, WORD_COUNT_REDUCE, count_words, sum_counts

if TYPE_CHECKING:
    from .._services._workers import Handler

__all__ = [
    "DIGEST",
    "ECHO",
    "HANDLERS",
    "SLEEP",
    "Digest",
    "digest",
    "echo",
    "sleep",
]


@attrs.frozen
class Digest:
    """The payload of a :data:`DIGEST` job."""

    text: str
    rounds: int = 1


ECHO: JobKind[object, object] = JobKind("echo", object, object)
"""Any plain data -> the same data (:func:`echo`)."""
SLEEP = JobKind("sleep", float, float)
"""Seconds to sleep -> the same seconds (:func:`sleep`)."""
DIGEST = JobKind("digest", Digest, str)
"""A :class:`Digest` -> the hex SHA-256 of its text, hashed ``rounds`` times (:func:`digest`)."""


def echo(payload: object) -> object:
    """Return the payload."""
    return payload


async def sleep(seconds: float) -> float:
    """Sleep ``seconds``, then return them."""
    await trio.sleep(seconds)
    return seconds


def digest(job: Digest) -> str:
    """The hex SHA-256 of ``job.text``, hashed ``job.rounds`` times."""
    data = job.text.encode()
    for _ in range(job.rounds):
        data = hashlib.sha256(data).digest()
    return data.hex()


HANDLERS: dict[str, Handler] = {
    ECHO.name: echo,
    SLEEP.name: sleep,
    DIGEST.name: digest,
    WORD_COUNT_MAP.name: count_words,
    WORD_COUNT_REDUCE.name: sum_counts,
}
"""Every example kind and its handler, for ``start_worker_pool(node, HANDLERS)``."""
