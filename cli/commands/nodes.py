"""`dockyard node ls|inspect|update|rm`."""

from __future__ import annotations

from typing import Any

import click

from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.tasks import list_tasks, task_list_options
from dockyard.cli.filters import Filters, filter_option
from dockyard.cli.listing import Listing, show_listing, show_records
from dockyard.cli.node_table import NODE_FIELDS, NODE_HEADERS, node_row
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options

AVAILABILITIES = ("active", "pause", "drain")
UPDATE_RETRIES = 5
NODE_FILTERS = ("id", "name", "label", "node.label", "state", "availability", "role")


def _stub(channel: Any) -> Any:
    from dockyard.v1 import control_pb2_grpc

    return control_pb2_grpc.ControlStub(channel)


@click.group("node")
def node() -> None:
    """Manage the cluster's nodes."""


@node.command("ls")
@filter_option(NODE_FILTERS)
@click.option("-q", "--quiet", is_flag=True, help="Only print node IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten IDs.")
@format_option
@output_option
@pass_options
def list_nodes(
    options: GlobalOptions, filters: tuple[str, ...], quiet: bool, no_trunc: bool
) -> None:
    """List nodes with their state, resources and last heartbeat."""
    from dockyard.v1.control_pb2 import ListNodesRequest
    from dockyard.v1.types_pb2 import NodeSpec, NodeStatus

    wanted = Filters(filters, NODE_FILTERS)
    request = ListNodesRequest(names=wanted.get("name"), labels=wanted.get("label"))
    for value in wanted.get("state"):
        if value.upper() not in ("READY", "DOWN", "UNKNOWN"):
            raise click.BadParameter(
                f"state={value}: use ready, down or unknown", param_hint="--filter"
            )
        request.states.append(NodeStatus.State.Value(value.upper()))
    for value in wanted.get("availability"):
        if value not in AVAILABILITIES:
            raise click.BadParameter(
                f"availability={value}: use {', '.join(AVAILABILITIES)}", param_hint="--filter"
            )

    def keep(n: Any) -> bool:
        availability = NodeSpec.Availability.Name(n.spec.availability).lower()
        return (
            wanted.prefix("id", n.id)
            and wanted.labels(n.spec.labels, "node.label")
            and wanted.exact("availability", availability)
            and wanted.exact("role", "worker")
        )

    def fetch(target: Target) -> Listing:
        nodes = sorted(
            (n for n in call(target, _stub, "ListNodes", request).nodes if keep(n)),
            key=lambda n: n.spec.name,
        )
        version = _controller_version(target)
        return Listing(
            NODE_HEADERS,
            [node_row(n, version, no_trunc) for n in nodes],
            list(nodes),
            [n.id for n in nodes],
            NODE_FIELDS,
        )

    show_listing(options, fetch, quiet)


def _controller_version(target: Target) -> str:
    from dockyard.v1.types_pb2 import GetVersionRequest

    return str(call(target, _stub, "GetVersion", GetVersionRequest()).version)


@node.command("inspect")
@click.argument("nodes", nargs=-1, required=True)
@output_option
@pass_options
def inspect_nodes(options: GlobalOptions, nodes: tuple[str, ...]) -> None:
    """Show whole node records (JSON by default)."""
    from dockyard.v1.control_pb2 import GetNodeRequest

    show_records(
        options, nodes, lambda target, ref: call(target, _stub, "GetNode", GetNodeRequest(node=ref))
    )


@node.command("update")
@click.option("--label-add", multiple=True, metavar="KEY[=VALUE]", help="Add or change a label.")
@click.option("--label-rm", multiple=True, metavar="KEY", help="Remove a label.")
@click.option(
    "--availability",
    type=click.Choice(AVAILABILITIES),
    help="active: takes tasks; pause: takes no new tasks; drain: tasks move away.",
)
@click.option("--rename", default=None, help="Give the node a new name.")
@click.argument("node_ref", metavar="NODE")
@output_option
@pass_options
def update_node(
    options: GlobalOptions,
    label_add: tuple[str, ...],
    label_rm: tuple[str, ...],
    availability: str | None,
    rename: str | None,
    node_ref: str,
) -> None:
    """Change a node's labels, availability or name."""
    from dockyard.common.validation import ValidationError, check_name, parse_label

    try:
        additions = [parse_label("--label-add", text) for text in label_add]
        if rename is not None:
            check_name("--rename", rename)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    target = options.target()
    updated = _update_with_retry(target, node_ref, additions, label_rm, availability, rename)
    click.echo(updated.id)


def _update_with_retry(
    target: Any,
    node_ref: str,
    additions: list[tuple[str, str]],
    removals: tuple[str, ...],
    availability: str | None,
    rename: str | None,
) -> Any:
    """Read, change, write; when someone else wrote in between, apply the change again."""
    import grpc

    from dockyard.v1.control_pb2 import GetNodeRequest, UpdateNodeRequest
    from dockyard.v1.types_pb2 import NodeSpec

    for _ in range(UPDATE_RETRIES):
        current = call(target, _stub, "GetNode", GetNodeRequest(node=node_ref))
        spec = NodeSpec()
        spec.CopyFrom(current.spec)
        for key in removals:
            if key not in spec.labels:
                raise CliError(f"node {current.spec.name} has no label {key!r}")
            del spec.labels[key]
        for key, value in additions:
            spec.labels[key] = value
        if availability:
            spec.availability = NodeSpec.Availability.Value(availability.upper())
        if rename is not None:
            spec.name = rename
        try:
            return call(
                target,
                _stub,
                "UpdateNode",
                UpdateNodeRequest(node=current.id, version=current.meta.version, spec=spec),
            )
        except CliError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.ABORTED):
                raise
    raise CliError(f"node {node_ref} kept changing while it was being updated; try again")


@node.command("ps")
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@task_list_options
@pass_options
def node_tasks(
    options: GlobalOptions,
    nodes: tuple[str, ...],
    show_all: bool,
    filters: tuple[str, ...],
    no_trunc: bool,
    quiet: bool,
) -> None:
    """List the tasks on nodes (ID, ID prefix or name), earlier ones too."""
    list_tasks(options, (), True, no_trunc, quiet, nodes=nodes, filters=filters)


@node.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove even while the node is READY.")
@click.argument("nodes", nargs=-1, required=True)
@output_option
@pass_options
def remove_nodes(options: GlobalOptions, force: bool, nodes: tuple[str, ...]) -> None:
    """Remove nodes from the cluster."""
    from dockyard.v1.control_pb2 import RemoveNodeRequest

    target = options.target()
    for ref in nodes:
        call(target, _stub, "RemoveNode", RemoveNodeRequest(node=ref, force=force))
        click.echo(ref)
