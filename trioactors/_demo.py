"""``trioactors demo``: a supervision tree that crashes, restarts and escalates.

Everything here uses only the public API; read it as an example.
"""

from __future__ import annotations

import logging

import attrs
import trio
import trio.testing

import trioactors as ta


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


# -- part two: a cluster of real processes ------------------------------------------


async def run_cluster_demo() -> list[str]:
    """Three node processes and this one: real work, a SIGKILL, recovery."""
    import json
    import os
    import secrets
    import signal
    import subprocess
    import sys

    from ._nodecmd import Add, Total, registry
    from .transports import TransportConfig, WebSocketTransport

    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    secret = secrets.token_hex(16)
    env = {**os.environ, "TRIOACTORS_SECRET": secret}
    processes: list[trio.Process] = []

    async def start(name: str, *extra: str) -> str:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioactors", "node", name, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        processes.append(process)
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"{name} exited before it was ready")
            line += chunk
        address: str = json.loads(line)["address"]
        return address

    say("\n6. A cluster: three `trioactors node` processes on 127.0.0.1, and this one,")
    say("   joined by gossip (SWIM failure detection, authenticated websockets).")
    try:
        with trio.fail_after(60):
            first = await start("node-1")
            for name in ("node-2", "node-3"):
                await start(name, "--join", f"node-1={first}")
            transport = WebSocketTransport(TransportConfig(secret=secret.encode()))
            async with ta.open_node("demo", transport=transport, registry=registry) as node:
                membership = await ta.start_membership(node, seeds={"node-1": first})
                while len(membership.alive()) < 4:
                    await membership.wait_changed()
                while len(membership.lookup("account")) < 3:
                    await membership.wait_changed()
                say(f"   members: {', '.join(membership.alive())}")

                accounts = membership.lookup("account")
                for i in range(30):
                    await accounts[i % len(accounts)].tell(Add(i + 1))
                totals = [await a.ask(Total()) for a in accounts]
                say(f"   30 deposits spread over {len(accounts)} accounts: totals {totals}")

                say("\n7. Fault: node-3 is killed with SIGKILL in the middle of the work.")
                processes[2].send_signal(signal.SIGKILL)
                start_time = trio.current_time()
                node3 = "node-3"
                while (
                    m := membership.view.get(node3)
                ) is None or m.state is not ta.MemberState.DEAD:
                    await membership.wait_changed()
                say(
                    f"   node-3 declared dead by the cluster after "
                    f"{trio.current_time() - start_time:.1f} s and removed from routing"
                )
                accounts = membership.lookup("account")
                for i in range(10):
                    await accounts[i % len(accounts)].tell(Add(100))
                totals = [await a.ask(Total()) for a in accounts]
                say(
                    f"   the work goes on with {', '.join(a.address for a in accounts)}: "
                    f"totals {totals}"
                )
        say("\nDone: the cluster lost a node and carried on.")
    finally:
        for process in processes:
            if process.returncode is None:
                assert process.stdin is not None
                await process.stdin.aclose()
        with trio.move_on_after(10):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
    return lines
