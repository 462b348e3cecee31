"""``python -m bench [NAME...]``: run the named workloads (default: all).

Each workload prints one JSON object per line on stdout; see bench/README.md.
"""

from __future__ import annotations

import argparse
import sys

from . import files, jobs, local, membership, raft, remote
from ._common import emit

WORKLOADS = {
    **local.WORKLOADS,
    **remote.WORKLOADS,
    **files.WORKLOADS,
    **jobs.WORKLOADS,
    **membership.WORKLOADS,
    **raft.WORKLOADS,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="trioactors benchmarks, each against a raw Trio baseline; "
        "one JSON object per line on stdout.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"workloads to run (default: all): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="interleaved rounds per workload; the best time of each side is kept (default 7)",
    )
    parser.add_argument("--list", action="store_true", help="print the workload names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(WORKLOADS))
        return 0
    unknown = [name for name in args.names if name not in WORKLOADS]
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for name in args.names or list(WORKLOADS):
        for result in WORKLOADS[name](args.rounds):
            emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
