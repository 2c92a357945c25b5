"""The global options every command reads: targets and output format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from dockyard.cli.client import Target, TLSFiles, resolve_targets
from dockyard.cli.render import FORMATS

F = TypeVar("F", bound=Callable[..., Any])


DEFAULT_TARGET_TIMEOUT = 20.0


@dataclass
class GlobalOptions:
    hosts: tuple[str, ...]
    context: str | None
    output: str
    tls: TLSFiles | None = None
    all_contexts: bool = False
    target_timeout: float = DEFAULT_TARGET_TIMEOUT
    concurrency: int = 8
    _resolved: list[Target] | None = field(default=None, init=False, repr=False)

    def targets(self) -> list[Target]:
        if self._resolved is None:
            self._resolved = resolve_targets(self.hosts, self.context, self.tls,
                                             self.all_contexts)  # fmt: skip
        return self._resolved

    @property
    def many(self) -> bool:
        """The call fans out: output names each answer's target."""
        return self.all_contexts or len(self.targets()) > 1

    def target(self) -> Target:
        targets = self.targets()
        if len(targets) > 1:
            raise click.UsageError(
                "this command addresses one daemon: give one -H or one context")
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
