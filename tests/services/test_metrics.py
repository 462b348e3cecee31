"""Metrics and health: the exposition after real activity, health verdicts, the HTTP endpoint.

Values are checked by parsing ``render()`` with prometheus_client's own
parser. Activity runs on simulated clusters under MockClock; the HTTP
endpoint on real sockets on 127.0.0.1 (real clock, every wait bounded).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import trioactors as ta
from trioactors._core._membership import MemberState
from trioactors._nodecmd import SettingsError, load_settings, merge_settings
from trioactors._runtime._supervisor import ChildState
from trioactors._services._http import HttpResponse, HttpServer
from trioactors._services._metrics import (
    ASK_BUCKETS,
    Health,
    Metrics,
    _Entry,
    _judge,
    start_metrics,
)
from trioactors._version import __version__
from trioactors.examples import HANDLERS
from trioactors.testing import open_simulated_cluster
from trioactors.transports import MemoryNetwork

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from prometheus_client.metrics_core import Metric

# -- reading the exposition ------------------------------------------------------------------


def scrape(metrics: Metrics) -> dict[str, Metric]:
    text = metrics.render().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` with exactly ``labels``."""
    for family in families.values():
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise LookupError(f"no sample {sample}{labels}")


def labelled(families: dict[str, Metric], family: str, *names: str) -> dict[tuple[str, ...], float]:
    """Every sample of ``family``: its labels' values (``names`` in order, else all) -> value."""
    return {
        tuple(s.labels[n] for n in names or sorted(s.labels)): s.value
        for s in families[family].samples
    }


# -- actors used below -------------------------------------------------------------------------


class Boom(Exception):
    pass


class Echo(ta.Actor[object]):
    async def receive(self, message: object) -> object:
        if message == "boom":
            raise Boom("boom")
        if not isinstance(message, str):
            return await super().receive(message)  # unhandled: a dead letter for a tell
        return message


@attrs.define
class Gate:
    entered: trio.Event = attrs.field(factory=trio.Event)
    open: trio.Event = attrs.field(factory=trio.Event)


class Gated(ta.Actor[str]):
    """Holds its first message until the gate opens: the rest wait in the mailbox."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def receive(self, message: str) -> None:
        self.gate.entered.set()
        await self.gate.open.wait()


class Quits(ta.Actor[str]):
    async def receive(self, message: str) -> None:
        self.context.stop()


# -- activity on a simulated cluster -----------------------------------------------------------


async def test_render_reports_the_activity_of_a_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_simulated_cluster(2, seed=3, formed=True) as cluster:
        n0, n1 = cluster.nodes["n0"], cluster.nodes["n1"]
        pool = await ta.start_worker_pool(n1, HANDLERS, concurrency=2)
        queue = await ta.start_job_queue(n0, membership=cluster.members["n0"], seed=3)
        with trio.fail_after(30):
            await queue.wait_for_workers(1)
        m0 = await start_metrics(n0, membership=cluster.members["n0"], queues=[queue])
        m1 = await start_metrics(n1, membership=cluster.members["n1"], pools=[pool])
        before = scrape(m0)

        echo = await n0.root.start_actor(Echo, name="echo")
        gate = Gate()
        gated = await n0.root.start_actor(Gated, gate, name="gated", mailbox_size=10)
        with n0.system.subscribe() as events:
            assert await echo.ask("hello") == "hello"
            with pytest.raises(ta.ActorCrashed):
                await echo.ask("boom")
            await events.wait_for(ta.ChildRestarted, path="/root/echo")
        await echo.tell(42)  # not handled: a dead letter
        assert await echo.ask("after") == "after"  # (so the 42 has been handled)
        await n1.root.start_actor(Echo, name="echo")
        assert await n0.ref("echo@n1").ask("remote") == "remote"
        for i in range(3):
            assert await queue.submit(ta.Job("echo", i)) == i
        await gated.tell("first")
        await gate.entered.wait()
        for text in ("a", "b", "c"):
            await gated.tell(text)

        after = scrape(m0)
        # the system's counters
        assert value(after, "trioactors_crashes_total") == 1
        assert value(after, "trioactors_restarts_total") == 1
        assert value(after, "trioactors_dead_letters_total") == 1
        assert value(after, "trioactors_actors") == len(n0.system.names())
        assert value(after, "trioactors_mailbox_length", actor="gated") == 3
        assert value(after, "trioactors_mailbox_capacity", actor="gated") == 10
        assert value(after, "trioactors_mailbox_length", actor="echo") == 0
        # asks: four made here (three replied, one failed), besides the queue's own
        assert after["trioactors_ask_seconds"].type == "histogram"
        ok_count = value(after, "trioactors_ask_seconds_count", outcome="ok")
        error_count = value(after, "trioactors_ask_seconds_count", outcome="error")
        assert ok_count - value(before, "trioactors_ask_seconds_count", outcome="ok") >= 3
        assert error_count - value(before, "trioactors_ask_seconds_count", outcome="error") >= 1
        assert value(after, "trioactors_ask_seconds_bucket", outcome="ok", le="+Inf") == ok_count
        per_outcome = len(ASK_BUCKETS) + 3  # (and +Inf, _count, _sum)
        assert len(after["trioactors_ask_seconds"].samples) == 2 * per_outcome
        # messages between nodes, in and out, and the transport under them
        for name in (
            "trioactors_messages_sent_total",
            "trioactors_messages_received_total",
            "trioactors_transport_frames_sent_total",
            "trioactors_transport_bytes_received_total",
        ):
            assert value(after, name) > value(before, name) > 0, name
        assert after["trioactors_messages_sent"].type == "counter"
        # membership: both nodes alive, every state reported
        assert labelled(after, "trioactors_members") == {
            (state.name.lower(),): (2.0 if state is MemberState.ALIVE else 0.0)
            for state in MemberState
        }
        # the queue on n0
        q = {"queue": queue.address}
        assert value(after, "trioactors_queue_submitted_total", **q) == 3
        assert value(after, "trioactors_queue_succeeded_total", **q) == 3
        assert value(after, "trioactors_queue_failed_total", **q) == 0
        assert value(after, "trioactors_queue_retried_total", **q) == 0
        assert value(after, "trioactors_queue_exhausted_total", **q) == 0
        assert value(after, "trioactors_queue_waiting", **q) == 0
        assert value(after, "trioactors_queue_in_flight", **q) == 0
        assert value(after, "trioactors_queue_workers", **q) == 1
        circuits = labelled(after, "trioactors_circuit_state", "queue", "node")
        assert circuits == {(queue.address, "n1"): 0.0}  # (closed)
        # the pool on n1
        p = {"pool": pool.address}
        on_n1 = scrape(m1)
        assert value(on_n1, "trioactors_pool_received_total", **p) == 3
        assert value(on_n1, "trioactors_pool_succeeded_total", **p) == 3
        assert value(on_n1, "trioactors_pool_running", **p) == 0
        assert "trioactors_queue_submitted" not in on_n1
        # the tree, health, and nothing failed to be read
        assert value(after, "trioactors_healthy") == 1
        assert value(after, "trioactors_children", state="running") == len(m0.health().tree) - 1
        assert value(after, "trioactors_metrics_errors_total") == 0
        assert value(on_n1, "trioactors_metrics_errors_total") == 0
        assert "process_cpu_seconds" in after or sys.platform != "linux"
        gate.open.set()


async def test_each_node_has_its_own_registry(autojump_clock: trio.testing.MockClock) -> None:
    async with open_simulated_cluster(2, seed=1, formed=True) as cluster:
        m0 = await start_metrics(cluster.nodes["n0"])
        m1 = await start_metrics(cluster.nodes["n1"])
        assert m0.registry is not m1.registry
        assert m0.registry is not prometheus_client.REGISTRY
        await cluster.nodes["n0"].root.start_actor(Echo, name="only-on-n0")
        assert ("only-on-n0",) in labelled(scrape(m0), "trioactors_mailbox_length")
        assert ("only-on-n0",) not in labelled(scrape(m1), "trioactors_mailbox_length")
        assert m0.address is None  # (no endpoint unless asked)
        with pytest.raises(ta.NameTaken):
            await start_metrics(cluster.nodes["n0"])


async def test_an_ask_observer_set_before_is_chained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_simulated_cluster(1) as cluster:
        node = cluster.nodes["n0"]
        seen: list[tuple[float, bool]] = []
        node.system.ask_observer = lambda seconds, replied: seen.append((seconds, replied))
        metrics = await start_metrics(node)
        echo = await node.root.start_actor(Echo, name="echo")
        ok_before = value(scrape(metrics), "trioactors_ask_seconds_count", outcome="ok")
        await echo.ask("x")
        assert seen[-1][1] is True
        assert value(scrape(metrics), "trioactors_ask_seconds_count", outcome="ok") == ok_before + 1


async def test_a_failing_metrics_service_never_takes_the_node_down(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Metrics, events: ta.Subscription) -> None:
        raise RuntimeError("a bug in the watcher")

    async with open_simulated_cluster(1) as cluster:
        node = cluster.nodes["n0"]
        metrics = await start_metrics(node)
        echo = await node.root.start_actor(Echo, name="echo")
        service = node.root.child("$metrics").supervisor
        assert service is not None
        monkeypatch.setattr(Metrics, "_watch_events", broken)
        with node.system.subscribe() as events:
            await service.restart_child("$metrics")  # the new instances crash, again and again
            gave_up = await events.wait_for(ta.SupervisorEscalated, path="/root/$metrics")
            await events.wait_for(ta.ChildStopped, path="/root/$metrics")  # removed
        assert "4 restarts within 60.0 s" in str(gave_up.exception)
        assert [c.name for c in node.root.children()] == ["$membership", "echo"]
        assert await echo.ask("still here") == "still here"
        assert value(scrape(metrics), "trioactors_actors") == 2  # (reading still works)


# -- job queues that retry and break circuits (a fake: the counters are what matters) ---------


@attrs.frozen
class FakeQueueStatistics:
    submitted: int = 10
    succeeded: int = 6
    failed: int = 2
    timed_out: int = 1
    lost: int = 1
    late_results: int = 4
    rejected_busy: int = 5
    retried: int = 7
    exhausted: int = 2
    store_errors: int = 0
    waiting: int = 1
    in_flight: int = 3
    workers: int = 3


@attrs.define
class FakeQueue:
    address: str
    circuits: dict[str, str]
    stats: FakeQueueStatistics = attrs.field(factory=FakeQueueStatistics)

    def statistics(self) -> FakeQueueStatistics:
        return self.stats

    def circuit_states(self) -> dict[str, str]:
        return dict(self.circuits)


async def test_queue_counters_retries_and_circuit_states(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_simulated_cluster(1) as cluster:
        metrics = await start_metrics(cluster.nodes["n0"])
        assert "trioactors_queue_submitted" not in scrape(metrics)
        queue = FakeQueue("q@n0", {"n1": "closed", "n2": "half_open", "n3": "open"})
        metrics.add_queue(queue)
        metrics.add_queue(queue)  # (once is enough)
        families = scrape(metrics)
        q = {"queue": "q@n0"}
        for field in attrs.fields(FakeQueueStatistics):
            name = field.name
            if name in ("waiting", "in_flight", "workers"):
                assert families[f"trioactors_queue_{name}"].type == "gauge"
                assert value(families, f"trioactors_queue_{name}", **q) == field.default
            else:
                assert families[f"trioactors_queue_{name}"].type == "counter"
                assert value(families, f"trioactors_queue_{name}_total", **q) == field.default
        assert labelled(families, "trioactors_circuit_state", "queue", "node") == {
            ("q@n0", "n1"): 0,
            ("q@n0", "n2"): 1,
            ("q@n0", "n3"): 2,
        }
        # a source that fails costs its own samples only, and is counted
        metrics.add_queue(FakeQueue("broken@n0", {"n9": "sideways"}))
        families = scrape(metrics)
        assert value(families, "trioactors_metrics_errors_total") == 1
        assert value(families, "trioactors_queue_submitted_total", queue="broken@n0") == 10
        assert ("q@n0", "n3") in labelled(families, "trioactors_circuit_state", "queue", "node")
        assert value(families, "trioactors_actors") >= 1


# -- health ------------------------------------------------------------------------------------


async def test_health_follows_the_supervision_tree(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=1)
    # (a root that allows several restarts: each case below costs one)
    async with (
        network.running(),
        ta.open_node("n0", transport=network.transport("n0"), intensity=10) as node,
    ):
        membership = await ta.start_membership(node)
        metrics = await start_metrics(node, membership=membership)
        health = metrics.health()
        assert health.ok, health.problems
        assert health.node == "n0"
        assert health.tree[0] == {"path": "/root", "state": "running", "restarts": 0}
        assert {"path": "/root/$membership", "state": "running", "restarts": 0} in health.tree

        # a transient actor that ends normally stays stopped, by design
        quits = await node.root.start_actor(Quits, name="quits", restart=ta.Restart.TRANSIENT)
        with node.system.subscribe() as events:
            await quits.tell("stop")
            await events.wait_for(ta.ChildStopped, path="/root/quits")
        assert node.root.child("quits").state is ChildState.STOPPED
        assert metrics.health().ok

        # a crash that is restarted is not a problem once restarted
        echo = await node.root.start_actor(Echo, name="echo")
        with node.system.subscribe() as events:
            await echo.tell("boom")
            await events.wait_for(ta.ChildRestarted, path="/root/echo")
        assert metrics.health().ok

        # a supervisor that gives up and is removed: unhealthy until one starts there again
        work = await node.root.start_supervisor(
            name="work", intensity=0, restart=ta.Restart.TEMPORARY
        )
        doomed = await work.start_actor(Echo, name="doomed")
        with node.system.subscribe() as events:
            await doomed.tell("boom")
            await events.wait_for(ta.ChildStopped, path="/root/work")
        await trio.testing.wait_all_tasks_blocked()
        health = metrics.health()
        assert not health.ok
        assert len(health.problems) == 1
        assert health.problems[0].startswith("/root/work gave up: 1 restarts within 5.0 s")
        assert all(entry["path"] != "/root/work" for entry in health.tree)
        assert value(scrape(metrics), "trioactors_healthy") == 0
        assert value(scrape(metrics), "trioactors_health_problems") == 1
        await node.root.start_supervisor(name="work")
        await trio.testing.wait_all_tasks_blocked()
        assert metrics.health().ok

        # a supervisor that gives up and is restarted by its parent recovers by itself
        flaky = await node.root.start_supervisor(name="flaky", intensity=0)
        crashy = await flaky.start_actor(Echo, name="crashy")
        with node.system.subscribe() as events:
            await crashy.tell("boom")
            await events.wait_for(ta.ChildRestarted, path="/root/flaky")
        await trio.testing.wait_all_tasks_blocked()
        assert metrics.health().ok, metrics.health().problems

        # leaving the cluster makes the node unhealthy
        await membership.leave()
        health = metrics.health()
        assert health.problems == ["this node is left in its own membership view"]
    assert not metrics.health().ok  # the node has stopped
    assert "the root supervisor /root is not running" in metrics.health().problems[0]


def entry(
    path: str,
    state: ChildState,
    *,
    kind: str = "actor",
    judged: bool = True,
    restart: ta.Restart = ta.Restart.PERMANENT,
) -> _Entry:
    return _Entry(path, kind, state, restart, 0, judged)


def test_judge_the_states_of_children() -> None:
    def problems(*entries: _Entry, given_up: dict[str, str] | None = None) -> list[str]:
        return _judge("n", "/root", True, entries, given_up or {}, MemberState.ALIVE).problems

    for state in (
        ChildState.STARTING,
        ChildState.RUNNING,
        ChildState.RESTARTING,
        ChildState.STOPPING,
    ):
        assert problems(entry("/root/a", state), entry("/root/s", state, kind="supervisor")) == []
    assert problems(entry("/root/a", ChildState.STOPPED)) == [
        "/root/a is stopped; a permanent actor should run"
    ]
    assert problems(entry("/root/a", ChildState.STOPPED, restart=ta.Restart.TRANSIENT)) == []
    assert problems(entry("/root/a", ChildState.STOPPED, restart=ta.Restart.TEMPORARY)) == []
    assert problems(
        entry("/root/s", ChildState.STOPPED, kind="supervisor", restart=ta.Restart.TRANSIENT)
    ) == ["supervisor /root/s is stopped"]
    # below a supervisor being stopped, nothing is judged
    assert problems(entry("/root/s/a", ChildState.STOPPED, judged=False)) == []
    # a give-up is reported once, not again as a stopped supervisor
    assert problems(
        entry("/root/s", ChildState.STOPPED, kind="supervisor"), given_up={"/root/s": "why"}
    ) == ["/root/s gave up: why"]
    dead = _judge("n", "/root", True, [], {}, MemberState.DEAD)
    assert dead == Health(
        ok=False,
        node="n",
        problems=["this node is dead in its own membership view"],
        tree=[{"path": "/root", "state": "running", "restarts": 0}],
    )
    assert dead.to_json()["status"] == "unhealthy"
    assert _judge("n", "/root", True, [], {}, None).to_json()["status"] == "ok"


# -- the HTTP endpoint (real sockets, real clock) ----------------------------------------------


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, text = line.partition(":")
        headers[name.strip().lower()] = text.strip()
    return Reply(int(status_line.split()[1]), headers, body)


async def exchange(address: tuple[str, int], request: bytes, *, eof: bool = False) -> bytes:
    """Send ``request`` raw (then end the input if ``eof``), read until the server closes."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        if request:
            await stream.send_all(request)
        if eof:
            await stream.send_eof()
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        return data


async def get(address: tuple[str, int], target: str, method: str = "GET") -> Reply:
    request = f"{method} {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: test\r\n\r\n"
    return parse_reply(await exchange(address, request.encode()))


@asynccontextmanager
async def served_node(name: str = "h1") -> AsyncIterator[tuple[ta.Node, Metrics]]:
    network = MemoryNetwork(seed=1)  # (the HTTP side is real)
    async with network.running(), ta.open_node(name, transport=network.transport(name)) as node:
        metrics = await start_metrics(node, serve=("127.0.0.1", 0))
        yield node, metrics


async def test_http_metrics_and_health() -> None:
    with trio.fail_after(20):
        async with served_node() as (node, metrics):
            assert metrics.address is not None
            host, port = metrics.address
            assert host == "127.0.0.1"
            assert port > 0
            reply = await get(metrics.address, "/metrics")
            assert reply.status == 200
            assert reply.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
            assert reply.headers["connection"] == "close"
            assert int(reply.headers["content-length"]) == len(reply.body)
            families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
            assert value(families, "trioactors_actors") == len(node.system.names())
            assert (
                value(
                    families,
                    "trioactors_node_info",
                    node="h1",
                    address=node.address,
                    version=__version__,
                )
                == 1
            )
            query = await get(metrics.address, "/metrics?name[]=x")
            assert query.status == 200

            head = await get(metrics.address, "/metrics", method="HEAD")
            assert head.status == 200
            assert head.body == b""
            assert int(head.headers["content-length"]) > 0

            health = await get(metrics.address, "/healthz")
            assert health.status == 200
            assert health.headers["content-type"] == "application/json"
            data = health.json()
            assert data["status"] == "ok"
            assert data["node"] == "h1"
            assert data["problems"] == []
            assert {"path": "/root/$metrics", "state": "running", "restarts": 0} in data["tree"]  # type: ignore[operator]

            # a supervisor gives up for good: 503 with the problem
            work = await node.root.start_supervisor(
                name="work", intensity=0, restart=ta.Restart.TEMPORARY
            )
            doomed = await work.start_actor(Echo, name="doomed")
            with node.system.subscribe() as events:
                await doomed.tell("boom")
                await events.wait_for(ta.ChildStopped, path="/root/work")
            await trio.testing.wait_all_tasks_blocked()
            sick = await get(metrics.address, "/healthz")
            assert sick.status == 503
            data = sick.json()
            assert data["status"] == "unhealthy"
            [problem] = data["problems"]  # type: ignore[misc]
            assert problem.startswith("/root/work gave up")

            assert (await get(metrics.address, "/")).status == 404
            assert (await get(metrics.address, "/metrics/x")).status == 404
            refused = await get(metrics.address, "/metrics", method="POST")
            assert refused.status == 405
            assert refused.headers["allow"] == "GET, HEAD"

            counts = scrape(metrics)
            assert value(counts, "trioactors_http_responses_total", code="200") == 4
            assert value(counts, "trioactors_http_responses_total", code="503") == 1
            assert value(counts, "trioactors_http_responses_total", code="404") == 2
            assert value(counts, "trioactors_http_malformed_requests_total") == 0
            address = metrics.address
        # the endpoint stops with the node
        with pytest.raises(OSError, match="attempts to connect"):
            await trio.open_tcp_stream(*address)


async def test_http_bad_requests_are_refused_and_counted() -> None:
    with trio.fail_after(20):
        async with served_node() as (_, metrics):
            assert metrics.address is not None
            garbage = parse_reply(await exchange(metrics.address, b"NOT HTTP AT ALL\r\n\r\n"))
            assert garbage.status == 400
            binary = parse_reply(await exchange(metrics.address, b"\x00\xff\x16\x03\x01" * 20))
            assert binary.status == 400
            no_host = parse_reply(await exchange(metrics.address, b"GET /metrics HTTP/1.1\r\n\r\n"))
            assert no_host.status == 400  # (HTTP/1.1 requires Host)
            huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
            too_big = parse_reply(await exchange(metrics.address, huge))
            assert too_big.status == 431
            # a client that closes without asking anything gets nothing, and costs nothing
            assert await exchange(metrics.address, b"", eof=True) == b""
            half = await exchange(metrics.address, b"GET /metrics HT", eof=True)
            assert parse_reply(half).status == 400
            counts = scrape(metrics)
            assert value(counts, "trioactors_http_malformed_requests_total") == 5
            assert value(counts, "trioactors_http_responses_total", code="400") == 4
            assert value(counts, "trioactors_http_responses_total", code="431") == 1
            # and it still serves
            assert (await get(metrics.address, "/healthz")).status == 200


async def test_http_client_that_sends_nothing_is_cut_off() -> None:
    server = HttpServer(lambda method, path: HttpResponse(200, b"hi"), request_timeout=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                server.serve, await trio.open_tcp_listeners(0, host="127.0.0.1")
            )
            address = listeners[0].socket.getsockname()
            silent = await trio.open_tcp_stream(*address)
            async with silent:
                assert await silent.receive_some() == b""  # closed by the server
            assert server.statistics().timeouts == 1
            slow = await trio.open_tcp_stream(*address)
            async with slow:
                await slow.send_all(b"GET / HTTP/1.1\r\n")  # ... and never the rest
                assert await slow.receive_some() == b""
            assert server.statistics().timeouts == 2
            reply = parse_reply(await exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert reply.status == 200
            assert reply.body == b"hi"
            await trio.testing.wait_all_tasks_blocked()  # (the server sees the client close)
            stats = server.statistics()
            assert stats.responses == {200: 1}
            assert stats.connections == 3
            assert stats.active == 0
            nursery.cancel_scope.cancel()


async def test_http_connections_are_bounded_and_a_failing_route_is_a_500() -> None:
    def route(method: str, path: str) -> HttpResponse:
        if path == "/bug":
            raise RuntimeError("a bug")
        return HttpResponse(200, b"ok")

    server = HttpServer(route, request_timeout=5, max_connections=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                server.serve, await trio.open_tcp_listeners(0, host="127.0.0.1")
            )
            address = listeners[0].socket.getsockname()
            busy = await trio.open_tcp_stream(*address)  # holds the only slot
            await trio.testing.wait_all_tasks_blocked()
            assert server.statistics().active == 1
            assert await exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
            assert server.statistics().rejected == 1
            await busy.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert server.statistics().active == 0
            bug = parse_reply(await exchange(address, b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert bug.status == 500
            assert server.statistics().errors == 1
            ok = parse_reply(await exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert ok.status == 200
            nursery.cancel_scope.cancel()


async def test_the_endpoint_serves_again_at_the_same_address_after_a_restart() -> None:
    with trio.fail_after(20):
        async with served_node() as (node, metrics):
            assert metrics.address is not None
            address = metrics.address
            assert (await get(address, "/metrics")).status == 200
            service = node.root.child("$metrics").supervisor
            assert service is not None
            assert service.child("$metrics").restart is ta.Restart.PERMANENT
            assert node.root.child("$metrics").restart is ta.Restart.TEMPORARY
            assert await service.restart_child("$metrics")
            assert metrics.address == address
            reply = await get(address, "/healthz")
            assert reply.status == 200
            assert {"path": "/root/$metrics/$metrics", "state": "running", "restarts": 1} in (
                reply.json()["tree"]  # type: ignore[operator]
            )


def test_http_server_limits_are_checked() -> None:
    def route(method: str, path: str) -> HttpResponse:
        return HttpResponse(200)

    with pytest.raises(ValueError, match="max_header_bytes"):
        HttpServer(route, max_header_bytes=10)
    with pytest.raises(ValueError, match="request_timeout"):
        HttpServer(route, request_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        HttpServer(route, max_connections=0)


async def test_a_taken_port_fails_start_metrics() -> None:
    with trio.fail_after(10):
        async with served_node("h1") as (_, first):
            assert first.address is not None
            network = MemoryNetwork(seed=2)
            async with (
                network.running(),
                ta.open_node("h2", transport=network.transport("h2")) as node,
            ):
                with pytest.raises(OSError, match=r"(?i)in use"):
                    await start_metrics(node, serve=first.address)
                assert node.root.children() == []  # nothing left behind
                assert node.system.ask_observer is None


# -- the command line --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_node_command_serves_metrics() -> None:
    port = free_port()
    command = [sys.executable, "-m", "trioactors", "node", "m1", "--metrics-port", str(port)]
    env = {**os.environ, "TRIOACTORS_SECRET": "metrics-test-secret"}
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        try:
            assert process.stdout is not None
            assert process.stdin is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the node exited before it was ready"
                line += chunk
            assert json.loads(line)["name"] == "m1"
            reply = await get(("127.0.0.1", port), "/metrics")
            assert reply.status == 200
            families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
            assert value(families, "trioactors_members", state="alive") == 1
            assert value(families, "trioactors_pool_received_total", pool="jobs:worker@m1") == 0
            assert ("account",) in labelled(families, "trioactors_mailbox_length")
            health = await get(("127.0.0.1", port), "/healthz")
            assert health.status == 200
            assert health.json()["status"] == "ok"
            await process.stdin.aclose()  # asks it to stop
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def test_metrics_port_setting(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('name = "m1"\nmetrics_port = 9100\n')
    file = load_settings(str(path))
    assert file["metrics_port"] == 9100
    defaults: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "join": {},
        "peer": {},
        "transport": "ws",
        "wire_format": "json",
        "secret_file": None,
        "read_only_secret_file": None,
        "events": False,
        "ignore_stdin": False,
        "workers": 2,
        "tags": (),
        "metrics_port": None,
        "files_dir": None,
    }
    assert merge_settings(None, defaults, set(), file).metrics_port == 9100
    given = {**defaults, "metrics_port": 9200}
    assert merge_settings(None, given, {"metrics_port"}, file).metrics_port == 9200
    assert merge_settings(None, defaults, set(), {"name": "m1"}).metrics_port is None
    path.write_text('name = "m1"\nmetrics_port = "9100"\n')
    with pytest.raises(SettingsError, match="metrics_port must be an integer"):
        load_settings(str(path))
    with pytest.raises(SettingsError, match="metrics_port must be 0-65535"):
        merge_settings(None, {**defaults, "metrics_port": 70000}, {"metrics_port"}, {"name": "x"})
