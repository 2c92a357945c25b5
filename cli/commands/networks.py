"""`dockyard network create|ls|inspect|rm`: the cluster's overlay networks
(docs/networking.md).

Networks live on the controller; services join them with `--network NAME[,alias=A]`.
"""

from __future__ import annotations

import sys

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import Target, call
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options
from dockyard.cli.render import to_data

NETWORK_FILTERS = ("id", "name", "label", "driver")


@click.group("network")
def network() -> None:
    """Manage the cluster's networks (overlay networks services join)."""


@network.command("create")
@click.option(
    "-d",
    "--driver",
    default="overlay",
    show_default=True,
    type=click.Choice(["overlay"]),
    help="Network driver.",
)
@click.option("--subnet", default="", metavar="CIDR", help="Subnet (default: the pool's next).")
@click.option("--internal", is_flag=True, help="No route out of the network.")
@click.option("--attachable", is_flag=True, help="Standalone containers may join it.")
@click.option("--ingress", is_flag=True, help="The routing mesh's network (one per cluster).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Network label.")
@click.argument("name")
@pass_options
def create(
    options: GlobalOptions,
    driver: str,
    subnet: str,
    internal: bool,
    attachable: bool,
    ingress: bool,
    labels: tuple[str, ...],
    name: str,
) -> None:
    """Create a network; prints its ID."""
    from dockyard.common.validation import ValidationError, check_name, parse_label
    from dockyard.v1.networks_pb2 import CreateNetworkRequest, NetworkSpec

    try:
        check_name("NAME", name)
        pairs = dict(parse_label("--label", text) for text in labels)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    spec = NetworkSpec(
        name=name,
        driver=driver,
        subnet=subnet,
        internal=internal,
        attachable=attachable,
        ingress=ingress,
        labels=pairs,
    )
    record = call(options.target(), control_stub, "CreateNetwork", CreateNetworkRequest(spec=spec))
    click.echo(record.id)


@network.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching networks; keys: {', '.join(NETWORK_FILTERS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print network IDs.")
@format_option
@output_option
@pass_options
def list_networks(options: GlobalOptions, filters: tuple[str, ...], quiet: bool) -> None:
    """List networks."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing, show_listing
    from dockyard.v1.networks_pb2 import ListNetworksRequest

    wanted = Filters(filters, NETWORK_FILTERS)

    def fetch(target: Target) -> Listing:
        records = [
            r
            for r in call(target, control_stub, "ListNetworks", ListNetworksRequest()).networks
            if wanted.prefix("id", r.id)
            and wanted.substring("name", r.spec.name)
            and wanted.substring("driver", r.spec.driver)
            and wanted.labels(r.spec.labels)
        ]
        rows = [
            [
                r.id[:12],
                r.spec.name,
                r.spec.driver,
                r.subnet,
                str(r.vni),
                ",".join(_flags(r)) or "-",
            ]
            for r in records
        ]
        return Listing(
            ["NETWORK ID", "NAME", "DRIVER", "SUBNET", "VNI", "FLAGS"],
            rows,
            records,
            [r.id for r in records],
            ["ID", "Name", "Driver", "Subnet", "VNI", "Flags"],
        )

    show_listing(options, fetch, quiet)


def _flags(record: object) -> list[str]:
    data = to_data(record).get("spec", {})
    return [flag for flag in ("internal", "attachable", "ingress") if data.get(flag)]


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@output_option
@pass_options
def inspect(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Show networks (JSON unless -o yaml)."""
    from dockyard.cli.listing import show_records
    from dockyard.v1.networks_pb2 import GetNetworkRequest

    show_records(
        options,
        names,
        lambda target, ref: call(
            target, control_stub, "GetNetwork", GetNetworkRequest(network=ref)
        ),
    )


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_options
def remove(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Remove networks (refused while a service uses one)."""
    from dockyard.v1.networks_pb2 import RemoveNetworkRequest

    target = options.target()

    def remove_one(name: str) -> None:
        call(target, control_stub, "RemoveNetwork", RemoveNetworkRequest(network=name))
        click.echo(name)

    if each_ref(names, remove_one)[1]:
        sys.exit(1)
