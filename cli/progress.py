"""Pull and push progress: a bar per layer on a terminal, one line per change otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, TextIO

import click

__all__ = ["ImageProgressView", "follow_progress"]


class ImageProgressView:
    """Shows ImageProgress events; `rich` is imported only when it draws bars."""

    def __init__(self, out: TextIO, *, bars: bool | None = None) -> None:
        self.out = out
        self.bars = out.isatty() if bars is None else bars
        self._last: dict[str, tuple[str, str]] = {}
        self._tasks: dict[str, Any] = {}
        self._progress: Any = None

    def __enter__(self) -> ImageProgressView:
        if self.bars:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.fields[layer]}: {task.description:<16}"),
                BarColumn(),
                DownloadColumn(),
                console=Console(file=self.out),
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, event: Any) -> None:
        if event.done and event.HasField("image"):
            return
        status = event.status + (f" {event.message}" if event.message else "")
        if self._progress is None:
            if self._last.get(event.id) != (event.status, event.message):
                self._last[event.id] = (event.status, event.message)
                click.echo(f"{event.id}: {status}", file=self.out)
            return
        total = event.total or None
        task = self._tasks.get(event.id)
        if task is None:
            task = self._progress.add_task(status, layer=event.id, total=total)
            self._tasks[event.id] = task
        self._progress.update(task, description=status, completed=event.current, total=total)
        if event.status in ("done", "already exists", "pushed", "pull complete"):
            self._progress.update(task, completed=total or event.current)


def follow_progress(events: Iterable[Any], out: TextIO) -> Any:
    """Show every event; return the final ImageRecord (None if the stream had none)."""
    image = None
    with ImageProgressView(out) as view:
        for event in events:
            view.update(event)
            if event.done and event.HasField("image"):
                image = event.image
    return image
