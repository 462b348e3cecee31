"""Tools for testing code built on trioactors.

- :func:`simulate`: run a scenario on a simulated cluster of N nodes under a
  :class:`FaultPlan`, deterministically (``MockClock``, seeded network and
  scheduler); a failure carries a note that replays it.
- :class:`FaultPlan`: a small language of faults (``at 2 crash n1; at 5
  partition n0 | n1 n2; at 9 heal; at 12 restart n1``) and its steps
  (:class:`Crash`, :class:`Restart`, :class:`Partition`, :class:`Heal`,
  :class:`Drop`, :class:`Delay`, :class:`Duplicate`, :class:`Reorder`,
  :class:`Clear`).
- :class:`SimulatedCluster` / :func:`open_simulated_cluster`: nodes with
  membership on a :class:`MemoryNetwork`, for tests that drive faults by hand.
- Invariant helpers: :class:`Ledger` (at-most-once, nothing lost),
  :func:`eventually`, ``cluster.converged()``, :class:`InvariantViolated`.
- :mod:`trioactors.testing.strategies`: hypothesis strategies that draw
  fault plans; :mod:`trioactors.testing.stateful`: :class:`ClusterMachine`,
  a base class for stateful property tests (both need ``hypothesis``).
- :func:`check_transport`: the conformance suite every transport passes.
- :func:`check_linearizable`: is a recorded :class:`History` of
  :class:`Operation` linearizable with respect to a :class:`Model`? Comes with
  :class:`KVModel` (:class:`Put`, :class:`Get`, :class:`Delete`,
  :class:`CompareAndSet`); a failure's :class:`LinearizabilityResult` explains it.
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
from ._linearizability import CompareAndSet as CompareAndSet
from ._linearizability import Delete as Delete
from ._linearizability import Get as Get
from ._linearizability import History as History
from ._linearizability import KVModel as KVModel
from ._linearizability import LinearizabilityResult as LinearizabilityResult
from ._linearizability import Model as Model
from ._linearizability import Operation as Operation
from ._linearizability import Put as Put
from ._linearizability import check_linearizable as check_linearizable
from ._plan import Clear as Clear
from ._plan import Crash as Crash
from ._plan import Delay as Delay
from ._plan import Drop as Drop
from ._plan import Duplicate as Duplicate
from ._plan import Fault as Fault
from ._plan import FaultPlan as FaultPlan
from ._plan import FaultPlanError as FaultPlanError
from ._plan import Heal as Heal
from ._plan import InvariantViolated as InvariantViolated
from ._plan import Partition as Partition
from ._plan import Reorder as Reorder
from ._plan import Restart as Restart
from ._plan import Step as Step
from ._simulate import Ledger as Ledger
from ._simulate import eventually as eventually
from ._simulate import simulate as simulate
from ._transport_check import MakePair as MakePair
from ._transport_check import TransportPair as TransportPair
from ._transport_check import check_transport as check_transport
from ._transport_check import open_transport_pair as open_transport_pair


def _fixup_module_metadata() -> None:
    # reprs and tracebacks say trioactors.testing.FaultPlan, not trioactors.testing._plan.FaultPlan
    for name, obj in list(globals().items()):
        module = getattr(obj, "__module__", None)
        private = isinstance(module, str) and module.startswith("trioactors.testing._")
        if not name.startswith("_") and isinstance(obj, type) and private:
            obj.__module__ = "trioactors.testing"


_fixup_module_metadata()
del _fixup_module_metadata
