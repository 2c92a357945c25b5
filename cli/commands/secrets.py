"""`dockyard secret create|ls|inspect|rm`: the cluster's secrets (docs/secrets.md).

The data goes to the controller once, at `create`; nothing ever shows it again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options
from dockyard.cli.render import to_data

MAX_SECRET_BYTES = 500 * 1024


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
    from dockyard.common.validation import ValidationError, check_name, parse_label
    from dockyard.v1.control_pb2 import CreateSecretRequest
    from dockyard.v1.workloads_pb2 import SecretSpec

    try:
        check_name("NAME", name)
        pairs = dict(parse_label("--label", text) for text in labels)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
        else:
            with Path(file).open("rb") as source:
                data = source.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if not data:
        raise CliError(f"{'standard input' if file == '-' else file} is empty: a secret needs data")
    if len(data) > MAX_SECRET_BYTES:
        raise CliError(f"{file}: a secret is at most {MAX_SECRET_BYTES} bytes (500 KiB)")
    record = call(
        options.target(),
        control_stub,
        "CreateSecret",
        CreateSecretRequest(spec=SecretSpec(name=name, labels=pairs, data=data)),
    )
    click.echo(record.id)


SECRET_FILTERS = ("id", "name", "label")


@secret.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Only matching secrets; keys: {', '.join(SECRET_FILTERS)}.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print secret IDs.")
@format_option
@output_option
@pass_options
def list_secrets(options: GlobalOptions, filters: tuple[str, ...], quiet: bool) -> None:
    """List secrets (never their data)."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing, show_listing
    from dockyard.v1.control_pb2 import ListSecretsRequest

    wanted = Filters(filters, SECRET_FILTERS)

    def fetch(target: Target) -> Listing:
        records = [
            r
            for r in call(target, control_stub, "ListSecrets", ListSecretsRequest()).secrets
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

    target = options.target()

    def remove_one(name: str) -> None:
        call(target, control_stub, "RemoveSecret", RemoveSecretRequest(secret=name))
        click.echo(name)

    if each_ref(names, remove_one)[1]:
        sys.exit(1)
