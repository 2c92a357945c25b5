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
    format: str | None = None
    _resolved: list[Target] | None = field(default=None, init=False, repr=False)

    def targets(self) -> list[Target]:
        if self._resolved is None:
            self._resolved = resolve_targets(self.hosts, self.context, self.tls, self.all_contexts)
        return self._resolved

    @property
    def many(self) -> bool:
        """The call fans out: output names each answer's target."""
        return self.all_contexts or len(self.targets()) > 1

    def target(self) -> Target:
        targets = self.targets()
        if len(targets) > 1:
            raise click.UsageError("this command addresses one daemon: give one -H or one context")
        return targets[0]


pass_options = click.make_pass_decorator(GlobalOptions)


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(GlobalOptions).output = value


def output_option(command: F) -> F:
    """`-o` on the command itself, so `dockyard node ls -o json` works as well as
    `dockyard -o json node ls`."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default=None,
        expose_value=False,
        callback=_set_output,
        help="Output format: table, json or yaml.",
    )(command)


def _set_format(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    if value not in ("table", "json"):
        from dockyard.cli.template import TemplateError, parse

        try:
            parse(value)
        except TemplateError as exc:
            raise click.BadParameter(str(exc)) from exc
    ctx.ensure_object(GlobalOptions).format = value


def format_option(command: F) -> F:
    """`--format`: `table`, `json` (a JSON object per line) or a Go template over the
    listed fields (`{{.Name}}`, `{{json .}}`, `table {{.ID}}\\t{{.Name}}`)."""
    return click.option(
        "--format",
        default=None,
        expose_value=False,
        callback=_set_format,
        metavar="FORMAT",
        help="table, json, or a Go template: '{{.Name}}', '{{json .}}', "
        "'table {{.ID}}\\t{{.Name}}' (see docs/cli-format.md).",
    )(command)
