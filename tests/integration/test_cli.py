"""The ``trioactors`` command line against real node processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import trio
from _nodes import SECRET, node_cluster

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

READ_ONLY_SECRET = "read-only-integration-secret"


def _env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "TRIOACTORS_SECRET": SECRET}
    env.pop("TRIOACTORS_NODE", None)
    env.pop("TRIOACTORS_READ_ONLY_SECRET", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


async def cli(*args: str, **env: str | None) -> subprocess.CompletedProcess[bytes]:
    """Run ``trioactors ARGS`` to the end; ``env`` changes its environment."""
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "trioactors", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_env(**env),
        )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def parsed(result: subprocess.CompletedProcess[bytes]) -> Any:
    return json.loads(ok(result))


def failed(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The one-line error of a command that exited with ``code``."""
    error = result.stderr.decode()
    assert result.returncode == code, (result.returncode, error, result.stdout.decode())
    return error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_operate_a_cluster_of_three_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    # the nodes accept observers with the read-only secret (node_cluster passes os.environ on)
    monkeypatch.setenv("TRIOACTORS_READ_ONLY_SECRET", READ_ONLY_SECRET)
    with trio.fail_after(90):
        async with node_cluster() as start:
            n1 = await start("n1")
            n2 = await start("n2", join=[("n1", n1.address)])
            n3 = await start("n3", join=[("n1", n1.address)])
            nodes = [n1, n2, n3]
            names = {n.name for n in nodes}
            for node in nodes:
                await node.wait_until(
                    lambda p: all(p.states.get(o) == "alive" for o in names - {p.name})
                )
            to = ["--to", n1.address]

            # status: every member alive and answering, as JSON and as a table
            status = parsed(await cli("status", *to, "--json"))
            assert status["node"] == "n1"
            members = {m["node"]: m for m in status["members"]}
            assert set(members) == names
            for node in nodes:
                member = members[node.name]
                assert member["address"] == node.address
                assert member["state"] == "alive"
                assert member["reachable"] is True
                assert member["rtt_ms"] > 0
                assert member["actors"] >= 4  # echo, account, relay, slow (and $-actors)
                assert member["draining"] is False
            table = ok(await cli("status", *to))
            assert all(n.address in table for n in nodes)

            # ping another member, through the address the first one lists
            pings = parsed(await cli("ping", "n2", "-c", "3", *to, "--json"))
            assert pings["node"] == "n2"
            assert len(pings["rtt_ms"]) == 3
            assert "pong from n1:" in ok(await cli("ping", *to))

            # send deposits to an account on n2 (tags as registered: the class name), then ask it
            for amount in (5, 7):
                ok(await cli("send", "account@n2", "Add", json.dumps({"amount": amount}), *to))
            assert json.loads(ok(await cli("ask", "account@n2", "Total", "{}", *to))) == 12
            echoed = parsed(await cli("ask", "echo@n3", "Echo", '{"text": "hi"}', *to, "--json"))
            assert echoed == {"type": "Echo", "data": {"text": "hi"}}

            actors = parsed(await cli("actors", "n3", *to, "--json"))
            assert actors["node"] == "n3"
            listed = {a["name"]: a for a in actors["actors"]}
            assert {"account", "echo", "relay", "slow"} <= set(listed)
            assert listed["account"]["capacity"] > 0
            assert "account" in ok(await cli("actors", *to))

            # jobs on the nodes' worker pools (every node runs one: --workers 2)
            counts = parsed(await cli("submit", "wordcount.map", '"a b a"', *to))
            assert counts == {"a": 2, "b": 1}
            lines = ok(await cli("submit", "echo", '{"x": 1}', "--count", "30", *to, "--json"))
            rows = [json.loads(line) for line in lines.splitlines()]
            assert len(rows) == 30
            assert {r["value"]["x"] for r in rows} == {1}
            assert {r["worker"] for r in rows} <= {f"jobs:worker@{n}" for n in names}
            summary = ok(await cli("submit", "sleep", "0.01", "--count", "6", *to))
            assert summary.startswith("6 jobs in ")
            error = failed(await cli("submit", "resize", *to), 1)
            assert "UnknownJobKind: no worker handles 'resize' jobs" in error
            error = failed(await cli("submit", "sleep", '"soon"', *to), 1)
            assert "InvalidJobPayload" in error

            # failures: an error reply, a refused message, a wrong secret
            error = failed(await cli("ask", "echo@n1", "Echo", '{"text": 5}', *to), 1)
            assert error.startswith("trioactors: echo@n1: InvalidPayload")
            error = failed(await cli("send", "echo@n1", "Nope", "{}", *to), 1)
            assert "refused the message: UnknownMessageType" in error
            error = failed(await cli("ping", *to, TRIOACTORS_SECRET="wrong"), 4)
            assert error.startswith(f"trioactors: authentication failed at {n1.address}")
            assert len(error.strip().splitlines()) == 1

            # a read-only client can look, but not change anything
            observer = {"TRIOACTORS_SECRET": None, "TRIOACTORS_READ_ONLY_SECRET": READ_ONLY_SECRET}
            seen = parsed(await cli("status", *to, "--read-only", "--json", **observer))
            assert {m["node"] for m in seen["members"] if m["reachable"]} == names
            error = failed(await cli("drain", "n3", *to, "--read-only", **observer), 4)
            assert "not allowed" in error
            failed(await cli("ask", "account@n2", "Total", "{}", *to, "--read-only", **observer), 4)
            error = failed(await cli("submit", "echo", *to, "--read-only", **observer), 4)
            assert "needs the cluster secret" in error

            # drain n3, then shut it down: it exits 0 and the others see it leave
            assert ok(await cli("drain", "n3", *to)).strip() == "n3 drained"
            members = {m["node"]: m for m in parsed(await cli("status", *to, "--json"))["members"]}
            assert members["n3"]["draining"] is True
            assert ok(await cli("shutdown", "n3", *to)).strip() == "n3 is shutting down"
            await n3.process.wait()
            assert n3.process.returncode == 0
            for node in (n1, n2):
                await node.wait_state("n3", "left")
            left = {m["node"]: m for m in parsed(await cli("status", *to, "--json"))["members"]}
            assert left["n3"]["state"] == "left"
            assert left["n3"]["reachable"] is None  # (not tried)

            # SIGTERM: the node leaves the cluster too, and exits 0
            n2.process.send_signal(signal.SIGTERM)
            await n2.process.wait()
            assert n2.process.returncode == 0
            await n1.wait_state("n2", "left")


async def test_a_node_from_a_settings_file_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret\n")
    settings = tmp_path / "node.toml"
    settings.write_text(
        'name = "configured"\nport = 1\nsecret_file = "secret"\nignore_stdin = true\n'
    )
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioactors", "node", "--config", str(settings), "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_env(),  # its secret is the file's, not the environment's
        )
        try:
            assert process.stdout is not None
            assert process.stdin is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the node exited before it was ready"
                line += chunk
            ready = json.loads(line)
            assert ready["name"] == "configured"
            assert not ready["address"].endswith(":1")  # --port overrides the file

            to = ["--to", ready["address"]]
            failed(await cli("ping", *to), 4)  # the environment's secret is not the node's
            assert "pong from configured" in ok(
                await cli("ping", *to, "--secret-file", str(tmp_path / "secret"))
            )
            await process.stdin.aclose()  # ignore_stdin: it keeps running
            assert "pong" in ok(await cli("ping", *to, TRIOACTORS_SECRET="file-secret"))
            process.send_signal(signal.SIGTERM)
            await process.wait()
            assert process.returncode == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('name = "n"\ncolour = "blue"\n', "unknown key 'colour'"),
        ('name = "n"\nport = "7000"\n', "port must be an integer"),
        ('name = "n\n', "not valid TOML"),
        ('name = "n"\njoin = {a = 5}\n', "join.a must be an address string"),
        ('name = "n"\njoin = {a = "http://x"}\n', "not a websocket address"),
        ('name = "bad name"\n', "invalid node name"),
    ],
)
async def test_a_bad_settings_file_is_a_usage_error(
    tmp_path: Path, content: str, complaint: str
) -> None:
    settings = tmp_path / "node.toml"
    settings.write_text(content)
    assert complaint in failed(await cli("node", "--config", str(settings)), 2)


async def test_usage_errors_and_unreachable_nodes() -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}"
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}
    commands = {
        "version": ["--version"],
        "help": ["--help"],
        "node help": ["node", "--help"],
        "status help": ["status", "--help"],
        "ask help": ["ask", "--help"],
        "unknown command": ["nonsense"],
        "unknown option": ["status", "--to", nowhere, "--frobnicate"],
        "no address": ["status"],
        "bad json": ["ask", "account@n1", "Total", "{not json", "--to", nowhere],
        "bad address": ["send", "account", "Add", "{}", "--to", nowhere],
        "bad scheme": ["ping", "--to", "http://127.0.0.1:1"],
        "unreachable": ["ping", "--to", nowhere, "--timeout", "3"],
        "unreachable tcp": ["status", "--to", nowhere.replace("ws:", "tcp:"), "--timeout", "3"],
        "read-only without its secret": ["status", "--to", nowhere, "--read-only"],
    }

    async def run(key: str, args: list[str]) -> None:
        results[key] = await cli(*args)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for key, args in commands.items():
                nursery.start_soon(run, key, args)

    assert ok(results["version"]).strip().startswith("trioactors ")
    for key in ("help", "node help", "status help", "ask help"):
        assert "Usage: trioactors" in ok(results[key])
    assert "invalid choice: 'nonsense'" in failed(results["unknown command"], 2)
    assert "No such option" in failed(results["unknown option"], 2)
    assert "--to" in failed(results["no address"], 2)
    assert "not valid JSON" in failed(results["bad json"], 2)
    assert "invalid address" in failed(results["bad address"], 2)
    assert "ws://HOST:PORT" in failed(results["bad scheme"], 2)
    for key in ("unreachable", "unreachable tcp"):
        error = failed(results[key], 3)
        assert error.startswith("trioactors: cannot reach"), error
        assert len(error.strip().splitlines()) == 1
    assert "read-only secret" in failed(results["read-only without its secret"], 2)
