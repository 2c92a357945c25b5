"""Commands that act on several references go on past a failure, as docker's do."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import click

from dockyard.cli.client import CliError

T = TypeVar("T")


def each_ref(refs: Iterable[str], action: Callable[[str], T]) -> tuple[list[T], bool]:
    """Run `action` on every reference; print each failure as one line.

    Returns the results of those that worked and whether any failed.
    """
    results: list[T] = []
    failed = False
    for ref in refs:
        try:
            results.append(action(ref))
        except CliError as exc:
            failed = True
            click.echo(f"dockyard: {exc.message}", err=True)
    return results, failed
