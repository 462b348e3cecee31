"""Transports carry frames between nodes: websocket (default), tcp, and in-memory."""

from __future__ import annotations

from .._errors import NodeCrashed as NodeCrashed
from .._wire._handshake import Role as Role
from ._base import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._base import Deliver as Deliver
from ._base import Transport as Transport
from ._base import TransportConfig as TransportConfig
from ._base import TransportStatistics as TransportStatistics
from ._memory import MemoryNetwork as MemoryNetwork
from ._memory import MemoryNetworkStatistics as MemoryNetworkStatistics
from ._memory import MemoryTransport as MemoryTransport
from ._memory import Traced as Traced
from ._memory import TraceEvent as TraceEvent
from ._tcp import TcpTransport as TcpTransport
from ._websocket import WebSocketTransport as WebSocketTransport
