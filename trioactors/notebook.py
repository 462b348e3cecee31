"""Trio in a notebook: actors that keep running between cells.

A Jupyter kernel runs an asyncio event loop, and a plain ``trio.run`` in a
cell blocks the kernel until it returns: nothing it started survives the
cell. :func:`start` runs Trio in *guest mode* on the kernel's loop
(:func:`trio.lowlevel.start_guest_run`) instead. Trio's tasks then run in
the loop's thread while the kernel waits for the next cell, so a node or a
supervision tree opened in one cell is still running in the next. Cells
reach into Trio with top-level ``await``::

    import functools
    import trioactors
    from trioactors import notebook

    class Echo(trioactors.Actor[str]):
        async def receive(self, message: str) -> object:
            return message

    session = await notebook.start()

    # a context that stays open until session.exit(node) or session.stop()
    node = await session.enter(trioactors.open_node("node-a"))

    # any Trio function: its result (or its exception) comes back to the cell
    echo = await session.run(functools.partial(node.root.start_actor, Echo, name="echo"))
    await session.run(echo.ask, "hello")    # 'hello'

    notebook.tree(node)     # the supervision tree, drawn (a rich Tree)

    await session.stop()    # everything has exited

The same works in any asyncio program (the session must be stopped before its
loop ends; ``async with await notebook.start() as session:`` makes sure).

Sync-colored Trio calls (``tell_nowait``, ``supervisor.children()``,
``trio.current_time()``) may be made directly from the cell while the session
runs; anything that awaits goes through :meth:`TrioSession.run`. Only one
session can run in a thread at a time, and ``trio.run`` cannot be called
while it does.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Final, Literal, TypeVar, TypeVarTuple, cast, final

import trio

from ._errors import LocalProtocolError
from ._runtime._node import Node
from ._runtime._supervisor import ChildInfo, ChildState, Supervisor
from ._runtime._system import ActorSystem

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from outcome import Outcome
    from rich.text import Text
    from rich.tree import Tree

__all__ = ["TrioSession", "start", "tree"]

logger = logging.getLogger("trioactors.notebook")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_State = Literal["starting", "running", "stopping", "stopped"]

_STOPPED: Final = "the Trio session is stopped; start another with `await notebook.start()`"


async def start() -> TrioSession:
    """Start Trio in guest mode on the running asyncio loop.

    Returns once Trio is running. Call it with top-level ``await`` in a
    Jupyter cell, or from any coroutine running on an asyncio loop.

    Returns:
      TrioSession: runs Trio functions for the asyncio side, holds contexts
      open between calls, and stops everything with :meth:`~TrioSession.stop`.

    Raises:
      LocalProtocolError: Trio already runs in this thread (a session that was
        not stopped, or a call from inside ``trio.run``).
      RuntimeError: no asyncio loop is running.

    .. versionadded:: 0.1
    """
    loop = asyncio.get_running_loop()
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        pass  # no Trio run in this thread: good
    else:
        raise LocalProtocolError(
            "Trio already runs in this thread (a session that was not stopped, or "
            "trio.run); stop the old session with `await session.stop()` first"
        )
    session = TrioSession(loop)
    ready: asyncio.Future[None] = loop.create_future()
    trio.lowlevel.start_guest_run(
        session._main,
        ready,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=session._on_done,
        # asyncio owns the signal wakeup fd (for its own signal handlers): Trio leaves it alone
        host_uses_signal_set_wakeup_fd=True,
    )
    session._token = trio.lowlevel.current_trio_token()
    try:
        await asyncio.shield(ready)
    except asyncio.CancelledError:
        # cancelled while Trio was starting: stop it again before giving up
        with contextlib.suppress(BaseException):
            await session.stop()
        raise
    session._state = "running"
    return session


class _Context:
    """An async context manager held open by a task of the session."""

    def __init__(
        self, manager: AbstractAsyncContextManager[object], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.manager = manager
        self.name = _describe(manager)  # (before entering: @asynccontextmanager forgets it)
        self.scope = trio.CancelScope()
        self.exit_requested = trio.Event()
        self.ended = trio.Event()
        self.entered: asyncio.Future[object] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.value: object = None
        self.error: Exception | None = None

    @property
    def is_open(self) -> bool:
        return self.entered.done() and not self.entered.cancelled() and not self.exited.done()


@final
class TrioSession:
    """Trio running in guest mode on an asyncio loop; made by :func:`start`.

    The asyncio side (a notebook's cells) uses it to run Trio functions and
    get their results, to keep async context managers such as
    :func:`trioactors.open_node` open between calls, and to start background
    tasks. Everything it started lives in one Trio run, and :meth:`stop` ends
    them all.

    Do not construct it: ``session = await trioactors.notebook.start()``.

    .. versionadded:: 0.1
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._state: _State = "starting"
        self._token: trio.lowlevel.TrioToken | None = None
        self._tasks: trio.Nursery | None = None
        self._contexts_nursery: trio.Nursery | None = None
        self._contexts: list[_Context] = []
        self._stop_requested = trio.Event()
        self._done: asyncio.Future[None] = loop.create_future()
        self._errors: list[Exception] = []  # from background tasks, not yet raised
        self._failure: BaseException | None = None  # what ended the Trio run, if it crashed
        self._pending: set[asyncio.Future[object]] = set()
        self._background = 0

    def __repr__(self) -> str:
        open_ = sum(1 for c in self._contexts if c.is_open)
        return (
            f"<TrioSession {self._state}: {open_} context(s) open, "
            f"{self._background} background task(s)>"
        )

    @property
    def running(self) -> bool:
        """True from :func:`start` until :meth:`stop` is called (or the run crashes)."""
        return self._state == "running"

    # -- the asyncio side ----------------------------------------------------------

    async def run(self, async_fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await async_fn(*args)`` in Trio and return its result.

        The call runs as a Trio task of the session; whatever it raises is
        raised here. Cancelling the awaiting asyncio task (interrupting the
        cell, a timeout) cancels the Trio task, and this returns once it has
        ended. Pass keyword arguments with :func:`functools.partial`, as
        for ``nursery.start_soon``.

        Returns:
          What ``async_fn`` returned.

        Raises:
          trio.ClosedResourceError: the session is stopped, or was stopped
            before the call ended.
          trio.BrokenResourceError: the session crashed.
          TypeError: ``async_fn`` is a coroutine object, not a function.

        .. versionadded:: 0.1
        """
        _check_function(async_fn, "run")
        self._check_running()
        future: asyncio.Future[T] = self._loop.create_future()
        scope = trio.CancelScope()
        self._submit(self._spawn, functools.partial(self._call, future, scope, async_fn, args))
        return await self._wait(future, scope)

    async def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter an async context manager in Trio and keep it open.

        A task of the session runs ``async with manager as value`` and waits
        there: the context stays open between calls (between cells) until
        :meth:`exit` or :meth:`stop`. This is how a node
        (``open_node(...)``) or a supervision tree (``open_supervisor()``)
        outlives the cell that opened it.

        If the context ends on its own with an error while open (a root
        supervisor that gives up raises :class:`~trioactors.SupervisorGaveUp`
        out of its block), the error is logged at once and raised by
        :meth:`exit` (or else by :meth:`stop`).

        Returns:
          The ``value`` of ``async with manager as value``.

        Raises:
          Exception: whatever entering raised.
          trio.ClosedResourceError: the session is stopped.
          trio.BrokenResourceError: the session crashed.

        .. versionadded:: 0.1
        """
        self._check_running()
        context = _Context(manager, self._loop)
        self._contexts.append(context)
        self._submit(self._spawn_context, context)
        try:
            value = await self._wait(context.entered, context.scope)
        except BaseException:
            # not entered, or cancelled as it was entered: make sure it is left
            self._submit_quietly(context.scope.cancel)
            with contextlib.suppress(BaseException):
                await asyncio.shield(context.exited)
            self._forget(context)
            raise
        return cast("T", value)  # (what the manager's __aenter__ returned)

    async def exit(self, value: object, *, cancel: bool = False) -> None:
        """Leave a context entered with :meth:`enter`, found by its value.

        ``await session.exit(node)`` leaves the ``open_node`` block that
        returned ``node`` normally: its actors stop gracefully in reverse
        start order, each within its shutdown timeout, then the node stops
        serving. With ``cancel=True`` the block is cancelled instead, as a
        Trio cancellation would: everything in it stops at once, ``on_stop``
        hooks do not run, and peers see the connections drop (the nearest a
        notebook gets to a crash of the node).

        Args:
          value: what :meth:`enter` returned for that context.
          cancel: cancel the block instead of leaving it normally.

        Raises:
          LookupError: no context of this session returned ``value``.
          Exception: the context's own error: from its exit, or the one it
            ended with on its own.

        .. versionadded:: 0.1
        """
        context = self._find(value)
        if not context.exited.done():
            if cancel:
                self._submit(context.scope.cancel)
            else:
                self._submit(context.exit_requested.set)
            try:
                await asyncio.shield(context.exited)
            except asyncio.CancelledError:
                self._submit_quietly(context.scope.cancel)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(context.exited)
                raise
        self._forget(context)
        error, context.error = context.error, None
        if error is not None:
            raise error

    def start_soon(
        self, async_fn: Callable[[*Ts], Awaitable[object]], *args: *Ts, name: object = None
    ) -> None:
        """Start ``async_fn(*args)`` as a background task of the session.

        It runs until it returns, or until :meth:`stop` cancels it. If it
        raises, the exception is logged at once (on the
        ``trioactors.notebook`` logger, with its traceback) and raised again
        by :meth:`stop`; the session and its other tasks carry on.

        Args:
          name: the Trio task's name (default: the function's).

        Raises:
          trio.ClosedResourceError: the session is stopped.
          trio.BrokenResourceError: the session crashed.
          TypeError: ``async_fn`` is a coroutine object, not a function.

        .. versionadded:: 0.1
        """
        _check_function(async_fn, "start_soon")
        self._check_running()
        label = str(name) if name is not None else _name_of(async_fn)
        self._submit(self._spawn, functools.partial(self._guarded, async_fn, args, label), label)
        self._background += 1

    async def stop(self) -> None:
        """Stop everything, and return once the Trio run has ended.

        Background tasks and calls still running are cancelled first; then
        the contexts still open are left normally, newest first (so a node
        stops its actors gracefully); then the run ends. Calling it again
        does nothing. If the awaiting task is cancelled, everything left is
        cancelled at once.

        Raises:
          ExceptionGroup: what went wrong and was not raised anywhere else:
            exceptions of background tasks, errors of contexts that ended
            on their own and were never :meth:`exit`-ed, and whatever ended
            the Trio run if it crashed.

        .. versionadded:: 0.1
        """
        if self._state in ("starting", "running"):
            self._state = "stopping"
            self._submit_quietly(self._stop_requested.set)
        try:
            await asyncio.shield(self._done)
        except asyncio.CancelledError:
            if self._contexts_nursery is not None:
                self._submit_quietly(self._contexts_nursery.cancel_scope.cancel)
            raise
        problems: list[BaseException] = [] if self._failure is None else [self._failure]
        problems += self._errors
        self._failure = None
        self._errors = []
        for context in self._contexts:
            if context.error is not None:
                problems.append(context.error)
                context.error = None
        self._contexts.clear()
        if problems:
            raise BaseExceptionGroup("errors in the notebook's Trio session", problems)

    async def __aenter__(self) -> TrioSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- helpers (asyncio side) ----------------------------------------------------

    def _check_running(self) -> None:
        if self._state == "running":
            return
        if self._failure is not None:
            raise trio.BrokenResourceError(
                f"the Trio session crashed ({self._failure!r}); stop it and start another"
            )
        raise trio.ClosedResourceError(_STOPPED)

    def _submit(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        """Have Trio call ``fn(*args)`` soon (in its run, from the host's thread)."""
        if self._token is None:
            raise trio.ClosedResourceError(_STOPPED)
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise trio.ClosedResourceError(_STOPPED) from None

    def _submit_quietly(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self._submit(fn)

    async def _wait(self, future: asyncio.Future[T], scope: trio.CancelScope) -> T:
        """Await a Trio task's ``future``; if cancelled, cancel the task and let it end."""
        pending: asyncio.Future[object] = future  # type: ignore[assignment]
        self._pending.add(pending)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                self._submit_quietly(scope.cancel)
                # a result is dropped, as a cancelled call's; an error of its own goes on
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(future)
            error = None if future.cancelled() else future.exception()
            if error is not None:
                raise error from None
            raise
        finally:
            self._pending.discard(pending)

    def _find(self, value: object) -> _Context:
        for context in reversed(self._contexts):
            if (
                context.entered.done()
                and not context.entered.cancelled()
                and context.entered.exception() is None
                and context.value is value
            ):
                return context
        raise LookupError(
            f"no context entered in this session returned {value!r}; "
            "pass exit() what enter() returned"
        )

    def _forget(self, context: _Context) -> None:
        with contextlib.suppress(ValueError):  # (stop() may have cleared the list)
            self._contexts.remove(context)

    def _on_done(self, result: Outcome[None]) -> None:
        """The guest run's done callback (in the host's thread)."""
        try:
            result.unwrap()
        except BaseException as exc:
            self._failure = exc
            if self._state != "stopping":
                logger.error("the notebook's Trio session crashed: %r", exc, exc_info=exc)
        self._state = "stopped"
        self._token = None
        # (normally every task has settled its futures by now; not after a TrioInternalError)
        for future in self._pending:
            _fail(future, trio.BrokenResourceError("the Trio session crashed"))
        for context in self._contexts:
            _fail(context.entered, trio.BrokenResourceError("the Trio session crashed"))
            _resolve(context.exited, None)
        self._done.set_result(None)

    # -- the Trio side -------------------------------------------------------------

    async def _main(self, ready: asyncio.Future[None]) -> None:
        async with trio.open_nursery() as contexts:
            self._contexts_nursery = contexts
            async with trio.open_nursery() as tasks:
                self._tasks = tasks
                _resolve(ready, None)
                await self._stop_requested.wait()
                tasks.cancel_scope.cancel()
            # background tasks and calls have ended; now the contexts, newest first
            for context in reversed(list(self._contexts)):
                context.exit_requested.set()
                await context.ended.wait()

    def _spawn(self, task: Callable[[], Awaitable[None]], name: object = None) -> None:
        # (a run_sync_soon callback: submitted before stop(), so the nursery is open)
        assert self._tasks is not None
        self._tasks.start_soon(task, name=name)

    def _spawn_context(self, context: _Context) -> None:
        assert self._contexts_nursery is not None
        self._contexts_nursery.start_soon(self._hold, context, name=context.name)

    async def _call(
        self,
        future: asyncio.Future[T],
        scope: trio.CancelScope,
        async_fn: Callable[[*Ts], Awaitable[T]],
        args: tuple[*Ts],
    ) -> None:
        try:
            with scope:
                value = await async_fn(*args)
        except Exception as exc:
            _fail(future, exc)
            return
        except BaseException:  # the session is stopping (or was interrupted)
            _fail(
                future, trio.ClosedResourceError("the Trio session stopped before the call ended")
            )
            raise
        if scope.cancelled_caught:
            future.cancel()  # the caller cancelled it
        else:
            _resolve(future, value)

    async def _guarded(
        self, async_fn: Callable[[*Ts], Awaitable[object]], args: tuple[*Ts], name: str
    ) -> None:
        try:
            await async_fn(*args)
        except Exception as exc:
            self._errors.append(exc)
            logger.error(
                "background task %s raised %r (session.stop() raises it)", name, exc, exc_info=exc
            )
        finally:
            self._background -= 1

    async def _hold(self, context: _Context) -> None:
        try:
            with context.scope:
                async with context.manager as value:
                    context.value = value
                    _resolve(context.entered, value)
                    await context.exit_requested.wait()
        except Exception as exc:
            if not context.entered.done():
                _fail(context.entered, exc)  # enter() raises it
            else:
                context.error = exc
                if not context.exit_requested.is_set():
                    logger.error(
                        "%s (entered as %r) ended on its own with %r; "
                        "session.exit() on that value raises it",
                        context.name,
                        context.value,
                        exc,
                    )
        except BaseException:  # the session is stopping (or was interrupted)
            _fail(context.entered, trio.ClosedResourceError("the Trio session stopped"))
            raise
        finally:
            context.ended.set()
            _resolve(context.exited, None)
        if not context.entered.done():  # cancelled while entering
            context.entered.cancel()


# -- drawing the supervision tree ----------------------------------------------------

_STATE_STYLES: Final = {
    ChildState.STARTING: "cyan",
    ChildState.RUNNING: "green",
    ChildState.RESTARTING: "yellow",
    ChildState.STOPPING: "magenta",
    ChildState.STOPPED: "red",
}


def tree(target: Node | Supervisor | ActorSystem, *, system_actors: bool = True) -> Tree:
    """Draw a supervision tree: each child's name, kind, state, restarts and mailbox.

    In a notebook, make it a cell's last expression to see it (rich renders
    in Jupyter); elsewhere ``rich.print(tree(node))``. The picture is a
    snapshot, taken when called.

    Args:
      target: a node (its root supervisor, system actors such as
        ``$membership`` included), a supervisor (its subtree), or an actor
        system (its root).
      system_actors: show the actors whose names start with ``$`` (dimmed).

    Returns:
      rich.tree.Tree: the tree, one line per child.

    .. versionadded:: 0.1
    """
    from rich.text import Text
    from rich.tree import Tree

    title = Text()
    supervisor: Supervisor | None
    if isinstance(target, Node):
        title.append(target.name, style="bold")
        if target.address:
            title.append(f" ({target.address})", style="dim")
        supervisor = getattr(target, "root", None)
    elif isinstance(target, ActorSystem):
        title.append(target.name, style="bold")
        supervisor = target.root
    else:
        supervisor = target
    if supervisor is None:
        title.append(" (no supervisor running)", style="dim")
        return Tree(title)
    if title:
        title.append("  ")
    title.append_text(_supervisor_label(supervisor))
    drawing = Tree(title, guide_style="dim")
    _add_children(drawing, supervisor, system_actors)
    return drawing


def _supervisor_label(supervisor: Supervisor) -> Text:
    from rich.text import Text

    return Text.assemble((supervisor.path, "bold"), (_policy(supervisor), "dim"))


def _policy(supervisor: Supervisor) -> str:
    restarts = "restart" if supervisor.intensity == 1 else "restarts"
    return (
        f"  {supervisor.strategy.value}, at most {supervisor.intensity} {restarts}"
        f" in {supervisor.period:g} s"
    )


def _add_children(drawing: Tree, supervisor: Supervisor, system_actors: bool) -> None:
    for info in supervisor.children():
        if info.name.startswith("$") and not system_actors:
            continue
        branch = drawing.add(_child_label(info))
        if info.supervisor is not None:
            _add_children(branch, info.supervisor, system_actors)


def _child_label(info: ChildInfo) -> Text:
    from rich.text import Text

    system = info.name.startswith("$")
    label = Text.assemble(
        (info.name, "dim" if system else "bold"),
        f"  {info.kind}  ",
        (info.state.value, _STATE_STYLES[info.state]),
        "  restarts ",
        (str(info.restarts), "bold yellow" if info.restarts else ""),
    )
    if info.kind == "actor":
        label.append(f"  mailbox {info.mailbox_length}")
    if info.supervisor is not None:
        label.append(_policy(info.supervisor), style="dim")
    return label


# -- small helpers -----------------------------------------------------------------


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if future.done():
        return
    if isinstance(error, StopIteration):  # (a Future refuses those)
        wrapped = RuntimeError(f"the function raised {error!r}")
        wrapped.__cause__ = error
        error = wrapped
    future.set_exception(error)


def _check_function(async_fn: object, method: str) -> None:
    if inspect.iscoroutine(async_fn):
        async_fn.close()  # (no "never awaited" warning on top of this error)
        raise TypeError(
            f"{method}() takes an async function and its arguments: "
            f"session.{method}(fn, *args), not session.{method}(fn(*args))"
        )


def _name_of(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def _describe(manager: object) -> str:
    """``open_node()`` for what ``open_node(...)`` returned, else the manager's repr."""
    func = getattr(manager, "func", None)  # (@asynccontextmanager keeps the function)
    name = getattr(func, "__qualname__", None)
    return f"{name}()" if isinstance(name, str) else repr(manager)
