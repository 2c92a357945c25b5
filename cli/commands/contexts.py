"""`dockyard context create|ls|inspect|use|rm`."""

from __future__ import annotations

from dataclasses import asdict

import click

from dockyard.cli.client import CliError
from dockyard.cli.options import GlobalOptions, output_option, pass_options
from dockyard.cli.render import emit_data, emit_table
from dockyard.common.contexts import Context, ContextError, ContextStore


@click.group("context")
def context() -> None:
    """Manage named endpoints (like docker contexts)."""


@context.command("create")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST:PORT",
    help="The controller's address; repeat (or comma-separate) for every controller of "
    "one cluster: they are tried in order, the next when one cannot be reached.",
)
@click.option(
    "--member",
    "members",
    multiple=True,
    metavar="CONTEXT",
    help="Make a group of other contexts instead (repeat or comma-separate): a command "
    "run with this context goes to every member at once.",
)
@click.option("--description", default="")
@click.option("--overwrite", is_flag=True, help="Replace a context of the same name.")
@click.option("--use", "use_it", is_flag=True, help="Also make it the current context.")
@click.option("--tlscacert", default=None, metavar="FILE", help="The cluster CA (ca.pem).")
@click.option("--tlscert", default=None, metavar="FILE", help="Client certificate.")
@click.option("--tlskey", default=None, metavar="FILE", help="Client certificate's key.")
@click.argument("name")
def create(
    hosts: tuple[str, ...],
    members: tuple[str, ...],
    description: str,
    overwrite: bool,
    use_it: bool,
    tlscacert: str | None,
    tlscert: str | None,
    tlskey: str | None,
    name: str,
) -> None:
    """Create a context named NAME (with TLS material: mutual TLS to the daemon), or a
    group of contexts (--member)."""
    import os

    from dockyard.cli.client import tls_files

    if bool(hosts) == bool(members):
        raise click.UsageError("give --host (an endpoint) or --member (a group), not both")
    if members:
        if tlscacert or tlscert or tlskey:
            raise click.UsageError("a group takes its TLS material from its members")
        names = [m.strip() for text in members for m in text.split(",") if m.strip()]
        try:
            ContextStore().create_group(name, names, description, overwrite=overwrite)
            if use_it:
                ContextStore().use(name)
        except ContextError as exc:
            raise CliError(str(exc)) from exc
        click.echo(name)
        return
    files = tls_files(tlscacert, tlscert, tlskey, "--tlscacert/--tlscert/--tlskey")
    tls = (
        {
            "ca": os.path.abspath(files.ca),
            "cert": os.path.abspath(files.cert),
            "key": os.path.abspath(files.key),
        }
        if files
        else None
    )
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
        emit_data([{**_fields(c), "current": c.name == current} for c in contexts], options.output)
        return
    emit_table(
        ["NAME", "HOST", "DESCRIPTION"],
        [
            (
                c.name + (" *" if c.name == current else ""),
                c.host or "group: " + ",".join(c.members),
                c.description,
            )
            for c in contexts
        ],
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
    emit_data([_fields(c) for c in chosen], "yaml" if options.output == "yaml" else "json")


def _fields(context: Context) -> dict[str, object]:
    """A context as data; `members` only for a group."""
    fields = asdict(context)
    if not context.members:
        del fields["members"]
    return fields


@context.command("export")
@click.option(
    "--docker",
    "docker_dir",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write the context's TLS identity as Docker's DOCKER_CERT_PATH files "
    "(ca.pem, cert.pem, key.pem) into DIR, for an agent's Docker API "
    "(`dockyard-agent run --docker-api-listen`).",
)
@click.argument("name", required=False)
def export(docker_dir: str, name: str | None) -> None:
    """Export a context's client certificate (the current one without NAME) for Docker's
    clients: `DOCKER_CERT_PATH=DIR DOCKER_TLS_VERIFY=1 docker -H tcp://AGENT:2376 ps`."""
    from dockyard.cli.docker_export import export_docker_certs

    store = ContextStore()
    try:
        chosen = store.get(name or store.current())
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    try:
        written = export_docker_certs(chosen.tls, docker_dir)
    except (OSError, ValueError) as exc:
        raise CliError(f"context {chosen.name}: {exc}") from exc
    click.echo(f"export DOCKER_CERT_PATH={written} DOCKER_TLS_VERIFY=1")


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
