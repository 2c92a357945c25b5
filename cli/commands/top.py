"""`dockyard top`: a live terminal view of the cluster (nodes, services, pending tasks
with their reasons), redrawn from the controller's event stream with rich's Live.

It opens the stream first, loads the lists when the stream says it is ready, then
applies each event as it comes (`top_model.ClusterModel`); the screen is redrawn at
most REFRESH times a second. A lost stream is opened again, and the lists loaded again."""

from __future__ import annotations

import threading
import time
from typing import Any

import click

from dockyard.cli.client import CliError
from dockyard.cli.commands.controller_http import ControllerHttp
from dockyard.cli.commands.top_model import ClusterModel
from dockyard.cli.options import GlobalOptions, pass_options

__all__ = ["render", "top"]

REFRESH = 4
RETRY_SECONDS = 2.0


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f}"


def render(model: ClusterModel, height: int = 40, note: str = "") -> Any:
    """The screen: three tables, each cut to its share of `height` lines."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    share = max(3, (height - 12) // 3)
    nodes = Table(title=f"Nodes ({len(model.nodes)})", title_justify="left", expand=True)
    for column in ("NAME", "STATE", "AVAILABILITY", "TASKS", "CPU RESERVED", "MEMORY GiB"):
        nodes.add_column(column, no_wrap=True)
    node_rows = model.node_rows()
    for n in node_rows[:share]:
        style = "" if n.state == "READY" else "red"
        nodes.add_row(
            n.name,
            Text(n.state, style=style),
            n.availability,
            str(n.tasks),
            f"{n.cpus_reserved:g} / {n.cpus:g}",
            f"{_gib(n.memory_reserved)} / {_gib(n.memory)}",
        )
    services = Table(title=f"Services ({len(model.services)})", title_justify="left", expand=True)
    for column in ("NAME", "MODE", "REPLICAS"):
        services.add_column(column, no_wrap=True, min_width=len(column))
    # the image without its pinned digest (as `service ls` shows it), cut before the names are
    services.add_column("IMAGE", no_wrap=True, overflow="ellipsis", max_width=40)
    services.add_column("UPDATE")
    service_rows = model.service_rows()
    for s in service_rows[:share]:
        style = "yellow" if s.running < s.desired else ""
        services.add_row(
            s.name,
            s.mode,
            Text(f"{s.running}/{s.desired}", style=style),
            s.image.split("@", 1)[0],
            s.update,
        )
    pending_rows = model.pending_rows()
    pending = Table(title=f"Pending tasks ({len(pending_rows)})", title_justify="left", expand=True)
    for column in ("TASK", "STATE", "REASON"):
        pending.add_column(column, no_wrap=column != "REASON")
    for p in pending_rows[:share]:
        pending.add_row(p.task, Text(p.state, style="yellow"), p.reason)
    more = [
        f"{len(rows) - share} more {what}"
        for what, rows in (
            ("nodes", node_rows),
            ("services", service_rows),
            ("pending tasks", pending_rows),
        )
        if len(rows) > share
    ]
    footer = Text(
        " · ".join([f"{model.events} events", *more, *([note] if note else [])]), style="dim"
    )
    return Group(nodes, services, pending, footer)


class _Follower:
    """Reads the event stream in a thread and keeps the model; the screen polls it."""

    def __init__(self, http: ControllerHttp, target: Any) -> None:
        self.model = ClusterModel()
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.note = "connecting…"
        self.loaded = threading.Event()
        self.failure: CliError | None = None
        self._http = http
        self._target = target

    def load(self) -> None:
        nodes, services, tasks = (
            self._http.get(p) for p in ("/v1/nodes", "/v1/services", "/v1/tasks")
        )
        with self.lock:
            self.model.load(nodes, services, tasks)
        self.loaded.set()

    def run(self, once: bool) -> None:
        from dockyard.cli.commands.events import stream_events

        while True:
            try:
                for event in stream_events(self._target, None):
                    if "kind" not in event:  # `ready`: the stream is open, load the lists
                        self.load()
                        self.note = "live"
                        if once:
                            return
                    else:
                        with self.lock:
                            self.model.apply(event)
                    self.changed.set()
            except CliError as exc:
                if not self.loaded.is_set():  # never got going: say why and stop
                    self.failure = exc
                    self.changed.set()
                    return
                self.note = f"reconnecting: {exc.message}"
                self.changed.set()
            time.sleep(RETRY_SECONDS)


@click.command("top")
@click.option("--once", is_flag=True, help="Print one screen and exit (no live view).")
@pass_options
def top(options: GlobalOptions, once: bool) -> None:
    """A live view of nodes, services and pending tasks with their reasons (Ctrl-C ends).

    Redrawn from the controller's event stream, for people who do not open a browser."""
    from rich.console import Console
    from rich.live import Live

    target = options.target()
    follower = _Follower(ControllerHttp(target), target)
    console = Console()
    if once:
        follower.run(once=True)
        if follower.failure is not None:
            raise follower.failure
        console.print(render(follower.model, console.size.height))
        return
    reader = threading.Thread(target=follower.run, args=(False,), daemon=True)
    reader.start()
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                follower.changed.wait(1.0)
                follower.changed.clear()
                if follower.failure is not None:
                    break
                with follower.lock:
                    screen = render(follower.model, console.size.height, follower.note)
                live.update(screen, refresh=True)
                time.sleep(1 / REFRESH)
    except KeyboardInterrupt:
        return
    if follower.failure is not None:
        raise follower.failure
