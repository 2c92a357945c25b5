"""`dockyard`: the command-line client.

Imports stay lazy (grpc and the generated stubs load only in the commands
that need them) so that every command starts fast.
"""

from __future__ import annotations

import importlib

import click

from dockyard.cli.options import DEFAULT_TARGET_TIMEOUT, GlobalOptions
from dockyard.cli.render import FORMATS

# name -> (module, attribute, one-line help). A command's module is imported
# only when that command runs, so `dockyard ps` does not load every command.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "attach": ("containers", "attach_command", "Attach to a running container's stdio."),
    "cluster": ("cluster", "cluster", "Show and change the cluster's policy."),
    "container": (
        "containers",
        "container",
        "Manage containers on one agent (run, ls, logs, ...).",
    ),
    "config": ("configs", "config", "Manage the cluster's configs."),
    "context": ("contexts", "context", "Manage named endpoints (like docker contexts)."),
    "events": ("events", "events", "Print the cluster's changes as they happen."),
    "exec": ("containers", "exec_command", "Run a command in a running container."),
    "image": ("images", "image", "Manage images on one agent (pull, push, ls, rm, ...)."),
    "images": ("images", "list_images", "List the agent's images."),
    "info": ("system", "info", "Summarise the cluster (controller) or the node (agent)."),
    "job": ("jobs", "job", "Run commands to completion across the cluster."),
    "login": ("registry_login", "login", "Log in to a registry (docker's config.json)."),
    "logout": ("registry_login", "logout", "Log out from a registry."),
    "logs": ("containers", "logs", "Print a container's output."),
    "network": ("networks", "network", "Manage the cluster's overlay networks."),
    "node": ("nodes", "node", "Manage the cluster's nodes."),
    "port": ("containers", "port", "List a container's published ports."),
    "ps": ("tasks", "ps", "List tasks (on a controller) or containers (on an agent)."),
    "pull": ("images", "pull", "Pull an image, with a progress bar per layer."),
    "run": ("container_run", "run", "Run a command in a new container."),
    "secret": ("secrets", "secret", "Manage the cluster's secrets."),
    "service": ("services", "service", "Manage services across the cluster."),
    "stack": ("stacks", "stack", "Deploy compose files as stacks of services."),
    "stats": ("cluster_stats", "stats", "Show the cluster's containers by service, live."),
    "top": ("top", "top", "Watch nodes, services and pending tasks live (terminal view)."),
    "system": ("prune", "system", "Disk usage and cleanup on one agent (df, prune)."),
    "volume": ("volumes", "volume", "Manage an agent's named volumes."),
    "version": ("system", "version", "Show the client's and the daemons' versions."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"dockyard.cli.commands.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in sorted(COMMANDS)])


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`dockyard --version`: the client's version, asking no daemon."""
    if not value or ctx.resilient_parsing:
        return
    from dockyard.common.version import API_VERSION, package_version

    click.echo(f"dockyard version {package_version()}, API {API_VERSION}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the client's version and exit.",
)
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
    help="Context to use (see `dockyard context ls`); several: a,b.",
)
@click.option(
    "--all-contexts",
    is_flag=True,
    help="Address every context at once (a group stands for its members).",
)
@click.option(
    "--target-timeout",
    type=click.FloatRange(min=0.1, max=3600),
    default=DEFAULT_TARGET_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="With several targets: give up on one that has not answered in this long.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=64),
    default=8,
    show_default=True,
    help="With several targets: how many are asked at the same time.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--tlscacert",
    default=None,
    metavar="FILE",
    envvar="DOCKYARD_TLS_CACERT",
    help="Trust certificates signed by this CA (the cluster's ca.pem).",
)
@click.option(
    "--tlscert",
    default=None,
    metavar="FILE",
    envvar="DOCKYARD_TLS_CERT",
    help="Client certificate (mutual TLS).",
)
@click.option(
    "--tlskey",
    default=None,
    metavar="FILE",
    envvar="DOCKYARD_TLS_KEY",
    help="Client certificate's private key.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    hosts: tuple[str, ...],
    context_name: str | None,
    all_contexts: bool,
    target_timeout: float,
    concurrency: int,
    output: str,
    tlscacert: str | None,
    tlscert: str | None,
    tlskey: str | None,
) -> None:
    """Dockyard: run containers across many Linux hosts."""
    from dockyard.cli.client import tls_files

    tls = tls_files(tlscacert, tlscert, tlskey, "--tlscacert/--tlscert/--tlskey")
    ctx.obj = GlobalOptions(
        hosts, context_name, output, tls, all_contexts, target_timeout, concurrency
    )


def main() -> None:
    cli(prog_name="dockyard")
