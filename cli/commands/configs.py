"""`dockyard config create|ls|inspect|rm`: the cluster's configs (docs/configs.md).

As secrets, but not secret: `inspect` shows the data (base64 in JSON, as docker does;
as text with --pretty). Services get them read-only at a path of their choosing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options
from dockyard.cli.render import to_data

MAX_CONFIG_BYTES = 500 * 1024


@click.group("config")
def config() -> None:
    """Manage the cluster's configs (files services get read-only)."""


@config.command("create")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Secret label.")
@click.argument("name")
@click.argument("file", metavar="FILE|-")
@pass_options
def create(options: GlobalOptions, labels: tuple[str, ...], name: str, file: str) -> None:
    """Create a config from FILE, or from standard input with `-` (at most 500 KiB)."""
    from dockyard.common.validation import ValidationError, check_name, parse_label
    from dockyard.v1.control_pb2 import CreateConfigRequest
    from dockyard.v1.workloads_pb2 import ConfigSpec

    try:
        check_name("NAME", name)
        pairs = dict(parse_label("--label", text) for text in labels)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
        else:
            with Path(file).open("rb") as source:
                data = source.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if not data:
        raise CliError(f"{'standard input' if file == '-' else file} is empty: a config needs data")
    if len(data) > MAX_CONFIG_BYTES:
        raise CliError(f"{file}: a config is at most {MAX_CONFIG_BYTES} bytes (500 KiB)")
    record = call(
        options.target(),
        control_stub,
        "CreateConfig",
        CreateConfigRequest(spec=ConfigSpec(name=name, labels=pairs, data=data)),
    )
    click.echo(record.id)


CONFIG_FILTERS = ("id", "name", "label")


@config.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching configs; keys: {', '.join(CONFIG_FILTERS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print config IDs.")
@format_option
@output_option
@pass_options
def list_configs(options: GlobalOptions, filters: tuple[str, ...], quiet: bool) -> None:
    """List configs (without their data)."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing, show_listing
    from dockyard.v1.control_pb2 import ListConfigsRequest

    wanted = Filters(filters, CONFIG_FILTERS)

    def fetch(target: Target) -> Listing:
        records = [
            r
            for r in call(target, control_stub, "ListConfigs", ListConfigsRequest()).configs
            if wanted.prefix("id", r.id)
            and wanted.substring("name", r.spec.name)
            and wanted.labels(r.spec.labels)
        ]
        rows = [
            [r.id, r.spec.name, str(r.size_bytes), to_data(r.meta).get("created_at", "")]
            for r in records
        ]
        return Listing(
            ["ID", "NAME", "SIZE", "CREATED"],
            rows,
            records,
            [r.id for r in records],
            ["ID", "Name", "Size", "CreatedAt"],
        )

    show_listing(options, fetch, quiet)


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

    target = options.target()

    def remove_one(name: str) -> None:
        call(target, control_stub, "RemoveConfig", RemoveConfigRequest(config=name))
        click.echo(name)

    if each_ref(names, remove_one)[1]:
        sys.exit(1)
