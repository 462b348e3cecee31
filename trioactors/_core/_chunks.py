"""File chunks: the sender's plan and window, the receiver's assembly (pure).

Theory of operation
-------------------

A file of ``size`` bytes travels as ``count = ceil(size / chunk_size)``
chunks (:class:`ChunkPlan`); chunk ``i`` is the bytes at
``[i * chunk_size, min(size, (i + 1) * chunk_size))`` and carries the
SHA-256 of its bytes. The whole file's SHA-256 is announced before the
first chunk.

The receiver (:class:`Assembly`) takes chunks strictly in order. Its only
state is ``next`` (the index of the first chunk it does not have) and the
running SHA-256 of the chunks ``0 .. next - 1``. Events and verdicts of
:meth:`Assembly.accept`:

- chunk ``next`` whose bytes hash to its digest and whose length is the
  plan's: :class:`Accepted`; ``next`` advances and the running hash takes
  the bytes (the caller appends them to its partial file);
- an index ``< next``: ``Rejected(DUPLICATE)`` (a resend, a duplicated
  frame: harmless);
- an index ``> next``: ``Rejected(OUT_OF_ORDER)`` (a chunk before it was
  lost or rejected);
- an index outside the plan: ``Rejected(OUT_OF_RANGE)``;
- chunk ``next`` of the wrong length: ``Rejected(BAD_LENGTH)``; with bytes
  that do not match its digest: ``Rejected(CORRUPT)``.

Every verdict carries ``next``, so the sender always learns where the
receiver stands. Once every chunk is in (``complete``), :meth:`Assembly.finish`
compares the running hash with the announced one: :class:`Accepted`, or
``Rejected(HASH_MISMATCH)`` (``Rejected(INCOMPLETE)`` before that).

Resuming: the receiver's partial file holds exactly the accepted chunks. A
receiver that lost its in-memory state (a restart) builds a fresh
:class:`Assembly` and feeds it the partial file's chunks through the same
:meth:`~Assembly.accept`; ``next_needed()`` is then where the sender goes on.

The sender (:class:`SendWindow`) is go-back-N over a window of chunks in
flight. :meth:`~SendWindow.take` hands out the next chunk to send, tagged
with the window's *epoch*; every answer and every loss comes back with the
index and epoch it was sent with:

- any answer moves ``acked`` up to the receiver's ``next`` (and skips the
  sending position ahead if the receiver already has more);
- ``OUT_OF_ORDER``, ``CORRUPT`` or ``BAD_LENGTH`` in the current epoch
  rewinds: sending starts again at the receiver's ``next`` in a new epoch.
  The answers still on their way about chunks of older epochs, which were
  sent behind the rejected one and are rejected in turn, are then only
  used for ``acked``: one bad chunk costs one rewind, not one per chunk in
  flight;
- more than ``max_corrupt`` rejections of one chunk (or ``OUT_OF_RANGE``,
  or a verdict no chunk answer can have) fail the window (``failed``);
- a chunk of the current epoch that got no answer (a lost frame, a broken
  connection) and that the receiver does not have yet stalls the window
  (``stalled``): the shell stops the round, asks the receiver where it
  stands and calls :meth:`~SendWindow.resume` with the answer, which starts
  a new round (answers from earlier rounds are ignored from then on).

Invariants (checked by the tests):

- ``0 <= next_needed() <= count``, and ``next`` never decreases;
- the running hash is the SHA-256 of exactly the accepted chunks, in
  order; so whatever the duplicates, losses, corruptions and restarts, the
  bytes accepted are the file's bytes, and a whole-file hash that differs
  from the announced one is detected by ``finish``;
- a rejected chunk leaves the assembly unchanged;
- ``acked <= count``; ``0 <= in_flight <= window``; while neither ``done``,
  ``stalled`` nor ``failed``, there is a chunk in flight or one to take.

Also here: :func:`check_name`, the path rules for file names that come from
peers, and the errors of file transfers.
"""

from __future__ import annotations

import enum
import hashlib
from typing import TYPE_CHECKING, final

import attrs

from .._errors import TrioactorsError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "RESERVED_PREFIX",
    "Accepted",
    "Assembly",
    "ChunkCorrupted",
    "ChunkPlan",
    "FileTransferError",
    "HashMismatch",
    "Reason",
    "Rejected",
    "SendWindow",
    "UnsafeFileName",
    "check_digest",
    "check_name",
    "check_version",
    "digest_of",
]

CHUNK_SIZE = 256 * 1024
"""Default chunk size: 256 KiB (a JSON frame carries it in base64, about 342 KiB)."""
MAX_CHUNK_SIZE = 4 * 1024 * 1024
"""The largest chunk a receiver agrees to (the transport's frame limit is usually lower)."""
MAX_NAME_LENGTH = 1024
"""Longest file name (a relative path) a receiver accepts, in characters."""
MAX_VERSION_LENGTH = 128
"""Longest version string."""
RESERVED_PREFIX = ".trioactors-"
"""No component of a file name may start with this: the partial files and the
manifest live under such names."""

_HEX = frozenset("0123456789abcdef")


# -- errors ----------------------------------------------------------------------------


class FileTransferError(TrioactorsError):
    """A file could not be distributed to a node.

    Appears as ``error`` in a :class:`~trioactors.PushResult` (a push never
    raises for one node's failure); ``__cause__`` holds the underlying error
    (``NodeUnreachable``, ``AskTimeout``, ...) when there is one. The node
    keeps the version it held before.

    .. versionadded:: 0.1
    """


class ChunkCorrupted(FileTransferError):
    """A chunk arrived corrupted (its bytes did not match its SHA-256) again and
    again, more often than the sender resends one chunk.

    .. versionadded:: 0.1
    """


class HashMismatch(FileTransferError):
    """Every chunk arrived intact, but the whole file's SHA-256 is not the one
    announced: the source changed while it was being pushed, or a partial file
    was damaged on the receiver's disk. The receiver discarded it; push again.

    .. versionadded:: 0.1
    """


class UnsafeFileName(FileTransferError, ValueError):
    """A file name that could escape the target directory or clash with
    the service's own files: absolute, with ``..``, empty components,
    backslashes, control characters, or a ``.trioactors-`` component.

    .. versionadded:: 0.1
    """


# -- names -------------------------------------------------------------------------------


def check_name(name: object) -> str:
    """``name`` if it is a safe file name (a relative POSIX path); else raise.

    Safe: a non-empty ``str`` of at most ``MAX_NAME_LENGTH`` characters, no
    control characters or backslashes, not absolute, made of components
    that are neither empty, ``.`` nor ``..``, at most 255 bytes each in
    UTF-8, and none starting with ``.trioactors-``.

    Raises:
      UnsafeFileName: it is not.
    """
    if type(name) is not str or not name:
        raise UnsafeFileName(f"a file name is a non-empty string, not {name!r:.80}")
    if len(name) > MAX_NAME_LENGTH:
        raise UnsafeFileName(f"file name longer than {MAX_NAME_LENGTH} characters: {name:.80}...")
    if any(ord(c) < 32 or c in "\\\x7f" for c in name):
        raise UnsafeFileName(f"file name {name!r} has a backslash or control character")
    if name.startswith("/"):
        raise UnsafeFileName(f"file name {name!r} is absolute; names are relative paths")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeFileName(
                f"file name {name!r} has an empty, '.' or '..' component; "
                "names are relative paths inside the target directory"
            )
        if part.startswith(RESERVED_PREFIX):
            raise UnsafeFileName(
                f"file name {name!r}: names starting {RESERVED_PREFIX!r} are reserved"
            )
        if len(part.encode()) > 255:
            raise UnsafeFileName(f"file name {name!r} has a component longer than 255 bytes")
    return name


def check_version(version: object) -> str:
    """``version`` if it is a valid version string; else raise ``ValueError``.

    Valid: a non-empty ``str`` of at most ``MAX_VERSION_LENGTH`` printable characters.
    """
    if type(version) is not str or not version or len(version) > MAX_VERSION_LENGTH:
        raise ValueError(
            f"a version is a non-empty string of at most {MAX_VERSION_LENGTH} characters, "
            f"not {version!r:.80}"
        )
    if not version.isprintable():
        raise ValueError(f"version {version!r} has non-printable characters")
    return version


def check_digest(digest: object) -> str:
    """``digest`` if it is a SHA-256 in lower-case hex; else raise ``ValueError``."""
    if type(digest) is not str or len(digest) != 64 or not _HEX.issuperset(digest):
        raise ValueError(f"a SHA-256 is 64 lower-case hex digits, not {digest!r:.80}")
    return digest


def digest_of(data: bytes) -> str:
    """The SHA-256 of ``data``, in lower-case hex."""
    return hashlib.sha256(data).hexdigest()


# -- the plan --------------------------------------------------------------------------


@final
@attrs.frozen
class ChunkPlan:
    """How a file of ``size`` bytes is cut into chunks of ``chunk_size`` bytes.

    .. versionadded:: 0.1
    """

    size: int
    chunk_size: int = CHUNK_SIZE

    def __attrs_post_init__(self) -> None:
        if type(self.size) is not int or self.size < 0:
            raise ValueError(f"size must be a whole number >= 0, not {self.size!r}")
        if type(self.chunk_size) is not int or not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk_size must be a whole number in 1..{MAX_CHUNK_SIZE}, not {self.chunk_size!r}"
            )

    @property
    def count(self) -> int:
        """How many chunks (0 for an empty file)."""
        return -(-self.size // self.chunk_size)

    def offset(self, index: int) -> int:
        """Where chunk ``index`` starts in the file."""
        self._check(index)
        return index * self.chunk_size

    def length(self, index: int) -> int:
        """How many bytes chunk ``index`` holds (the last one may be short)."""
        self._check(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """``(index, offset, length)`` of every chunk, in order."""
        for index in range(self.count):
            offset = index * self.chunk_size
            yield index, offset, min(self.chunk_size, self.size - offset)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"chunk {index} is not in 0..{self.count - 1}")


# -- verdicts ------------------------------------------------------------------------------


class Reason(enum.Enum):
    """Why a chunk (or a whole file) was rejected.

    .. versionadded:: 0.1
    """

    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    OUT_OF_RANGE = "out_of_range"
    BAD_LENGTH = "bad_length"
    CORRUPT = "corrupt"
    INCOMPLETE = "incomplete"
    HASH_MISMATCH = "hash_mismatch"


@final
@attrs.frozen
class Accepted:
    """The chunk (or, from ``finish``, the whole file) was taken.

    ``next`` is the receiver's next needed chunk; ``complete`` whether that
    was the last.

    .. versionadded:: 0.1
    """

    next: int
    complete: bool


@final
@attrs.frozen
class Rejected:
    """The chunk (or the whole file) was not taken, for ``reason``; ``next``
    is the receiver's next needed chunk.

    .. versionadded:: 0.1
    """

    reason: Reason
    next: int


Verdict = Accepted | Rejected


# -- the receiver ------------------------------------------------------------------------


@final
class Assembly:
    """The receiver's side of one file: which chunk comes next, and the running hash.

    See the module docstring for the rules. No I/O: the caller writes each
    accepted chunk to its partial file.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str, version: str, size: int, sha256: str, chunk_size: int) -> None:
        self.name = check_name(name)
        self.version = check_version(version)
        self.sha256 = check_digest(sha256)
        self.plan = ChunkPlan(size, chunk_size)
        self._next = 0
        self._received = 0
        self._hash = hashlib.sha256()

    def __repr__(self) -> str:
        return (
            f"<Assembly {self.name!r} {self.version!r} "
            f"{self._next}/{self.plan.count} chunks, {self._received}/{self.size} bytes>"
        )

    @property
    def size(self) -> int:
        return self.plan.size

    @property
    def chunk_size(self) -> int:
        return self.plan.chunk_size

    @property
    def complete(self) -> bool:
        """Whether every chunk has been accepted."""
        return self._next == self.plan.count

    @property
    def received(self) -> int:
        """Bytes accepted so far (the length the partial file should have)."""
        return self._received

    def next_needed(self) -> int:
        """The index of the first chunk not accepted yet (``count`` once complete)."""
        return self._next

    def digest(self) -> str:
        """The SHA-256 of the bytes accepted so far (lower-case hex)."""
        return self._hash.hexdigest()

    def accept(self, index: int, data: bytes, digest: str) -> Verdict:
        """Take chunk ``index`` with bytes ``data`` and claimed SHA-256 ``digest``."""
        plan = self.plan
        if not 0 <= index < plan.count:
            return Rejected(Reason.OUT_OF_RANGE, self._next)
        if index < self._next:
            return Rejected(Reason.DUPLICATE, self._next)
        if index > self._next:
            return Rejected(Reason.OUT_OF_ORDER, self._next)
        if len(data) != plan.length(index):
            return Rejected(Reason.BAD_LENGTH, self._next)
        if hashlib.sha256(data).hexdigest() != digest:
            return Rejected(Reason.CORRUPT, self._next)
        self._hash.update(data)
        self._received += len(data)
        self._next += 1
        return Accepted(self._next, self.complete)

    def finish(self) -> Verdict:
        """Check the whole file: :class:`Accepted` if complete and its hash is the announced one."""
        if not self.complete:
            return Rejected(Reason.INCOMPLETE, self._next)
        if self._hash.hexdigest() != self.sha256:
            return Rejected(Reason.HASH_MISMATCH, self._next)
        return Accepted(self._next, True)


# -- the sender ----------------------------------------------------------------------------

_REWIND = frozenset({Reason.OUT_OF_ORDER, Reason.CORRUPT, Reason.BAD_LENGTH})


@final
class SendWindow:
    """The sender's side of one file to one receiver: go-back-N over ``window`` chunks.

    See the module docstring. ``start`` is the receiver's answer to the
    offer (0, or where a partial file left off).

    Counters: ``sent`` (chunks handed out), ``resent`` (of those, chunks
    handed out before), ``rewinds``, ``corrupt`` (chunks the receiver found
    corrupt).

    .. versionadded:: 0.1
    """

    def __init__(
        self, plan: ChunkPlan, *, start: int = 0, window: int = 4, max_corrupt: int = 5
    ) -> None:
        if type(window) is not int or window < 1:
            raise ValueError(f"window must be a whole number >= 1, not {window!r}")
        if type(max_corrupt) is not int or max_corrupt < 0:
            raise ValueError(f"max_corrupt must be a whole number >= 0, not {max_corrupt!r}")
        self.plan = plan
        self.window = window
        self.max_corrupt = max_corrupt
        self.failed: Reason | None = None
        """Why the window gave up, if it did."""
        self.stalled = False
        """A chunk went unanswered: ask the receiver where it stands, then :meth:`resume`."""
        self.sent = 0
        self.resent = 0
        self.rewinds = 0
        self.corrupt = 0
        self._epoch = 0
        self._round = 0  # the epoch the current round started with
        self._high = 0  # one past the highest index ever handed out
        self._corrupt: dict[int, int] = {}
        self._in_flight = 0
        self._pos = self._acked = 0
        self.resume(start)

    def __repr__(self) -> str:
        return (
            f"<SendWindow acked {self._acked}/{self.plan.count} next {self._pos} "
            f"in flight {self._in_flight} epoch {self._epoch}>"
        )

    @property
    def acked(self) -> int:
        """The receiver has every chunk below this one."""
        return self._acked

    @property
    def in_flight(self) -> int:
        """Chunks of this round handed out and not answered nor lost yet."""
        return self._in_flight

    @property
    def done(self) -> bool:
        """Whether the receiver has every chunk."""
        return self.failed is None and self._acked >= self.plan.count

    def resume(self, start: int) -> None:
        """Start a round from chunk ``start``: the receiver's answer to an offer.

        Forgets what is in flight (the shell has stopped waiting for it) and
        clears ``stalled``.
        """
        if type(start) is not int or not 0 <= start <= self.plan.count:
            raise ValueError(f"start must be in 0..{self.plan.count}, not {start!r}")
        self._epoch += 1
        self._round = self._epoch
        self._in_flight = 0
        self._pos = self._acked = start
        self.stalled = False

    def take(self) -> tuple[int, int] | None:
        """``(index, epoch)`` of the next chunk to send, or None: the window is full,
        everything is sent, or the round is over (done, stalled or failed)."""
        if (
            self.failed is not None
            or self.stalled
            or self._in_flight >= self.window
            or self._pos >= self.plan.count
        ):
            return None
        index = self._pos
        self._pos += 1
        self._in_flight += 1
        self.sent += 1
        if index < self._high:
            self.resent += 1
        else:
            self._high = index + 1
        return index, self._epoch

    def on_answer(self, index: int, epoch: int, verdict: Verdict) -> None:
        """The receiver answered chunk ``index`` (sent in ``epoch``) with ``verdict``."""
        if epoch < self._round:
            return  # from an earlier round: resume() already forgot it
        self._in_flight -= 1
        if verdict.next > self._acked:
            self._acked = min(verdict.next, self.plan.count)
        if self._pos < self._acked:
            self._pos = self._acked
        if isinstance(verdict, Rejected):
            reason = verdict.reason
            if reason in (Reason.CORRUPT, Reason.BAD_LENGTH):
                self.corrupt += 1
                times = self._corrupt[index] = self._corrupt.get(index, 0) + 1
                if times > self.max_corrupt:
                    self.failed = Reason.CORRUPT
                    return
            if reason in _REWIND:
                if epoch == self._epoch:
                    self._rewind()
            elif reason is not Reason.DUPLICATE:
                self.failed = reason  # (out of range, or not a chunk's verdict)
                return
        if not self._in_flight and self._pos >= self.plan.count and self._acked < self.plan.count:
            # everything sent and answered, yet not all taken: the rewinding
            # answer belonged to an older epoch. Send the rest again.
            self._rewind()

    def on_lost(self, index: int, epoch: int) -> None:
        """Chunk ``index`` (sent in ``epoch``) got no answer (timeout, broken connection)."""
        if epoch < self._round:
            return
        self._in_flight -= 1
        if epoch == self._epoch and index >= self._acked:
            self.stalled = True
        elif not self._in_flight and self._pos >= self.plan.count and self._acked < self.plan.count:
            self._rewind()

    def _rewind(self) -> None:
        self._pos = self._acked
        self._epoch += 1
        self.rewinds += 1
