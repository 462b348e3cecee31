"""File distribution: push a file or a directory to every node, or to some.

Theory of operation
-------------------

Each node that takes files runs the ``$files`` actor (:func:`start_files`),
which owns one *directory*: every file it installs lives under it, at the
relative path the pusher named it by, and ``.trioactors-manifest.json``
there records what it holds (:class:`FileVersion`: name, version, size,
SHA-256). The same :class:`FileService` pushes: :meth:`FileService.push`
streams a file from this node to the ``$files`` actor of each target, in
parallel, and reports per node (:class:`PushReport`).

One file to one node is a conversation of asks, all registered attrs
classes under ``$files.*`` tags, each answered with an :class:`Answer`
(a status and the receiver's next needed chunk):

1. :class:`Offer` (name, version, size, SHA-256, chunk size). The receiver
   answers ``HELD`` if its manifest already has that version with that
   hash (nothing is sent), ``REFUSED`` for a name that could leave its
   directory (see :func:`~trioactors._core._chunks.check_name`) or a file
   over its ``max_size``, else ``OK`` with the index of the first chunk it
   needs: 0, or where its partial file left off.
2. :class:`Chunk` (index, bytes, the chunk's SHA-256), ``window`` of them in
   flight at a time (go-back-N, :class:`~trioactors._core._chunks.SendWindow`).
   The receiver checks each with an
   :class:`~trioactors._core._chunks.Assembly` (in order, digest, length),
   appends the bytes to its partial file and answers ``OK``, or rejects it
   (``CORRUPT``, ``OUT_OF_ORDER``, ``DUPLICATE``, ...), always with its next
   needed chunk, from where the sender goes on.
3. :class:`Commit`. The receiver compares the file's running SHA-256 with
   the announced one, and installs: fsync the partial file, rename it over
   the target (atomic: the target path holds the old content or the new,
   never a mixture), fsync the directory, record the version in the
   manifest (written the same way). Or it answers ``HASH_MISMATCH``, deletes
   the partial file and keeps the old version.

Backpressure and memory: the sender reads each chunk from disk when it is
about to send it and holds at most ``window`` chunks per target; a remote
ask waits while the connection's send queue is full; the receiver writes
each chunk before it answers, its mailbox is small (``MAILBOX_SIZE``), and a
full mailbox holds up the connection. A file is never whole in memory on
either side.

Resume: the partial file (``.trioactors-<key>.part`` next to the target,
the key derived from name, version, hash and size) holds exactly the chunks
accepted. A sender whose chunk goes unanswered (a lost frame, a broken
connection, a crashed receiver) waits (backoff), offers again and continues
from the receiver's answer; a restarted receiver rebuilds its state by
reading its partial file. A round that makes progress never counts
against ``attempts``; ``attempts`` rounds in a row without progress give up.

Concurrent pushes: a receiver keeps one transfer per (name, version), so
different versions of one name pushed at once each finish (the last commit
wins). Other content offered under a name and version already being
received is refused until that transfer has been idle for ``IDLE_TRANSFER``
seconds: replacing it at once would let two senders undo each other's work
forever.

Invariants: a target path holds either the version it held before or the
new one, complete and with the announced SHA-256; the manifest never names
a version whose install has not completed (after a crash between the
rename and the manifest write, it names the previous one, and the next
push of the new version installs it again); a name from a peer never
resolves outside the directory.

State (the manifest, transfers in progress, counters) lives in
:class:`FileService`, outside the actor, so it survives restarts of
``$files``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, assert_never, final

import attrs
import trio

from .._core._chunks import (
    CHUNK_SIZE,
    RESERVED_PREFIX,
    Accepted,
    Assembly,
    ChunkCorrupted,
    ChunkPlan,
    FileTransferError,
    HashMismatch,
    Reason,
    Rejected,
    SendWindow,
    UnsafeFileName,
    check_digest,
    check_name,
    check_version,
    digest_of,
)
from .._errors import TrioactorsError
from .._runtime._actor import Actor, Request, read_only
from .._wire._address import check_node_name
from .._wire._codec import _converter, _register_service_messages
from ..transports._base import TransportConfig

if TYPE_CHECKING:
    from collections.abc import Iterable
    from os import PathLike

    from .._runtime._actor import ActorRef
    from .._runtime._node import Node
    from .._wire._codec import MessageRegistry
    from ._membership import Membership

__all__ = [
    "Answer",
    "Chunk",
    "ChunkCorrupted",
    "Commit",
    "FileService",
    "FileStatistics",
    "FileTransferError",
    "FileVersion",
    "GetHeld",
    "HashMismatch",
    "HeldFiles",
    "Offer",
    "PushReport",
    "PushResult",
    "Status",
    "UnsafeFileName",
    "register_file_messages",
    "start_files",
]

logger = logging.getLogger("trioactors.files")

ACTOR = "$files"
MANIFEST = RESERVED_PREFIX + "manifest.json"
"""The manifest's file name, in the service's directory."""
MAILBOX_SIZE = 64
"""The ``$files`` mailbox: at most this many chunks wait on a receiver."""
MAX_TRANSFERS = 64
"""Transfers a receiver keeps in memory; the least recently used beyond that is
forgotten (its partial file stays on disk, and an offer resumes it)."""
IDLE_TRANSFER = 60.0
"""Seconds without a chunk after which a transfer gives way to an offer of other
content under the same name and version (until then, such an offer is refused)."""
RETRY_BASE = 0.1
"""Seconds before the second round of a transfer; doubles each round without progress."""
RETRY_CAP = 2.0
"""Longest wait between two rounds."""
_FRAME_OVERHEAD = 8 * 1024  # envelope, name (up to 1024 characters), version, digest
_READ_BLOCK = 1024 * 1024


# -- wire messages ----------------------------------------------------------------------


class Status(enum.Enum):
    """What an :class:`Answer` says.

    ``OK`` (offer or chunk taken), ``HELD`` (this version is installed
    already), ``INSTALLED`` (commit done), ``UNKNOWN`` (no such transfer:
    offer first), ``REFUSED`` (bad name, version, hash or size), ``FAILED``
    (the receiver's disk failed), and the reasons of
    :class:`~trioactors._core._chunks.Reason` by the same values.

    .. versionadded:: 0.1
    """

    OK = "ok"
    HELD = "held"
    INSTALLED = "installed"
    UNKNOWN = "unknown"
    REFUSED = "refused"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    OUT_OF_RANGE = "out_of_range"
    BAD_LENGTH = "bad_length"
    CORRUPT = "corrupt"
    INCOMPLETE = "incomplete"
    HASH_MISMATCH = "hash_mismatch"


@final
@attrs.frozen
class Answer:
    """The receiver's answer to :class:`Offer`, :class:`Chunk` and :class:`Commit`.

    ``next`` is the first chunk it needs (the chunk count once it has them
    all); ``detail`` explains a refusal or a failure.

    .. versionadded:: 0.1
    """

    status: Status
    next: int
    detail: str = ""


@final
@attrs.frozen
class Offer(Request[Answer]):
    """A sender has ``name`` at ``version``: which chunk should it send first?

    .. versionadded:: 0.1
    """

    name: str
    version: str
    size: int
    sha256: str
    chunk_size: int


@final
@attrs.frozen
class Chunk(Request[Answer]):
    """Chunk ``index`` of an offered file, with the SHA-256 of its bytes.

    Travels as a list; ``data`` in base64 in the JSON format, as raw bytes
    in msgpack.

    .. versionadded:: 0.1
    """

    name: str
    version: str
    index: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    sha256: str


@final
@attrs.frozen
class Commit(Request[Answer]):
    """Every chunk was sent: check the whole file and install it.

    .. versionadded:: 0.1
    """

    name: str
    version: str
    sha256: str


@final
@attrs.frozen
class FileVersion:
    """A file as a node holds it: one entry of its manifest.

    .. versionadded:: 0.1
    """

    name: str
    version: str
    size: int
    sha256: str


@final
@attrs.frozen
class HeldFiles:
    """The answer to :class:`GetHeld`: what a node holds, sorted by name.

    .. versionadded:: 0.1
    """

    files: list[FileVersion]

    def as_dict(self) -> dict[str, FileVersion]:
        return {f.name: f for f in self.files}


@read_only
@final
@attrs.frozen
class GetHeld(Request[HeldFiles]):
    """Which files, at which versions, does the node hold?

    .. versionadded:: 0.1
    """


_CLASSES: tuple[type, ...] = (Offer, Chunk, Commit, Answer, GetHeld, HeldFiles, FileVersion)


def _str(value: object, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} must be a string, not {value!r:.40}")
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, not {value!r:.40}")
    return value


def _chunk_to_json(chunk: Chunk) -> list[object]:
    data = base64.b64encode(chunk.data).decode("ascii")
    return [chunk.name, chunk.version, chunk.index, data, chunk.sha256]


def _chunk_to_msgpack(chunk: Chunk) -> list[object]:
    return [chunk.name, chunk.version, chunk.index, chunk.data, chunk.sha256]


def _chunk_fields(data: object) -> tuple[str, str, int, object, str]:
    if type(data) is not list or len(data) != 5:
        raise ValueError(f"a Chunk is [name, version, index, data, sha256], not {data!r:.80}")
    name, version, index, payload, digest = data
    return (
        _str(name, "name"),
        _str(version, "version"),
        _int(index, "index"),
        payload,
        _str(digest, "sha256"),
    )


def _chunk_from_json(data: object, _: type) -> Chunk:
    name, version, index, payload, digest = _chunk_fields(data)
    try:
        raw = base64.b64decode(_str(payload, "data"), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a Chunk's data is base64: {exc}") from None
    return Chunk(name, version, index, raw, digest)


def _chunk_from_msgpack(data: object, _: type) -> Chunk:
    name, version, index, payload, digest = _chunk_fields(data)
    if type(payload) is not bytes:
        raise ValueError(f"a Chunk's data is bytes, not {type(payload).__name__}")
    return Chunk(name, version, index, payload, digest)


def _answer_to_wire(answer: Answer) -> list[object]:
    return [answer.status.value, answer.next, answer.detail]


def _answer_from_wire(data: object, _: type) -> Answer:
    if type(data) is list and len(data) == 3:
        status, next_, detail = data
        return Answer(Status(_str(status, "status")), _int(next_, "next"), _str(detail, "detail"))
    raise ValueError(f"an Answer is [status, next, detail], not {data!r:.80}")


# Chunks and answers travel as short lists: there is one of each per 256 KiB.
# (Chunks also need the hooks for their bytes: the JSON converter's own hook
# for bytes is replaced by the codec's strict one, which only takes bytes.)
_json, _msgpack = _converter("json"), _converter("msgpack")
_json.register_unstructure_hook(Chunk, _chunk_to_json)
_json.register_structure_hook(Chunk, _chunk_from_json)
_msgpack.register_unstructure_hook(Chunk, _chunk_to_msgpack)
_msgpack.register_structure_hook(Chunk, _chunk_from_msgpack)
for _c in (_json, _msgpack):
    _c.register_unstructure_hook(Answer, _answer_to_wire)
    _c.register_structure_hook(Answer, _answer_from_wire)


def register_file_messages(registry: MessageRegistry) -> None:
    """Register the ``$files.*`` messages in ``registry``.

    :func:`start_files` does it for the node's registry; a tool that asks
    a node's ``$files`` (:class:`GetHeld`) registers them in its own.

    .. versionadded:: 0.1
    """
    _register_service_messages(registry, "$files", _CLASSES)


# -- reports ----------------------------------------------------------------------------


@final
@attrs.frozen
class PushResult:
    """How a push went for one node.

    ``bytes`` and ``chunks`` count what was sent (resends included),
    ``resent`` the chunks sent more than once, ``rounds`` the offers made
    (1 unless a transfer had to resume), ``seconds`` the time from the
    start of the push until this node was done. ``error`` is None when
    ``ok``; otherwise a :class:`FileTransferError` (its ``__cause__`` is
    the last underlying error, if any), and the node keeps its previous
    version of the file that failed (files of a directory before it are
    installed, those after it were not sent).

    .. versionadded:: 0.1
    """

    node: str
    ok: bool
    error: FileTransferError | None
    bytes: int
    chunks: int
    resent: int
    rounds: int
    seconds: float


@final
@attrs.frozen
class PushReport:
    """The outcome of :meth:`FileService.push`: the files pushed and a result per node.

    .. versionadded:: 0.1
    """

    name: str
    version: str
    files: list[FileVersion]
    results: dict[str, PushResult]

    @property
    def ok(self) -> bool:
        """Whether every target node holds every file now."""
        return all(r.ok for r in self.results.values())

    def failed(self) -> dict[str, FileTransferError]:
        """The nodes it failed on, with their errors."""
        return {n: r.error for n, r in self.results.items() if r.error is not None}

    def check(self) -> PushReport:
        """Return the report if every node succeeded; else raise the errors.

        Raises:
          ExceptionGroup: of the :class:`FileTransferError` of each node that failed.
        """
        errors = self.failed()
        if errors:
            raise ExceptionGroup(
                f"pushing {self.name!r} failed on {len(errors)} of {len(self.results)} "
                f"node(s): {', '.join(errors)}",
                list(errors.values()),
            )
        return self


@final
@attrs.frozen
class FileStatistics:
    """Counters of a :class:`FileService`.

    Receiving: ``offers``; ``chunks_received`` and ``bytes_received``
    (accepted); ``duplicates``, ``out_of_order``; ``corrupt`` (chunks whose
    bytes did not match their digest or length); ``unknown`` (chunks or
    commits for no transfer in progress); ``hash_mismatches`` (whole files
    rejected); ``refused`` (offers with an unsafe name, a bad version or
    hash, or over ``max_size``); ``resumed`` (offers that continued a
    partial file from disk); ``installs``; ``io_errors``; ``transfers``
    (in progress now).

    Sending: ``pushes`` (calls of ``push``), ``chunks_sent``,
    ``chunks_resent``, ``bytes_sent``, ``push_failures`` (node results with
    an error).

    .. versionadded:: 0.1
    """

    offers: int
    chunks_received: int
    bytes_received: int
    duplicates: int
    out_of_order: int
    corrupt: int
    unknown: int
    hash_mismatches: int
    refused: int
    resumed: int
    installs: int
    io_errors: int
    transfers: int
    pushes: int
    chunks_sent: int
    chunks_resent: int
    bytes_sent: int
    push_failures: int


@attrs.define
class _Counters:
    offers: int = 0
    chunks_received: int = 0
    bytes_received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    corrupt: int = 0
    unknown: int = 0
    hash_mismatches: int = 0
    refused: int = 0
    resumed: int = 0
    installs: int = 0
    io_errors: int = 0
    pushes: int = 0
    chunks_sent: int = 0
    chunks_resent: int = 0
    bytes_sent: int = 0
    push_failures: int = 0


# -- the actor --------------------------------------------------------------------------


_Message: TypeAlias = Offer | Chunk | Commit | GetHeld

_HANDLED = frozenset(_Message.__args__)


class _FilesActor(Actor[_Message]):
    def __init__(self, service: FileService) -> None:
        self.service = service

    async def receive(self, message: _Message) -> object:
        s = self.service
        if type(message) not in _HANDLED:  # (a peer may send any registered type)
            return await super().receive(message)
        match message:
            case Offer():
                return await s._on_offer(message)
            case Chunk():
                return await s._on_chunk(message)
            case Commit():
                return await s._on_commit(message)
            case GetHeld():
                return HeldFiles(sorted(s._manifest.values(), key=_by_name))
            case _:
                assert_never(message)


def _by_name(version: FileVersion) -> str:
    return version.name


# -- the service ------------------------------------------------------------------------


@attrs.define
class _Transfer:
    """A file being received."""

    assembly: Assembly
    target: Path
    partial: Path
    used: float


@attrs.frozen
class _Source:
    """A file being pushed."""

    name: str
    version: str
    path: Path
    size: int
    sha256: str


@attrs.define
class _Progress:
    """What one node of a push has been sent so far."""

    bytes: int = 0
    chunks: int = 0
    resent: int = 0
    rounds: int = 0


class _SourceChanged(Exception):
    pass


_Result: TypeAlias = Answer | TrioactorsError


@final
class FileService:
    """A node's file distribution; from :func:`start_files`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        directory: Path,
        membership: Membership | None,
        *,
        name: str,
        chunk_size: int,
        window: int,
        chunk_timeout: float,
        offer_timeout: float,
        attempts: int,
        max_corrupt: int,
        max_size: int | None,
    ) -> None:
        ChunkPlan(0, chunk_size)  # (checks it)
        for what, value in (("chunk_timeout", chunk_timeout), ("offer_timeout", offer_timeout)):
            if not 0 < value < math.inf:
                raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
        for what, count in (("window", window), ("attempts", attempts)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{what} must be a whole number >= 1, not {count!r}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be None or >= 0 bytes, not {max_size!r}")
        config = getattr(node.transport, "config", None)
        if isinstance(config, TransportConfig):
            frame = 4 * -(-chunk_size // 3) + _FRAME_OVERHEAD  # base64 in JSON
            if frame > config.max_frame_size:
                largest = (config.max_frame_size - _FRAME_OVERHEAD) // 4 * 3
                raise ValueError(
                    f"chunk_size={chunk_size} makes frames of up to {frame} bytes, over the "
                    f"transport's max_frame_size={config.max_frame_size}; use a chunk_size "
                    f"of at most {largest}, or raise max_frame_size on every node"
                )
        self.node = node
        self.directory = directory
        """Where this node's files live."""
        self.membership = membership
        self.name = name
        self.address = f"{name}@{node.name}"
        self.chunk_size = chunk_size
        self.window = window
        self.chunk_timeout = chunk_timeout
        self.offer_timeout = offer_timeout
        self.attempts = attempts
        self.max_corrupt = max_corrupt
        self.max_size = max_size
        self._manifest: dict[str, FileVersion] = {}
        self._transfers: dict[tuple[str, str], _Transfer] = {}  # by (name, version)
        self._n = _Counters()

    def __repr__(self) -> str:
        return f"<FileService {self.address} {str(self.directory)!r}>"

    # -- public ------------------------------------------------------------------------

    def held(self) -> dict[str, FileVersion]:
        """The files this node holds, by name (a copy of its manifest)."""
        return dict(sorted(self._manifest.items()))

    def path_of(self, name: str) -> Path:
        """Where file ``name`` is (or would be) installed on this node.

        Raises:
          UnsafeFileName: ``name`` is not a safe relative path.
        """
        return self.directory.joinpath(*check_name(name).split("/"))

    def statistics(self) -> FileStatistics:
        """A snapshot of this node's counters, as a receiver and as a sender."""
        return FileStatistics(
            **attrs.asdict(self._n, recurse=False), transfers=len(self._transfers)
        )

    async def push(
        self,
        path: str | PathLike[str],
        *,
        to: Iterable[str] | None = None,
        name: str | None = None,
        version: str | None = None,
    ) -> PushReport:
        """Push the file or directory at ``path`` (on this node) to nodes.

        A directory is pushed as each regular file under it (symbolic links
        to files followed, to directories not), one after the other, named
        ``<name>/<relative path>``, all at the same version.

        Args:
          to: names of the target nodes. ``None``: every reachable member
            (with membership; without, this node and every peer its
            transport knows), this node included.
          name: the name it gets on the targets (a relative path, default
            the last component of ``path``).
          version: any string (default: the first 16 hex digits of the
            file's SHA-256; for a directory, of a hash over its files' names
            and hashes).

        Returns:
          A :class:`PushReport`; a node that failed has an ``error`` in it
          (``report.check()`` raises them).

        Raises:
          UnsafeFileName: ``name`` (or a name in the directory) is not a safe relative path.
          ValueError: ``version`` is not a non-empty printable string, or a
            name in ``to`` is not a valid node name.
          OSError: ``path`` cannot be read (``FileNotFoundError``, ...).
        """
        if isinstance(to, str):
            raise TypeError(f"to= takes node names, e.g. to=[{to!r}], not a string")
        targets = self._targets(to)  # (before reading: a bad node name is the caller's mistake)
        self._n.pushes += 1
        root = trio.Path(path)
        base = check_name(name if name is not None else root.name)
        if version is not None:
            check_version(version)
        if await root.is_dir():
            listing = await trio.to_thread.run_sync(_walk, Path(root))
            entries = [(check_name(f"{base}/{rel}"), file) for rel, file in listing]
        else:
            entries = [(base, Path(root))]
        hashed: list[tuple[str, Path, int, str]] = []
        for entry_name, file in entries:
            size, sha256 = await trio.to_thread.run_sync(_hash_file, file)
            hashed.append((entry_name, file, size, sha256))
        if version is None:
            if len(entries) == 1 and not await root.is_dir():
                version = hashed[0][3][:16]
            else:
                lines = "".join(f"{n}\0{s}\n" for n, _, _, s in hashed)
                version = digest_of(lines.encode())[:16]
        sources = [_Source(n, version, p, size, s) for n, p, size, s in hashed]
        results: dict[str, PushResult] = {}
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(self._push_to, target, sources, started, results)
        return PushReport(
            base,
            version,
            [FileVersion(s.name, s.version, s.size, s.sha256) for s in sources],
            {t: results[t] for t in targets},
        )

    # -- sending --------------------------------------------------------------------

    def _targets(self, to: Iterable[str] | None) -> list[str]:
        if to is not None:
            return [check_node_name(t) for t in dict.fromkeys(to)]
        if self.membership is not None:
            return self.membership.alive()
        return sorted({self.node.name, *self.node.transport.peers()})

    async def _push_to(
        self, target: str, sources: list[_Source], started: float, results: dict[str, PushResult]
    ) -> None:
        progress = _Progress()
        error: FileTransferError | None = None
        try:
            ref = self.node.ref(f"{self.name}@{target}")
            for source in sources:
                await self._send_file(ref, target, source, progress)
        except FileTransferError as exc:
            error = exc
        except TrioactorsError as exc:  # (a local lookup: no $files on this node)
            error = FileTransferError(f"cannot push to {target!r}: {exc}")
            error.__cause__ = exc
        if error is not None:
            self._n.push_failures += 1
            logger.warning("%s: push to %s failed: %s", self.address, target, error)
        results[target] = PushResult(
            target,
            error is None,
            error,
            progress.bytes,
            progress.chunks,
            progress.resent,
            progress.rounds,
            trio.current_time() - started,
        )

    async def _send_file(
        self, ref: ActorRef[object], target: str, source: _Source, progress: _Progress
    ) -> None:
        """Send one file to one node, in as many rounds as it takes; raise if it cannot."""
        plan = ChunkPlan(source.size, self.chunk_size)
        offer = Offer(source.name, source.version, source.size, source.sha256, self.chunk_size)
        commit = Commit(source.name, source.version, source.sha256)
        window: SendWindow | None = None
        stalls = 0  # rounds in a row without progress
        last: TrioactorsError | None = None
        what = f"{source.name!r} ({source.version}) to {target!r}"
        while True:
            if stalls:
                if stalls >= self.attempts:
                    error = FileTransferError(
                        f"gave up pushing {what} after {stalls} attempt(s) without progress: {last}"
                    )
                    raise error from last
                await trio.sleep(min(RETRY_BASE * 2 ** (stalls - 1), RETRY_CAP))
            progress.rounds += 1
            try:
                answer = _answer(await ref.ask(offer, timeout=self.offer_timeout))
            except TrioactorsError as exc:
                stalls, last = stalls + 1, exc
                continue
            if answer.status is Status.HELD:
                return
            if answer.status is not Status.OK:
                raise FileTransferError(f"{target!r} refused {what}: {answer.detail}")
            if window is None:
                window = SendWindow(
                    plan, start=answer.next, window=self.window, max_corrupt=self.max_corrupt
                )
            else:
                window.resume(answer.next)
            start = window.acked
            sent, resent = window.sent, window.resent
            try:
                problem = await self._stream(ref, source, plan, window, progress)
            finally:
                self._n.chunks_sent += window.sent - sent
                self._n.chunks_resent += window.resent - resent
                progress.chunks += window.sent - sent
                progress.resent += window.resent - resent
            if window.failed is Reason.CORRUPT:
                raise ChunkCorrupted(
                    f"a chunk of {what} arrived corrupt more than {self.max_corrupt} time(s)"
                )
            if window.failed is not None:
                raise FileTransferError(
                    f"{target!r} rejected a chunk of {what}: {window.failed.value}"
                )
            if isinstance(problem, Answer):  # FAILED: the receiver's disk
                raise FileTransferError(f"{target!r} could not store {what}: {problem.detail}")
            if not window.done:
                stalls, last = (1 if window.acked > start else stalls + 1), problem
                continue
            try:
                answer = _answer(await ref.ask(commit, timeout=self.offer_timeout))
            except TrioactorsError as exc:
                stalls, last = stalls + 1, exc
                continue
            match answer.status:
                case Status.INSTALLED | Status.HELD:
                    return
                case Status.HASH_MISMATCH:
                    raise HashMismatch(f"{target!r} rejected {what}: {answer.detail}")
                case Status.INCOMPLETE | Status.UNKNOWN:  # it lost the transfer: offer again
                    stalls += 1
                    last = FileTransferError(f"{target!r} lost the transfer of {what}")
                case _:
                    raise FileTransferError(f"{target!r} could not install {what}: {answer.detail}")

    async def _stream(
        self,
        ref: ActorRef[object],
        source: _Source,
        plan: ChunkPlan,
        window: SendWindow,
        progress: _Progress,
    ) -> Answer | TrioactorsError | None:
        """One round: chunks in flight until done, stalled or failed.

        Returns the last transport error of a stalled round, or the ``FAILED``
        answer of a receiver that could not store a chunk.
        """
        send, receive = trio.open_memory_channel[tuple[int, int, _Result]](window.window)
        problem: Answer | TrioactorsError | None = None
        unreadable: Exception | None = None
        async with trio.open_nursery() as nursery:
            while not (window.done or window.stalled or window.failed is not None):
                while (item := window.take()) is not None:
                    index, epoch = item
                    length = plan.length(index)
                    try:
                        data, digest = await trio.to_thread.run_sync(
                            _read_chunk, source.path, plan.offset(index), length
                        )
                    except (OSError, _SourceChanged) as exc:
                        unreadable = exc
                        break
                    chunk = _make_chunk(source.name, source.version, index, data, digest)
                    progress.bytes += length
                    self._n.bytes_sent += length
                    nursery.start_soon(self._send_chunk, ref, chunk, epoch, send)
                if unreadable is not None or not window.in_flight:
                    break  # (cannot happen: see SendWindow's invariants)
                index, epoch, result = await receive.receive()
                if isinstance(result, TrioactorsError):
                    problem = result
                    window.on_lost(index, epoch)
                elif result.status is Status.UNKNOWN:
                    problem = FileTransferError(f"{ref.address} forgot the transfer")
                    window.stalled = True  # (it restarted: offer again)
                elif result.status is Status.FAILED:
                    problem = result
                    break
                else:
                    window.on_answer(index, epoch, _verdict(result))
            nursery.cancel_scope.cancel()
        if unreadable is not None:
            raise FileTransferError(
                f"{str(source.path)!r} changed or vanished while it was being pushed: {unreadable}"
            )
        return problem

    async def _send_chunk(
        self,
        ref: ActorRef[object],
        chunk: Chunk,
        epoch: int,
        results: trio.MemorySendChannel[tuple[int, int, _Result]],
    ) -> None:
        result: _Result
        try:
            result = _answer(await ref.ask(chunk, timeout=self.chunk_timeout))
        except TrioactorsError as exc:
            result = exc
        await results.send((chunk.index, epoch, result))

    # -- receiving --------------------------------------------------------------------

    async def _on_offer(self, offer: Offer) -> Answer:
        self._n.offers += 1
        try:
            name = check_name(offer.name)
            check_version(offer.version)
            check_digest(offer.sha256)
            plan = ChunkPlan(offer.size, offer.chunk_size)
            if self.max_size is not None and offer.size > self.max_size:
                raise ValueError(f"{offer.size} bytes is over this node's max_size={self.max_size}")
            target, present = await trio.to_thread.run_sync(_prepare, self.directory, name)
        except ValueError as exc:  # (UnsafeFileName too)
            self._n.refused += 1
            logger.warning("%s: refused an offer of %r: %s", self.address, offer.name, exc)
            return Answer(Status.REFUSED, 0, str(exc))
        except OSError as exc:
            return self._io_error(offer.name, exc)
        held = self._manifest.get(name)
        if (
            held is not None
            and (held.version, held.sha256, held.size) == (offer.version, offer.sha256, offer.size)
            and present == offer.size  # (not held if it was removed by hand)
        ):
            return Answer(Status.HELD, plan.count)
        key = (name, offer.version)
        now = trio.current_time()
        transfer = self._transfers.get(key)
        if transfer is not None:
            a = transfer.assembly
            if (a.sha256, a.size, a.chunk_size) == (offer.sha256, offer.size, offer.chunk_size):
                transfer.used = now
                return Answer(Status.OK, a.next_needed())
            if now - transfer.used < IDLE_TRANSFER:
                # (replacing it would let two senders undo each other's work forever)
                self._n.refused += 1
                return Answer(
                    Status.REFUSED,
                    0,
                    f"other content (or another chunk size) of {name!r} version "
                    f"{offer.version!r} is being received; give different content "
                    "different versions, and every node the same chunk_size",
                )
            self._forget(key, delete=True)
        assembly = Assembly(name, offer.version, offer.size, offer.sha256, offer.chunk_size)
        partial = target.with_name(_partial_name(offer))
        try:
            resumed = await trio.to_thread.run_sync(_rebuild, partial, assembly)
        except OSError as exc:
            return self._io_error(name, exc)
        if resumed:
            self._n.resumed += 1
            logger.info(
                "%s: resuming %r (%s) at chunk %d of %d",
                self.address,
                name,
                offer.version,
                resumed,
                plan.count,
            )
        while len(self._transfers) >= MAX_TRANSFERS:
            oldest = min(self._transfers.items(), key=lambda item: item[1].used)[0]
            self._forget(oldest, delete=False)
        self._transfers[key] = _Transfer(assembly, target, partial, trio.current_time())
        return Answer(Status.OK, assembly.next_needed())

    async def _on_chunk(self, chunk: Chunk) -> Answer:
        key = (chunk.name, chunk.version)
        transfer = self._transfers.get(key)
        if transfer is None:
            self._n.unknown += 1
            return Answer(Status.UNKNOWN, 0, "no transfer of this file in progress: offer it")
        transfer.used = trio.current_time()
        try:
            verdict = await trio.to_thread.run_sync(
                _accept_and_write,
                transfer.assembly,
                transfer.partial,
                chunk.index,
                chunk.data,
                chunk.sha256,
            )
        except OSError as exc:
            self._forget(key, delete=False)  # an offer rebuilds it from the disk
            return self._io_error(chunk.name, exc)
        if isinstance(verdict, Accepted):
            self._n.chunks_received += 1
            self._n.bytes_received += len(chunk.data)
            return Answer(Status.OK, verdict.next)
        match verdict.reason:
            case Reason.DUPLICATE:
                self._n.duplicates += 1
            case Reason.OUT_OF_ORDER:
                self._n.out_of_order += 1
            case Reason.CORRUPT | Reason.BAD_LENGTH | Reason.OUT_OF_RANGE:
                self._n.corrupt += 1
                logger.warning(
                    "%s: chunk %d of %r arrived %s",
                    self.address,
                    chunk.index,
                    chunk.name,
                    verdict.reason.value,
                )
            case Reason.INCOMPLETE | Reason.HASH_MISMATCH:  # (not from accept)
                pass
            case _:
                assert_never(verdict.reason)
        return Answer(Status(verdict.reason.value), verdict.next)

    async def _on_commit(self, commit: Commit) -> Answer:
        key = (commit.name, commit.version)
        transfer = self._transfers.get(key)
        if transfer is None or transfer.assembly.sha256 != commit.sha256:
            held = self._manifest.get(commit.name)
            if held is not None and (held.version, held.sha256) == (commit.version, commit.sha256):
                return Answer(Status.HELD, 0)
            self._n.unknown += 1
            return Answer(Status.UNKNOWN, 0, "no transfer of this file in progress: offer it")
        assembly = transfer.assembly
        verdict = assembly.finish()
        if isinstance(verdict, Rejected):
            if verdict.reason is Reason.INCOMPLETE:
                return Answer(Status.INCOMPLETE, verdict.next)
            self._n.hash_mismatches += 1
            self._forget(key, delete=True)
            detail = (
                f"the file's SHA-256 is {assembly.digest()}, not {assembly.sha256} as announced; "
                "it was discarded (the previous version stays)"
            )
            logger.warning("%s: %r (%s): %s", self.address, commit.name, commit.version, detail)
            return Answer(Status.HASH_MISMATCH, verdict.next, detail)
        version = FileVersion(assembly.name, assembly.version, assembly.size, assembly.sha256)
        manifest = {**self._manifest, version.name: version}
        try:
            await trio.to_thread.run_sync(_install, transfer.partial, transfer.target)
            del self._transfers[key]
            self._manifest = manifest
            await trio.to_thread.run_sync(
                _write_manifest, self.directory / MANIFEST, list(manifest.values())
            )
        except OSError as exc:
            self._transfers.pop(key, None)
            return self._io_error(commit.name, exc)
        self._n.installs += 1
        logger.info("%s: installed %r (%s)", self.address, version.name, version.version)
        return Answer(Status.INSTALLED, verdict.next)

    def _forget(self, key: tuple[str, str], *, delete: bool) -> None:
        transfer = self._transfers.pop(key, None)
        if transfer is not None and delete:
            try:
                transfer.partial.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("%s: cannot delete %s: %s", self.address, transfer.partial, exc)

    def _io_error(self, name: str, exc: OSError) -> Answer:
        self._n.io_errors += 1
        logger.error("%s: I/O error on %r: %s", self.address, name, exc)
        return Answer(Status.FAILED, 0, f"I/O error on the receiver: {exc}")


def _answer(reply: object) -> Answer:
    if not isinstance(reply, Answer):
        raise FileTransferError(f"the file service answered {reply!r:.80}, not an Answer")
    return reply


def _verdict(answer: Answer) -> Accepted | Rejected:
    if answer.status is Status.OK:
        return Accepted(answer.next, False)
    try:
        reason = Reason(answer.status.value)
    except ValueError:  # (a status no chunk answer has: the window fails)
        reason = Reason.OUT_OF_RANGE
    return Rejected(reason, answer.next)


def _make_chunk(name: str, version: str, index: int, data: bytes, digest: str) -> Chunk:
    """The message for one chunk (a seam for tests that corrupt chunks)."""
    return Chunk(name, version, index, data, digest)


def _partial_name(offer: Offer) -> str:
    key = f"{offer.name}\0{offer.version}\0{offer.sha256}\0{offer.size}"
    return f"{RESERVED_PREFIX}{digest_of(key.encode())[:32]}.part"


# -- blocking I/O, run in worker threads --------------------------------------------------


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root``: (relative POSIX path, path), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file in sorted(files):
            path = Path(folder, file)
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return found


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _read_chunk(path: Path, offset: int, length: int) -> tuple[bytes, str]:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise _SourceChanged(f"expected {length} bytes at offset {offset}, read {len(data)}")
    return data, digest_of(data)


def _prepare(directory: Path, name: str) -> tuple[Path, int | None]:
    """The target path of ``name`` (its directory created) and the size of the
    file there now (None: no file). Refuses names that escape through links."""
    target = directory.joinpath(*name.split("/"))
    root = directory.resolve()
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise UnsafeFileName(f"file name {name!r} leads outside {str(directory)!r} (a link?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        size: int | None = target.stat().st_size
    except FileNotFoundError:
        size = None
    return target, size


def _rebuild(partial: Path, assembly: Assembly) -> int:
    """Feed ``assembly`` the chunks already in ``partial`` (created if missing); its next chunk."""
    try:
        f = open(partial, "r+b")  # noqa: SIM115 (closed below; "x" creates it otherwise)
    except FileNotFoundError:
        with open(partial, "xb"):
            return 0
    with f:
        for index, _, length in assembly.plan:
            data = f.read(length)
            if len(data) < length or not isinstance(
                assembly.accept(index, data, digest_of(data)), Accepted
            ):
                break
        f.truncate(assembly.received)
    return assembly.next_needed()


def _accept_and_write(
    assembly: Assembly, partial: Path, index: int, data: bytes, digest: str
) -> Accepted | Rejected:
    offset = assembly.received
    verdict = assembly.accept(index, data, digest)
    if isinstance(verdict, Accepted):
        with open(partial, "r+b") as f:
            f.seek(offset)
            f.write(data)
    return verdict


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # (not on every platform)
    try:
        os.fsync(fd)
    except OSError:
        pass  # (not on every file system)
    finally:
        os.close(fd)


def _install(partial: Path, target: Path) -> None:
    with open(partial, "r+b") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    _fsync_directory(target.parent)


def _write_manifest(path: Path, files: list[FileVersion]) -> None:
    entries = [attrs.asdict(f) for f in sorted(files, key=_by_name)]
    data = json.dumps({"format": 1, "files": entries}, indent=1).encode()
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _load_manifest(directory: Path) -> dict[str, FileVersion]:
    """Create ``directory`` if needed and read its manifest (empty if there is none)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        raw: object = json.loads(text)
        if type(raw) is not dict or raw.get("format") != 1 or type(raw.get("files")) is not list:
            raise ValueError("not a manifest of format 1")
        manifest: dict[str, FileVersion] = {}
        for entry in raw["files"]:
            if type(entry) is not dict:
                raise ValueError(f"entry {entry!r:.80} is not an object")
            name, version = entry.get("name"), entry.get("version")
            size, sha256 = entry.get("size"), entry.get("sha256")
            if type(size) is not int or size < 0:
                raise ValueError(f"entry {entry!r:.80} has no valid size")
            held = FileVersion(check_name(name), check_version(version), size, check_digest(sha256))
            manifest[held.name] = held
    except ValueError as exc:  # (UnsafeFileName and JSONDecodeError too)
        logger.warning(
            "ignoring the unreadable manifest %s (%s): every file will be sent again", path, exc
        )
        return {}
    return manifest


async def start_files(
    node: Node,
    directory: str | PathLike[str],
    *,
    membership: Membership | None = None,
    chunk_size: int = CHUNK_SIZE,
    window: int = 4,
    chunk_timeout: float = 10.0,
    offer_timeout: float = 60.0,
    attempts: int = 5,
    max_corrupt: int = 5,
    max_size: int | None = None,
    name: str = ACTOR,
) -> FileService:
    """Start the node's file service, ``$files``, under ``node.root``.

    Creates ``directory`` if needed, reads its manifest, and registers the
    ``$files.*`` messages in the node's registry.

    Args:
      directory: where this node installs the files pushed to it.
      membership: the node's membership: ``push(to=None)`` goes to every
        reachable member. Without it, to this node and the transport's peers.
      chunk_size: bytes per chunk of the files this node pushes (the
        receiver follows the sender's). Its base64 form must fit the
        transport's ``max_frame_size`` (1 MiB allows up to about 760 KiB).
      window: chunks in flight per target node (memory: ``window *
        chunk_size`` per target, plus their encoded frames).
      chunk_timeout: seconds a chunk may go unanswered before the round
        stops and the sender offers again.
      offer_timeout: seconds an offer or a commit may take (an offer may
        re-read a partial file, a commit fsyncs the whole file).
      attempts: rounds in a row without progress (no chunk taken) before a
        node's push fails.
      max_corrupt: times one chunk may arrive corrupt before the push to
        that node fails with :class:`ChunkCorrupted`.
      max_size: the largest file this node accepts (``None``: no limit).
      name: the actor's name (every node must use the same).

    Returns:
      The :class:`FileService`: ``push()``, ``held()``, ``statistics()``.

    Raises:
      NameTaken: the node already runs an actor called ``name``.
      ValueError: a bad option, or a ``chunk_size`` too large for the
        transport's frames.
      OSError: ``directory`` cannot be created.

    .. versionadded:: 0.1
    """
    root = Path(os.fspath(directory))
    service = FileService(
        node,
        root,
        membership,
        name=name,
        chunk_size=chunk_size,
        window=window,
        chunk_timeout=chunk_timeout,
        offer_timeout=offer_timeout,
        attempts=attempts,
        max_corrupt=max_corrupt,
        max_size=max_size,
    )
    service._manifest = await trio.to_thread.run_sync(_load_manifest, root)
    register_file_messages(node.codec.registry)
    await node.root.start_actor(_FilesActor, service, name=name, mailbox_size=MAILBOX_SIZE)
    return service
