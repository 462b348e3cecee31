"""Transports carry frames between nodes: websocket (default), tcp, and in-memory."""

from __future__ import annotations

from ._base import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._base import Deliver as Deliver
from ._base import Transport as Transport
from ._base import TransportConfig as TransportConfig
from ._base import TransportStatistics as TransportStatistics
