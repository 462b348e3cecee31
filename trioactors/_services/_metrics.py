"""Metrics and health of a node: Prometheus exposition and a health verdict.

Theory of operation
-------------------

:func:`start_metrics` gives a node a :class:`Metrics`: a
``prometheus_client.CollectorRegistry`` of its own (never the global
default: many nodes may share a process, as in tests), and optionally an
HTTP endpoint (``_http.py``) serving ``GET /metrics`` and ``GET /healthz``.

Almost every value is **read at scrape time** by one custom collector from
the statistics the library keeps anyway (``Node.statistics()``,
``ActorSystem.statistics()``, the transport's, the mailboxes, membership,
job queues, worker pools, the supervision tree), so nothing is counted twice
and no hot path pays for metrics. The one exception is the ask latency
histogram, ``trioactors_ask_seconds``, fed by ``ActorSystem.ask_observer``
(an observer set before is chained, not replaced).

A source that fails while being read (a bug, or a job queue that lacks a
newer statistic) loses its samples for that scrape only: the rest is
rendered, the failure is counted in ``trioactors_metrics_errors_total`` and
logged once per source.

Health (:meth:`Metrics.health`) is decided by a pure function of a snapshot
of the supervision tree, the supervisors that gave up, and this node's own
membership state. The node is healthy when none of these holds:

- the root supervisor is not running (the node is stopping, or never ran);
- a supervisor gave up (``SupervisorEscalated``) and no supervisor has been
  started at its path since (``ChildStarted``/``ChildRestarted`` clear it);
  this catches a temporary supervisor that gave up and was removed, which
  leaves no trace in the tree;
- a child is ``STOPPED`` that should not be: any supervisor (a supervisor
  only ends by giving up or by being stopped with its parent), and any
  ``PERMANENT`` actor (it is always restarted). A stopped ``TRANSIENT`` actor
  ended normally by design, and a stopped ``TEMPORARY`` one is about to be
  removed: both are fine. (A crash caught between its exit and its restart
  shows as a problem for that moment, which is true then.);
- this node is ``DEAD`` or ``LEFT`` in its own membership view.

``STARTING`` and ``RESTARTING`` (a restart waiting for its backoff) are
recovery, not problems; ``STOPPING`` means its supervisor is stopping it on
purpose, and its subtree is not judged.

The service runs as ``/root/$metrics``: a ``TEMPORARY`` supervisor (3
restarts within 60 s) holding the ``$metrics`` actor, whose background
tasks serve HTTP and watch the system's events. It stops with the node.
Connections' failures are counted and logged by the server; if the service
itself keeps failing, its supervisor gives up and is removed without
touching the root's restart intensity: metrics can never bring a node down.
(Its own give-up is then only in the log: the watcher went with it.)

Metrics
-------

All names start with ``trioactors_``; counters end in ``_total``.

- Node: ``node_info{node,address,version}``, ``messages_sent_total`` and
  ``messages_received_total`` (envelopes to and from other nodes),
  ``pending_asks``, and one counter per refusal the node counts
  (``malformed_frames``, ``unknown_types``, ``invalid_payloads``,
  ``unknown_actors``, ``unknown_nodes``, ``forwarded``,
  ``hop_limit_exceeded``, ``late_replies``, ``error_replies_sent``,
  ``remote_errors``, ``replies_lost``, ``unauthorized``).
- Transport: ``transport_{frames,bytes}_{sent,received}_total``,
  ``transport_connections_open``, ``transport_connects_total`` and its
  failures (``connect_failures``, ``auth_failures``, ``version_mismatches``,
  ``oversize_frames``, ``heartbeat_failures``, ``frames_lost``).
- Actors: ``actors``, ``dead_letters_total``, ``crashes_total``,
  ``restarts_total``, ``mailbox_length{actor}``, ``mailbox_capacity{actor}``,
  ``children{state}``, ``healthy``, ``health_problems``,
  ``ask_seconds{outcome}`` (histogram; ``ok`` or ``error``).
- Membership: ``members{state}``.
- Job queues: ``queue_<counter>_total{queue}`` for ``submitted``,
  ``succeeded``, ``failed``, ``timed_out``, ``lost``, ``late_results``,
  ``rejected_busy``, ``retried``, ``exhausted``, ``store_errors``; gauges ``queue_waiting``,
  ``queue_in_flight``, ``queue_workers``; ``circuit_state{queue,node}``
  (0 closed, 1 half-open, 2 open).
- Worker pools: ``pool_<counter>_total{pool}`` for every counter of
  ``WorkerPoolStatistics``; gauges ``pool_running``, ``pool_queued``.
- The endpoint itself: ``http_responses_total{code}``,
  ``http_connections_total``, ``http_malformed_requests_total``,
  ``http_timeouts_total``, ``http_errors_total``, ``http_rejected_total``;
  and ``metrics_errors_total``, ``metrics_events_lost_total``.

Besides, ``process_*`` and ``python_*`` from prometheus_client's own collectors.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Final, Protocol, assert_never, final

import attrs
import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .._core._membership import MemberState
from .._core._supervision import Restart
from .._runtime._actor import Actor
from .._runtime._supervisor import ChildState
from .._runtime._system import (
    ChildRestarted,
    ChildStarted,
    EventsLost,
    SupervisorEscalated,
)
from .._version import __version__
from ..transports import Transport
from ._http import HttpResponse, HttpServer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from prometheus_client.metrics_core import Metric

    from .._runtime._node import Node
    from .._runtime._supervisor import Supervisor
    from .._runtime._system import Subscription
    from ._membership import Membership
    from ._workers import WorkerPool

__all__ = ["ASK_BUCKETS", "Health", "MeteredJobQueue", "Metrics", "start_metrics"]

logger = logging.getLogger("trioactors.metrics")

SERVICE = "$metrics"
"""The name of the service's supervisor and of its actor."""
ASK_BUCKETS: Final = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
    *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
"""Upper bounds (seconds) of ``trioactors_ask_seconds``: 100 µs to 30 s."""
CIRCUIT_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
"""The value of ``trioactors_circuit_state`` for each state of a circuit."""
_RESTARTS: Final = 3
_RESTART_PERIOD: Final = 60.0


# -- what is read from a job queue -----------------------------------------------------


class _QueueStatistics(Protocol):
    @property
    def submitted(self) -> int: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def timed_out(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def late_results(self) -> int: ...
    @property
    def rejected_busy(self) -> int: ...
    @property
    def retried(self) -> int: ...
    @property
    def exhausted(self) -> int: ...
    @property
    def store_errors(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def workers(self) -> int: ...


class MeteredJobQueue(Protocol):
    """What :class:`Metrics` reads from a job queue (a :class:`~trioactors.JobQueue`).

    ``circuit_states()`` maps each worker node to the state of its circuit
    breaker: ``"closed"``, ``"half_open"`` or ``"open"``.

    .. versionadded:: 0.1
    """

    @property
    def address(self) -> str: ...
    def statistics(self) -> _QueueStatistics: ...
    def circuit_states(self) -> Mapping[str, str]: ...


# -- health ------------------------------------------------------------------------------


@final
@attrs.frozen
class Health:
    """A node's health, from :meth:`Metrics.health` (and ``GET /healthz``).

    ``tree`` lists the supervision tree, root first, each entry a dict with
    ``path``, ``state`` (a :class:`~trioactors.ChildState` value) and
    ``restarts``. ``problems`` says in words what is wrong; ``ok`` is true
    when there is nothing. The module's documentation says what counts.

    .. versionadded:: 0.1
    """

    ok: bool
    node: str
    problems: list[str]
    tree: list[dict[str, str | int]]

    def to_json(self) -> dict[str, object]:
        """The body of ``GET /healthz``: ``status`` is ``"ok"`` or ``"unhealthy"``."""
        return {
            "status": "ok" if self.ok else "unhealthy",
            "node": self.node,
            "problems": list(self.problems),
            "tree": [dict(entry) for entry in self.tree],
        }


@attrs.frozen
class _Entry:
    """One child in a snapshot of the tree, for :func:`_judge`."""

    path: str
    kind: str
    state: ChildState
    restart: Restart
    restarts: int
    judged: bool  # False below a supervisor that is being stopped


def _judge(
    node: str,
    root: str,
    root_running: bool,
    entries: Iterable[_Entry],
    given_up: Mapping[str, str],
    member_state: MemberState | None,
) -> Health:
    """The health verdict (pure; see the module docstring for the rules)."""
    problems: list[str] = []
    if not root_running:
        problems.append(f"the root supervisor {root} is not running: the node is stopping")
    tree: list[dict[str, str | int]] = [
        {"path": root, "state": "running" if root_running else "stopped", "restarts": 0}
    ]
    for path, reason in given_up.items():  # (SupervisorGaveUp's message names the path)
        problems.append(reason if reason.startswith(path) else f"{path} gave up: {reason}")
    for entry in entries:
        tree.append({"path": entry.path, "state": entry.state.value, "restarts": entry.restarts})
        if not entry.judged or entry.path in given_up:
            continue
        match entry.state:
            case ChildState.STARTING | ChildState.RUNNING | ChildState.RESTARTING:
                pass  # running, or recovering
            case ChildState.STOPPING:
                pass  # its supervisor stops it on purpose
            case ChildState.STOPPED:
                if entry.kind == "supervisor":
                    problems.append(f"supervisor {entry.path} is stopped")
                elif entry.restart is Restart.PERMANENT:
                    problems.append(f"{entry.path} is stopped; a permanent actor should run")
            case unreachable:
                assert_never(unreachable)
    if member_state is MemberState.DEAD or member_state is MemberState.LEFT:
        problems.append(f"this node is {member_state.name.lower()} in its own membership view")
    return Health(ok=not problems, node=node, problems=problems, tree=tree)


def _snapshot(sup: Supervisor, *, judged: bool = True) -> Iterator[_Entry]:
    """Every child below ``sup``, depth first in start order."""
    for info in sup.children():
        yield _Entry(info.path, info.kind, info.state, info.restart, info.restarts, judged)
        if info.supervisor is not None:
            yield from _snapshot(
                info.supervisor, judged=judged and info.state is not ChildState.STOPPING
            )


# -- the metrics ---------------------------------------------------------------------------


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"trioactors_{name}", doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"trioactors_{name}", doc, labels=list(labels))


def _count(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter with one sample and no labels."""
    family = _counter(name, doc)
    family.add_metric([], value)
    return family


def _level(name: str, doc: str, value: float) -> GaugeMetricFamily:
    """A gauge with one sample and no labels."""
    family = _gauge(name, doc)
    family.add_metric([], value)
    return family


# NodeStatistics fields exposed as counters besides messages in/out: name -> help
_NODE_COUNTERS: Final = {
    "malformed_frames": "Frames from other nodes that could not be decoded.",
    "unknown_types": "Messages of a type not registered here.",
    "invalid_payloads": "Messages whose payload did not fit their type.",
    "unknown_actors": "Messages for an actor that does not exist here.",
    "unknown_nodes": "Messages to forward to a node with no known address or route.",
    "forwarded": "Messages forwarded to another node.",
    "hop_limit_exceeded": "Messages refused for exceeding the hop limit.",
    "late_replies": "Replies that came after their ask had ended.",
    "error_replies_sent": "Error replies sent to other nodes.",
    "remote_errors": "Error replies to tells (recorded as dead letters).",
    "replies_lost": "Replies and errors that could not be sent.",
    "unauthorized": "Envelopes refused from a read-only peer.",
}

_TRANSPORT_COUNTERS: Final = {
    "frames_sent": "Frames the transport sent.",
    "frames_received": "Frames the transport received.",
    "bytes_sent": "Bytes of frames sent.",
    "bytes_received": "Bytes of frames received.",
    "connects": "Connections established.",
    "connect_failures": "Failed attempts to connect.",
    "auth_failures": "Handshakes that failed authentication.",
    "version_mismatches": "Handshakes with an incompatible protocol version.",
    "oversize_frames": "Frames refused for exceeding the size limit.",
    "heartbeat_failures": "Connections dropped for missed heartbeats.",
    "frames_lost": "Frames accepted for sending but dropped.",
}

_QUEUE_COUNTERS: Final = {
    "submitted": "Jobs submitted to the queue.",
    "succeeded": "Jobs that ended with a result.",
    "failed": "Jobs that ended with an error (timeouts included).",
    "timed_out": "Jobs whose deadline passed.",
    "lost": "Jobs that ended with WorkerLost.",
    "late_results": "Results for jobs already ended (ignored).",
    "rejected_busy": "Times a pool refused a job as busy.",
    "retried": "Job attempts scheduled again after a failed one.",
    "exhausted": "Jobs that failed on their last attempt.",
    "store_errors": "Writes to the job store that failed (the jobs went on unwritten).",
}
_QUEUE_GAUGES: Final = {
    "waiting": "Jobs not yet placed on a worker.",
    "in_flight": "Jobs sent to a worker, result not yet in.",
    "workers": "Worker pools the queue knows.",
}

_POOL_COUNTERS: Final = {
    "received": "Jobs that arrived at the pool.",
    "succeeded": "Jobs whose result was sent back.",
    "failed": "Jobs that ended with an error.",
    "unknown_kind": "Jobs of a kind with no handler here.",
    "invalid_payload": "Jobs whose payload or result did not fit its type.",
    "timed_out": "Jobs whose deadline passed here.",
    "rejected_busy": "Jobs refused because every slot was taken.",
    "unanswerable": "Jobs sent from outside an actor (dropped).",
    "replies_lost": "Outcomes that could not be sent back.",
}


@final
class Metrics:
    """A node's metrics registry and health; from :func:`start_metrics`.

    .. versionadded:: 0.1
    """

    def __init__(self, node: Node, membership: Membership | None) -> None:
        self.node = node
        self.membership = membership
        self.registry = CollectorRegistry(auto_describe=False)
        """This node's registry: the library's metrics, ``process_*`` and ``python_*``."""
        self.address: tuple[str, int] | None = None
        """Where the HTTP endpoint listens (``None`` if it does not serve)."""
        self.server: HttpServer | None = None
        self._queues: list[MeteredJobQueue] = []
        self._pools: list[WorkerPool] = []
        self._given_up: dict[str, str] = {}  # supervisor path -> why (until it starts again)
        self._events_lost = 0
        self._errors = 0
        self._failing: set[str] = set()  # sources whose failure has been logged
        self._listeners: list[trio.SocketListener] | None = None  # bound, not yet served
        self._host = ""
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._asks = Histogram(
            "trioactors_ask_seconds",
            "Seconds from sending an ask to its reply (outcome ok) or its failure (error).",
            ["outcome"],
            registry=self.registry,
            buckets=ASK_BUCKETS,
        )

    def __repr__(self) -> str:
        where = "not serving" if self.address is None else "{}:{}".format(*self.address)
        return f"<Metrics of {self.node.name}, {where}>"

    def _observe_asks(self) -> None:
        """Time every ask made through the node's references (after any observer set before)."""
        ask_ok = self._asks.labels(outcome="ok").observe
        ask_error = self._asks.labels(outcome="error").observe
        system = self.node.system
        before = system.ask_observer

        def observe(seconds: float, replied: bool) -> None:
            (ask_ok if replied else ask_error)(seconds)
            if before is not None:
                before(seconds, replied)

        system.ask_observer = observe

    # -- public --------------------------------------------------------------------------

    def add_queue(self, queue: MeteredJobQueue) -> None:
        """Also report ``queue``'s counters, labelled ``queue=<its address>``."""
        if all(q is not queue for q in self._queues):
            self._queues.append(queue)

    def add_pool(self, pool: WorkerPool) -> None:
        """Also report ``pool``'s counters, labelled ``pool=<its address>``."""
        if all(p is not pool for p in self._pools):
            self._pools.append(pool)

    def render(self) -> bytes:
        """Every metric in Prometheus' text exposition format (``GET /metrics``)."""
        return prometheus_client.generate_latest(self.registry)

    def health(self) -> Health:
        """The node's health now; see the module documentation for the rules."""
        system = self.node.system
        root = self.node.root
        member_state = None
        if self.membership is not None:
            for member in self.membership.members():
                if member.node == self.node.name:
                    member_state = member.state
        return _judge(
            self.node.name,
            root.path,
            system.root is root,
            _snapshot(root),
            self._given_up,
            member_state,
        )

    # -- the HTTP routes -----------------------------------------------------------------

    def _route(self, method: str, path: str) -> HttpResponse:
        if path not in ("/metrics", "/healthz"):
            return HttpResponse(404, b"not found: try /metrics or /healthz\n")
        if method not in ("GET", "HEAD"):
            return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        if path == "/metrics":
            return HttpResponse(200, self.render(), prometheus_client.CONTENT_TYPE_LATEST)
        health = self.health()
        body = json.dumps(health.to_json(), indent=1).encode() + b"\n"
        return HttpResponse(200 if health.ok else 503, body, "application/json")

    # -- inside --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, source: str) -> Iterator[None]:
        """Keep a failing source from spoiling the whole scrape: count it, log it once."""
        try:
            yield
        except Exception as exc:
            self._errors += 1
            if source not in self._failing:
                self._failing.add(source)
                logger.warning(
                    "%s: metrics of %s failed (logged once): %r",
                    self.node.name,
                    source,
                    exc,
                    exc_info=exc,
                )

    async def _watch_events(self, events: Subscription) -> None:
        """Remember supervisors that gave up until one starts at their path again."""
        async for event in events:
            match event:
                case SupervisorEscalated(path, exception):
                    self._given_up[path] = str(exception)
                case ChildStarted(path) | ChildRestarted(path):
                    self._given_up.pop(path, None)
                case EventsLost(count):
                    self._events_lost += count
                    logger.warning(
                        "%s: metrics missed %d system events; health may miss a give-up",
                        self.node.name,
                        count,
                    )
                case _:
                    pass

    async def _bind(self) -> list[trio.SocketListener]:
        """The listeners to serve: those bound by start_metrics, else bound again."""
        listeners, self._listeners = self._listeners, None
        if listeners is not None:
            return listeners
        assert self.address is not None
        return await trio.open_tcp_listeners(self.address[1], host=self._host)

    def _collect(self) -> Iterator[Metric]:
        node = self.node
        system = node.system
        info = _gauge(
            "node_info", "This node: name, address, version.", ["node", "address", "version"]
        )
        info.add_metric([node.name, node.address, __version__], 1)
        families: list[Metric] = [info]

        with self._reading("node"):
            stats = node.statistics()
            families += [
                _count("messages_sent", "Envelopes sent to other nodes.", stats.frames_out),
                _count("messages_received", "Envelopes from other nodes.", stats.frames_in),
                _level("pending_asks", "Asks to other nodes awaiting a reply.", stats.pending_asks),
            ]
            families += [_count(f, doc, getattr(stats, f)) for f, doc in _NODE_COUNTERS.items()]

        transport = node.transport
        if isinstance(transport, Transport):
            with self._reading("transport"):
                t = transport.statistics()
                for field, doc in _TRANSPORT_COUNTERS.items():
                    families.append(_count(f"transport_{field}", doc, getattr(t, field)))
                open_ = t.connections_open
                families.append(_level("transport_connections_open", "Connections open.", open_))

        with self._reading("system"):
            sstats = system.statistics()
            families += [
                _level("actors", "Actors registered on this node.", sstats.actors),
                _count("dead_letters", "Messages not delivered or handled.", sstats.dead_letters),
                _count("crashes", "Actors and supervisors that crashed.", sstats.crashes),
                _count("restarts", "Restarts made by supervisors.", sstats.restarts),
            ]
            length = _gauge("mailbox_length", "Messages waiting in a mailbox.", ["actor"])
            capacity = _gauge("mailbox_capacity", "Mailbox capacity (+Inf: unbounded).", ["actor"])
            for name, place in sorted(system._registry.items()):
                length.add_metric([name], len(place.mailbox))
                capacity.add_metric([name], float(place.mailbox.capacity))
            families += [length, capacity]

        with self._reading("tree"):
            health = self.health()
            states = Counter(entry["state"] for entry in health.tree[1:])  # (1: not the root)
            children = _gauge("children", "Children in the supervision tree, by state.", ["state"])
            for state in ChildState:
                children.add_metric([state.value], states.get(state.value, 0))
            families += [
                children,
                _level("healthy", "1 if the node is healthy (GET /healthz), else 0.", health.ok),
                _level("health_problems", "Problems that make it unhealthy.", len(health.problems)),
            ]

        if self.membership is not None:
            with self._reading("membership"):
                counts = Counter(m.state for m in self.membership.members())
                members = _gauge("members", "Members in this node's view, by state.", ["state"])
                for member_state in MemberState:
                    members.add_metric([member_state.name.lower()], counts.get(member_state, 0))
                families.append(members)

        if self._queues:
            families += self._collect_queues()
        if self._pools:
            families += self._collect_pools()
        if self.server is not None:
            families += self._collect_http(self.server)
        families += [
            _count("metrics_errors", "Sources that failed to be read for a scrape.", self._errors),
            _count("metrics_events_lost", "Events the health watcher missed.", self._events_lost),
        ]
        return iter(families)

    def _collect_queues(self) -> list[Metric]:
        counters = {
            field: _counter(f"queue_{field}", doc, ["queue"])
            for field, doc in _QUEUE_COUNTERS.items()
        }
        gauges = {
            field: _gauge(f"queue_{field}", doc, ["queue"]) for field, doc in _QUEUE_GAUGES.items()
        }
        circuits = _gauge(
            "circuit_state",
            "Circuit breaker of a queue towards a worker node: 0 closed, 1 half-open, 2 open.",
            ["queue", "node"],
        )
        for queue in self._queues:
            with self._reading(f"queue {queue.address}"):
                label = [queue.address]
                stats = queue.statistics()
                for field, family in counters.items():
                    family.add_metric(label, getattr(stats, field))
                for field, gauge in gauges.items():
                    gauge.add_metric(label, getattr(stats, field))
                for worker, state in sorted(queue.circuit_states().items()):
                    circuits.add_metric([queue.address, worker], CIRCUIT_STATES[state])
        return [*counters.values(), *gauges.values(), circuits]

    def _collect_pools(self) -> list[Metric]:
        counters = {
            field: _counter(f"pool_{field}", doc, ["pool"]) for field, doc in _POOL_COUNTERS.items()
        }
        running = _gauge("pool_running", "Jobs running in the pool now.", ["pool"])
        queued = _gauge("pool_queued", "Jobs accepted by the pool and waiting to run.", ["pool"])
        for pool in self._pools:
            with self._reading(f"pool {pool.address}"):
                stats = pool.statistics()
                for field, family in counters.items():
                    family.add_metric([pool.address], getattr(stats, field))
                running.add_metric([pool.address], stats.running)
                queued.add_metric([pool.address], stats.queued)
        return [*counters.values(), running, queued]

    def _collect_http(self, server: HttpServer) -> list[Metric]:
        stats = server.statistics()
        responses = _counter("http_responses", "Responses of the endpoint, by status.", ["code"])
        for code, count in sorted(stats.responses.items()):
            responses.add_metric([str(code)], count)
        return [
            responses,
            _count("http_connections", "Connections accepted.", stats.connections),
            _count("http_malformed_requests", "Malformed requests (400, 431).", stats.malformed),
            _count("http_timeouts", "Connections cut off for being too slow.", stats.timeouts),
            _count("http_errors", "Connections that failed otherwise (see the log).", stats.errors),
            _count("http_rejected", "Connections closed at once: too many open.", stats.rejected),
        ]


@final
class _Collector:
    """Reads a node's statistics when the registry is scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._collect()


class _MetricsActor(Actor[object]):
    """Runs the service's tasks: the HTTP endpoint, and the watch of the system's events."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.listeners: list[trio.SocketListener] = []
        self.events: Subscription | None = None

    async def on_start(self) -> None:
        m = self.metrics
        if m.server is not None:
            self.listeners = await m._bind()
            self.context.start_soon(m.server.serve, self.listeners)
        self.events = self.context.system.subscribe()  # (now: no event slips by)
        self.context.start_soon(m._watch_events, self.events)

    async def on_stop(self) -> None:
        if self.events is not None:
            self.events.close()
        for listener in self.listeners:  # (serving closes them too; this is for a failed start)
            await trio.aclose_forcefully(listener)


async def start_metrics(
    node: Node,
    *,
    membership: Membership | None = None,
    queues: Iterable[MeteredJobQueue] = (),
    pools: Iterable[WorkerPool] = (),
    serve: tuple[str, int] | None = None,
) -> Metrics:
    """Collect ``node``'s metrics, and serve them over HTTP if ``serve`` says where.

    The service runs under ``node.root`` as ``$metrics`` and stops with the
    node. Metrics are read from the statistics the library keeps when they
    are scraped (:meth:`Metrics.render`); see the module documentation for
    every name and for what :meth:`Metrics.health` checks.

    Args:
      membership: the node's membership, for ``trioactors_members{state}`` and
        for health (this node dead or left in its own view is a problem).
      queues: job queues to report (:meth:`Metrics.add_queue` adds more later).
      pools: worker pools to report (:meth:`Metrics.add_pool` adds more later).
      serve: ``(host, port)`` to serve ``GET /metrics`` and ``GET /healthz``
        on (port 0: a free port; ``Metrics.address`` says which); default:
        no HTTP endpoint.

    Returns:
      The node's :class:`Metrics`.

    Raises:
      OSError: the address to serve on cannot be bound (e.g. the port is taken).
      NameTaken: the node runs metrics already.

    .. versionadded:: 0.1
    """
    metrics = Metrics(node, membership)
    for queue in queues:
        metrics.add_queue(queue)
    for pool in pools:
        metrics.add_pool(pool)
    if serve is not None:
        host, port = serve
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        metrics._host = host
        metrics.address = (str(bound[0]), int(bound[1]))
        metrics._listeners = listeners
        metrics.server = HttpServer(metrics._route)
    try:
        sup = await node.root.start_supervisor(
            name=SERVICE, restart=Restart.TEMPORARY, intensity=_RESTARTS, period=_RESTART_PERIOD
        )
        try:
            await sup.start_actor(_MetricsActor, metrics, name=SERVICE)
        except BaseException:
            with trio.CancelScope(shield=True):
                await node.root.stop_child(SERVICE)
            raise
    except BaseException:
        for listener in metrics._listeners or ():
            await trio.aclose_forcefully(listener)
        raise
    metrics._observe_asks()
    logger.debug("%s: metrics started (%r)", node.name, metrics)
    return metrics
