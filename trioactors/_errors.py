"""The whole exception hierarchy of trioactors.

Every error the library raises derives from :class:`TrioactorsError`. Where the
meaning matches a builtin, the error also inherits it (``AskTimeout`` is a
``TimeoutError``), so code that already catches the builtin keeps working.
"""

from __future__ import annotations

__all__ = [
    "ActorCrashed",
    "ActorNotFound",
    "ActorStopped",
    "AskDeadlock",
    "AskTimeout",
    "AuthenticationFailed",
    "FrameTooLarge",
    "InvalidJobPayload",
    "InvalidPayload",
    "JobError",
    "JobExhausted",
    "JobFailed",
    "JobTimeout",
    "LocalProtocolError",
    "MalformedFrame",
    "NameTaken",
    "NoMatchingWorker",
    "NodeCrashed",
    "NodeUnreachable",
    "NotSerializable",
    "ProtocolVersionMismatch",
    "RemoteProtocolError",
    "StartFailed",
    "StoreError",
    "SupervisorGaveUp",
    "TrioactorsError",
    "Unauthorized",
    "UnhandledMessage",
    "UnknownFactory",
    "UnknownJobKind",
    "UnknownMessageType",
    "WorkerLost",
]


class TrioactorsError(Exception):
    """Base class of every error raised by trioactors."""


class LocalProtocolError(TrioactorsError):
    """The caller used the API in a way that cannot work.

    The message says what was wrong and how to fix it; retrying the same call
    fails the same way.
    """


class NameTaken(LocalProtocolError, ValueError):
    """An actor or supervisor name is already registered in this system."""


class AskDeadlock(LocalProtocolError):
    """An ``ask`` would wait on an actor that is itself waiting on the caller.

    Raised at once, instead of hanging until the timeout, when an actor asks
    itself or when asks form a cycle (``a`` asks ``b`` which asks ``a``).
    """


class AskTimeout(TrioactorsError, TimeoutError):
    """No reply arrived before the ``ask`` deadline.

    The request may still be handled later; its late reply is discarded.
    """


class ActorNotFound(TrioactorsError, LookupError):
    """No actor is registered under the name that was looked up."""


class ActorStopped(TrioactorsError):
    """The actor stopped before it could handle the request.

    The request was recorded as a dead letter.
    """


class ActorCrashed(TrioactorsError):
    """The actor raised while handling the request.

    ``exception`` is what the handler raised (also the ``__cause__``). The
    actor's supervisor has been told and applies its restart strategy.
    """

    def __init__(self, message: str, exception: BaseException | None) -> None:
        super().__init__(message)
        self.exception = exception
        """What the handler raised; ``None`` when the actor is on another node
        (the message then names the remote exception)."""


class UnhandledMessage(TrioactorsError, TypeError):
    """The actor has no handler for this message type.

    Raise it from ``Actor.receive`` (the default implementation does) for a
    message you do not handle. It does not crash the actor: an ``ask`` fails
    with it, and a ``tell`` is recorded as a dead letter.
    """

    def __init__(self, message: object, actor: str = "") -> None:
        where = f" by {actor}" if actor else ""
        super().__init__(
            f"{type(message).__qualname__} is not handled{where}; "
            "add a case for it in the actor's receive()"
        )
        self.message = message


class StartFailed(TrioactorsError):
    """A child did not start: its ``on_start`` raised or took too long.

    The child was not added to the supervisor. ``__cause__`` holds the reason.
    """


class UnknownFactory(TrioactorsError, LookupError):
    """A ``Spawn`` management message named a factory the node was not given.

    Give the node the factory (``start_admin(node, factories={...})``) or
    spawn one of those it names in the message.

    .. versionadded:: 0.1
    """


class SupervisorGaveUp(TrioactorsError):
    """A supervisor exceeded its restart intensity and stopped all its children.

    Its parent treats this as the supervisor's own crash; at the root it is
    raised out of ``open_supervisor``. ``__cause__`` is the failure that
    tipped it over. Raise the intensity, lengthen the period, or fix the crash.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


# -- network -----------------------------------------------------------------------


class RemoteProtocolError(TrioactorsError):
    """A peer sent something we cannot accept.

    The node answers with an error where it can, counts it (see the node's and
    the transport's ``statistics()``), logs it with the peer's identity, and
    keeps serving everyone else.
    """


class MalformedFrame(RemoteProtocolError, ValueError):
    """A frame is not a valid envelope (bad encoding, missing or mistyped fields)."""


class UnknownMessageType(RemoteProtocolError, LookupError):
    """A frame names a message type that is not registered on this node.

    Register it (``MessageRegistry.register``) on every node that receives it.
    """


class InvalidPayload(RemoteProtocolError, TypeError):
    """A frame's payload does not match its registered type (wrong field types)."""


class FrameTooLarge(RemoteProtocolError):
    """A frame exceeds the transport's ``max_frame_size``."""


class AuthenticationFailed(RemoteProtocolError):
    """The peer could not prove it knows the cluster secret (or we could not)."""


class Unauthorized(RemoteProtocolError, PermissionError):
    """A read-only peer sent something only members may send (see ``read_only``)."""


class ProtocolVersionMismatch(RemoteProtocolError):
    """The peer speaks a different trioactors wire protocol version."""


class NodeUnreachable(TrioactorsError, ConnectionError):
    """A frame could not be sent to a node within its deadline.

    The node may be down, unknown (no address for it), or the network may be
    partitioned. The message was not delivered.
    """


class NotSerializable(LocalProtocolError, TypeError):
    """A message or reply cannot be sent over the network.

    Register its attrs class with the node's ``MessageRegistry``; only
    registered attrs classes and plain JSON values (None, bool, int, float, str,
    lists and dicts of them) cross the wire.
    """


class NodeCrashed(TrioactorsError):
    """The fault plan crashed this node (``MemoryNetwork.crash``).

    Raised out of ``MemoryTransport.serve``, so the node's nursery fails
    as it would if the process died. Call ``MemoryNetwork.restart`` for a
    fresh transport.

    .. versionadded:: 0.1
    """

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node!r} was crashed by the fault plan")
        self.node = node


# -- jobs ---------------------------------------------------------------------------


class JobError(TrioactorsError):
    """A job ended without a result.

    ``JobQueue.submit`` raises it; in a stream of results
    (``JobQueue.submit_many``) it is the result's ``error``. The subclass says
    why; the message names the job and, where one was involved, the worker.

    .. versionadded:: 0.1
    """


class UnknownJobKind(JobError, LookupError):
    """No worker handles jobs of this kind.

    Either no worker the queue knows has a handler for the kind (the queue
    fails the job without sending it, after one more round of asking the
    pools), or the worker it was sent to has none (its handlers changed).
    Register a handler for the kind on some node's worker pool.

    .. versionadded:: 0.1
    """


class NoMatchingWorker(JobError, LookupError):
    """Workers handle the job's kind, but none offers every tag it requires.

    .. versionadded:: 0.1
    """


class InvalidJobPayload(JobError, TypeError):
    """A job's payload does not fit its handler's payload type, or its result
    does not fit the result type the submitter expects (or cannot be sent).

    .. versionadded:: 0.1
    """


class JobFailed(JobError):
    """The job's handler raised.

    ``error_type`` is the name of the exception's class (the exception itself
    stays on the worker, where it is logged with its traceback).

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type


class JobTimeout(JobError, TimeoutError):
    """The job's deadline passed before its result arrived.

    The job may still run to its end on the worker; a late result is
    recognised, ignored and counted.

    .. versionadded:: 0.1
    """


class WorkerLost(JobError, ConnectionError):
    """The worker running the job went away (its node was declared dead or
    left, or could not be reached) before the result came back. The job may
    or may not have run.

    .. versionadded:: 0.1
    """


class JobExhausted(JobError):
    """The job failed on every attempt its retry policy allows.

    ``attempts`` is how many were made; ``last_error`` is how the last one
    failed (also the ``__cause__``). The failure supervisor, if the queue has
    one, was told (a ``JobGaveUp`` report) and keeps it in its dead-letter log.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, attempts: int, last_error: JobError | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


# -- storage ------------------------------------------------------------------------


class StoreError(TrioactorsError):
    """A persistent store cannot be used: unreadable, corrupt, or written by an
    incompatible version. The message names the file and what is wrong.

    .. versionadded:: 0.1
    """
