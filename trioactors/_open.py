"""``open_node``: an actor system that other nodes can reach."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._runtime._node import DEFAULT_MAX_HOPS, Node
from ._runtime._root import open_supervisor
from ._runtime._supervisor import _unwrapping_nursery
from ._runtime._system import ActorSystem
from ._wire._address import check_node_name
from ._wire._codec import Codec, Format, MessageRegistry
from .transports import Transport, TransportConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

__all__ = ["open_node"]


@asynccontextmanager
async def open_node(
    name: str,
    *,
    transport: Transport | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    secret: bytes | str | None = None,
    peers: Mapping[str, str] | None = None,
    routes: Mapping[str, str] | None = None,
    registry: MessageRegistry | None = None,
    wire_format: Format = "json",
    max_hops: int = DEFAULT_MAX_HOPS,
    intensity: int = 1,
    period: float = 5.0,
) -> AsyncIterator[Node]:
    """Run a node: an actor system reachable as ``name`` by other nodes.

    The node serves its transport and runs a root supervisor
    (``node.root``) for your actors, all inside the ``async with`` block;
    leaving the block stops the actors (as ``open_supervisor`` does), then the
    network side.

    Args:
      name: the node's name; actors here are addressed ``actor@name``.
      transport: how frames travel (default: a ``WebSocketTransport`` on
        ``host:port``, with ``secret``).
      host, port: where the default transport listens (default 127.0.0.1, a
        free port); ``node.address`` says what is advertised.
      secret: the shared cluster secret for the default transport. Required
        in practice: without it any local process can send messages.
      peers: known nodes and their addresses (``{"node-b": "ws://..."}``).
      routes: gateways for nodes with no direct connection
        (``{"node-c": "node-b"}``: reach node-c through node-b).
      registry: message types that cross the wire (default: the registry
        filled by ``@trioactors.message``).
      wire_format: ``"json"`` (default) or ``"msgpack"``.
      max_hops: forwarding hops an envelope may take (default 3).
      intensity, period: the root supervisor's restart intensity.

    .. versionadded:: 0.1
    """
    check_node_name(name)
    if transport is None:
        from .transports import WebSocketTransport

        key = secret.encode() if isinstance(secret, str) else (secret or b"")
        transport = WebSocketTransport(TransportConfig(secret=key), host=host, port=port)
    elif secret is not None:
        raise ValueError("pass the secret in the transport's TransportConfig, not to open_node")
    system = ActorSystem(name)
    node = Node(
        system,
        transport,
        Codec(registry, wire_format),
        routes=dict(routes or {}),
        max_hops=max_hops,
    )
    async with _unwrapping_nursery() as network:
        node.address = await network.start(transport.serve, name, node._deliver)
        for peer, address in (peers or {}).items():
            transport.add_peer(peer, address)
        node._nursery = network
        async with open_supervisor(system=system, intensity=intensity, period=period) as root:
            node.root = root
            yield node
        network.cancel_scope.cancel()
