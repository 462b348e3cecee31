"""The ``trioactors`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import trio

from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trioactors", description="Fault-tolerant actors for Trio."
    )
    parser.add_argument("--version", action="version", version=f"trioactors {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="a supervision tree that crashes, restarts and escalates; then a cluster of "
        "node processes that loses one to SIGKILL and carries on",
    )
    from ._nodecmd import add_arguments, run_node

    add_arguments(commands.add_parser("node", help="run a node with the example actors"))
    args = parser.parse_args(argv)
    if args.command == "node":
        trio.run(run_node, args)
        return 0
    if args.command == "demo":
        from ._demo import run_cluster_demo, run_demo

        trio.run(run_demo)
        trio.run(run_cluster_demo)
        return 0
    parser.print_help(sys.stderr)
    return 2
