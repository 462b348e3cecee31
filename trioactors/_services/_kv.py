"""A replicated key-value store: a state machine for Raft, and its client.

Guarantees (see ``docs/services/kv.md``):

- Every operation is linearizable: writes are applied in the order of the
  Raft log; reads go through the leader's ReadIndex, so a read sees every
  write acknowledged before it started.
- A write is acknowledged only once it is committed (on a majority's disk).
- A retried write is applied once: each client has an id and numbers its
  writes; the state machine remembers, per client, the last number applied
  and its result (the dissertation's client sessions), and answers a retry
  from there. A client has one write in flight at a time.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import TYPE_CHECKING, final

import trio

from .._core._retry import RetryPolicy
from .._errors import TrioactorsError
from ._raft import ACTOR, RaftCommand, RaftQuery, RaftReply, register_raft_messages

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._runtime._node import Node

__all__ = ["KvClient", "KvState", "KvUnavailable"]


class KvUnavailable(TrioactorsError, TimeoutError):
    """No leader answered the operation within its deadline.

    A write may or may not have been applied (retry it with the same client:
    it is applied at most once).

    .. versionadded:: 0.1
    """


@final
class KvState:
    """The key-value state machine (strings to strings), with client sessions for dedup.

    Commands are JSON: ``{"c": client, "s": seq, "op": "put"|"delete"|"cas", "k": key,
    "v": value, "e": expected}``; queries are ``{"op": "get", "k": key}``. Results
    are JSON text.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions: dict[str, tuple[int, str | None]] = {}  # client -> (last seq, result)
        self.applied = 0
        self.duplicates = 0

    def apply(self, index: int, command: bytes) -> str | None:
        self.applied = index
        cmd = json.loads(command)
        client, seq = cmd["c"], cmd["s"]
        last = self.sessions.get(client)
        if last is not None and seq <= last[0]:
            self.duplicates += 1
            return last[1] if seq == last[0] else json.dumps({"stale": True})
        key = cmd["k"]
        match cmd["op"]:
            case "put":
                self.data[key] = cmd["v"]
                result = json.dumps({"ok": True})
            case "delete":
                existed = self.data.pop(key, None) is not None
                result = json.dumps({"ok": existed})
            case "cas":
                ok = self.data.get(key) == cmd["e"]
                if ok:
                    if cmd["v"] is None:
                        self.data.pop(key, None)
                    else:
                        self.data[key] = cmd["v"]
                result = json.dumps({"ok": ok})
            case other:
                result = json.dumps({"error": f"unknown operation {other!r}"})
        self.sessions[client] = (seq, result)
        return result

    def query(self, query: str) -> str | None:
        q = json.loads(query)
        return json.dumps({"value": self.data.get(q["k"])})

    def snapshot(self) -> bytes:
        return json.dumps(
            {"data": self.data, "sessions": {c: list(v) for c, v in self.sessions.items()}},
            sort_keys=True,
        ).encode()

    def restore(self, data: bytes) -> None:
        if not data:
            self.data, self.sessions = {}, {}
            return
        state = json.loads(data)
        self.data = dict(state["data"])
        self.sessions = {c: (v[0], v[1]) for c, v in state["sessions"].items()}


# between attempts: full jitter, bounds from 40 ms doubling to 1 s (the job queue's policy type)
_BACKOFF = RetryPolicy(base=0.04, factor=2.0, cap=1.0)


@final
class KvClient:
    """Talk to the replicated store from ``node``: find the leader, retry, never apply twice.

    Args:
      node: the node the requests leave from.
      servers: the Raft servers' node names.
      timeout: how long one operation may take, retries included (seconds).
      request_timeout: how long one attempt waits for its answer.
      client_id: this client's session id (default: a new random one). One
        write in flight per client id: use one client per task.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        node: Node,
        servers: Sequence[str],
        *,
        timeout: float = 10.0,
        request_timeout: float = 1.0,
        client_id: str | None = None,
        seed: int | None = None,
    ) -> None:
        register_raft_messages(node.codec.registry)
        self.node = node
        self.servers = list(servers)
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.client_id = client_id or uuid.uuid4().hex
        self.leader: str | None = None
        self._seq = 0
        self._rng = random.Random(seed)
        self._lock = trio.Lock()
        self.redirects = 0
        self.retries = 0

    async def put(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``; returns once committed."""
        await self._write({"op": "put", "k": key, "v": value})

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        return bool(json.loads(await self._write({"op": "delete", "k": key}))["ok"])

    async def compare_and_set(self, key: str, expected: str | None, new: str | None) -> bool:
        """Set ``key`` to ``new`` (``None``: delete) only if it is ``expected`` (``None``: absent)."""
        result = await self._write({"op": "cas", "k": key, "e": expected, "v": new})
        return bool(json.loads(result)["ok"])

    async def get(self, key: str) -> str | None:
        """The value of ``key`` (``None``: absent), linearizable (read through the leader)."""
        reply = await self._request(RaftQuery(json.dumps({"op": "get", "k": key})))
        value: str | None = json.loads(reply)["value"]
        return value

    async def _write(self, op: dict[str, str | None]) -> str:
        async with self._lock:
            self._seq += 1
            command = json.dumps({"c": self.client_id, "s": self._seq, **op}).encode()
            return await self._request(RaftCommand(command))

    async def _request(self, message: RaftCommand | RaftQuery) -> str:
        tried = failures = 0
        with trio.move_on_after(self.timeout) as scope:
            while True:
                target = self.leader or self.servers[tried % len(self.servers)]
                tried += 1
                reply: RaftReply | None = None
                try:
                    reply = await self.node.ref(f"{ACTOR}@{target}").ask(
                        message, timeout=self.request_timeout
                    )
                except TrioactorsError:
                    self.leader = None
                if reply is not None:
                    if reply.status == "ok":
                        self.leader = target
                        return reply.result or "null"
                    if reply.status == "not_leader" and reply.leader and reply.leader != target:
                        self.leader = reply.leader
                        self.redirects += 1
                        continue
                    self.leader = None
                self.retries += 1
                failures += 1
                await trio.sleep(_BACKOFF.delay(failures, self._rng))
        assert scope.cancelled_caught
        raise KvUnavailable(
            f"no leader among {', '.join(self.servers)} answered within {self.timeout} s"
        )
