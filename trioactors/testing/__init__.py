"""Tools for testing code built on trioactors.

- :func:`check_transport`: the conformance suite every transport passes.
- :class:`MemoryNetwork`: many nodes in one ``trio.run`` with a seeded fault
  plan, deterministic under ``trio.testing.MockClock``.
"""

from __future__ import annotations

from .._errors import NodeCrashed as NodeCrashed
from ..transports._memory import MemoryNetwork as MemoryNetwork
from ..transports._memory import MemoryNetworkStatistics as MemoryNetworkStatistics
from ..transports._memory import MemoryTransport as MemoryTransport
from ..transports._memory import Traced as Traced
from ..transports._memory import TraceEvent as TraceEvent
from ._cluster import SimulatedCluster as SimulatedCluster
from ._cluster import open_simulated_cluster as open_simulated_cluster
from ._transport_check import MakePair as MakePair
from ._transport_check import TransportPair as TransportPair
from ._transport_check import check_transport as check_transport
from ._transport_check import open_transport_pair as open_transport_pair
