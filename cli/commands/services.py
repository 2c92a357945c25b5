"""`dockyard service create|ls|ps|inspect|scale|update|rollback|rm|logs` and `dockyard ps`.

Flags are checked and the whole spec built before any request (service_spec.py);
changes are read-modify-write with the read version, retried when someone else
wrote in between. Without -d, create/update/scale/rollback wait for convergence.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import (
    CliError,
    Target,
    call,
    rpc_code,
)
from dockyard.cli.commands.service_flags import (
    apply_edits,
    list_edits,
    resolve_mode,
    resolve_option,
    setting_options,
    setting_values,
)
from dockyard.cli.commands.service_parse import SpecError, parse_count, parse_seconds
from dockyard.cli.commands.service_spec import apply_settings, finish_spec, new_spec
from dockyard.cli.commands.service_wait import control_stub, wait_for_service

# The task lists live in tasks.py (`dockyard ps` loads no service flags); these names
# stay importable from here for the commands that used them (stack ps).
from dockyard.cli.commands.tasks import list_tasks as list_tasks  # noqa: PLC0414
from dockyard.cli.commands.tasks import task_list_options as task_list_options  # noqa: PLC0414
from dockyard.cli.commands.tasks import task_listing as task_listing  # noqa: PLC0414
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options

if TYPE_CHECKING:
    from dockyard.cli.listing import Listing
    from dockyard.v1.control_pb2 import ResolveImage
    from dockyard.v1.workloads_pb2 import RegistryAuth

UPDATE_RETRIES = 5
DEFAULT_TIMEOUT = "10m"


def detach_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        show_default=True,
        metavar="DURATION",
        help="Stop waiting after this long (0: no limit).",
    )(command)
    return click.option(
        "-d", "--detach", is_flag=True, help="Return at once instead of waiting to converge."
    )(command)


@click.group("service")
def service() -> None:
    """Manage services: replicated or global sets of tasks across the cluster."""


def _timeout(text: str) -> float | None:
    seconds = parse_seconds("--timeout", text)
    return seconds or None


def finish(target: Target, record: Any, detach: bool, timeout: float | None) -> None:
    """Wait for convergence unless detached; print the service ID last."""
    if not detach:
        wait_for_service(target, record.id, sys.stderr, timeout)
    click.echo(record.id)


def registry_auth_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--with-registry-auth",
        is_flag=True,
        help="Send your credentials for the image's registry (dockyard/docker login) with "
        "the service: the nodes pull with them.",
    )(command)


def registry_auth_for(image: str) -> RegistryAuth:
    """The caller's login for the registry of `image`, as a RegistryAuth."""
    from dockyard.cli.docker_config import CredentialsError, get_login
    from dockyard.common.reference import InvalidReference, parse_reference
    from dockyard.v1.workloads_pb2 import RegistryAuth

    try:
        registry = parse_reference(image).registry
    except InvalidReference as exc:
        raise SpecError(f"--with-registry-auth: {exc}") from exc
    try:
        login = get_login(registry)
    except CredentialsError as exc:
        raise CliError(f"--with-registry-auth: {exc}") from exc
    if login is None:
        raise CliError(
            f"--with-registry-auth: no credentials for {registry} "
            f"(run `dockyard login {registry}` first)"
        )
    return RegistryAuth(registry=registry, username=login.username, password=login.secret)


@service.command("create", context_settings={"allow_interspersed_args": False})
@click.option(
    "-f",
    "--file",
    "spec_file",
    default=None,
    metavar="FILE",
    help="Read the spec from a YAML file (flags given too override it).",
)
@registry_auth_option
@detach_options
@resolve_option
@setting_options("create")
@click.argument("image", required=False, metavar="IMAGE")
@click.argument("command_args", nargs=-1, type=click.UNPROCESSED, metavar="[CMD]...")
@pass_options
def create(
    options: GlobalOptions,
    /,
    spec_file: str | None,
    with_registry_auth: bool,
    detach: bool,
    timeout: str,
    resolve_image: str | None,
    image: str | None,
    command_args: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Create a service and wait until its tasks run."""
    values = setting_values(kwargs)
    wait = _timeout(timeout)
    if spec_file is not None:
        from dockyard.cli.commands.service_yaml import load_spec_file

        spec, _ = load_spec_file(spec_file)
        if image:
            spec.task.container.image = image
        if command_args:
            spec.task.container.command[:] = list(command_args)
    else:
        spec = new_spec(image or "", command_args)
    apply_settings(spec, values)
    if not spec.name:
        raise SpecError("a service needs a name: give --name (or name: in the spec file)")
    finish_spec(spec)
    from dockyard.v1.control_pb2 import CreateServiceRequest

    target = options.target()
    request = CreateServiceRequest(spec=spec, resolve_image=resolve_mode(resolve_image))
    if with_registry_auth:
        request.registry_auth.CopyFrom(registry_auth_for(spec.task.container.image))
    record = call(target, control_stub, "CreateService", request)
    finish(target, record, detach, wait)


def get_service(target: Target, ref: str) -> Any:
    from dockyard.v1.control_pb2 import GetServiceRequest

    return call(target, control_stub, "GetService", GetServiceRequest(service=ref))


def update_with_retry(
    target: Target,
    ref: str,
    change: Callable[[Any], None],
    *,
    force: bool = False,
    rollback: bool = False,
    resolve_image: ResolveImage.ValueType | None = None,
    with_registry_auth: bool = False,
) -> Any:
    """Read, change a copy of the spec, write with the read version; on ABORTED (someone
    wrote in between) read again and apply the change again."""
    import grpc

    from dockyard.v1.control_pb2 import UpdateServiceRequest
    from dockyard.v1.workloads_pb2 import ServiceSpec

    for _ in range(UPDATE_RETRIES):
        current = get_service(target, ref)
        spec = ServiceSpec()
        spec.CopyFrom(current.spec)
        change(spec)
        request = UpdateServiceRequest(
            service=current.id,
            version=current.meta.version,
            spec=spec,
            force=force,
            rollback=rollback,
        )
        if resolve_image is not None:
            request.resolve_image = resolve_image
        if with_registry_auth:
            request.registry_auth.CopyFrom(registry_auth_for(spec.task.container.image))
        try:
            return call(target, control_stub, "UpdateService", request)
        except CliError as exc:
            if rpc_code(exc) != grpc.StatusCode.ABORTED:
                raise
    raise CliError(f"service {ref} kept changing while it was being updated; try again")


@service.command("update")
@click.option("--force", is_flag=True, help="Replace every task even if nothing changed.")
@registry_auth_option
@detach_options
@resolve_option
@setting_options("update")
@click.argument("ref", metavar="SERVICE")
@pass_options
def update(
    options: GlobalOptions,
    /,
    force: bool,
    with_registry_auth: bool,
    detach: bool,
    timeout: str,
    resolve_image: str | None,
    ref: str,
    **kwargs: Any,
) -> None:
    """Change a service's spec; its tasks are replaced in a rolling update."""
    from dockyard.v1.workloads_pb2 import ServiceSpec

    values = setting_values(kwargs, update=True)
    edits = list_edits(kwargs)
    wait = _timeout(timeout)
    # Every flag is checked once, on an empty spec, before any request.
    probe = ServiceSpec()
    probe.replicated.SetInParent()
    apply_settings(probe, values)
    apply_edits(probe, edits)

    def change(spec: Any) -> None:
        apply_settings(spec, values)
        apply_edits(spec, edits)
        finish_spec(spec, job=spec.WhichOneof("mode") == "job")

    target = options.target()
    record = update_with_retry(
        target,
        ref,
        change,
        force=force,
        resolve_image=resolve_mode(resolve_image),
        with_registry_auth=with_registry_auth,
    )
    finish(target, record, detach, wait)


@service.command("rollback")
@detach_options
@click.argument("ref", metavar="SERVICE")
@pass_options
def rollback(options: GlobalOptions, detach: bool, timeout: str, ref: str) -> None:
    """Go back to the service's previous spec."""
    wait = _timeout(timeout)
    target = options.target()
    record = update_with_retry(target, ref, lambda spec: None, rollback=True)
    finish(target, record, detach, wait)


def parse_scale(text: str) -> tuple[str, int]:
    name, eq, count = text.partition("=")
    if not name or not eq:
        raise SpecError(f"invalid scale {text!r}: use SERVICE=REPLICAS, e.g. web=5")
    return name, parse_count(f"replicas of {name}", count)


@service.command("scale")
@detach_options
@click.argument("pairs", nargs=-1, required=True, metavar="SERVICE=REPLICAS...")
@pass_options
def scale(options: GlobalOptions, detach: bool, timeout: str, pairs: tuple[str, ...]) -> None:
    """Set the number of tasks of replicated services."""
    wanted = [parse_scale(p) for p in pairs]
    wait = _timeout(timeout)
    target = options.target()
    failed = False
    for name, replicas in wanted:

        def change(spec: Any, name: str = name, replicas: int = replicas) -> None:
            if spec.WhichOneof("mode") != "replicated":
                raise CliError(
                    f"{name}: only replicated services can be scaled "
                    f"(this one is {spec.WhichOneof('mode')})"
                )
            spec.replicated.replicas = replicas

        try:
            record = update_with_retry(target, name, change)
            click.echo(f"{name} scaled to {replicas}", err=True)
            finish(target, record, detach, wait)
        except CliError as exc:
            failed = True
            click.echo(f"dockyard: {exc.message}", err=True)
    if failed:
        sys.exit(1)


@service.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@pass_options
def remove(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Remove services; their tasks shut down."""
    remove_services(options.target(), refs)


def remove_services(target: Target, refs: tuple[str, ...]) -> None:
    from dockyard.v1.control_pb2 import RemoveServiceRequest

    def remove(ref: str) -> None:
        call(target, control_stub, "RemoveService", RemoveServiceRequest(service=ref))
        click.echo(ref)

    if each_ref(refs, remove)[1]:
        sys.exit(1)


@service.command("inspect")
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@output_option
@pass_options
def inspect(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Show whole service records (JSON by default)."""
    from dockyard.cli.listing import show_records

    show_records(options, refs, get_service)


SERVICE_FILTERS = ("id", "name", "label", "mode")


def list_summaries(
    options: GlobalOptions,
    mode: str,
    quiet: bool,
    keep: Callable[[Any], bool] = lambda _: True,
    filters: Sequence[str] = (),
    no_trunc: bool = False,
) -> None:
    """`service ls`: the services `keep` and `filters` accept (all by default)."""
    from dockyard.cli.commands.service_view import SERVICE_HEADERS, mode_name, service_row
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing, show_listing
    from dockyard.v1.control_pb2 import ListServicesRequest

    wanted = Filters(filters, SERVICE_FILTERS)

    def accept(service: Any) -> bool:
        return (
            keep(service)
            and wanted.prefix("id", service.id)
            and wanted.substring("name", service.spec.name)
            and wanted.labels(service.spec.labels)
            and wanted.exact("mode", mode_name(service.spec))
        )

    def fetch(target: Target) -> Listing:
        summaries = call(
            target, control_stub, "ListServices", ListServicesRequest(mode=mode)
        ).services
        kept = sorted(
            (s for s in summaries if accept(s.service)), key=lambda s: s.service.spec.name
        )
        return Listing(
            SERVICE_HEADERS,
            [service_row(s, no_trunc) for s in kept],
            kept,
            [s.service.id for s in kept],
        )

    show_listing(options, fetch, quiet)


@service.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching services; keys: {', '.join(SERVICE_FILTERS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print service IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten IDs and image digests.")
@format_option
@output_option
@pass_options
def list_services(
    options: GlobalOptions, filters: tuple[str, ...], quiet: bool, no_trunc: bool
) -> None:
    """List services with their replica counts and update state."""
    list_summaries(options, "", quiet, filters=filters, no_trunc=no_trunc)


@service.command("ps")
@task_list_options
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@pass_options
def service_ps(
    options: GlobalOptions,
    show_all: bool,
    filters: tuple[str, ...],
    no_trunc: bool,
    quiet: bool,
    refs: tuple[str, ...],
) -> None:
    """List the tasks of services, earlier ones too (as docker does; narrow with
    --filter desired-state=running)."""
    list_tasks(options, refs, True, no_trunc, quiet, filters=filters)


@service.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option(
    "-n",
    "--tail",
    "tail",
    default="all",
    show_default=True,
    help="Lines to show from the end of each task's output.",
)
@click.option(
    "--since",
    default=None,
    metavar="TIME",
    help="Only output since TIME: RFC 3339, a Unix time, or a duration ago (10m).",
)
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.option("--raw", is_flag=True, help="Do not prefix lines with their task.")
@click.argument("ref", metavar="SERVICE")
@pass_options
def logs(
    options: GlobalOptions,
    follow: bool,
    tail: str,
    since: str | None,
    timestamps: bool,
    raw: bool,
    ref: str,
) -> None:
    """Print the output of a service's tasks, each line prefixed with its task (and, with
    several targets, with the target)."""
    import threading

    from dockyard.cli.commands.service_logs import service_logs
    from dockyard.cli.humanize import parse_since

    try:
        since_time = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if not options.many:
        if service_logs(
            options.target(),
            ref,
            follow=follow,
            tail=tail,
            timestamps=timestamps,
            since=since_time,
            raw=raw,
        ):
            sys.exit(1)
        return
    failed: list[str] = []

    def one(target: Target) -> None:
        try:
            if service_logs(
                target,
                ref,
                follow=follow,
                tail=tail,
                timestamps=timestamps,
                since=since_time,
                raw=raw,
                label=target.label,
            ):
                failed.append(target.label)
        except CliError as exc:
            failed.append(target.label)
            click.echo(f"dockyard: {target.label}: {exc.message}", err=True)

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in options.targets()]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        sys.exit(130)
    if failed:
        sys.exit(1)
