"""`dockyard secret create|ls|inspect|rm`: the cluster's secrets (docs/secrets.md).

The data goes to the controller once, at `create`; nothing ever shows it again.
"""

from __future__ import annotations

import click

from dockyard.cli.client import call
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.commands.stored_files import (
    FILTER_KEYS,
    checked_labels,
    read_data,
    remove_each,
    show_list,
)
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options


@click.group("secret")
def secret() -> None:
    """Manage the cluster's secrets (files services get at /run/secrets)."""


@secret.command("create")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Secret label.")
@click.argument("name")
@click.argument("file", metavar="FILE|-")
@pass_options
def create(options: GlobalOptions, labels: tuple[str, ...], name: str, file: str) -> None:
    """Create a secret from FILE, or from standard input with `-` (at most 500 KiB)."""
    from dockyard.v1.control_pb2 import CreateSecretRequest
    from dockyard.v1.workloads_pb2 import SecretSpec

    pairs = checked_labels(name, labels)
    data = read_data(file, "secret")
    record = call(
        options.target(),
        control_stub,
        "CreateSecret",
        CreateSecretRequest(spec=SecretSpec(name=name, labels=pairs, data=data)),
    )
    click.echo(record.id)


@secret.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching secrets; keys: {', '.join(FILTER_KEYS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print secret IDs.")
@format_option
@output_option
@pass_options
def list_secrets(options: GlobalOptions, filters: tuple[str, ...], quiet: bool) -> None:
    """List secrets (never their data)."""
    from dockyard.v1.control_pb2 import ListSecretsRequest

    show_list(
        options,
        filters,
        quiet,
        lambda target: call(target, control_stub, "ListSecrets", ListSecretsRequest()).secrets,
    )


@secret.command("inspect")
@click.argument("names", nargs=-1, required=True)
@output_option
@pass_options
def inspect(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Show secrets without their data (JSON unless -o yaml)."""
    from dockyard.cli.listing import show_records
    from dockyard.v1.control_pb2 import GetSecretRequest

    show_records(
        options,
        names,
        lambda target, ref: call(target, control_stub, "GetSecret", GetSecretRequest(secret=ref)),
    )


@secret.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_options
def remove(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Remove secrets (refused while a service uses one)."""
    from dockyard.v1.control_pb2 import RemoveSecretRequest

    remove_each(
        options,
        names,
        lambda target, name: call(
            target, control_stub, "RemoveSecret", RemoveSecretRequest(secret=name)
        ),
    )
