"""`dockyard container ...`: containers on one agent, as `docker -H` drives one dockerd."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import CliError, Target, call, stream
from dockyard.cli.commands.container_run import AGENT, containers_stub, create, run, write_output
from dockyard.cli.commands.prune import container_prune
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options
from dockyard.cli.render import emit_data, table

if TYPE_CHECKING:
    from dockyard.cli.listing import Listing


@click.group("container")
def container() -> None:
    """Manage containers on one agent (run, ls, logs, exec, ...)."""


container.add_command(container_prune)


container.add_command(run)
container.add_command(create)


def _each(refs: tuple[str, ...], action: Callable[[str], object]) -> None:
    """Act on every reference and print it; failures one line each, exit 1 if any failed."""

    def act(ref: str) -> None:
        action(ref)
        click.echo(ref)

    if each_ref(refs, act)[1]:
        sys.exit(1)


@container.command("start")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_options
def start(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Start created or stopped containers."""
    from dockyard.v1.containers_pb2 import ContainerRef

    target = options.target()
    _each(
        refs,
        lambda ref: call(target, containers_stub, "Start", ContainerRef(container=ref), what=AGENT),
    )


@container.command("stop")
@click.option(
    "-t",
    "--time",
    "seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to wait before killing [10].",
)
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_options
def stop(options: GlobalOptions, seconds: float | None, refs: tuple[str, ...]) -> None:
    """Stop containers: SIGTERM, then SIGKILL after the grace time."""
    from dockyard.v1.containers_pb2 import StopContainerRequest

    target = options.target()
    grace = 10.0 if seconds is None else seconds

    def stop_one(ref: str) -> None:
        request = StopContainerRequest(
            container=ref, timeout_seconds=grace, has_timeout=seconds is not None
        )
        call(target, containers_stub, "Stop", request, what=AGENT, timeout=grace + 30)

    _each(refs, stop_one)


@container.command("kill")
@click.option(
    "-s",
    "--signal",
    "signal_name",
    default="KILL",
    show_default=True,
    help="Signal to send (name or number).",
)
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_options
def kill(options: GlobalOptions, signal_name: str, refs: tuple[str, ...]) -> None:
    """Send a signal to containers."""
    from dockyard.v1.containers_pb2 import KillContainerRequest

    target = options.target()
    _each(
        refs,
        lambda ref: call(
            target,
            containers_stub,
            "Kill",
            KillContainerRequest(container=ref, signal=signal_name),
            what=AGENT,
        ),
    )


@container.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill running containers first.")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_options
def remove(options: GlobalOptions, force: bool, refs: tuple[str, ...]) -> None:
    """Remove containers."""
    from dockyard.v1.containers_pb2 import RemoveContainerRequest

    target = options.target()
    _each(
        refs,
        lambda ref: call(
            target,
            containers_stub,
            "Remove",
            RemoveContainerRequest(container=ref, force=force),
            what=AGENT,
            timeout=60,
        ),
    )


CONTAINER_FILTERS = ("id", "name", "status", "label", "ancestor", "exited")
CONTAINER_STATUSES = ("created", "running", "restarting", "exited", "dead")


@container.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show stopped containers too.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching containers; keys: {', '.join(CONTAINER_FILTERS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print container IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten IDs and commands.")
@format_option
@output_option
@pass_options
def list_containers(
    options: GlobalOptions, show_all: bool, filters: tuple[str, ...], quiet: bool, no_trunc: bool
) -> None:
    """List running containers (all of them with -a)."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import show_listing

    Filters(filters, CONTAINER_FILTERS)  # refuses a bad key before any daemon is asked
    show_listing(
        options, lambda target: container_listing(target, show_all, filters, no_trunc), quiet
    )


def container_listing(
    target: Target, show_all: bool, filters: Sequence[str] = (), no_trunc: bool = False
) -> Listing:
    """`docker ps` of one agent (PORTS only when something is published)."""
    from dockyard.cli.container_table import container_table, newest_first
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing
    from dockyard.v1.containers_pb2 import ListContainersRequest

    wanted = Filters(filters, CONTAINER_FILTERS)
    for value in wanted.get("status"):
        if value not in CONTAINER_STATUSES:
            raise click.BadParameter(
                f"status={value}: use {', '.join(CONTAINER_STATUSES)}", param_hint="--filter"
            )
    # A status or exit-code filter looks at stopped containers too, as docker's does.
    everything = show_all or any(k in wanted for k in ("status", "exited"))
    response = call(
        target, containers_stub, "List", ListContainersRequest(all=everything), what=AGENT
    )
    records = newest_first(r for r in response.containers if _keep(r, wanted))
    return Listing(*container_table(records, no_trunc))


def _keep(record: Any, wanted: Any) -> bool:
    exited = str(record.state.exit_code) if record.state.status == "exited" else None
    return bool(
        wanted.prefix("id", record.id)
        and wanted.substring("name", record.name)
        and wanted.exact("status", record.state.status)
        and wanted.labels(record.config.labels)
        and wanted.glob(
            "ancestor", record.image, record.image.split(":", 1)[0], record.image_digest
        )
        and ("exited" not in wanted or (exited is not None and wanted.exact("exited", exited)))
    )


@container.command("port")
@click.argument("ref", metavar="CONTAINER")
@click.argument("private", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
@pass_options
def port(options: GlobalOptions, ref: str, private: str | None) -> None:
    """List a container's published ports, or where one of its ports is published."""
    from dockyard.v1.containers_pb2 import ContainerRef

    wanted: tuple[int, str] | None = None
    if private is not None:
        number, _, protocol = private.partition("/")
        if not number.isascii() or not number.isdigit() or protocol not in ("", "tcp", "udp"):
            raise click.BadParameter(
                f"{private!r}: use PORT or PORT/tcp|udp", param_hint="PRIVATE_PORT"
            )
        wanted = (int(number), protocol or "tcp")
    record = call(
        options.target(), containers_stub, "Inspect", ContainerRef(container=ref), what=AGENT
    )
    found = False
    for mapping in record.network.ports:
        key = (mapping.container_port, mapping.protocol or "tcp")
        if wanted is not None and key != wanted:
            continue
        found = True
        address = f"{mapping.host_ip or '0.0.0.0'}:{mapping.host_port}"
        click.echo(address if wanted is not None else f"{key[0]}/{key[1]} -> {address}")
    if wanted is not None and not found:
        raise CliError(f"no public port '{wanted[0]}/{wanted[1]}' published for {ref}")


@container.command("inspect")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@output_option
@pass_options
def inspect(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Show whole container records (JSON by default)."""
    from dockyard.cli.listing import show_records
    from dockyard.v1.containers_pb2 import ContainerRef

    show_records(
        options,
        refs,
        lambda target, ref: call(
            target, containers_stub, "Inspect", ContainerRef(container=ref), what=AGENT
        ),
    )


@container.command("wait")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_options
def wait(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Block until containers stop; print each exit code."""
    from dockyard.v1.containers_pb2 import ContainerRef

    target = options.target()
    for ref in refs:
        result = call(
            target, containers_stub, "Wait", ContainerRef(container=ref), what=AGENT, timeout=None
        )
        click.echo(result.exit_code)


def _tail(text: str) -> int | None:
    if text == "all":
        return None
    if not text.lstrip("-").isdigit():
        raise click.BadParameter(f"{text!r} is not a number or 'all'", param_hint="--tail")
    number = int(text)
    return None if number < 0 else number


def format_timestamp(stamp: Any) -> str:
    """RFC 3339 with nanoseconds, as `docker logs -t`."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(stamp.seconds, UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{stamp.nanos:09d}Z"


@container.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option(
    "-n", "--tail", "tail", default="all", show_default=True, help="Lines to show from the end."
)
@click.option(
    "--since",
    default=None,
    metavar="TIME",
    help="Only output since TIME: RFC 3339, or a duration ago such as 10m.",
)
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.argument("ref", metavar="CONTAINER")
@pass_options
def logs(
    options: GlobalOptions, follow: bool, tail: str, since: str | None, timestamps: bool, ref: str
) -> None:
    """Print a container's output, stdout and stderr each to its own stream."""
    from dockyard.cli.humanize import parse_since
    from dockyard.v1.containers_pb2 import LogsRequest

    request = LogsRequest(container=ref, follow=follow, timestamps=timestamps)
    lines = _tail(tail)
    if lines is not None:
        request.tail, request.has_tail = lines, True
    if since is not None:
        try:
            request.since.FromNanoseconds(int(parse_since(since) * 1e9))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    target = options.target()
    try:
        for line in stream(target, containers_stub, "Logs", request, what=AGENT):
            data = line.data
            if timestamps:
                data = format_timestamp(line.timestamp).encode() + b" " + data
            write_output(line.stream, data)
    except KeyboardInterrupt:
        sys.exit(130)


@container.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Set a variable.")
@click.option("-w", "--workdir", default="", metavar="DIR", help="Working directory.")
@click.option("-u", "--user", default="", metavar="USER[:GROUP]", help="User to run as.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (send ours).")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("--detach-keys", default="", metavar="KEYS", help="Keys that detach.")
@click.argument("ref", metavar="CONTAINER")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="CMD...")
@pass_options
def exec_command(
    options: GlobalOptions,
    env: tuple[str, ...],
    workdir: str,
    user: str,
    interactive: bool,
    tty: bool,
    detach_keys: str,
    ref: str,
    command: tuple[str, ...],
) -> None:
    """Run a command in a running container; exit with its exit code."""
    import os

    from dockyard.cli.commands.container_run import parse_env
    from dockyard.v1.containers_pb2 import ExecRequest

    if workdir and not workdir.startswith("/"):
        raise CliError(f"invalid -w {workdir!r}: the working directory must be an absolute path")
    if interactive or tty:
        sys.exit(_exec_interactive(options, ref, command, env, workdir, user, tty, detach_keys))
    request = ExecRequest(
        container=ref,
        command=list(command),
        env=parse_env(env, os.environ),
        workdir=workdir,
        user=user,
    )
    code = 0
    for output in stream(options.target(), containers_stub, "Exec", request, what=AGENT):
        kind = output.WhichOneof("output")
        if kind == "exit_code":
            code = output.exit_code
        elif kind is not None:
            write_output(kind, getattr(output, kind))
    sys.exit(code)


def _exec_interactive(
    options: GlobalOptions,
    ref: str,
    command: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str,
    user: str,
    tty: bool,
    detach_keys: str,
) -> int:
    import os

    from dockyard.cli.commands.container_run import parse_env
    from dockyard.cli.commands.interactive import exec_stream, raw_terminal

    with raw_terminal(tty):
        outcome = exec_stream(
            options.target(),
            ref,
            list(command),
            env=parse_env(env, os.environ),
            workdir=workdir,
            user=user,
            tty_mode=tty,
            detach_keys=detach_keys,
        )
    if outcome.detached:
        click.echo("read escape sequence", err=True)
        return 0
    return outcome.exit_code if outcome.exit_code is not None else 0


@container.command("attach")
@click.option("--no-stdin", is_flag=True, help="Do not attach stdin.")
@click.option("--detach-keys", default="", metavar="KEYS", help="Keys that detach.")
@click.argument("ref", metavar="CONTAINER")
@pass_options
def attach_command(options: GlobalOptions, no_stdin: bool, detach_keys: str, ref: str) -> None:
    """Attach to a running container's stdio (ctrl-p ctrl-q detaches)."""
    from dockyard.cli.commands.interactive import attach_stream, raw_terminal
    from dockyard.v1.containers_pb2 import ContainerRef

    target = options.target()
    record = call(target, containers_stub, "Inspect", ContainerRef(container=ref), what=AGENT)
    if record.state.status != "running":
        raise CliError("You cannot attach to a stopped container, start it first")
    stdin = record.config.open_stdin and not no_stdin
    tty = record.config.tty
    with raw_terminal(tty and stdin):
        outcome = attach_stream(
            target, record.id, stdin=stdin, tty_mode=tty, detach_keys=detach_keys
        )
    if outcome.detached:
        click.echo("read escape sequence", err=True)
        sys.exit(0)
    sys.exit(outcome.exit_code if outcome.exit_code is not None else 0)


STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"]


def stats_row(record: Any, stats: Any, previous: Any = None) -> list[str]:
    """One `docker stats` row; CPU % from the last two samples when there are two."""
    from dockyard.cli.humanize import bytes_size, short_id

    cpu = stats.cpu_percent
    if previous is not None:
        elapsed = stats.read_at.ToNanoseconds() - previous.read_at.ToNanoseconds()
        if elapsed > 0:
            cpu = 100.0 * (stats.cpu_usage_ns - previous.cpu_usage_ns) / elapsed
    limit = stats.memory_limit
    mem_pct = 100.0 * stats.memory_usage / limit if limit > 0 else 0.0
    return [
        short_id(record.id),
        record.name,
        f"{cpu:.2f}%",
        f"{bytes_size(stats.memory_usage)} / {bytes_size(limit) if limit > 0 else '--'}",
        f"{mem_pct:.2f}%",
        str(stats.pids),
    ]


@container.command("stats")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@output_option
@pass_options
def stats(options: GlobalOptions, no_stream: bool, refs: tuple[str, ...]) -> None:
    """Live CPU, memory and process counts; Ctrl-C ends it."""
    from dockyard.v1.containers_pb2 import ContainerRef

    target = options.target()
    records = [
        call(target, containers_stub, "Inspect", ContainerRef(container=ref), what=AGENT)
        for ref in refs
    ]
    previous: dict[str, Any] = {}
    interactive = sys.stdout.isatty()
    try:
        while True:
            samples = [(r, _sample(target, r.id)) for r in records]
            if options.output != "table":
                emit_data(
                    [{"id": r.id, "name": r.name, **_data(s)} for r, s in samples], options.output
                )
            else:
                text = table(
                    STATS_HEADERS, [stats_row(r, s, previous.get(r.id)) for r, s in samples]
                )
                click.echo(("\x1b[2J\x1b[H" if interactive else "") + text)
            if no_stream:
                return
            previous = {r.id: s for r, s in samples}
            time.sleep(1)
    except KeyboardInterrupt:
        return


def _sample(target: Target, container_id: str) -> Any:
    from dockyard.v1.containers_pb2 import ContainerRef

    return call(target, containers_stub, "Stats", ContainerRef(container=container_id), what=AGENT)


def _data(message: Any) -> dict[str, Any]:
    from dockyard.cli.render import to_data

    data: dict[str, Any] = to_data(message)
    return data
