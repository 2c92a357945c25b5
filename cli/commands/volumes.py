"""`dockyard -H AGENT volume create|ls|inspect|rm`: an agent's named volumes."""

from __future__ import annotations

import sys
from typing import Any

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import Target, call
from dockyard.cli.commands.container_run import AGENT
from dockyard.cli.commands.prune import volume_prune
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options


def volumes_stub(channel: Any) -> Any:
    from dockyard.v1 import containers_pb2_grpc

    return containers_pb2_grpc.VolumesStub(channel)


@click.group("volume")
def volume() -> None:
    """Manage an agent's named volumes (directories that outlive containers)."""


volume.add_command(volume_prune)


@volume.command("create")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Volume label.")
@click.argument("name")
@pass_options
def create(options: GlobalOptions, labels: tuple[str, ...], name: str) -> None:
    """Create a volume (an existing one is left as it is)."""
    from dockyard.common.validation import ValidationError, parse_label
    from dockyard.v1.containers_pb2 import CreateVolumeRequest

    try:
        pairs = dict(parse_label("--label", text) for text in labels)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    record = call(
        options.target(),
        volumes_stub,
        "Create",
        CreateVolumeRequest(name=name, labels=pairs),
        what=AGENT,
    )
    click.echo(record.name)


VOLUME_FILTERS = ("name", "label", "dangling")


@volume.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching volumes; keys: {', '.join(VOLUME_FILTERS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print volume names.")
@format_option
@output_option
@pass_options
def list_volumes(options: GlobalOptions, filters: tuple[str, ...], quiet: bool) -> None:
    """List the agent's volumes and the containers that use them."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing, show_listing
    from dockyard.v1.containers_pb2 import ListVolumesRequest

    wanted = Filters(filters, VOLUME_FILTERS)
    dangling = wanted.flag("dangling")

    def fetch(target: Target) -> Listing:
        records = [
            r
            for r in call(target, volumes_stub, "List", ListVolumesRequest(), what=AGENT).volumes
            if wanted.substring("name", r.name)
            and wanted.labels(r.labels)
            and (dangling is None or dangling == (not r.used_by))
        ]
        rows = [
            [r.name, r.mountpoint, ", ".join(u[:12] for u in r.used_by) or "-"] for r in records
        ]
        return Listing(
            ["VOLUME NAME", "MOUNTPOINT", "USED BY"],
            rows,
            records,
            [r.name for r in records],
            ["Name", "Mountpoint", "UsedBy"],
        )

    show_listing(options, fetch, quiet)


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
@output_option
@pass_options
def inspect(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Show volumes (JSON unless -o yaml)."""
    from dockyard.cli.listing import show_records
    from dockyard.v1.containers_pb2 import VolumeRef

    show_records(
        options,
        names,
        lambda target, ref: call(target, volumes_stub, "Inspect", VolumeRef(name=ref), what=AGENT),
    )


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="No error for a volume that does not exist.")
@click.argument("names", nargs=-1, required=True)
@pass_options
def remove(options: GlobalOptions, force: bool, names: tuple[str, ...]) -> None:
    """Remove volumes and their data (refused while a container uses one)."""
    from dockyard.v1.containers_pb2 import RemoveVolumeRequest

    target = options.target()

    def remove_one(name: str) -> None:
        call(
            target, volumes_stub, "Remove", RemoveVolumeRequest(name=name, force=force), what=AGENT
        )
        click.echo(name)

    if each_ref(names, remove_one)[1]:
        sys.exit(1)
