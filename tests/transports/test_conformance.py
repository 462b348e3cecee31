"""Every transport passes the shared conformance suite (``check_transport``).

To add a transport, write a ``MakePair`` factory below and add one ``Case``.
"""

from __future__ import annotations

import importlib.util
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio.testing

from trioactors.testing import (
    MakePair,
    MemoryNetwork,
    TransportPair,
    check_transport,
    open_transport_pair,
)
from trioactors.transports import Deliver, Transport, TransportConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

CONFIG = TransportConfig(
    max_frame_size=64 * 1024,
    send_queue_size=16,  # small, so the FIFO checks run through backpressure
    connect_timeout=0.5,  # the stopped-peer checks of real transports wait this long
    heartbeat_interval=0.25,
    heartbeat_timeout=1.0,
    reconnect_initial=0.05,
    reconnect_max=0.5,
)


def memory_pair(*, latency: float = 0.0, delay: tuple[float, float] | None = None) -> MakePair:
    @asynccontextmanager
    async def make(deliver_a: Deliver, deliver_b: Deliver) -> AsyncIterator[TransportPair]:
        network = MemoryNetwork(seed=7, latency=latency, config=CONFIG)
        if delay is not None:
            network.delay(*delay)
        async with (
            network.running(),
            open_transport_pair(
                network.transport("a"),
                network.transport("b"),
                deliver_a,
                deliver_b,
                config=CONFIG,
            ) as pair,
        ):
            yield pair

    return make


def network_pair(module: str, cls: str) -> MakePair:
    """A pair of real transports built as ``cls(CONFIG, host="127.0.0.1", port=0)``."""

    def make(deliver_a: Deliver, deliver_b: Deliver) -> AbstractAsyncContextManager[TransportPair]:
        factory: Callable[..., Transport] = getattr(importlib.import_module(module), cls)
        return open_transport_pair(
            factory(CONFIG, host="127.0.0.1", port=0),
            factory(CONFIG, host="127.0.0.1", port=0),
            deliver_a,
            deliver_b,
            config=CONFIG,
        )

    return make


@attrs.frozen
class Case:
    make_pair: MakePair
    simulated: bool  # runs under MockClock(autojump_threshold=0)
    module: str | None = None  # skip if this module does not exist (yet)


CASES = {
    "memory": Case(memory_pair(), simulated=True),
    "memory-latency-delay": Case(memory_pair(latency=0.01, delay=(0.0, 0.05)), simulated=True),
    "websocket": Case(
        network_pair("trioactors.transports._websocket", "WebSocketTransport"),
        simulated=False,
        module="trioactors.transports._websocket",
    ),
    "tcp": Case(
        network_pair("trioactors.transports._tcp", "TcpTransport"),
        simulated=False,
        module="trioactors.transports._tcp",
    ),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    case: Case = CASES[request.param]
    if case.module is not None and importlib.util.find_spec(case.module) is None:
        pytest.skip(f"{case.module} does not exist yet")
    return case


@pytest.fixture
def clock(case: Case) -> trio.testing.MockClock | None:
    # pytest-trio runs the test with whichever fixture value is a Clock.
    return trio.testing.MockClock(autojump_threshold=0) if case.simulated else None


async def test_check_transport(case: Case, clock: trio.testing.MockClock | None) -> None:
    await check_transport(case.make_pair, timeout=60)


def faulty_memory_pair(fault: Callable[[MemoryNetwork], None]) -> MakePair:
    @asynccontextmanager
    async def make(deliver_a: Deliver, deliver_b: Deliver) -> AsyncIterator[TransportPair]:
        network = MemoryNetwork(seed=7, latency=0.01, config=CONFIG)
        fault(network)
        async with (
            network.running(),
            open_transport_pair(
                network.transport("a"), network.transport("b"), deliver_a, deliver_b, config=CONFIG
            ) as pair,
        ):
            yield pair

    return make


async def test_the_check_catches_reordering(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(AssertionError, match="'fifo' failed: a -> b out of order"):
        await check_transport(faulty_memory_pair(lambda network: network.reorder(0.1)))


async def test_the_check_turns_a_lost_frame_into_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(trio.TooSlowError) as failed:
        await check_transport(faulty_memory_pair(lambda network: network.drop(0.01)), timeout=10)
    assert any("transport check" in note for note in failed.value.__notes__)
