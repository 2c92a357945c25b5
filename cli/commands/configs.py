"""`dockyard config create|ls|inspect|rm`: the cluster's configs (docs/configs.md).

As secrets, but not secret: `inspect` shows the data (base64 in JSON, as docker does;
as text with --pretty). Services get them read-only at a path of their choosing.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import Target, call
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.commands.stored_files import (
    FILTER_KEYS,
    checked_labels,
    read_data,
    remove_each,
    show_list,
)
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options


@click.group("config")
def config() -> None:
    """Manage the cluster's configs (files services get read-only)."""


@config.command("create")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Config label.")
@click.argument("name")
@click.argument("file", metavar="FILE|-")
@pass_options
def create(options: GlobalOptions, labels: tuple[str, ...], name: str, file: str) -> None:
    """Create a config from FILE, or from standard input with `-` (at most 500 KiB)."""
    from dockyard.v1.control_pb2 import CreateConfigRequest
    from dockyard.v1.workloads_pb2 import ConfigSpec

    pairs = checked_labels(name, labels)
    data = read_data(file, "config")
    record = call(
        options.target(),
        control_stub,
        "CreateConfig",
        CreateConfigRequest(spec=ConfigSpec(name=name, labels=pairs, data=data)),
    )
    click.echo(record.id)


@config.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching configs; keys: {', '.join(FILTER_KEYS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print config IDs.")
@format_option
@output_option
@pass_options
def list_configs(options: GlobalOptions, filters: tuple[str, ...], quiet: bool) -> None:
    """List configs (without their data)."""
    from dockyard.v1.control_pb2 import ListConfigsRequest

    show_list(
        options,
        filters,
        quiet,
        lambda target: call(target, control_stub, "ListConfigs", ListConfigsRequest()).configs,
    )


@config.command("inspect")
@click.option("--pretty", is_flag=True, help="Name, labels and the data as text.")
@click.argument("names", nargs=-1, required=True)
@output_option
@pass_options
def inspect(options: GlobalOptions, pretty: bool, names: tuple[str, ...]) -> None:
    """Show configs with their data (JSON, data in base64, unless -o yaml or --pretty)."""
    from dockyard.cli.listing import show_records
    from dockyard.v1.control_pb2 import GetConfigRequest

    def get(target: Target, ref: str) -> Any:
        return call(target, control_stub, "GetConfig", GetConfigRequest(config=ref))

    if not pretty:
        show_records(options, names, get)
        return
    target = options.target()

    def show(ref: str) -> None:
        record = get(target, ref)
        click.echo(f"ID:\t\t{record.id}\nName:\t\t{record.spec.name}")
        if record.spec.labels:
            click.echo("Labels:")
            for key, value in sorted(record.spec.labels.items()):
                click.echo(f" - {key}={value}")
        click.echo("Data:")
        click.echo(bytes(record.spec.data).decode("utf-8", errors="replace"))

    if each_ref(names, show)[1]:
        sys.exit(1)


@config.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_options
def remove(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Remove configs (refused while a service uses one)."""
    from dockyard.v1.control_pb2 import RemoveConfigRequest

    remove_each(
        options,
        names,
        lambda target, name: call(
            target, control_stub, "RemoveConfig", RemoveConfigRequest(config=name)
        ),
    )
