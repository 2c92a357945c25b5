"""`dockyard stack deploy|ls|services|ps|rm`: several services from compose files.

As `docker stack deploy`: every service of the files becomes the service
`<stack>_<name>` with the label `com.docker.stack.namespace=<stack>`; a service
that exists is updated (a rolling update when its task spec changed), a new one
is created, and with --prune the stack's services missing from the files are
removed. Every file is read and every spec built before the first request.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import click

from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.compose import STACK_LABEL, load_stack
from dockyard.cli.commands.service_flags import resolve_mode, resolve_option
from dockyard.cli.commands.service_wait import control_stub, wait_for_service
from dockyard.cli.commands.services import (
    list_summaries,
    task_list_options,
    task_listing,
    update_with_retry,
)
from dockyard.cli.commands.stack_networks import StackNetworks, plan_networks
from dockyard.cli.commands.stack_objects import create_objects, read_objects, remove_objects
from dockyard.cli.options import GlobalOptions, output_option, pass_options
from dockyard.cli.render import emit_data, emit_table
from dockyard.common.validation import ValidationError, check_name


@click.group("stack")
def stack() -> None:
    """Deploy and manage stacks: groups of services from compose files."""


def stack_services(target: Target, name: str) -> list[Any]:
    from dockyard.v1.control_pb2 import ListServicesRequest

    summaries = call(target, control_stub, "ListServices", ListServicesRequest()).services
    return [s.service for s in summaries if s.service.spec.labels.get(STACK_LABEL) == name]


def _check_stack_name(name: str) -> None:
    try:
        check_name("STACK", name)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc


def _replace_with(new: Any) -> Callable[[Any], None]:
    """An update that makes the stored spec the file's."""

    def change(spec: Any) -> None:
        spec.CopyFrom(new)

    return change


@stack.command("deploy")
@click.option(
    "-c",
    "--compose-file",
    "files",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Compose file (repeatable; `-` reads stdin). Later files override.",
)
@click.option("--prune", is_flag=True, help="Remove the stack's services the files no longer have.")
@click.option("--wait", "wait", is_flag=True, help="Wait until every service has converged.")
@resolve_option
@click.argument("name", metavar="STACK")
@pass_options
def deploy(
    options: GlobalOptions,
    files: tuple[str, ...],
    prune: bool,
    wait: bool,
    resolve_image: str | None,
    name: str,
) -> None:
    """Create or update the services of a stack."""
    from dockyard.v1.control_pb2 import CreateServiceRequest, RemoveServiceRequest

    _check_stack_name(name)
    loaded = load_stack(name, list(files))
    networks = plan_networks(name, loaded)
    for warning in loaded.warnings:
        click.echo(f"WARN: {warning}", err=True)
    for path in loaded.ignored:
        click.echo(f"Ignoring {path}: docker stack deploy does not use it", err=True)
    data = {kind: read_objects(getattr(loaded, kind)) for kind in ("secrets", "configs")}
    target = options.target()
    for kind, payloads in data.items():
        create_objects(target, name, kind, payloads)
    existing = {s.spec.name: s for s in stack_services(target, name)}
    mode = resolve_mode(resolve_image)
    _make_networks(target, name, networks)
    touched = []
    for spec in loaded.specs.values():
        if spec.name in existing:
            click.echo(f"Updating service {spec.name}", err=True)
            record = update_with_retry(target, spec.name, _replace_with(spec), resolve_image=mode)
        else:
            click.echo(f"Creating service {spec.name}", err=True)
            record = call(
                target,
                control_stub,
                "CreateService",
                CreateServiceRequest(spec=spec, resolve_image=mode),
            )
        touched.append(record.id)
    if prune:
        wanted = {spec.name for spec in loaded.specs.values()}
        for service_name in sorted(set(existing) - wanted):
            click.echo(f"Removing service {service_name}", err=True)
            call(target, control_stub, "RemoveService", RemoveServiceRequest(service=service_name))
    if wait:
        for service_id in touched:
            wait_for_service(target, service_id, sys.stderr, None)


@stack.command("ls")
@output_option
@pass_options
def list_stacks(options: GlobalOptions) -> None:
    """List stacks with their number of services."""
    from dockyard.v1.control_pb2 import ListServicesRequest

    summaries = call(options.target(), control_stub, "ListServices", ListServicesRequest())
    counts = Counter(
        s.service.spec.labels[STACK_LABEL]
        for s in summaries.services
        if STACK_LABEL in s.service.spec.labels
    )
    rows = [{"name": n, "services": c} for n, c in sorted(counts.items())]
    if options.output != "table":
        emit_data(rows, options.output)
    else:
        emit_table(["NAME", "SERVICES"], [[r["name"], r["services"]] for r in rows])


@stack.command("services")
@click.option("-q", "--quiet", is_flag=True, help="Only print service IDs.")
@click.argument("name", metavar="STACK")
@output_option
@pass_options
def services(options: GlobalOptions, quiet: bool, name: str) -> None:
    """List the services of a stack."""
    list_summaries(options, "", quiet, keep=lambda s: s.spec.labels.get(STACK_LABEL) == name)


@stack.command("ps")
@task_list_options
@click.argument("name", metavar="STACK")
@pass_options
def ps(
    options: GlobalOptions,
    show_all: bool,
    filters: tuple[str, ...],
    no_trunc: bool,
    quiet: bool,
    name: str,
) -> None:
    """List the tasks of a stack, earlier ones too."""
    from dockyard.cli.listing import Listing, show_listing

    def fetch(target: Target) -> Listing:
        ids = tuple(s.id for s in stack_services(target, name))
        if not ids:
            raise CliError(f"nothing found in stack: {name}")
        return task_listing(target, ids, True, no_trunc, filters=filters)

    show_listing(options, fetch, quiet)


@stack.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="STACK...")
@pass_options
def remove(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Remove stacks: every service they have."""
    from dockyard.v1.control_pb2 import RemoveServiceRequest

    target = options.target()
    missing = False
    for name in names:
        found = stack_services(target, name)
        for service in sorted(found, key=lambda s: s.spec.name):
            click.echo(f"Removing service {service.spec.name}", err=True)
            call(target, control_stub, "RemoveService", RemoveServiceRequest(service=service.id))
        remove_objects(target, name, "secrets")
        remove_objects(target, name, "configs")
        if not _remove_networks(target, name) and not found:
            click.echo(f"dockyard: nothing found in stack: {name}", err=True)
            missing = True
    if missing:
        sys.exit(1)


def _make_networks(target: Target, stack: str, plan: StackNetworks) -> None:
    """Create the stack's networks that do not exist yet; external ones must."""
    from dockyard.v1.networks_pb2 import CreateNetworkRequest, ListNetworksRequest, NetworkSpec

    existing = {
        n.spec.name
        for n in call(target, control_stub, "ListNetworks", ListNetworksRequest()).networks
    }
    for name in sorted(plan.external - existing):
        raise CliError(f"network {name!r} is declared as external, but could not be found")
    for name, fields in sorted(plan.create.items()):
        if name in existing:
            continue
        click.echo(f"Creating network {name}", err=True)
        spec = NetworkSpec(name=name, driver="overlay", **fields)
        spec.labels[STACK_LABEL] = stack
        call(target, control_stub, "CreateNetwork", CreateNetworkRequest(spec=spec))


def _remove_networks(target: Target, stack: str) -> bool:
    """Remove the networks made for the stack; False when there were none."""
    from dockyard.v1.networks_pb2 import ListNetworksRequest, RemoveNetworkRequest

    found = [
        n
        for n in call(target, control_stub, "ListNetworks", ListNetworksRequest()).networks
        if n.spec.labels.get(STACK_LABEL) == stack
    ]
    for network in sorted(found, key=lambda n: n.spec.name):
        click.echo(f"Removing network {network.spec.name}", err=True)
        call(target, control_stub, "RemoveNetwork", RemoveNetworkRequest(network=network.id))
    return bool(found)
