"""`dockyard cluster inspect|update`: the cluster record and its policy."""

from __future__ import annotations

import click

from dockyard.cli.client import CliError, call, rpc_code
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.options import GlobalOptions, output_option, pass_options
from dockyard.cli.render import emit_data, key_values, to_data

UPDATE_RETRIES = 5


@click.group("cluster")
def cluster() -> None:
    """Show and change the cluster's policy."""


@cluster.command("inspect")
@output_option
@pass_options
def inspect_cluster(options: GlobalOptions) -> None:
    """Show the cluster's ID and policy."""
    from dockyard.v1.control_pb2 import GetClusterRequest

    record = call(options.target(), control_stub, "GetCluster", GetClusterRequest())
    if options.output != "table":
        emit_data(record, options.output)
        return
    data = to_data(record)
    click.echo(
        key_values(
            [
                ("ID", record.id),
                ("Created", data.get("created_at", "")),
                ("Allow privileged", "yes" if record.spec.allow_privileged else "no"),
            ]
        )
    )


@cluster.command("update")
@click.option(
    "--allow-privileged",
    type=click.BOOL,
    default=None,
    metavar="true|false",
    help="Whether services may run privileged containers (off by default).",
)
@pass_options
def update_cluster(options: GlobalOptions, allow_privileged: bool | None) -> None:
    """Change the cluster's policy (admins only)."""
    if allow_privileged is None:
        raise click.UsageError("nothing to change: give --allow-privileged true|false")
    import grpc

    from dockyard.v1.control_pb2 import GetClusterRequest, UpdateClusterRequest

    target = options.target()
    for _ in range(UPDATE_RETRIES):
        current = call(target, control_stub, "GetCluster", GetClusterRequest())
        spec = current.spec
        spec.allow_privileged = allow_privileged
        request = UpdateClusterRequest(version=current.meta.version, spec=spec)
        try:
            updated = call(target, control_stub, "UpdateCluster", request)
        except CliError as exc:
            if rpc_code(exc) != grpc.StatusCode.ABORTED:
                raise
            continue
        click.echo(updated.id)
        return
    raise CliError("the cluster kept changing while it was being updated; try again")
