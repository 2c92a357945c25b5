"""`dockyard stats`: the cluster's running containers by service, live, as `docker stats`
shows one host's. The controller asks the agents (`/v1/stats`, `/v1/services/NAME/stats`
on its HTTP side); a node that does not answer is named below the table."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from dockyard.cli.commands.controller_http import ControllerHttp, path_of
from dockyard.cli.options import GlobalOptions, output_option, pass_options

__all__ = ["HEADERS", "render", "stats"]

HEADERS = ["SERVICE", "CONTAINER", "NODE", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"]
INTERVAL = 2.0


def _memory(usage: int, limit: int) -> tuple[str, str]:
    from dockyard.cli.humanize import bytes_size

    shown = f"{bytes_size(usage)} / {bytes_size(limit) if limit > 0 else '--'}"
    return shown, f"{100.0 * usage / limit:.2f}%" if limit > 0 else "--"


def rows(answer: dict[str, Any]) -> list[list[str]]:
    """A total row per service (its containers' sums), then its containers."""
    from dockyard.cli.humanize import bytes_size

    found: list[list[str]] = []
    containers = answer.get("containers", [])
    for total in answer.get("services", []):
        service = total["service"]
        mine = [c for c in containers if c["service"] == service]
        found.append(
            [
                service or "(no service)",
                f"{total['containers']} running",
                "",
                f"{float(total['cpu_percent']):.2f}%",
                bytes_size(int(total["memory_usage"])),
                "",
                str(total["pids"]),
            ]
        )
        for c in mine:
            memory, percent = _memory(int(c["memory_usage"]), int(c["memory_limit"]))
            found.append(
                [
                    "",
                    c["name"],
                    c["node"],
                    f"{float(c['cpu_percent']):.2f}%",
                    memory,
                    percent,
                    str(c["pids"]),
                ]
            )
    return found


def render(answer: dict[str, Any]) -> str:
    """The table, then a line per node that did not answer."""
    from dockyard.cli.render import table

    lines = [table(HEADERS, rows(answer))]
    for node in answer.get("nodes", []):
        if node.get("error"):
            lines.append(f"node {node['node']}: {node['error']}")
    return "\n".join(lines)


def _ask(http: ControllerHttp, services: Sequence[str]) -> dict[str, Any]:
    if not services:
        answer: dict[str, Any] = http.get("/v1/stats")
        return answer
    merged: dict[str, Any] = {"services": [], "containers": [], "nodes": []}
    for name in services:
        one = http.get(path_of("v1", "services", name, "stats"))
        merged["services"].append(one["totals"])
        merged["containers"] += one["containers"]
        merged["nodes"] += [n for n in one["nodes"] if n not in merged["nodes"]]
    return merged


@click.command("stats")
@click.argument("services", nargs=-1, metavar="[SERVICE...]")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@output_option
@pass_options
def stats(options: GlobalOptions, services: tuple[str, ...], no_stream: bool) -> None:
    """The cluster's running containers by service: CPU, memory, PIDs (Ctrl-C ends it).

    The controller asks every node (each within a few seconds); one agent's containers
    are `dockyard -H AGENT container stats`."""
    from dockyard.cli.render import emit_data

    http = ControllerHttp(options.target())
    interactive = sys.stdout.isatty()
    try:
        while True:
            answer = _ask(http, services)
            if options.output != "table":
                emit_data(answer, options.output)
            else:
                click.echo(("\x1b[2J\x1b[H" if interactive else "") + render(answer))
            if no_stream:
                return
            sys.stdout.flush()
            time.sleep(INTERVAL)
    except KeyboardInterrupt:
        return
