"""``trioactors demo``: a supervision tree that crashes, restarts and escalates
(:func:`run_demo`); then a cluster of real node processes runs a batch of jobs,
loses a node to SIGKILL part-way, and completes every job anyway
(:func:`run_cluster_demo`).

Everything here uses only the public API; read it as an example.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import traceback
from typing import IO, TYPE_CHECKING, Final

import attrs
import trio
import trio.testing
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import trioactors as ta
from trioactors import examples

if TYPE_CHECKING:
    from collections.abc import Mapping


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Total(ta.Request[int]):
    pass


@attrs.frozen
class Fail:
    why: str


class Account(ta.Actor[Add | Total | Fail]):
    """Keeps a running total; crashes when told to."""

    def __init__(self) -> None:
        self.total = 0

    async def receive(self, message: Add | Total | Fail) -> object:
        match message:
            case Add(amount):
                self.total += amount
            case Total():
                return self.total
            case Fail(why):
                raise RuntimeError(why)
        return None


class Auditor(ta.Actor[str]):
    async def receive(self, message: str) -> object:
        return f"audited {message}"


def _describe(event: ta.Event) -> str:
    match event:
        case ta.ChildStarted(path, kind, _):
            return f"started    {path} ({kind})"
        case ta.ChildCrashed(path, exception, message, _):
            during = "" if message is None else f" while handling {message!r}"
            return f"crashed    {path}: {type(exception).__name__}: {exception}{during}"
        case ta.ChildRestarted(path, restarts, _):
            return f"restarted  {path} (restart #{restarts})"
        case ta.ChildStopped(path, reason, _):
            return f"stopped    {path} ({reason})"
        case ta.SupervisorEscalated(path, _, _):
            return f"escalated  {path} gave up"
        case ta.DeadLetter(recipient, message, _, reason, _):
            return f"dead letter to {recipient} ({reason}): {message!r}"
        case ta.EventsLost(count, _):
            return f"({count} events not shown)"


async def _narrate(events: ta.Subscription, out: list[str]) -> None:
    async for event in events:
        line = _describe(event)
        print(f"    event: {line}")
        out.append(line)


async def run_demo() -> list[str]:
    """Run the demo; return the event lines it printed (the tests check them)."""
    log = logging.getLogger("trioactors")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the events tell the story
    try:
        return await _run_demo()
    finally:
        log.setLevel(level)


async def _run_demo() -> list[str]:
    seen: list[str] = []
    system = ta.ActorSystem("demo")
    print("1. A root supervisor (one_for_one, OTP's default intensity: at most 1 restart")
    print("   in 5 s) with a nested 'bank' supervisor (one_for_all, same intensity).")
    async with trio.open_nursery() as narrator:
        narrator.start_soon(_narrate, system.subscribe(), seen)
        try:
            async with ta.open_supervisor(system=system) as root:
                bank = await root.start_supervisor(name="bank", strategy=ta.ONE_FOR_ALL)
                account = await bank.start_actor(Account, name="account")
                await bank.start_actor(Auditor, name="auditor")
                await _settle()

                print("\n2. Deposit 3 x 10 and ask for the total.")
                for _ in range(3):
                    await account.tell(Add(10))
                print(f"   total = {await account.ask(Total())}")

                print("\n3. Fault: the account crashes with two deposits queued behind it.")
                await account.tell(Fail("disk full"))
                await account.tell(Add(5))
                await account.tell(Add(7))
                total = await account.ask(Total())
                await _settle()
                print(f"   total = {total}: a fresh instance, and the queued deposits survived")
                print("   " + system.dump_tree().replace("\n", "\n   "))

                print("\n4. A second crash within 5 s: 'bank' exceeds its intensity and gives")
                print("   up; the root restarts the whole 'bank' subtree (escalation).")
                await account.tell(Fail("disk still full"))
                total = await account.ask(Total())
                await _settle()
                print(f"   total = {total}; the same reference still works")

                print("\n5. Two more crashes: 'bank' gives up again, and the root, now past")
                print("   its own intensity, gives up too: open_supervisor raises.")
                await account.tell(Fail("power cut"))
                await account.tell(Fail("power cut again"))
                await trio.sleep_forever()  # the root giving up cancels this
        except ta.SupervisorGaveUp as exc:
            await _settle()
            print(f"\n   raised: SupervisorGaveUp: {exc}")
            print(f"   caused by: {exc.__cause__!r}")
        narrator.cancel_scope.cancel()
    print("\n   The tree is gone: every one of its tasks has exited.")
    return seen


async def _settle() -> None:
    # let the narrator print what happened so far (demo output only)
    await trio.testing.wait_all_tasks_blocked()


# -- part two: a cluster of real processes running jobs ------------------------------

JOBS: Final = 300
"""Jobs in the batch: ``sleep`` jobs of 0.05 to 0.2 s, about 6 s of work for 6 workers."""
KILL_AT: Final = 0.3
"""The fraction of the batch done when a node is killed."""
VICTIM: Final = "node-3"
TIME_LIMIT: Final = 25.0
"""Seconds the cluster part may take, start-up included (stopping the node
processes then takes at most ``STOP_TIME`` more)."""
STOP_TIME: Final = 3.0
JOB_TIMEOUT: Final = 15.0
"""Each job's deadline: a job still out by then ends with ``JobTimeout``."""
RETRY: Final = ta.RetryPolicy(max_attempts=3, base=0.2, cap=1.0)
"""Three attempts; a job lost with its node waits up to 0.2 s, then goes elsewhere."""


class DemoFailed(Exception):
    """The cluster demo went wrong; the message says how."""


async def run_cluster_demo() -> list[str]:
    """Three node processes run a batch of jobs for this one; one is killed with
    SIGKILL part-way; every job completes anyway.

    Returns the lines it printed (the tests check them). If a job does not
    complete, or the demo runs out of time, prints a ``FAILED`` line and raises
    ``SystemExit(1)``.
    """
    show = _Show()
    log = logging.getLogger("trioactors")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the demo tells what happens (a dead node is logged)
    secret = secrets.token_hex(16)
    nodes = _NodeProcesses({**os.environ, "TRIOACTORS_SECRET": secret})
    try:
        with trio.fail_after(TIME_LIMIT):
            await _cluster_demo(nodes, secret, show)
    except Exception as exc:
        error = _leaf(exc)
        if isinstance(error, trio.TooSlowError):
            why = f"the demo did not finish within {TIME_LIMIT:g} s ({show.stage})"
        elif isinstance(error, DemoFailed):
            why = str(error)
        else:  # a bug: show it
            traceback.print_exception(exc)
            why = f"{type(error).__name__}: {error} ({show.stage})"
        show.say(f"\nFAILED: {why}", style="bold red")
        raise SystemExit(1) from exc
    finally:
        await nodes.stop()
        log.setLevel(level)
    return show.lines


class _Show:
    """What the cluster demo prints, and where it is (for a failure's message)."""

    def __init__(self) -> None:
        self.console = Console(highlight=False)
        self.lines: list[str] = []
        self.stage = "starting"

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, soft_wrap=True)
        self.lines.append(text)


async def _cluster_demo(nodes: _NodeProcesses, secret: str, show: _Show) -> None:
    say = show.say
    say("\n6. A cluster: three `trioactors node` processes on 127.0.0.1, each with a worker")
    say("   pool of 2, and this process, which submits jobs through a job queue (at most")
    tries = RETRY.max_attempts
    say(f"   {tries} attempts per job) and watches with a failure supervisor; all four")
    say("   joined by gossip (SWIM failure detection) over authenticated websockets.")
    show.stage = "starting node-1"
    await nodes.spawn("node-1")
    first = await nodes.ready("node-1")
    for name in ("node-2", "node-3"):  # (they start at once)
        await nodes.spawn(name, "--join", f"node-1={first}")
    for name in ("node-2", "node-3"):
        show.stage = f"starting {name}"
        await nodes.ready(name)

    async with ta.open_node("demo", secret=secret, registry=ta.MessageRegistry()) as node:
        show.stage = "joining the cluster"
        membership = await ta.start_membership(node, seeds={"node-1": first})
        reports: list[ta.FailureReport] = []
        node_down = trio.Event()

        def record(report: ta.FailureReport) -> None:
            reports.append(report)
            if isinstance(report, ta.NodeDown):
                node_down.set()

        failures = await ta.start_failure_supervisor(node, membership=membership, handlers=[record])
        queue = await ta.start_job_queue(
            node,
            membership=membership,
            failures=failures,
            retry=RETRY,
            default_timeout=JOB_TIMEOUT,
        )
        show.stage = "waiting for the worker pools"
        while len(membership.lookup("jobs:worker")) < 3:  # (known by gossip)
            await membership.wait_changed()
        await queue.refresh()  # (rather than wait for its next round)
        await queue.wait_for_workers(3, kind=examples.SLEEP.name)
        say(f"   members: {', '.join(membership.alive())}")
        say(f"   worker pools: {', '.join(queue.workers())}")

        rng = random.Random(1)
        jobs = [examples.SLEEP.job(round(rng.uniform(0.05, 0.2), 3)) for _ in range(JOBS)]
        kill_after = math.ceil(KILL_AT * JOBS)
        say(f"\n7. {JOBS} `sleep` jobs of 0.05 to 0.2 s each (simulated I/O), submitted at once")
        say(
            f"   with queue.submit_many; after {kill_after} results, {VICTIM} is killed with SIGKILL."
        )
        results: list[ta.JobResult[float]] = []
        started = trio.current_time()
        killed = started

        async def watch_victim() -> None:
            while (member := _member(membership, VICTIM)) is not None and member.reachable:
                await membership.wait_changed()
            now = trio.current_time()
            state = "dead" if member is None else member.state.name.lower()
            say(
                f"   {now - started:4.1f} s  membership declared {VICTIM} {state}, "
                f"{now - killed:.1f} s after the kill; its jobs go to the other nodes",
                style="bold",
            )

        async with trio.open_nursery() as watcher:
            with _progress_bar(show.console) as bar:
                task = bar.add_task("jobs", total=JOBS)
                async with queue.submit_many(jobs) as stream:
                    async for result in stream:
                        results.append(result)
                        bar.advance(task)
                        show.stage = f"{len(results)} of {JOBS} jobs done"
                        if len(results) == kill_after:
                            nodes.kill(VICTIM)
                            killed = trio.current_time()
                            say(
                                f"   {killed - started:4.1f} s  {kill_after} of {JOBS} done: "
                                f"{VICTIM} killed with SIGKILL",
                                style="bold red",
                            )
                            watcher.start_soon(watch_victim)
            elapsed = trio.current_time() - started
            show.stage = f"every job ended; waiting for {VICTIM} to be declared dead"
        show.stage = "waiting for the failure supervisor's NodeDown report"
        await node_down.wait()
        statistics = queue.statistics()

    say("\n8. Summary")
    _print_summary(show.console, results, elapsed, statistics)
    for report in reports:
        say(f"   failure supervisor: {_describe_report(report)}")
    completed = [r for r in results if r.ok]
    if len(completed) < JOBS:
        errors = collections.Counter(type(r.error).__name__ for r in results if not r.ok)
        shown = ", ".join(f"{n} {error}" for error, n in sorted(errors.items()))
        raise DemoFailed(f"only {len(completed)} of {JOBS} jobs completed ({shown})")
    retried = sum(1 for r in completed if r.attempt > 1)
    say(
        f"\nDone: all {JOBS} jobs completed in {elapsed:.1f} s although {VICTIM} was killed "
        f"with SIGKILL; {retried} of them were retried on the other nodes.",
        style="bold green",
    )


def _member(membership: ta.Membership, name: str) -> ta.Member | None:
    for member in membership.members():
        if member.node == name:
            return member
    return None


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("  "),
        BarColumn(bar_width=40),
        MofNCompleteColumn(),
        TextColumn("jobs"),
        TimeElapsedColumn(),
        console=console,
    )


def _print_summary(
    console: Console,
    results: list[ta.JobResult[float]],
    elapsed: float,
    statistics: ta.JobQueueStatistics,
) -> None:
    done = collections.Counter(_node_of(r.worker) for r in results if r.ok)
    retried = collections.Counter(_node_of(r.worker) for r in results if r.ok and r.attempt > 1)
    failed = sum(1 for r in results if not r.ok)
    by_node = Table(box=box.SIMPLE_HEAD, show_edge=False)
    by_node.add_column("worker node")
    by_node.add_column("jobs done", justify="right")
    by_node.add_column("after a retry", justify="right")
    for name in ("node-1", "node-2", "node-3"):
        note = " (killed)" if name == VICTIM else ""
        by_node.add_row(f"{name}{note}", str(done[name]), str(retried[name]))
    by_node.add_section()
    by_node.add_row("all", str(sum(done.values())), str(sum(retried.values())))
    by_node.add_row("failed", str(failed), "")
    by_node.add_row("time", f"{elapsed:.1f} s", "")

    queue = Table(box=box.SIMPLE_HEAD, show_edge=False)
    queue.add_column("queue statistics")
    queue.add_column("", justify="right")
    for key, value in (
        ("submitted", statistics.submitted),
        ("succeeded", statistics.succeeded),
        ("failed", statistics.failed),
        ("retried", statistics.retried),
        ("lost (WorkerLost)", statistics.lost),
        ("exhausted", statistics.exhausted),
        ("late results", statistics.late_results),
    ):
        queue.add_row(key, str(value))
    side_by_side = Table.grid(padding=(0, 6))
    side_by_side.add_row(by_node, queue)
    console.print(Padding(side_by_side, (1, 0, 1, 3), expand=False))


def _node_of(worker: str | None) -> str:
    return "(none)" if worker is None else worker.rpartition("@")[2]


def _describe_report(report: ta.FailureReport) -> str:
    if isinstance(report, ta.NodeDown):
        return f"NodeDown: {report.node} ({report.address}) is {report.state}"
    if isinstance(report, ta.JobGaveUp):
        return f"JobGaveUp: job {report.job_id} after {report.attempts} attempts: {report.error}"
    if isinstance(report, ta.CircuitOpened):
        return f"CircuitOpened: no jobs to {report.node} for {report.reset_timeout:g} s"
    return repr(report)  # (not expected here)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _NodeProcesses:
    """``trioactors node`` processes; each one's standard error goes to a temporary
    file, shown if it exits before it is ready."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.processes: dict[str, trio.Process] = {}
        self.errors: dict[str, IO[bytes]] = {}
        self._files = contextlib.ExitStack()

    async def spawn(self, name: str, *extra: str) -> None:
        """Start node ``name`` on 127.0.0.1, any free port, with a worker pool of 2."""
        errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.errors[name] = self._files.enter_context(errors)
        command = ["node", name, "--host", "127.0.0.1", "--port", "0", "--workers", "2"]
        self.processes[name] = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioactors", *command, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=self.env,
        )

    async def ready(self, name: str) -> str:
        """Wait until node ``name`` serves; return its address."""
        process = self.processes[name]
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some()
            if not chunk:
                await process.wait()
                raise DemoFailed(
                    f"{name} exited with status {process.returncode} before it was ready:\n"
                    f"{self.stderr_of(name)}"
                )
            line += chunk
        try:
            address = json.loads(line)["address"]
        except (ValueError, KeyError, TypeError):
            raise DemoFailed(f"{name} printed {line!r:.200} instead of its address") from None
        if not isinstance(address, str):
            raise DemoFailed(f"{name} printed {line!r:.200} instead of its address")
        return address

    def stderr_of(self, name: str) -> str:
        errors = self.errors[name]
        errors.seek(0)
        return errors.read()[-2000:].decode(errors="replace").rstrip()

    def kill(self, name: str) -> None:
        """SIGKILL (on Windows, TerminateProcess): no goodbye to the cluster."""
        self.processes[name].kill()

    async def stop(self) -> None:
        """Close each node's standard input (it stops); kill those still running after
        ``STOP_TIME`` seconds."""
        with trio.CancelScope(shield=True):  # (even when the demo is cancelled)
            for process in self.processes.values():
                if process.stdin is not None:
                    await process.stdin.aclose()
            with trio.move_on_after(STOP_TIME):
                for process in self.processes.values():
                    await process.wait()
            for process in self.processes.values():
                if process.returncode is None:
                    process.kill()
            with trio.move_on_after(STOP_TIME):
                for process in self.processes.values():
                    await process.wait()
            for process in self.processes.values():
                if process.stdout is not None:
                    await process.stdout.aclose()
        self._files.close()
