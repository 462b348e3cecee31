"""trioactors: fault-tolerant actors for Trio.

Supervision trees are Trio nurseries; actors receive typed messages through
bounded mailboxes; ``tell`` and ``ask`` follow Trio's rules for checkpoints and
cancellation.
"""

from __future__ import annotations

import contextlib

from ._core._balance import STRATEGY_NAMES as STRATEGY_NAMES
from ._core._balance import BalanceStrategy as BalanceStrategy
from ._core._balance import Candidate as Candidate
from ._core._balance import ConsistentHash as ConsistentHash
from ._core._balance import LeastLoaded as LeastLoaded
from ._core._balance import LowestLatency as LowestLatency
from ._core._balance import RandomChoice as RandomChoice
from ._core._balance import RoundRobin as RoundRobin
from ._core._balance import strategy_by_name as strategy_by_name
from ._core._breaker import BreakerChanged as BreakerChanged
from ._core._breaker import BreakerConfig as BreakerConfig
from ._core._breaker import BreakerState as BreakerState
from ._core._chunks import ChunkCorrupted as ChunkCorrupted
from ._core._chunks import FileTransferError as FileTransferError
from ._core._chunks import HashMismatch as HashMismatch
from ._core._chunks import UnsafeFileName as UnsafeFileName
from ._core._config import ConfigEntry as ConfigEntry
from ._core._config import ConfigError as ConfigError
from ._core._healing import HealingChanged as HealingChanged
from ._core._healing import HealingConfig as HealingConfig
from ._core._healing import HealingState as HealingState
from ._core._healing import LatencyWindow as LatencyWindow
from ._core._jobs import Job as Job
from ._core._jobs import JobKind as JobKind
from ._core._jobs import JobResult as JobResult
from ._core._membership import Member as Member
from ._core._membership import MemberChanged as MemberChanged
from ._core._membership import MemberState as MemberState
from ._core._raft import RaftConfig as RaftConfig
from ._core._raft_messages import RaftRole as RaftRole
from ._core._retry import NO_RETRY as NO_RETRY
from ._core._retry import RetryPolicy as RetryPolicy
from ._core._supervision import Backoff as Backoff
from ._core._supervision import Restart as Restart
from ._core._supervision import Strategy as Strategy
from ._core._swim import SwimConfig as SwimConfig
from ._errors import ActorCrashed as ActorCrashed
from ._errors import ActorNotFound as ActorNotFound
from ._errors import ActorStopped as ActorStopped
from ._errors import AskDeadlock as AskDeadlock
from ._errors import AskTimeout as AskTimeout
from ._errors import AuthenticationFailed as AuthenticationFailed
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import InvalidJobPayload as InvalidJobPayload
from ._errors import InvalidPayload as InvalidPayload
from ._errors import JobError as JobError
from ._errors import JobExhausted as JobExhausted
from ._errors import JobFailed as JobFailed
from ._errors import JobTimeout as JobTimeout
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import MalformedFrame as MalformedFrame
from ._errors import NameTaken as NameTaken
from ._errors import NodeCrashed as NodeCrashed
from ._errors import NodeUnreachable as NodeUnreachable
from ._errors import NoMatchingWorker as NoMatchingWorker
from ._errors import NotSerializable as NotSerializable
from ._errors import ProtocolVersionMismatch as ProtocolVersionMismatch
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import StartFailed as StartFailed
from ._errors import StoreError as StoreError
from ._errors import SupervisorGaveUp as SupervisorGaveUp
from ._errors import TrioactorsError as TrioactorsError
from ._errors import Unauthorized as Unauthorized
from ._errors import UnhandledMessage as UnhandledMessage
from ._errors import UnknownFactory as UnknownFactory
from ._errors import UnknownJobKind as UnknownJobKind
from ._errors import UnknownMessageType as UnknownMessageType
from ._errors import WorkerLost as WorkerLost
from ._open import open_node as open_node
from ._runtime._actor import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from ._runtime._actor import Actor as Actor
from ._runtime._actor import ActorRef as ActorRef
from ._runtime._actor import Request as Request
from ._runtime._actor import is_read_only as is_read_only
from ._runtime._actor import read_only as read_only
from ._runtime._instance import DEFAULT_SHUTDOWN as DEFAULT_SHUTDOWN
from ._runtime._instance import DEFAULT_START_TIMEOUT as DEFAULT_START_TIMEOUT
from ._runtime._instance import ActorContext as ActorContext
from ._runtime._node import Node as Node
from ._runtime._node import NodeStatistics as NodeStatistics
from ._runtime._root import open_supervisor as open_supervisor
from ._runtime._supervisor import ChildInfo as ChildInfo
from ._runtime._supervisor import ChildState as ChildState
from ._runtime._supervisor import Supervisor as Supervisor
from ._runtime._system import ActorSystem as ActorSystem
from ._runtime._system import ChildCrashed as ChildCrashed
from ._runtime._system import ChildRestarted as ChildRestarted
from ._runtime._system import ChildStarted as ChildStarted
from ._runtime._system import ChildStopped as ChildStopped
from ._runtime._system import DeadLetter as DeadLetter
from ._runtime._system import Event as Event
from ._runtime._system import EventsLost as EventsLost
from ._runtime._system import Subscription as Subscription
from ._runtime._system import SupervisorEscalated as SupervisorEscalated
from ._runtime._system import SystemStatistics as SystemStatistics
from ._services._admin import ActorInfo as ActorInfo
from ._services._admin import AdminPing as AdminPing
from ._services._admin import AdminService as AdminService
from ._services._admin import Broadcast as Broadcast
from ._services._admin import Drain as Drain
from ._services._admin import DrainReport as DrainReport
from ._services._admin import GetInfo as GetInfo
from ._services._admin import ListMembers as ListMembers
from ._services._admin import MemberInfo as MemberInfo
from ._services._admin import MemberList as MemberList
from ._services._admin import NodeInfo as NodeInfo
from ._services._admin import Pong as Pong
from ._services._admin import RestartActor as RestartActor
from ._services._admin import Shutdown as Shutdown
from ._services._admin import Spawn as Spawn
from ._services._admin import StopActor as StopActor
from ._services._admin import register_admin_messages as register_admin_messages
from ._services._admin import start_admin as start_admin
from ._services._config import ConfigChanged as ConfigChanged
from ._services._config import ConfigService as ConfigService
from ._services._config import ConfigStatistics as ConfigStatistics
from ._services._config import ConfigSubscriber as ConfigSubscriber
from ._services._config import GetConfig as GetConfig
from ._services._config import register_config_messages as register_config_messages
from ._services._config import start_config as start_config
from ._services._failures import AlertHook as AlertHook
from ._services._failures import CircuitClosed as CircuitClosed
from ._services._failures import CircuitOpened as CircuitOpened
from ._services._failures import DeadLetterList as DeadLetterList
from ._services._failures import FailureHandler as FailureHandler
from ._services._failures import FailureInfo as FailureInfo
from ._services._failures import FailureReport as FailureReport
from ._services._failures import FailureStatistics as FailureStatistics
from ._services._failures import FailureSupervisor as FailureSupervisor
from ._services._failures import HealthGaveUp as HealthGaveUp
from ._services._failures import JobGaveUp as JobGaveUp
from ._services._failures import ListDeadLetters as ListDeadLetters
from ._services._failures import NodeDown as NodeDown
from ._services._failures import RestartStorm as RestartStorm
from ._services._failures import describe_failure as describe_failure
from ._services._failures import log_failures as log_failures
from ._services._failures import register_failure_messages as register_failure_messages
from ._services._failures import start_failure_supervisor as start_failure_supervisor
from ._services._files import FileService as FileService
from ._services._files import FileStatistics as FileStatistics
from ._services._files import FileVersion as FileVersion
from ._services._files import PushReport as PushReport
from ._services._files import PushResult as PushResult
from ._services._files import register_file_messages as register_file_messages
from ._services._files import start_files as start_files
from ._services._health import HealthMonitor as HealthMonitor
from ._services._health import HealthStatistics as HealthStatistics
from ._services._health import Probe as Probe
from ._services._health import actor_probe as actor_probe
from ._services._health import dependency_probe as dependency_probe
from ._services._health import start_health as start_health
from ._services._jobs import DEFAULT_JOB_TIMEOUT as DEFAULT_JOB_TIMEOUT
from ._services._jobs import JobQueue as JobQueue
from ._services._jobs import JobQueueStatistics as JobQueueStatistics
from ._services._jobs import start_job_queue as start_job_queue
from ._services._kv import KvClient as KvClient
from ._services._kv import KvState as KvState
from ._services._kv import KvUnavailable as KvUnavailable
from ._services._mapreduce import map_reduce as map_reduce
from ._services._mapreduce import partition_of as partition_of
from ._services._membership import Membership as Membership
from ._services._membership import MembershipConfig as MembershipConfig
from ._services._membership import start_membership as start_membership
from ._services._metrics import Health as Health
from ._services._metrics import Metrics as Metrics
from ._services._metrics import start_metrics as start_metrics
from ._services._raft import RaftCommand as RaftCommand
from ._services._raft import RaftMembership as RaftMembership
from ._services._raft import RaftQuery as RaftQuery
from ._services._raft import RaftReply as RaftReply
from ._services._raft import RaftServer as RaftServer
from ._services._raft import StateMachine as StateMachine
from ._services._raft import start_raft as start_raft
from ._services._raftstore import MemoryRaftStore as MemoryRaftStore
from ._services._raftstore import RaftStore as RaftStore
from ._services._raftstore import SqliteRaftStore as SqliteRaftStore
from ._services._reload import InvalidReloadTarget as InvalidReloadTarget
from ._services._reload import ListReloads as ListReloads
from ._services._reload import MigrationFailed as MigrationFailed
from ._services._reload import NoPreviousVersion as NoPreviousVersion
from ._services._reload import NotReloadable as NotReloadable
from ._services._reload import Reload as Reload
from ._services._reload import Reloadable as Reloadable
from ._services._reload import Reloader as Reloader
from ._services._reload import ReloadError as ReloadError
from ._services._reload import ReloaderStatistics as ReloaderStatistics
from ._services._reload import ReloadHistory as ReloadHistory
from ._services._reload import ReloadImportError as ReloadImportError
from ._services._reload import ReloadOutcome as ReloadOutcome
from ._services._reload import ReloadRecord as ReloadRecord
from ._services._reload import ReloadStartFailed as ReloadStartFailed
from ._services._reload import Rollback as Rollback
from ._services._reload import register_reload_messages as register_reload_messages
from ._services._reload import start_reloader as start_reloader
from ._services._results import ResultStream as ResultStream
from ._services._store import JobStore as JobStore
from ._services._store import MemoryJobStore as MemoryJobStore
from ._services._store import SqliteJobStore as SqliteJobStore
from ._services._store import StoredJob as StoredJob
from ._services._store import StoredOutcome as StoredOutcome
from ._services._store import StoreStatistics as StoreStatistics
from ._services._store import open_job_store as open_job_store
from ._services._workers import DescribeWorker as DescribeWorker
from ._services._workers import WorkerInfo as WorkerInfo
from ._services._workers import WorkerPool as WorkerPool
from ._services._workers import WorkerPoolStatistics as WorkerPoolStatistics
from ._services._workers import register_job_messages as register_job_messages
from ._services._workers import start_worker_pool as start_worker_pool
from ._version import __version__ as __version__
from ._wire._address import Address as Address
from ._wire._codec import Codec as Codec
from ._wire._codec import Envelope as Envelope
from ._wire._codec import MessageRegistry as MessageRegistry
from ._wire._codec import RawMessage as RawMessage
from ._wire._codec import default_registry as default_registry
from ._wire._codec import message as message
from ._wire._handshake import Role as Role

ONE_FOR_ONE = Strategy.ONE_FOR_ONE
ONE_FOR_ALL = Strategy.ONE_FOR_ALL
REST_FOR_ONE = Strategy.REST_FOR_ONE
PERMANENT = Restart.PERMANENT
TRANSIENT = Restart.TRANSIENT
TEMPORARY = Restart.TEMPORARY


def _fixup_module_metadata() -> None:
    # Tracebacks and reprs say trioactors.AskTimeout, not trioactors._errors.AskTimeout.
    for name, obj in list(globals().items()):
        if name.startswith("_") or not hasattr(obj, "__module__"):
            continue
        module = getattr(obj, "__module__", "")
        if isinstance(module, str) and module.startswith("trioactors._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "trioactors"


_fixup_module_metadata()
del _fixup_module_metadata
