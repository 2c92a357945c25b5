"""Task listings: `dockyard ps` (tasks on a controller, containers on an agent) and the
task lists of `service ps`, `node ps` and `stack ps`.

Kept apart from the service commands so that `dockyard ps`, the most common read,
loads none of the service flags' parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from dockyard.cli.client import CliError, Target, call, is_not_a_controller, is_unimplemented
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options

if TYPE_CHECKING:
    from dockyard.cli.listing import Listing

TASK_FILTERS = ("id", "name", "node", "desired-state")
DESIRED_STATES = ("running", "shutdown", "accepted", "ready", "complete")


def node_names(target: Target) -> dict[str, str]:
    """Node ID -> name, looked up once."""
    from dockyard.v1.control_pb2 import ListNodesRequest

    return {
        n.id: n.spec.name for n in call(target, control_stub, "ListNodes", ListNodesRequest()).nodes
    }


def task_listing(
    target: Target,
    refs: tuple[str, ...],
    show_all: bool,
    no_trunc: bool,
    nodes: tuple[str, ...] = (),
    filters: Sequence[str] = (),
) -> Listing:
    """The tasks of services `refs` and nodes `nodes` (all if none) on one controller,
    narrowed by `filters` (docker's keys: id, name, node, desired-state)."""
    from dockyard.cli.commands.service_view import TASK_HEADERS, state_name, task_name, task_rows
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing
    from dockyard.v1.control_pb2 import ListTasksRequest

    wanted = Filters(filters, TASK_FILTERS)
    for value in wanted.get("desired-state"):
        if value not in DESIRED_STATES:
            raise click.BadParameter(
                f"desired-state={value}: use {', '.join(DESIRED_STATES)}", param_hint="--filter"
            )
    request = ListTasksRequest(services=list(refs), nodes=list(nodes), include_history=show_all)
    tasks = list(call(target, control_stub, "ListTasks", request).tasks)
    names = node_names(target)
    tasks = [
        t
        for t in tasks
        if wanted.prefix("id", t.id)
        and wanted.substring("name", task_name(t))
        and wanted.exact("node", t.node_id, names.get(t.node_id, ""))
        and wanted.exact("desired-state", state_name(t.desired_state).lower())
    ]
    rows = task_rows(tasks, names, no_trunc=no_trunc)
    return Listing(TASK_HEADERS, rows, tasks, [t.id for t in tasks])


def list_tasks(
    options: GlobalOptions,
    refs: tuple[str, ...],
    show_all: bool,
    no_trunc: bool,
    quiet: bool,
    nodes: tuple[str, ...] = (),
    filters: Sequence[str] = (),
) -> None:
    """`service ps` / `node ps`: the tasks of services `refs` and nodes `nodes` (all if none)."""
    from dockyard.cli.listing import show_listing

    show_listing(
        options,
        lambda target: task_listing(target, refs, show_all, no_trunc, nodes, filters),
        quiet,
    )


def task_list_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The flags of every task list (`-a` is accepted where history is the default)."""
    for decorator in reversed(
        [
            click.option(
                "-a",
                "--all",
                "show_all",
                is_flag=True,
                help="Include earlier tasks (shut down, failed, replaced).",
            ),
            click.option(
                "-f",
                "--filter",
                "filters",
                multiple=True,
                metavar="KEY=VALUE",
                help=f"Only matching tasks; keys: {', '.join(TASK_FILTERS)}.",
            ),
            click.option("--no-trunc", is_flag=True, help="Do not shorten IDs and errors."),
            click.option("-q", "--quiet", is_flag=True, help="Only print task IDs."),
            format_option,
            output_option,
        ]
    ):
        command = decorator(command)
    return command


@click.command("ps")
@task_list_options
@pass_options
def ps(
    options: GlobalOptions, show_all: bool, filters: tuple[str, ...], no_trunc: bool, quiet: bool
) -> None:
    """List tasks of all services (on a controller) or containers (on an agent)."""
    from dockyard.cli.commands.containers import CONTAINER_FILTERS, container_listing
    from dockyard.cli.listing import show_listing

    def fetch(target: Target) -> Listing:
        try:
            return task_listing(target, (), show_all, no_trunc, filters=filters)
        except CliError as exc:
            # An agent: over TLS its node certificate fails the controller check first.
            if not (is_unimplemented(exc) or is_not_a_controller(exc)):
                raise
        return container_listing(target, show_all, filters, no_trunc)

    from dockyard.cli.filters import Filters

    # A key that neither tasks nor containers know is refused before any daemon is asked.
    Filters(filters, tuple(dict.fromkeys((*TASK_FILTERS, *CONTAINER_FILTERS))))
    show_listing(options, fetch, quiet)
