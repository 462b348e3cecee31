"""The README's demo runs, and shows a restart and then an escalation."""

from __future__ import annotations

import subprocess
import sys

import trio

from trioactors._demo import run_cluster_demo, run_demo


async def test_demo_restarts_then_escalates() -> None:
    with trio.fail_after(30):
        lines = await run_demo()
    assert "restarted  /root/bank/account (restart #1)" in lines
    assert "escalated  /root/bank gave up" in lines
    assert "restarted  /root/bank (restart #1)" in lines
    assert lines[-1] == "escalated  /root gave up"


async def test_cluster_demo_loses_a_node_and_carries_on() -> None:
    with trio.fail_after(60):
        lines = await run_cluster_demo()
    assert "   members: demo, node-1, node-2, node-3" in lines
    assert any(line.startswith("   node-3 declared dead by the cluster after") for line in lines)
    assert any("the work goes on with account@node-1, account@node-2" in line for line in lines)


def test_cli_demo_exits_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trioactors", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "total = 12: a fresh instance, and the queued deposits survived" in result.stdout
    assert "raised: SupervisorGaveUp: /root gave up" in result.stdout
    assert "Done: the cluster lost a node and carried on." in result.stdout


def test_cli_help_and_usage_errors() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "trioactors", "--help"], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0
    assert "demo" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "trioactors", "nonsense"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr
