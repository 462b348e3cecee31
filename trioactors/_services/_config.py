"""Config sync: a replicated, versioned configuration on every node.

Theory of operation
-------------------

Every node that runs :func:`start_config` keeps a whole replica of the
cluster's configuration, a :class:`~trioactors._core._config.ConfigState`
(the pure merge: last-writer-wins per key on a Lamport version, tombstones
for deletes; see ``_core/_config.py``). This module is the shell: one system
actor per node, ``$config``, whose background tasks (supervised with it) run
the anti-entropy and catch-up loops, and a :class:`ConfigService` that holds
the replica, the subscribers and the counters, outside the actor, so that
they survive restarts of ``$config``.

How a write spreads:

1. *Gossip.* :meth:`ConfigService.set` (or ``delete``) applies the write to
   the local replica, notifies the subscribers, and tells it at once to
   ``fanout`` random reachable members in a ``Push``. A member for which the
   write is news (it wins there) passes it on the same way, once; a member
   that already had it stays quiet. So a write reaches every member within
   a few network hops, and costs about ``fanout`` messages per member.
2. *Anti-entropy.* Every ``interval`` seconds each node picks one random
   reachable member and runs a push-pull exchange with it (below). That
   repairs whatever gossip lost (a dropped message, a member that was
   unreachable, a partition) within a few intervals: the spread of an
   exchange with a random peer each round doubles, roughly, every round.
3. *Catch-up.* A node syncs with a member as soon as it can (when
   :func:`start_config` starts, and whenever membership reports a member
   reachable while this node has never synced), and with every member that
   comes back (reachable again after it was held dead: a healed partition).

The exchange (two round trips when the replicas differ, one when they agree):

- ``Sync`` (ask): our *summary*, one hash per bucket of keys (64 of them).
  The peer answers a ``SyncReply``: the buckets that differ and its stamps
  ``(key, version, node, fingerprint)`` in them.
- ``Exchange`` (ask): from those stamps we know, key by key, who has the
  newer entry: we send ours that the peer lacks, and name the keys we lack;
  the peer merges what we sent and answers with the entries we named
  (``Entries``). Values travel only where they are needed, at most about
  256 KiB per message (more takes more messages within the same exchange).

Wire messages are registered attrs classes under ``$config.*`` tags (``Sync``,
``SyncReply``, ``Exchange``, ``Entries``, ``Push``). An entry travels as a
list ``[key, version, node, deleted, value]``; one that is not well formed
makes the whole message an ``InvalidPayload`` (counted by the node, in
``node.statistics().invalid_payloads``). An entry that is well formed but
that this node refuses (a value of the wrong type for the schema, or larger
than ``max_value_size``) is left out, counted in
``statistics().rejected`` and logged; the rest of the message is taken.

Invariants: the replica only ever merges entries that passed the schema
and the size limit; each change of a key's value is notified once per
subscriber (a write of the value a key already has notifies nobody);
nothing a peer sends raises out of the actor.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import random
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias, final, get_args

import attrs
import cattrs
import trio

from .._core._config import (
    BUCKETS,
    MAX_VALUE_SIZE,
    ConfigChange,
    ConfigEntry,
    ConfigError,
    ConfigState,
    Stamp,
    check_key,
    check_value,
)
from .._core._membership import MemberChanged
from .._errors import LocalProtocolError, TrioactorsError
from .._runtime._actor import DEFAULT_ASK_TIMEOUT, Actor, ActorRef, Request, read_only
from .._wire._codec import _converter, _register_service_messages

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import UnionType

    from .._runtime._node import Node
    from .._wire._codec import MessageRegistry
    from ._membership import Membership

__all__ = [
    "ConfigChanged",
    "ConfigService",
    "ConfigStatistics",
    "ConfigSubscriber",
    "register_config_messages",
    "start_config",
]

logger = logging.getLogger("trioactors.config")

ACTOR = "$config"
DEFAULT_INTERVAL = 1.0
"""Seconds between anti-entropy exchanges of a node with one random member."""
DEFAULT_FANOUT = 3
"""Members a write (or news of one) is pushed to at once."""
MESSAGE_BUDGET = 256 * 1024
"""Bytes of values one message carries, about (at least one entry, whatever its size)."""
MAX_WANTED = 512
"""Keys one ``Exchange`` asks for; more are asked for by the next one."""
RUMOR_ITEMS = 32
"""Entries one news push passes on, at most (anti-entropy carries the rest)."""
CATCH_UP_DELAY = 0.05
"""Seconds a catch-up waits, so that a burst of membership changes makes one sync."""
MAX_SYNCS = 4
"""Exchanges a node runs at once, at most, from its anti-entropy loop."""
INITIAL_TRIES = 3
"""Members :func:`start_config` tries to sync with before it returns."""


# -- events and statistics ---------------------------------------------------------------


@final
@attrs.frozen
class ConfigChanged:
    """The value of ``key`` changed from ``old`` to ``new`` (``None``: no value).

    ``entry`` is the winning entry (``entry.deleted`` for a delete; its
    ``node`` is the writer). With a schema, ``old`` and ``new`` are of the
    key's type. Treat them as read-only: every subscriber gets the same objects.

    .. versionadded:: 0.1
    """

    key: str
    old: object
    new: object
    entry: ConfigEntry


@final
@attrs.frozen
class ConfigStatistics:
    """A snapshot of a :class:`ConfigService`'s counters.

    ``keys`` counts keys with a value and ``tombstones`` deleted keys;
    ``version`` is the replica's Lamport clock. ``writes`` counts local
    sets and deletes; ``received`` entries that came from peers, ``applied``
    those that won here, ``rejected`` those refused (wrong type for the
    schema, too large). ``syncs`` and ``sync_failures`` count anti-entropy
    exchanges this node started; ``pushes`` messages of gossip sent;
    ``notifications_dropped`` changes a subscriber actor missed (its mailbox
    was full); ``callback_errors`` subscriber callbacks that raised.

    .. versionadded:: 0.1
    """

    keys: int
    tombstones: int
    version: int
    writes: int
    received: int
    applied: int
    rejected: int
    syncs: int
    sync_failures: int
    pushes: int
    notifications_dropped: int
    callback_errors: int


ConfigSubscriber: TypeAlias = Callable[[ConfigChanged], object] | ActorRef[ConfigChanged]
"""A function called with each :class:`ConfigChanged`, or an actor of this node told it."""


# -- wire messages -------------------------------------------------------------------------


@attrs.frozen
class _Stamp:
    key: str
    version: int
    node: str
    fingerprint: int


@attrs.frozen
class Sync:
    """Our summary (a hash per bucket of keys): "which buckets differ?" (ask)."""

    origin: str
    summary: list[int]


@attrs.frozen
class SyncReply:
    """The buckets that differ, and the answerer's stamps in them.

    ``partial``: more buckets differ than fit in one message; sync again.
    """

    buckets: list[int]
    stamps: list[_Stamp]
    partial: bool = False


@attrs.frozen
class Exchange:
    """Entries the answerer lacks, and the keys the asker lacks (ask)."""

    origin: str
    entries: list[ConfigEntry]
    wanted: list[str]


@attrs.frozen
class Entries:
    """The answer to :class:`Exchange`: the wanted entries (as many as fit)."""

    entries: list[ConfigEntry]


@attrs.frozen
class Push:
    """Writes, or news of writes, gossiped (tell)."""

    origin: str
    entries: list[ConfigEntry]


@final
@read_only
@attrs.frozen
class GetConfig(Request[dict[str, object]]):
    """Ask a node's ``$config`` for its current configuration (a read-only query:
    operators' tools may send it); the answer is a dict of keys to plain values.

    .. versionadded:: 0.1
    """


_CLASSES: tuple[type, ...] = (Sync, SyncReply, Exchange, Entries, Push, GetConfig)


def _entry_to_wire(entry: ConfigEntry) -> list[object]:
    return [entry.key, entry.version, entry.node, entry.deleted, entry.value]


def _entry_from_wire(data: object, _: type) -> ConfigEntry:
    if type(data) is list and len(data) == 5:
        key, version, node, deleted, value = data
        if (
            type(key) is str
            and type(version) is int
            and type(node) is str
            and type(deleted) is bool
        ):
            return ConfigEntry(key, value, version, node, deleted)  # (it checks the rest)
    raise ValueError(f"a config entry is [key, version, node, deleted, value], not {data!r:.80}")


def _stamp_to_wire(stamp: _Stamp) -> list[object]:
    return [stamp.key, stamp.version, stamp.node, stamp.fingerprint]


def _stamp_from_wire(data: object, _: type) -> _Stamp:
    if type(data) is list and len(data) == 4:
        key, version, node, fingerprint = data
        if (
            type(key) is str
            and type(version) is int
            and type(node) is str
            and type(fingerprint) is int
        ):
            return _Stamp(key, version, node, fingerprint)
    raise ValueError(f"a config stamp is [key, version, node, fingerprint], not {data!r:.80}")


# Entries and stamps travel as short lists, as membership claims do: an
# exchange carries many of them.
for _format in ("json", "msgpack"):
    _converter(_format).register_unstructure_hook(ConfigEntry, _entry_to_wire)
    _converter(_format).register_structure_hook(ConfigEntry, _entry_from_wire)
    _converter(_format).register_unstructure_hook(_Stamp, _stamp_to_wire)
    _converter(_format).register_structure_hook(_Stamp, _stamp_from_wire)


def register_config_messages(registry: MessageRegistry) -> None:
    """Register the ``$config.*`` messages in ``registry`` (``$config.Sync``, ...).

    :func:`start_config` does it for the node's registry.

    .. versionadded:: 0.1
    """
    _register_service_messages(registry, "$config", _CLASSES)


# -- the actor ------------------------------------------------------------------------------


_Message: TypeAlias = Sync | Exchange | Push | GetConfig | MemberChanged

_HANDLED = frozenset(_Message.__args__)


class _ConfigActor(Actor[_Message]):
    def __init__(self, service: ConfigService) -> None:
        self.service = service

    async def on_start(self) -> None:
        self.context.start_soon(self.service._anti_entropy_loop)
        self.context.start_soon(self.service._catch_up_loop)

    async def receive(self, message: _Message) -> object:
        s = self.service
        if type(message) not in _HANDLED:  # (a peer may send any registered type)
            return await super().receive(message)
        match message:
            case Sync(_, summary):
                return s._answer_sync(summary)
            case Exchange(origin, entries, wanted):
                s._absorb(entries, origin, spread=s._synced)
                return Entries(s._entries_for(wanted))
            case Push(origin, entries):
                s._absorb(entries, origin, spread=True)
            case GetConfig():
                return _converter(s.node.codec.format).unstructure(s.snapshot())
            case MemberChanged():
                s._member_changed(message)
        return None


# -- the service ------------------------------------------------------------------------------


@final
class ConfigService:
    """This node's replica of the cluster's configuration; from :func:`start_config`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        membership: Membership,
        *,
        name: str,
        schema: Mapping[str, type | UnionType],
        interval: float,
        fanout: int,
        max_value_size: int,
        seed: int | None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 1:
            raise ValueError(f"fanout must be a whole number >= 1, not {fanout!r}")
        for key in schema:
            check_key(key)
        self.node = node
        self.membership = membership
        self.name = name
        self.address = f"{name}@{node.name}"
        """How peers address the service: ``$config@node``."""
        self.schema = dict(schema)
        self.interval = interval
        self.fanout = fanout
        self.state = ConfigState(max_value_size=max_value_size)
        """The replica (the pure machine): read it, do not write to it."""
        if seed is None:
            seed = membership.config.seed
        self._rng = random.Random(None if seed is None else seed ^ zlib.crc32(b"config"))
        self._timeout = min(DEFAULT_ASK_TIMEOUT, max(interval, 1.0))
        self._values: dict[str, object] = {}  # key -> typed value, for keys with a value
        self._subscribers: list[ConfigSubscriber] = []
        self._changed = trio.Event()
        self._synced = False  # (once an exchange succeeded, what we learn may be news)
        self._catch_up: set[str] = set()
        self._catch_up_pending = trio.Event()
        self._in_flight = 0
        self._logged: set[tuple[str, int, str]] = set()
        self._writes = 0
        self._received = 0
        self._applied = 0
        self._rejected = 0
        self._syncs = 0
        self._sync_failures = 0
        self._pushes = 0
        self._dropped = 0
        self._callback_errors = 0

    def __repr__(self) -> str:
        return f"<ConfigService {self.address} keys={len(self.state)}>"

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str, default: object = None) -> object:
        """The value of ``key`` (of its schema type, if it has one), or ``default``.

        Lists and dicts are copies; other values are shared (treat them as read-only).
        """
        if key not in self._values:
            return default
        return _fresh(self._values[key])

    def snapshot(self) -> dict[str, object]:
        """Every key that has a value, and its value, sorted by key (values as :meth:`get`)."""
        return {k: _fresh(self._values[k]) for k in sorted(self._values)}

    def entries(self) -> list[ConfigEntry]:
        """Every winning entry, tombstones included, sorted by key."""
        return self.state.entries()

    async def wait_for(self, key: str, predicate: Callable[[object], bool] | None = None) -> object:
        """Wait until ``predicate(config.get(key))`` holds; the value then.

        Without a predicate, wait until ``key`` has a value. Checks at once,
        then after every change of the replica (no polling). Put it in a
        cancel scope (``trio.fail_after``) to bound the wait.

        Raises:
          ConfigError: ``key`` is not a valid key.
        """
        check_key(key)
        await trio.lowlevel.checkpoint()
        while True:
            present = key in self._values
            value = self.get(key)
            if predicate(value) if predicate is not None else present:
                return value
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Wait until the replica changes next (a write here or news from a peer)."""
        await self._changed.wait()

    def statistics(self) -> ConfigStatistics:
        """A snapshot of this replica's counters."""
        return ConfigStatistics(
            keys=len(self.state),
            tombstones=self.state.tombstones,
            version=self.state.clock,
            writes=self._writes,
            received=self._received,
            applied=self._applied,
            rejected=self._rejected,
            syncs=self._syncs,
            sync_failures=self._sync_failures,
            pushes=self._pushes,
            notifications_dropped=self._dropped,
            callback_errors=self._callback_errors,
        )

    # -- writing -----------------------------------------------------------------------------

    async def set(self, key: str, value: object) -> ConfigEntry:
        """Write ``value`` under ``key``; the new entry.

        With a schema that names ``key``, ``value`` must fit its type
        (checked as strictly as a message: ``"80"`` is not an ``int``); an
        instance of an attrs class in the schema is stored unstructured.
        Other values must be plain JSON data. The value is copied.

        Applies the write here (subscribers are notified before this returns)
        and pushes it to ``fanout`` members without waiting for them.

        Raises:
          ConfigError: a bad key; a value of the wrong type, not plain JSON
            data, or larger than ``max_value_size``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        plain, typed = self._local_value(key, value)
        entry = self._write(key, lambda: self.state.set(key, plain, node=self.node.name), typed)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return entry

    async def delete(self, key: str) -> ConfigEntry:
        """Delete ``key``: a tombstone that wins over every older write; the tombstone.

        Written and pushed like :meth:`set`, even when the key has no value
        here (a copy of an older write elsewhere then loses to it).

        Raises:
          ConfigError: a bad key.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        check_key(key)
        entry = self._write(key, lambda: self.state.delete(key, node=self.node.name), None)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return entry

    def _write(self, key: str, write: Callable[[], ConfigEntry], typed: object) -> ConfigEntry:
        before = self.state.entry(key)
        entry = write()
        self._writes += 1
        self._changed_to(ConfigChange(key, before, entry), typed)
        self._wake()
        self._push([entry], exclude=None)
        return entry

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, subscriber: ConfigSubscriber) -> None:
        """Notify ``subscriber`` of every change of a value from now on.

        A callback is called with each :class:`ConfigChanged` as the change
        is applied, from the task that applies it: keep it short, never
        async (wait in a task of your own with :meth:`wait_for`, or subscribe
        an actor). One that raises is logged and counted, and the others
        still run. An actor is told each change (``tell_nowait``); one whose
        mailbox is full misses it (counted; it can read :meth:`snapshot`).

        Raises:
          LocalProtocolError: an actor on another node (every node has the
            whole configuration: subscribe there), or an ``async`` callback.
        """
        if isinstance(subscriber, ActorRef):
            if not subscriber.is_local:
                raise LocalProtocolError(
                    f"{subscriber.address} is on another node; every node holds the whole "
                    "configuration: subscribe it to its own node's config service"
                )
        elif inspect.iscoroutinefunction(subscriber):
            raise LocalProtocolError(
                f"{getattr(subscriber, '__qualname__', subscriber)!r} is async; subscribers are "
                "called as changes are applied: use a plain function, an actor, or wait_for()"
            )
        elif not callable(subscriber):
            raise TypeError(f"a subscriber is a callable or an ActorRef, not {subscriber!r:.60}")
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: ConfigSubscriber) -> None:
        """Stop notifying ``subscriber`` (nothing happens if it was not subscribed)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)

    # -- internals: values -------------------------------------------------------------------

    def _local_value(self, key: str, value: object) -> tuple[object, object]:
        """``(plain, typed)`` for a local write of ``value``; raises ConfigError."""
        check_key(key)
        kind = self.schema.get(key)
        if kind is None:
            check_value(value, key=key)
            return value, None  # (typed: the entry's own copy, see _changed_to)
        converter = _converter("json")
        try:
            try:
                check_value(value, key=key)
                plain = value
            except ConfigError:
                plain = converter.unstructure(value, kind)
            typed = _structure(plain, kind)
            plain = converter.unstructure(typed, kind)
        except Exception as exc:
            raise ConfigError(_wrong_type(key, kind, value, exc)) from exc
        check_value(plain, key=key)
        return plain, typed

    def _remote_value(self, entry: ConfigEntry) -> object:
        """The typed value of a peer's ``entry``; raises ConfigError if we refuse it."""
        self.state.check(entry)
        kind = self.schema.get(entry.key)
        if kind is None or entry.deleted:
            return None
        try:
            return _structure(entry.value, kind)
        except Exception as exc:
            raise ConfigError(_wrong_type(entry.key, kind, entry.value, exc)) from exc

    def _changed_to(self, change: ConfigChange, typed: object) -> None:
        """Record ``change`` (applied to the replica) and notify the subscribers."""
        key, entry = change.key, change.after
        old = self._values.get(key)
        if entry.deleted:
            self._values.pop(key, None)
            new: object = None
        else:
            new = typed if key in self.schema else entry.value
            self._values[key] = new
        if change.visible:
            self._notify(ConfigChanged(key, _fresh(old), _fresh(new), entry))

    def _notify(self, event: ConfigChanged) -> None:
        for subscriber in tuple(self._subscribers):
            if isinstance(subscriber, ActorRef):
                try:
                    subscriber.tell_nowait(event)
                except (trio.WouldBlock, TrioactorsError):
                    self._dropped += 1
                continue
            try:
                result = subscriber(event)
                if inspect.iscoroutine(result):
                    result.close()
                    raise TypeError(
                        "the callback returned a coroutine; subscribers are not awaited"
                    )
            except Exception:
                self._callback_errors += 1
                logger.exception(
                    "%s: subscriber %s raised on a change of %r",
                    self.address,
                    getattr(subscriber, "__qualname__", repr(subscriber)),
                    event.key,
                )

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- internals: what peers send ------------------------------------------------------------

    def _absorb(self, entries: list[ConfigEntry], origin: str, *, spread: bool) -> None:
        """Merge what ``origin`` sent; pass news on (``spread``) to a few members."""
        self._received += len(entries)
        accepted: list[ConfigEntry] = []
        typed: dict[int, object] = {}
        for entry in entries:
            try:
                value = self._remote_value(entry)
            except ConfigError as exc:
                self._reject(entry, origin, exc)
                continue
            accepted.append(entry)
            typed[id(entry)] = value
        changes = self.state.merge(accepted)
        if not changes:
            return
        self._applied += len(changes)
        for change in changes:
            self._changed_to(change, typed[id(change.after)])
        self._wake()
        if spread:
            self._push([c.after for c in changes[:RUMOR_ITEMS]], exclude=origin)

    def _reject(self, entry: ConfigEntry, origin: str, error: ConfigError) -> None:
        self._rejected += 1
        seen = (entry.key, entry.version, entry.node)
        if seen in self._logged:
            return  # (anti-entropy offers it again every round: log it once)
        if len(self._logged) >= 1024:
            self._logged.clear()
        self._logged.add(seen)
        logger.warning(
            "%s: refused an entry from %s (written by %s at version %d): %s",
            self.address,
            origin,
            entry.node,
            entry.version,
            error,
        )

    def _answer_sync(self, summary: list[int]) -> SyncReply:
        buckets: list[int] = []
        stamps: list[_Stamp] = []
        size = 0
        differing = self.state.differing(summary)
        for bucket in differing:
            found = self.state.digest([bucket])
            cost = sum(len(k) + len(s[1]) + 48 for k, s in found.items())
            if buckets and size + cost > MESSAGE_BUDGET:
                break
            buckets.append(bucket)
            size += cost
            stamps.extend(_Stamp(k, *s) for k, s in found.items())
        return SyncReply(buckets, stamps, partial=len(buckets) < len(differing))

    def _entries_for(self, wanted: list[str]) -> list[ConfigEntry]:
        found: list[ConfigEntry] = []
        size = 0
        for key in wanted[:MAX_WANTED]:
            entry = self.state.entry(key) if type(key) is str else None
            if entry is None:
                continue
            if found and size + entry.size > MESSAGE_BUDGET:
                break
            found.append(entry)
            size += entry.size
        return found

    def _member_changed(self, change: MemberChanged) -> None:
        before, after = change.before, change.after
        if after.node == self.node.name or not after.reachable:
            return
        if before is not None and before.reachable:
            return  # (no news: it was reachable already)
        if before is None and self._synced:
            return  # a newcomer pulls from us; it has nothing we lack
        self._catch_up.add(after.node)
        self._catch_up_pending.set()

    # -- internals: talking to peers -------------------------------------------------------------

    def _peers(self, exclude: str | None = None) -> list[str]:
        me = self.node.name
        return [n for n in self.membership.alive() if n != me and n != exclude]

    def _push(self, entries: list[ConfigEntry], *, exclude: str | None) -> None:
        """Tell ``entries`` to ``fanout`` random members, without waiting (lost: anti-entropy)."""
        peers = self._peers(exclude)
        batch = _take_budget(entries)
        if not batch or not peers:
            return
        message = Push(self.node.name, batch)
        for peer in self._rng.sample(peers, min(self.fanout, len(peers))):
            with contextlib.suppress(TrioactorsError, trio.WouldBlock):
                self.node.ref(f"{self.name}@{peer}").tell_nowait(message)
                self._pushes += 1

    async def _sync_with(self, peer: str) -> bool:
        """A push-pull exchange with ``peer``; whether it went through."""
        ref = self.node.ref(f"{self.name}@{peer}")
        me = self.node.name
        self._in_flight += 1
        try:
            for _ in range(BUCKETS):  # (each pass settles a bucket at least)
                reply = await ref.ask(Sync(me, self.state.summary()), timeout=self._timeout)
                if not isinstance(reply, SyncReply):
                    raise TrioactorsError(f"{peer} answered a Sync with {type(reply).__name__}")
                theirs: dict[str, Stamp] = {
                    s.key: (s.version, s.node, s.fingerprint) for s in reply.stamps
                }
                push = self.state.entries_newer_than(theirs, buckets=reply.buckets)
                wanted = self.state.wanted(theirs)
                while push or wanted:
                    batch = _take_budget(push)
                    push = push[len(batch) :]
                    asked = wanted[:MAX_WANTED]
                    answer = await ref.ask(Exchange(me, batch, asked), timeout=self._timeout)
                    if not isinstance(answer, Entries):
                        raise TrioactorsError(
                            f"{peer} answered an Exchange with {type(answer).__name__}"
                        )
                    self._absorb(answer.entries, peer, spread=self._synced)
                    got = {e.key for e in answer.entries}
                    if not got and not batch:
                        break  # (it no longer has what it offered: a restart)
                    wanted = [k for k in wanted if k not in got]
                if not reply.partial:
                    break
        except TrioactorsError as exc:
            self._sync_failures += 1
            logger.debug("%s: no exchange with %s: %r", self.address, peer, exc)
            return False
        finally:
            self._in_flight -= 1
        self._syncs += 1
        self._synced = True
        return True

    async def _anti_entropy_loop(self) -> None:
        """Every ``interval`` seconds, an exchange with one random reachable member."""
        async with trio.open_nursery() as exchanges:
            # a random first wait, so that nodes started together do not all sync together
            await trio.sleep(self._rng.random() * self.interval)
            while True:
                peers = self._peers()
                if peers and self._in_flight < MAX_SYNCS:
                    exchanges.start_soon(self._sync_with, self._rng.choice(peers))
                await trio.sleep(self.interval)

    async def _catch_up_loop(self) -> None:
        """Sync with a member that became reachable (see :meth:`_member_changed`)."""
        async with trio.open_nursery() as exchanges:
            while True:
                await self._catch_up_pending.wait()
                await trio.sleep(CATCH_UP_DELAY)
                self._catch_up_pending = trio.Event()
                alive = set(self._peers())
                candidates = sorted(self._catch_up & alive)
                self._catch_up.clear()
                if candidates:
                    exchanges.start_soon(self._sync_with, self._rng.choice(candidates))

    async def _initial_sync(self) -> None:
        peers = self._peers()
        self._rng.shuffle(peers)
        for peer in peers[:INITIAL_TRIES]:
            if await self._sync_with(peer):
                return


def _structure(value: object, kind: type | UnionType) -> object:
    """``value`` structured as ``kind``, as strictly as a message's fields are."""
    hook = _converter("json").get_structure_hook(kind)
    typed: object = hook(value, kind)
    return typed


def _fresh(value: object) -> object:
    """A copy of a list or dict (so that callers cannot change the replica); others as is."""
    if type(value) is list or type(value) is dict:
        return copy.deepcopy(value)
    return value


def _type_name(kind: type | UnionType) -> str:
    name = getattr(kind, "__qualname__", None)
    return name if isinstance(name, str) and not get_args(kind) else repr(kind)


def _wrong_type(key: str, kind: type | UnionType, value: object, exc: Exception) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        details = "; ".join(cattrs.transform_error(exc))
    else:
        details = str(exc) or type(exc).__name__
    return f"config key {key!r} takes {_type_name(kind)}, not {value!r:.60} ({details})"


def _take_budget(entries: Iterable[ConfigEntry]) -> list[ConfigEntry]:
    """The first entries that fit in ``MESSAGE_BUDGET`` bytes (at least one)."""
    batch: list[ConfigEntry] = []
    size = 0
    for entry in entries:
        if batch and size + entry.size > MESSAGE_BUDGET:
            break
        batch.append(entry)
        size += entry.size
    return batch


async def start_config(
    node: Node,
    membership: Membership,
    *,
    schema: Mapping[str, type | UnionType] | None = None,
    interval: float = DEFAULT_INTERVAL,
    fanout: int = DEFAULT_FANOUT,
    max_value_size: int = MAX_VALUE_SIZE,
    seed: int | None = None,
    name: str = ACTOR,
) -> ConfigService:
    """Start this node's replica of the configuration, ``$config``, under ``node.root``.

    Registers the ``$config.*`` messages in the node's registry, subscribes
    to ``membership``, and syncs with a member (trying up to three) before it
    returns, so that a node joining a running cluster starts with its
    configuration (and a Lamport clock past every version in it).

    Args:
      membership: the node's membership: whom to gossip to and sync with.
      schema: key to type (``int``, ``list[str]``, ``int | None``, an attrs
        class, ...): values of these keys must fit, here and from peers.
        Other keys take any plain JSON data. Give every node the same schema.
      interval: seconds between anti-entropy exchanges with one random member.
      fanout: members a write is pushed to at once.
      max_value_size: bytes a value may take as compact JSON (default 64 KiB).
      seed: for the random choices (default: from ``membership.config.seed``).
      name: the actor's name (the same on every node).

    Returns:
      The :class:`ConfigService`: ``set``, ``delete``, ``get``, ``snapshot``,
      ``subscribe``, ``wait_for``, ``statistics``.

    Raises:
      NameTaken: the node already runs an actor called ``name``.
      ValueError: a bad ``interval``, ``fanout`` or ``max_value_size``
        (:class:`ConfigError` for a bad key in ``schema``).

    .. versionadded:: 0.1
    """
    service = ConfigService(
        node,
        membership,
        name=name,
        schema=schema or {},
        interval=interval,
        fanout=fanout,
        max_value_size=max_value_size,
        seed=seed,
    )
    register_config_messages(node.codec.registry)
    ref: ActorRef[_Message] = await node.root.start_actor(_ConfigActor, service, name=name)
    membership.subscribe(ref)  # (the place's reference: it outlives restarts)
    await service._initial_sync()
    return service
