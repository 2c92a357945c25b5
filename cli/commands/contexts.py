"""`dockyard context create|ls|inspect|use|rm`."""

from __future__ import annotations

from dataclasses import asdict

import click

from dockyard.cli.client import CliError
from dockyard.cli.options import GlobalOptions, output_option, pass_options
from dockyard.cli.render import emit_data, emit_table
from dockyard.common.contexts import ContextError, ContextStore


@click.group("context")
def context() -> None:
    """Manage named endpoints (like docker contexts)."""


@context.command("create")
@click.option(
    "--host", "hosts", required=True, multiple=True, metavar="HOST:PORT",
    help="The controller's address; repeat (or comma-separate) for every controller of "
    "one cluster: they are tried in order, the next when one cannot be reached.",
)
@click.option("--description", default="")
@click.option("--overwrite", is_flag=True, help="Replace a context of the same name.")
@click.option("--use", "use_it", is_flag=True, help="Also make it the current context.")
@click.option("--tlscacert", default=None, metavar="FILE", help="The cluster CA (ca.pem).")
@click.option("--tlscert", default=None, metavar="FILE", help="Client certificate.")
@click.option("--tlskey", default=None, metavar="FILE", help="Client certificate's key.")
@click.argument("name")
def create(
    hosts: tuple[str, ...], description: str, overwrite: bool, use_it: bool,
    tlscacert: str | None, tlscert: str | None, tlskey: str | None, name: str,
) -> None:
    """Create a context named NAME (with TLS material: mutual TLS to the daemon)."""
    import os

    from dockyard.cli.client import TLSFiles

    files = TLSFiles.from_values(tlscacert, tlscert, tlskey, "--tlscacert/--tlscert/--tlskey")
    tls = ({"ca": os.path.abspath(files.ca), "cert": os.path.abspath(files.cert),
            "key": os.path.abspath(files.key)} if files else None)  # fmt: skip
    store = ContextStore()
    try:
        store.create(name, ",".join(hosts), description, overwrite=overwrite, tls=tls)
        if use_it:
            store.use(name)
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    click.echo(name)


@context.command("ls")
@output_option
@pass_options
def list_contexts(options: GlobalOptions) -> None:
    """List contexts; the current one is marked with *."""
    store = ContextStore()
    try:
        current = store.current()
        contexts = store.list()
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    if options.output != "table":
        emit_data([{**asdict(c), "current": c.name == current} for c in contexts], options.output)
        return
    emit_table(
        ["NAME", "HOST", "DESCRIPTION"],
        [(c.name + (" *" if c.name == current else ""), c.host, c.description) for c in contexts],
    )


@context.command("inspect")
@click.argument("names", nargs=-1)
@output_option
@pass_options
def inspect(options: GlobalOptions, names: tuple[str, ...]) -> None:
    """Show contexts (the current one when no NAME is given)."""
    store = ContextStore()
    try:
        chosen = [store.get(n) for n in (names or (store.current(),))]
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    emit_data([asdict(c) for c in chosen], "yaml" if options.output == "yaml" else "json")


@context.command("use")
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the current context."""
    try:
        ContextStore().use(name)
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"Current context is now {name!r}")


@context.command("rm")
@click.argument("names", nargs=-1, required=True)
def remove(names: tuple[str, ...]) -> None:
    """Remove contexts."""
    store = ContextStore()
    for name in names:
        try:
            store.remove(name)
        except ContextError as exc:
            raise CliError(str(exc)) from exc
        click.echo(name)
