"""Replicated configuration: versioned entries that merge last-writer-wins.

Theory of operation
-------------------

A :class:`ConfigState` is one node's replica of the cluster's configuration:
a map from keys to :class:`ConfigEntry` records. An entry is a *write* of one
key: its value (plain JSON data), a ``version`` and the ``node`` that wrote
it, or a *tombstone* (``deleted=True``) that records a delete. Entries are
ordered by their :attr:`~ConfigEntry.stamp`::

    (version, node, fingerprint)

and when two entries for the same key meet, the greater one wins
(last-writer-wins). The version is a Lamport clock: a node writes at one more
than the highest version it has seen for *any* key, so a write made after
seeing another (here, or anywhere that other had reached) always beats it.
Concurrent writes (neither saw the other) are ordered by version, then by node
name: arbitrarily, but the same way everywhere. The ``fingerprint`` (a 64-bit
hash of the value and the deleted flag) only matters when one node wrote two
different entries at the same version, which happens when a node restarts
with an empty replica and writes before it has heard from anyone: the order
stays total, so replicas still converge.

So merging (:meth:`ConfigState.merge`) keeps, for each key, the greatest
entry: it is idempotent, commutative and associative (a join-semilattice), and
any two replicas that have seen the same set of entries, in any order, any
number of times, hold the same entries and the same :meth:`~ConfigState.snapshot`.
A delete is an entry like any other: its tombstone beats every older write,
so a deleted key stays deleted against stale copies arriving later.
Tombstones are kept (one per deleted key) for that reason.

Anti-entropy (finding what two replicas lack, without sending everything):

- :meth:`~ConfigState.summary` is a short list of ``BUCKETS`` hashes, one per
  bucket of keys (a key's bucket is ``crc32(key) % BUCKETS``); each is the XOR
  of the hashes of the bucket's stamps, kept up to date on every change.
  Equal replicas have equal summaries.
- :meth:`~ConfigState.differing` names the buckets where a peer's summary
  differs from ours; :meth:`~ConfigState.digest` lists our stamps (key to
  stamp) in those buckets.
- From a peer's digest, :meth:`~ConfigState.entries_newer_than` gives the
  entries the peer lacks, and :meth:`~ConfigState.wanted` the keys we lack.

Events (method calls) and what they return:

- ``set(key, value, node)``, ``delete(key, node)`` -> the new entry (a local
  write, at ``clock + 1``);
- ``merge(entries)`` -> one :class:`ConfigChange` per key whose winning entry
  changed (entries that lose change nothing and are not reported).

Invariants (checked by the tests with hypothesis):

- a key's entry never gets smaller (by stamp);
- ``clock`` never decreases, and is at least every version seen;
- a local write is greater than every entry the replica has seen for its key;
- the summary is a function of the entries alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from typing import TYPE_CHECKING, TypeAlias, final

import attrs

from .._errors import TrioactorsError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "BUCKETS",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_SIZE",
    "ConfigChange",
    "ConfigEntry",
    "ConfigError",
    "ConfigState",
    "Stamp",
    "bucket_of",
    "check_key",
    "check_value",
]

MAX_VALUE_SIZE = 64 * 1024
"""Bytes a value may take, encoded as compact JSON (the default limit)."""
MAX_KEY_LENGTH = 256
"""Characters a key may have."""
MAX_VERSION = 2**63 - 1
"""The highest version (it must fit a signed 64-bit integer on the wire)."""
MAX_DEPTH = 64
"""How deeply lists and dicts may nest in a value."""
BUCKETS = 64
"""Buckets of keys in a :meth:`ConfigState.summary`."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

Stamp: TypeAlias = tuple[int, str, int]
"""``(version, node, fingerprint)``: the order of entries for one key."""


class ConfigError(TrioactorsError, ValueError):
    """A configuration key or value cannot be accepted.

    The key is not a non-empty string of at most ``MAX_KEY_LENGTH``
    characters, the value is not plain JSON data, is larger than the limit,
    or does not fit the type the schema gives its key. The message says which.

    .. versionadded:: 0.1
    """


def check_key(key: object) -> str:
    """``key`` if it is a valid key.

    Raises:
      ConfigError: not a string, empty, or longer than ``MAX_KEY_LENGTH``.
    """
    if type(key) is not str:
        raise ConfigError(f"a config key is a str, not {type(key).__name__} {key!r:.60}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ConfigError(
            f"a config key has 1 to {MAX_KEY_LENGTH} characters, not {len(key)} ({key!r:.60})"
        )
    return key


def check_value(value: object, *, key: str = "") -> None:
    """Check that ``value`` is plain JSON data.

    That is None, bool, int (64-bit), finite float, str, and lists and
    dicts with str keys of them, nested at most ``MAX_DEPTH`` deep. Tuples,
    sets, bytes and objects are refused: they would not come back equal
    from the wire.

    Raises:
      ConfigError: it is not; the message says what was found where.
    """
    where = f" of {key!r}" if key else ""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if item is None or kind is bool or kind is str:
            continue
        if kind is int:
            assert isinstance(item, int)
            if not _INT_MIN <= item <= _INT_MAX:
                raise ConfigError(f"the value{where} holds an integer out of 64-bit range")
            continue
        if kind is float:
            assert isinstance(item, float)
            if not math.isfinite(item):
                raise ConfigError(f"the value{where} holds {item!r}, which JSON cannot carry")
            continue
        if depth >= MAX_DEPTH:
            raise ConfigError(f"the value{where} nests deeper than {MAX_DEPTH} levels")
        if kind is list:
            assert isinstance(item, list)
            stack.extend((x, depth + 1) for x in item)
        elif kind is dict:
            assert isinstance(item, dict)
            for k, x in item.items():
                if type(k) is not str:
                    raise ConfigError(
                        f"the value{where} has a dict key {k!r:.40}; JSON keys are strings"
                    )
                stack.append((x, depth + 1))
        else:
            raise ConfigError(
                f"the value{where} holds {kind.__name__} {item!r:.40}; a config value is plain "
                "JSON data (None, bool, int, float, str, and lists and dicts of them)"
            )


def _encode(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def bucket_of(key: str) -> int:
    """The bucket of ``key`` in a summary (the same in every process)."""
    return zlib.crc32(key.encode()) % BUCKETS


def _stamp_hash(key: str, stamp: Stamp) -> int:
    version, node, fingerprint = stamp
    return _hash64(f"{key}\0{version}\0{node}\0{fingerprint}".encode())


def _check_int(value: object, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"a config entry's {name} is an int from {low} to {high}, not {value!r}")
    assert isinstance(value, int)
    return value


@final
@attrs.frozen(order=False)
class ConfigEntry:
    """One write of one key: the unit of replication.

    ``value`` is plain JSON data (``None`` for a tombstone: ``deleted=True``);
    ``version`` the writer's Lamport clock; ``node`` the writer. Entries for
    the same key are ordered by :attr:`stamp`; see :meth:`supersedes`.
    Treat ``value`` as read-only: it is shared with the replica.

    Raises:
      ConfigError: a field is out of range, or the value is not plain JSON data.

    .. versionadded:: 0.1
    """

    key: str
    value: object = attrs.field(hash=False)
    version: int
    node: str
    deleted: bool = False
    fingerprint: int = attrs.field(init=False, repr=False)
    """A 64-bit hash of ``deleted`` and the value's canonical JSON."""
    size: int = attrs.field(init=False, repr=False, eq=False)
    """Bytes the value takes as compact JSON."""

    def __attrs_post_init__(self) -> None:
        check_key(self.key)
        _check_int(self.version, "version", 1, MAX_VERSION)
        if type(self.node) is not str or not self.node:
            raise ConfigError(f"a config entry's node is a non-empty str, not {self.node!r:.60}")
        if type(self.deleted) is not bool:
            raise ConfigError(f"a config entry's deleted flag is a bool, not {self.deleted!r:.20}")
        if self.deleted and self.value is not None:
            raise ConfigError(f"a deleted entry ({self.key!r}) has no value")
        check_value(self.value, key=self.key)
        encoded = _encode(self.value).encode()
        object.__setattr__(self, "size", len(encoded))
        object.__setattr__(self, "fingerprint", _hash64((b"D" if self.deleted else b"V") + encoded))

    @property
    def stamp(self) -> Stamp:
        """``(version, node, fingerprint)``: the greater stamp wins."""
        return (self.version, self.node, self.fingerprint)

    def supersedes(self, other: ConfigEntry) -> bool:
        """True if this entry wins over ``other`` (an entry for the same key)."""
        return self.stamp > other.stamp


@final
@attrs.frozen
class ConfigChange:
    """The winning entry for ``key`` changed from ``before`` to ``after``.

    .. versionadded:: 0.1
    """

    key: str
    before: ConfigEntry | None
    after: ConfigEntry

    @property
    def visible(self) -> bool:
        """Whether the key's value or presence changed (not just its stamp)."""
        before = self.before
        if before is None or before.deleted:
            return not self.after.deleted
        if self.after.deleted:
            return True
        return before.fingerprint != self.after.fingerprint


@final
class ConfigState:
    """One replica of the configuration (see the module docstring).

    Args:
      max_value_size: bytes a value may take as compact JSON, for
        :meth:`set` and :meth:`check`.

    .. versionadded:: 0.1
    """

    def __init__(self, *, max_value_size: int = MAX_VALUE_SIZE) -> None:
        if type(max_value_size) is not int or max_value_size < 4:
            raise ValueError(f"max_value_size must be an int >= 4 bytes, not {max_value_size!r}")
        self.max_value_size = max_value_size
        self._entries: dict[str, ConfigEntry] = {}
        self._clock = 0
        self._live = 0
        self._buckets = [0] * BUCKETS

    # -- queries -------------------------------------------------------------------

    @property
    def clock(self) -> int:
        """The highest version seen for any key (the next local write is one more)."""
        return self._clock

    def __len__(self) -> int:
        """Keys with a value (tombstones not counted)."""
        return self._live

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        entry = self._entries.get(key)
        return entry is not None and not entry.deleted

    @property
    def tombstones(self) -> int:
        """Deleted keys whose tombstones are kept."""
        return len(self._entries) - self._live

    def entry(self, key: str) -> ConfigEntry | None:
        """The winning entry for ``key`` (a tombstone if deleted), if any."""
        return self._entries.get(key)

    def get(self, key: str, default: object = None) -> object:
        """The value of ``key``, or ``default`` if it has none (or was deleted)."""
        entry = self._entries.get(key)
        return default if entry is None or entry.deleted else entry.value

    def entries(self) -> list[ConfigEntry]:
        """Every winning entry, tombstones included, sorted by key."""
        return [self._entries[k] for k in sorted(self._entries)]

    def snapshot(self) -> dict[str, object]:
        """The keys that have a value, and their values, sorted by key."""
        return {k: e.value for k in sorted(self._entries) if not (e := self._entries[k]).deleted}

    def check(self, entry: ConfigEntry) -> None:
        """Check that ``entry``'s value is within ``max_value_size``.

        Raises:
          ConfigError: it is larger.
        """
        if entry.size > self.max_value_size:
            raise ConfigError(
                f"the value of {entry.key!r} takes {entry.size} bytes as JSON; "
                f"the limit is {self.max_value_size}"
            )

    # -- local writes ---------------------------------------------------------------

    def set(self, key: str, value: object, *, node: str) -> ConfigEntry:
        """Write ``value`` under ``key`` as ``node``, at ``clock + 1``.

        The value is copied (through its JSON encoding): later changes to the
        caller's object do not reach the replica.

        Raises:
          ConfigError: a bad key, a value that is not plain JSON data, or one
            larger than ``max_value_size``.
        """
        check_key(key)
        check_value(value, key=key)
        copy = json.loads(_encode(value))
        return self._write(ConfigEntry(key, copy, self._next_version(), node))

    def delete(self, key: str, *, node: str) -> ConfigEntry:
        """Delete ``key`` as ``node``: a tombstone at ``clock + 1``.

        The tombstone is written even when the key has no value here: a copy
        of an older write elsewhere loses to it.

        Raises:
          ConfigError: a bad key.
        """
        check_key(key)
        return self._write(ConfigEntry(key, None, self._next_version(), node, deleted=True))

    def _next_version(self) -> int:
        if self._clock >= MAX_VERSION:
            raise ConfigError(f"the configuration's version reached its limit ({MAX_VERSION})")
        return self._clock + 1

    def _write(self, entry: ConfigEntry) -> ConfigEntry:
        self.check(entry)
        change = self._apply(entry)
        assert change is not None  # (a local write is greater than anything seen)
        return entry

    # -- merging ----------------------------------------------------------------------

    def merge(self, entries: Iterable[ConfigEntry]) -> list[ConfigChange]:
        """Keep the greater entry for each key; the changes, one per key.

        A key changed by several of ``entries`` is reported once, from the
        entry it had before to the one it has now, in the order the keys
        first changed. Every entry's version counts for the clock, winner or not.
        """
        changes: dict[str, ConfigChange] = {}
        for entry in entries:
            change = self._apply(entry)
            if change is not None:
                first = changes.get(entry.key)
                changes[entry.key] = (
                    change if first is None else ConfigChange(entry.key, first.before, entry)
                )
        return list(changes.values())

    def _apply(self, entry: ConfigEntry) -> ConfigChange | None:
        if entry.version > self._clock:
            self._clock = entry.version
        key = entry.key
        current = self._entries.get(key)
        if current is not None:
            if not entry.supersedes(current):
                return None
            self._buckets[bucket_of(key)] ^= _stamp_hash(key, current.stamp)
            self._live -= not current.deleted
        self._entries[key] = entry
        self._buckets[bucket_of(key)] ^= _stamp_hash(key, entry.stamp)
        self._live += not entry.deleted
        return ConfigChange(key, current, entry)

    # -- anti-entropy -------------------------------------------------------------------

    def summary(self) -> list[int]:
        """One hash per bucket of keys (``BUCKETS`` of them); equal replicas have equal ones."""
        return list(self._buckets)

    def differing(self, summary: Sequence[int]) -> list[int]:
        """The buckets where ``summary`` (a peer's) differs from ours.

        A summary of the wrong length differs in every bucket it lacks.
        """
        mine = self._buckets
        return [i for i in range(BUCKETS) if i >= len(summary) or summary[i] != mine[i]]

    def digest(self, buckets: Iterable[int] | None = None) -> dict[str, Stamp]:
        """Our stamps, key to stamp: of every key, or of the keys in ``buckets``."""
        if buckets is None:
            return {k: e.stamp for k, e in self._entries.items()}
        wanted = set(buckets)
        return {k: e.stamp for k, e in self._entries.items() if bucket_of(k) in wanted}

    def entries_newer_than(
        self, digest: Mapping[str, Stamp], *, buckets: Iterable[int] | None = None
    ) -> list[ConfigEntry]:
        """Our entries that a replica with ``digest`` lacks, sorted by key.

        Those whose stamp beats the digest's for the key, or whose key the
        digest does not have. With ``buckets``, the digest covers only those
        buckets, and only our entries in them are considered.
        """
        within = None if buckets is None else set(buckets)
        found = []
        for key in sorted(self._entries):
            if within is not None and bucket_of(key) not in within:
                continue
            entry = self._entries[key]
            theirs = digest.get(key)
            if theirs is None or entry.stamp > theirs:
                found.append(entry)
        return found

    def wanted(self, digest: Mapping[str, Stamp]) -> list[str]:
        """The keys for which ``digest`` has a greater stamp than ours, sorted."""
        found = []
        for key, stamp in digest.items():
            mine = self._entries.get(key)
            if mine is None or stamp > mine.stamp:
                found.append(key)
        return sorted(found)
