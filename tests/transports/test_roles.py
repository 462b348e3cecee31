"""Read-only peers over real sockets: what an observer may and may not do."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

import trioactors as ta
from trioactors.transports import Role, TcpTransport, TransportConfig, WebSocketTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SECRET = b"cluster-secret"
READ_ONLY = b"read-only-secret"
GUARD = 20


@ta.read_only
@attrs.frozen
class HowMany(ta.Request[int]):
    pass


@attrs.frozen
class Add(ta.Request[int]):
    amount: int


registry = ta.MessageRegistry()
registry.register(HowMany)
registry.register(Add)


class Counter(ta.Actor[HowMany | Add]):
    def __init__(self) -> None:
        self.total = 0

    async def receive(self, message: HowMany | Add) -> int:
        if isinstance(message, Add):
            self.total += message.amount
        return self.total


def member(read_only: bytes | None = READ_ONLY, **kwargs: object) -> TransportConfig:
    return TransportConfig(
        secret=SECRET,
        read_only_secret=read_only,
        connect_timeout=2.0,
        **kwargs,  # type: ignore[arg-type]
    )


def observer(read_only: bytes = READ_ONLY) -> TransportConfig:
    return TransportConfig(role=Role.OBSERVER, read_only_secret=read_only, connect_timeout=2.0)


@asynccontextmanager
async def node(
    name: str,
    config: TransportConfig,
    *,
    kind: str = "ws",
    routes: dict[str, str] | None = None,
    **peers: str,
) -> AsyncIterator[ta.Node]:
    transport = (WebSocketTransport if kind == "ws" else TcpTransport)(config)
    async with ta.open_node(
        name, transport=transport, peers=peers, registry=registry, routes=routes
    ) as n:
        yield n


@pytest.mark.parametrize("kind", ["ws", "tcp"])
async def test_an_observer_may_query_but_not_command(kind: str) -> None:
    with trio.fail_after(GUARD):
        async with node("server", member(), kind=kind) as server:
            await server.root.start_actor(Counter, name="counter")
            async with node(
                "tool",
                observer(),
                kind=kind,
                routes={"elsewhere": "server"},
                server=server.address,
            ) as tool:
                counter = tool.ref("counter@server")
                assert await counter.ask(HowMany()) == 0
                with pytest.raises(ta.Unauthorized, match="not a read-only query"):
                    await counter.ask(Add(5))
                with pytest.raises(ta.Unauthorized):
                    await tool.ref("counter@elsewhere").ask(HowMany())  # no forwarding
                assert await counter.ask(HowMany()) == 0  # the command never ran
            assert server.statistics().unauthorized == 2
            # a member may do both
            async with node("peer", member(), kind=kind, server=server.address) as peer:
                assert await peer.ref("counter@server").ask(Add(5)) == 5


@pytest.mark.parametrize(
    ("server_config", "tool_config"),
    [
        (member(read_only=None), observer()),  # the node takes no observers
        (member(), observer(b"guess")),  # wrong read-only secret
        (member(), TransportConfig(secret=READ_ONLY, connect_timeout=2.0)),  # as a member
    ],
)
async def test_an_observer_needs_the_read_only_secret(
    server_config: TransportConfig, tool_config: TransportConfig
) -> None:
    with trio.fail_after(GUARD):
        async with node("server", server_config) as server:
            await server.root.start_actor(Counter, name="counter")
            async with node("tool", tool_config, server=server.address) as tool:
                with pytest.raises((ta.NodeUnreachable, ta.AskTimeout)):
                    await tool.ref("counter@server").ask(HowMany(), timeout=3)
            assert server.transport.statistics().auth_failures >= 1


async def test_an_observer_cannot_take_a_members_name() -> None:
    with trio.fail_after(GUARD):
        async with node("server", member()) as server, node("peer", member()) as peer:
            await server.root.start_actor(Counter, name="counter")
            await peer.root.start_actor(Counter, name="counter")
            server.transport.add_peer("peer", peer.address)
            assert await server.ref("counter@peer").ask(Add(1)) == 1
            async with node("peer", observer(), server=server.address) as impostor:
                with pytest.raises((ta.NodeUnreachable, ta.AskTimeout)):
                    await impostor.ref("counter@server").ask(HowMany(), timeout=3)
            # the member is still reached where it was
            assert server.transport.peers()["peer"] == peer.address
            assert await server.ref("counter@peer").ask(HowMany()) == 1


def test_an_observer_config_needs_the_read_only_secret() -> None:
    with pytest.raises(ValueError, match="read_only_secret"):
        TransportConfig(role=Role.OBSERVER)
