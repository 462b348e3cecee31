"""The README's demo runs: a restart and then an escalation; then a cluster that
loses a node to SIGKILL and still completes every job."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import trio

from trioactors._demo import JOBS, VICTIM, run_demo


async def test_demo_restarts_then_escalates() -> None:
    with trio.fail_after(30):
        lines = await run_demo()
    assert "restarted  /root/bank/account (restart #1)" in lines
    assert "escalated  /root/bank gave up" in lines
    assert "restarted  /root/bank (restart #1)" in lines
    assert lines[-1] == "escalated  /root gave up"


def test_cli_demo_completes_every_job_despite_a_killed_node() -> None:
    # The whole demo, as `nox -s demo` runs it (its cluster part is too slow to run twice).
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "trioactors", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    seconds = time.monotonic() - start
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    # the local part
    assert "total = 12: a fresh instance, and the queued deposits survived" in out
    assert "raised: SupervisorGaveUp: /root gave up" in out
    # the cluster part: formed, a node killed, declared dead, every job done, some retried
    assert "   members: demo, node-1, node-2, node-3" in out
    assert re.search(rf"\d+ of {JOBS} done: {VICTIM} killed with SIGKILL", out), out
    assert re.search(rf"membership declared {VICTIM} dead, [\d.]+ s after the kill", out), out
    assert f"NodeDown: {VICTIM} (ws://127.0.0.1:" in out
    assert "FAILED" not in out
    verdict = re.search(
        rf"^Done: all {JOBS} jobs completed in [\d.]+ s although {VICTIM} was killed with "
        r"SIGKILL; (\d+) of them were retried on the other nodes\.$",
        out,
        re.MULTILINE,
    )
    assert verdict is not None, out
    assert int(verdict[1]) > 0
    # the queue's statistics agree: as many retries, nothing lost
    retried = re.search(r"\bretried +(\d+)\b", out)
    assert retried is not None, out
    assert retried[1] == verdict[1]
    assert re.search(r"\blost \(WorkerLost\) +0\b", out), out
    assert seconds < 40, f"the demo took {seconds:.1f} s"


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
