"""`dockyard`: the command-line client.

Imports stay lazy (grpc and the generated stubs load only in the commands
that need them) so that every command starts fast.
"""

from __future__ import annotations

import click

from dockyard.cli.commands.container_run import run
from dockyard.cli.commands.containers import container, exec_command, logs
from dockyard.cli.commands.contexts import context
from dockyard.cli.commands.images import image, list_images, pull
from dockyard.cli.commands.jobs import job
from dockyard.cli.commands.nodes import node
from dockyard.cli.commands.services import ps, service
from dockyard.cli.commands.system import info, version
from dockyard.cli.options import GlobalOptions
from dockyard.cli.render import FORMATS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-H",
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST:PORT",
    help="Daemon to address (a controller or an agent); repeat for several.",
)
@click.option(
    "-c",
    "--context",
    "context_name",
    default=None,
    envvar="DOCKYARD_CONTEXT",
    help="Context to use (see `dockyard context ls`).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.pass_context
def cli(ctx: click.Context, hosts: tuple[str, ...], context_name: str | None, output: str) -> None:
    """Dockyard: run containers across many Linux hosts."""
    ctx.obj = GlobalOptions(hosts, context_name, output)


cli.add_command(version)
cli.add_command(info)
cli.add_command(node)
cli.add_command(context)
cli.add_command(container)
cli.add_command(image)
cli.add_command(service)
cli.add_command(job)
# docker's short forms: the same commands under a second name.
cli.add_command(run, "run")
# On a controller, the tasks of every service; on an agent, its containers.
cli.add_command(ps, "ps")
cli.add_command(logs, "logs")
cli.add_command(exec_command, "exec")
cli.add_command(list_images, "images")
cli.add_command(pull, "pull")


def main() -> None:
    cli(prog_name="dockyard")
