"""The ``trioactors`` command line.

``trioactors node`` runs a node; ``demo`` runs the demo; the other commands
connect to a running node (``--to``) and show or change the cluster:
``status``, ``ping``, ``actors``, ``send``, ``ask``, ``submit``, ``drain``,
``shutdown``.
Every command has ``--help``.

Exit statuses: 0 ok; 1 the operation failed; 2 bad usage or input; 3 a node
cannot be reached or did not answer in time; 4 refused (authentication
failed, or a read-only client asked for more than a query).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar, cast

import click
import trio

from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from rich.table import Table

    from ._client import Client, ClientSettings
    from ._core._jobs import JobResult
    from ._wire._codec import Format

P = ParamSpec("P")
R = TypeVar("R")

_CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_EXPLICIT: Final = (
    click.core.ParameterSource.COMMANDLINE,
    click.core.ParameterSource.ENVIRONMENT,
    click.core.ParameterSource.PROMPT,
)


class _Commands(click.Group):
    """Commands in the order they are defined; an unknown one is named with the choices."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            choices = ", ".join(self.list_commands(ctx))
            ctx.fail(f"invalid choice: {name!r} (choose from {choices})")
        return super().resolve_command(ctx, args)


@click.group(cls=_Commands, context_settings=_CONTEXT)
@click.version_option(
    __version__, "--version", prog_name="trioactors", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Fault-tolerant actors for Trio: run a node, look at a cluster, talk to its actors.

    Exit status: 0 ok, 1 the operation failed, 2 bad usage or input, 3 a node
    cannot be reached or did not answer in time, 4 refused (wrong secret, or a
    read-only client asking for more than a query).
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status."""
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="trioactors",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C
        click.echo("trioactors: interrupted", err=True)
        return 130
    return status if isinstance(status, int) else 0


# -- node ---------------------------------------------------------------------------


def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in values:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise click.BadParameter(f"expected NAME=ADDRESS, not {item!r}", ctx, param)
        pairs[name] = address
    return pairs


@cli.command("node", context_settings=_CONTEXT, short_help="Run a node with the example actors.")
@click.argument("name", required=False)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on and advertise."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port to listen on.  [default: any free port]",
)
@click.option(
    "--join",
    multiple=True,
    metavar="NAME=ADDRESS",
    callback=_pairs,
    help="A member to join the cluster through (repeatable); membership always runs.",
)
@click.option(
    "--peer",
    multiple=True,
    metavar="NAME=ADDRESS",
    callback=_pairs,
    help="A node to know the address of, without joining through it (repeatable).",
)
@click.option("--transport", type=click.Choice(["ws", "tcp"]), default="ws", show_default=True)
@click.option(
    "--wire-format", type=click.Choice(["json", "msgpack"]), default="json", show_default=True
)
@click.option(
    "--secret-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the cluster secret (else $TRIOACTORS_SECRET).",
)
@click.option(
    "--read-only-secret-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the read-only secret for observers such as `status --read-only` "
    "(else $TRIOACTORS_READ_ONLY_SECRET; neither: no observers).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="Settings file (TOML; keys as these options: name, port, join = {...}, ...). "
    "Options given here override it.",
)
@click.option("--events", is_flag=True, help="Print membership changes as JSON lines.")
@click.option(
    "--workers",
    type=click.IntRange(0, 1024),
    default=2,
    show_default=True,
    help="Jobs the node's worker pool runs at once (the example jobs); 0: no pool.",
)
@click.option(
    "--files-dir",
    type=click.Path(file_okay=False),
    help="Receive files pushed to the node into this directory (made if missing).",
)
@click.option(
    "--raft",
    metavar="VOTERS",
    default="",
    help="Run a server of the replicated key-value store (Raft) whose voters are these "
    "comma-separated node names (this node among them; without it, it waits to be added).",
)
@click.option(
    "--raft-dir",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Keep the Raft server's term, vote, log and snapshots in DIR/NAME.raft.db (SQLite).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="A capability the worker pool offers to jobs that require it, e.g. gpu (repeatable).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics (/metrics) and health (/healthz) over HTTP on --host "
    "at PORT.  [default: off]",
)
@click.option(
    "--ignore-stdin",
    is_flag=True,
    help="Keep running when standard input closes (under a service manager); "
    "stop with SIGTERM or `trioactors shutdown`.",
)
@click.pass_context
def node_command(
    ctx: click.Context, /, name: str | None, config_file: str | None, **_: object
) -> int:
    """Run a node named NAME with the example actors (echo, account, relay, slow).

    It prints {"name": ..., "address": ...} as one JSON line once serving, and
    runs until its standard input closes, SIGTERM or SIGINT, or `trioactors
    shutdown`; the last three leave the cluster gracefully first.
    """
    from ._nodecmd import SettingsError, load_settings, merge_settings, read_secrets, run_node

    try:
        file = load_settings(config_file) if config_file is not None else {}
    except SettingsError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="'--config'") from None

    given = {key for key in ctx.params if ctx.get_parameter_source(key) in _EXPLICIT}
    try:
        settings = merge_settings(name, ctx.params, given, file)
        secret, read_only_secret = read_secrets(settings)
    except SettingsError as exc:
        raise click.UsageError(str(exc), ctx) from None
    try:
        trio.run(run_node, settings, secret, read_only_secret)
    except (OSError, ExceptionGroup) as exc:  # e.g. the port is taken
        error = _os_error(exc)
        if error is None:
            raise
        where = f"{settings.host}:{settings.port}"
        click.echo(f"trioactors: node {settings.name} cannot serve at {where}: {error}", err=True)
        return 1
    return 0


def _os_error(exc: BaseException) -> str | None:
    """The reason, if ``exc`` is an OSError (alone, or alone in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return None


# -- demo ---------------------------------------------------------------------------


@cli.command(
    context_settings=_CONTEXT, short_help="Crash, restart, escalate; then a cluster loses a node."
)
def demo() -> int:
    """A supervision tree that crashes, restarts and escalates; then a cluster of node
    processes that loses one to SIGKILL and carries on."""
    from ._demo import run_cluster_demo, run_demo

    trio.run(run_demo)
    trio.run(run_cluster_demo)
    return 0


# -- client commands ----------------------------------------------------------------


def _client_options(command: Callable[P, R]) -> Callable[P, R]:
    options = [
        click.option(
            "--to",
            metavar="ADDRESS",
            envvar="TRIOACTORS_NODE",
            show_envvar=True,
            required=True,
            help="The node to connect to, e.g. ws://10.0.0.1:7000.",
        ),
        click.option(
            "--secret-file",
            type=click.Path(exists=True, dir_okay=False),
            help="File holding the cluster secret (else $TRIOACTORS_SECRET).",
        ),
        click.option(
            "--read-only",
            is_flag=True,
            help="Connect as an observer with the read-only secret: queries only.",
        ),
        click.option(
            "--read-only-secret-file",
            type=click.Path(exists=True, dir_okay=False),
            help="File holding the read-only secret (else $TRIOACTORS_READ_ONLY_SECRET).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=5.0,
            show_default=True,
            metavar="SECONDS",
            help="How long to wait to connect, and for each answer.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout."),
        click.option(
            "--wire-format",
            type=click.Choice(["json", "msgpack"]),
            default="json",
            show_default=True,
            help="The cluster's wire format.",
        ),
        click.option(
            "--listen",
            metavar="HOST",
            help="Interface to receive replies on.  [default: the one that routes to --to]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _client_settings(options: dict[str, object]) -> tuple[ClientSettings, bool]:
    from ._client import ClientSettings
    from ._nodecmd import SettingsError, read_secret

    try:
        secret = read_secret(cast("str | None", options["secret_file"]), "TRIOACTORS_SECRET")
        read_only_secret = read_secret(
            cast("str | None", options["read_only_secret_file"]), "TRIOACTORS_READ_ONLY_SECRET"
        )
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    settings = ClientSettings(
        to=cast("str", options["to"]),
        secret=secret or b"",
        read_only=cast("bool", options["read_only"]),
        read_only_secret=read_only_secret,
        timeout=cast("float", options["timeout"]),
        wire_format=cast("Format", options["wire_format"]),
        listen=cast("str | None", options["listen"]),
    )
    return settings, cast("bool", options["as_json"])


def _run(options: dict[str, object], command: Callable[[Client, bool], Awaitable[int]]) -> int:
    """Connect as ``options`` say, run ``command(client, as_json)``; return the exit status."""
    from ._client import CommandError, open_client

    settings, as_json = _client_settings(options)
    # the client's own connection troubles end up in the command's one error line
    logging.getLogger("trioactors").addHandler(logging.NullHandler())

    async def session() -> int:
        async with open_client(settings) as client:
            return await command(client, as_json)

    try:
        return trio.run(session)
    except CommandError as exc:
        click.echo(f"trioactors: {exc}", err=True)
        return exc.code


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ._wire._address import Address

    try:
        Address.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def _json_value(ctx: click.Context, param: click.Parameter, value: str) -> object:
    try:
        data: object = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc} in {value!r:.60}", ctx, param) from None
    return data


def _print_json(value: object) -> None:
    from ._client import jsonable

    click.echo(json.dumps(jsonable(value)))


def _print_table(table: Table) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # (rich assumes 80 columns: not for a table in a file)
        console = Console(width=200)
    console.print(table)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@cli.command(context_settings=_CONTEXT, short_help="The members, and how each one answers.")
@_client_options
def status(**options: object) -> int:
    """The cluster's members, as the node --to names sees them, and how each one answers.

    Each member the cluster counts as alive is reached directly for its round
    trip time, load, actor count and whether it is draining. Exits 1 when one
    of them does not answer.
    """
    return _run(options, _status)


async def _status(client: Client, as_json: bool) -> int:
    rows = await client.status()
    failed = any(row["reachable"] is False for row in rows)

    if as_json:
        _print_json({"node": client.target, "address": client.settings.to, "members": rows})
        return 1 if failed else 0
    from rich.table import Table

    click.echo(f"cluster of {client.target} ({client.settings.to})")
    table = Table()
    for column in ("node", "address", "state", "inc", "rtt", "load", "actors", "draining"):
        table.add_column(column, justify="right" if column in ("inc", "rtt", "actors") else "left")
    for row in rows:
        if row["reachable"] is False:
            shown = "unreachable"
        elif row["rtt_ms"] is None:
            shown = "-"
        else:
            shown = f"{row['rtt_ms']:.2f} ms"
        table.add_row(
            *(
                str(row[key]) if row[key] is not None else "-"
                for key in ("node", "address", "state", "incarnation")
            ),
            shown,
            *(
                str(row[key]) if row[key] is not None else "-"
                for key in ("load", "actors", "draining")
            ),
        )
    _print_table(table)
    for row in rows:
        if row["error"] is not None:
            click.echo(f"{row['node']}: {row['error']}")
    return 1 if failed else 0


@cli.command(context_settings=_CONTEXT, short_help="Round trips to a node's admin service.")
@click.argument("node", required=False)
@click.option(
    "-c", "--count", type=click.IntRange(min=1), default=1, show_default=True, help="Round trips."
)
@_client_options
def ping(node: str | None, count: int, **options: object) -> int:
    """Round trips to NODE's admin service (default: the node --to names), in ms."""

    async def command(client: Client, as_json: bool) -> int:
        from ._client import ADMIN
        from ._services._admin import AdminPing

        name = await client.locate(node)
        times = []
        for _ in range(count):
            start = trio.current_time()
            await client.ask(f"{ADMIN}@{name}", AdminPing(time.time()))
            times.append(trio.current_time() - start)
            if not as_json:
                click.echo(f"pong from {name}: {_ms(times[-1]):.3f} ms")
        if as_json:
            _print_json({"node": name, "rtt_ms": [_ms(t) for t in times]})
        elif count > 1:
            low, mean, high = min(times), sum(times) / len(times), max(times)
            click.echo(
                f"{count} round trips: min {_ms(low):.3f} / avg {_ms(mean):.3f} / "
                f"max {_ms(high):.3f} ms"
            )
        return 0

    return _run(options, command)


@cli.command(context_settings=_CONTEXT, short_help="A node's actors: mailboxes, restarts.")
@click.argument("node", required=False)
@_client_options
def actors(node: str | None, **options: object) -> int:
    """The actors on NODE (default: the node --to names): mailbox use and restarts."""

    async def command(client: Client, as_json: bool) -> int:
        from ._client import ADMIN, CommandError, jsonable
        from ._services._admin import GetInfo, NodeInfo

        name = await client.locate(node)
        info = await client.ask(f"{ADMIN}@{name}", GetInfo())
        if not isinstance(info, NodeInfo):
            raise CommandError(f"{name} answered GetInfo with {jsonable(info)!r:.80}")
        if as_json:
            _print_json({"node": info.node, "actors": info.actors})
            return 0
        from rich.table import Table

        click.echo(f"actors on {info.node}")
        table = Table()
        for column in ("name", "path", "mailbox", "restarts"):
            table.add_column(column, justify="right" if column == "restarts" else "left")
        for actor in info.actors:
            mailbox = f"{actor.mailbox}/{actor.capacity}"
            table.add_row(actor.name, actor.path, mailbox, str(actor.restarts))
        _print_table(table)
        return 0

    return _run(options, command)


_MESSAGE_HELP: Final = """
ADDRESS is an actor's address, NAME@NODE (account@node-1). TYPE is the tag
the message class is registered under on the nodes (the class name unless
registered with another tag, e.g. Add); '' sends JSON as a plain value. JSON
is the message's fields as a JSON object, e.g. '{"amount": 5}'.
"""

_SEND_HELP: Final = (
    """Send a message to the actor at ADDRESS (tell: no reply).

Returns once the actor's node has read the message; exits 1 if the node
refused it (an unknown type, fields that do not fit, no such actor).
"""
    + _MESSAGE_HELP
)

_ASK_HELP: Final = (
    """Ask the actor at ADDRESS; print its reply as JSON.

A reply of a registered type prints as {"type": TAG, "data": {...}}. Exits 1
if the actor answers with an error, 3 if it does not answer within --timeout.
"""
    + _MESSAGE_HELP
)


@cli.command(context_settings=_CONTEXT, help=_SEND_HELP)
@click.argument("address", callback=_address)
@click.argument("type_", metavar="TYPE")
@click.argument("data", metavar="JSON", callback=_json_value)
@_client_options
def send(address: str, type_: str, data: object, **options: object) -> int:
    async def command(client: Client, as_json: bool) -> int:
        from ._wire._codec import RawMessage

        await client.locate(address.rpartition("@")[2])
        await client.tell(address, RawMessage(type_, data))
        if as_json:
            _print_json({"to": address, "type": type_, "delivered": True})
        else:
            click.echo(f"sent {type_ or 'a plain value'} to {address}")
        return 0

    return _run(options, command)


@cli.command(context_settings=_CONTEXT, help=_ASK_HELP)
@click.argument("address", callback=_address)
@click.argument("type_", metavar="TYPE")
@click.argument("data", metavar="JSON", callback=_json_value)
@_client_options
def ask(address: str, type_: str, data: object, **options: object) -> int:
    async def command(client: Client, as_json: bool) -> int:
        from ._client import jsonable
        from ._wire._codec import RawMessage

        await client.locate(address.rpartition("@")[2])
        reply = await client.ask(address, RawMessage(type_, data))
        indent = None if as_json else 2
        click.echo(json.dumps(jsonable(reply), indent=indent))
        return 0

    return _run(options, command)


@cli.command(context_settings=_CONTEXT, short_help="Run jobs on the cluster's worker pools.")
@click.argument("kind")
@click.argument("data", metavar="[JSON]", default="null", callback=_json_value)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Submit this many jobs, each with the same payload.",
)
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A tag the job requires.")
@click.option("--key", help="The jobs' affinity key (for --strategy consistent-hash).")
@click.option(
    "--strategy",
    type=click.Choice(
        ["random", "round-robin", "least-loaded", "lowest-latency", "consistent-hash"]
    ),
    default="least-loaded",
    show_default=True,
    help="How to choose a worker pool for each job.",
)
@click.option(
    "--job-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long each job may take, from submission to result.",
)
@_client_options
def submit(
    kind: str,
    data: object,
    count: int,
    tags: tuple[str, ...],
    key: str | None,
    strategy: str,
    job_timeout: float,
    **options: object,
) -> int:
    """Run COUNT jobs of KIND with the payload JSON on the cluster's worker pools.

    The jobs go to the pools of every reachable member (nodes started with
    `trioactors node --workers N`), chosen by --strategy. With one job, prints
    its result as JSON; with more, a summary: jobs per worker, failures by
    error, and the rate. With --json, one JSON line per job. Exits 1 if any
    job failed.

    Example: trioactors submit digest '{"text": "hello", "rounds": 1000}' --count 100
    """

    async def command(client: Client, as_json: bool) -> int:
        from ._core._jobs import Job

        queue = await client.job_queue(strategy=strategy, timeout=job_timeout)
        jobs: list[Job[object]] = [Job(kind, data, tags=tags, key=key) for _ in range(count)]
        start = time.monotonic()
        results = []
        async with queue.submit_many(jobs) as stream:
            async for result in stream:
                results.append(result)
                if as_json:
                    _print_json(
                        {
                            "id": result.job.id,
                            "worker": result.worker,
                            "elapsed": round(result.elapsed, 6),
                            "value": result.value,
                            "error": None if result.ok else type(result.error).__name__,
                            "message": None if result.ok else str(result.error),
                        }
                    )
        failed = [r for r in results if not r.ok]
        if as_json:
            pass  # (one line per job, above)
        elif count == 1:
            if failed:
                click.echo(
                    f"trioactors: {type(failed[0].error).__name__}: {failed[0].error}", err=True
                )
            else:
                click.echo(json.dumps(jsonable(results[0].value), indent=2))
        else:
            _print_job_summary(results, time.monotonic() - start)
        return 1 if failed else 0

    from ._client import jsonable

    return _run(options, command)


def _print_job_summary(results: list[JobResult[object]], seconds: float) -> None:
    from rich.table import Table

    done = collections.Counter(r.worker or "(none)" for r in results if r.ok)
    errors = collections.Counter(type(r.error).__name__ for r in results if not r.ok)
    rate = len(results) / max(seconds, 1e-9)
    click.echo(f"{len(results)} jobs in {seconds:.2f} s: {rate:.0f} jobs/s")
    table = Table()
    table.add_column("worker / error")
    table.add_column("jobs", justify="right")
    for worker, n in sorted(done.items()):
        table.add_row(worker, str(n))
    for error, n in sorted(errors.items()):
        table.add_row(f"[red]{error}[/red]", str(n))
    _print_table(table)
    for result in [r for r in results if not r.ok][:3]:
        click.echo(f"{type(result.error).__name__}: {result.error}", err=True)


_DRAIN_TIMEOUT: Final = click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the node may take to finish the work in its mailboxes.",
)


@cli.command(context_settings=_CONTEXT, short_help="Stop a node taking work; let it finish.")
@click.argument("node")
@_DRAIN_TIMEOUT
@_client_options
def drain(node: str, drain_timeout: float, **options: object) -> int:
    """Stop NODE taking new work and wait until its mailboxes are empty.

    Exits 1 if work is still pending after --drain-timeout.
    """

    async def command(client: Client, as_json: bool) -> int:
        from ._client import ADMIN, CommandError, jsonable
        from ._services._admin import Drain, DrainReport

        name = await client.locate(node)
        report = await client.ask(
            f"{ADMIN}@{name}",
            Drain(timeout=drain_timeout),
            timeout=drain_timeout + client.settings.timeout,
        )
        if not isinstance(report, DrainReport):
            raise CommandError(f"{name} answered Drain with {jsonable(report)!r:.80}")
        if as_json:
            _print_json(report)
        elif report.drained:
            click.echo(f"{report.node} drained")
        else:
            click.echo(f"{report.node} not drained: pending {json.dumps(jsonable(report.pending))}")
        return 0 if report.drained else 1

    return _run(options, command)


@cli.command(context_settings=_CONTEXT, short_help="Drain a node, make it leave, stop it.")
@click.argument("node")
@click.option(
    "--drain/--no-drain",
    default=True,
    show_default=True,
    help="Drain the node before it stops (see `trioactors drain`).",
)
@_DRAIN_TIMEOUT
@_client_options
def shutdown(node: str, drain: bool, drain_timeout: float, **options: object) -> int:
    """Stop NODE: it drains (unless --no-drain), leaves the cluster and exits."""

    async def command(client: Client, as_json: bool) -> int:
        from ._client import ADMIN
        from ._services._admin import Shutdown

        name = await client.locate(node)
        wait = (drain_timeout if drain else 0.0) + client.settings.timeout
        accepted = await client.ask(
            f"{ADMIN}@{name}", Shutdown(drain=drain, timeout=drain_timeout), timeout=wait
        )
        ok = accepted is True
        if as_json:
            _print_json({"node": name, "shutting_down": ok})
        else:
            click.echo(f"{name} is shutting down" if ok else f"{name} refused to shut down")
        return 0 if ok else 1

    return _run(options, command)
