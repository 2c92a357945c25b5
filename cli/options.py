"""The global options every command reads: targets and output format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from dockyard.cli.client import Target, TLSFiles, resolve_targets
from dockyard.cli.render import FORMATS

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class GlobalOptions:
    hosts: tuple[str, ...]
    context: str | None
    output: str
    tls: TLSFiles | None = None

    def targets(self) -> list[Target]:
        return resolve_targets(self.hosts, self.context, self.tls)

    def target(self) -> Target:
        targets = self.targets()
        if len(targets) > 1:
            raise click.UsageError("this command addresses one daemon: give -H once")
        return targets[0]


pass_options = click.make_pass_decorator(GlobalOptions)


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(GlobalOptions).output = value


def output_option(command: F) -> F:
    """`-o` on the command itself, so `dockyard node ls -o json` works as well as
    `dockyard -o json node ls`."""
    return click.option(
        "-o", "--output", type=click.Choice(FORMATS), default=None, expose_value=False,
        callback=_set_output, help="Output format: table, json or yaml.",
    )(command)
