"""Click options made from the settings table, and their values back out of kwargs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dockyard.cli.commands.service_spec import SETTINGS, Setting, apply_list_edits

if TYPE_CHECKING:
    from dockyard.v1.control_pb2 import ResolveImage

__all__ = [
    "apply_edits",
    "list_edits",
    "resolve_mode",
    "resolve_option",
    "setting_options",
    "setting_values",
]

F = TypeVar("F", bound=Callable[..., Any])
PREFIX = "set_"


def _dest(setting: Setting, suffix: str = "") -> str:
    return PREFIX + setting.flag.replace("-", "_") + suffix


def _options(setting: Setting, where: str) -> list[Callable[[F], F]]:
    names = [f"--{setting.flag}"] + ([f"-{setting.short}"] if setting.short else [])
    if setting.is_list and where == "update":
        return [
            click.option(
                f"--{setting.flag}-add",
                _dest(setting, "_add"),
                multiple=True,
                metavar=setting.metavar,
                help=f"Add: {setting.help}",
            ),
            click.option(
                f"--{setting.flag}-rm",
                _dest(setting, "_rm"),
                multiple=True,
                metavar="KEY",
                help="Remove one (by key or as written).",
            ),
        ]
    if setting.is_list:
        return [
            click.option(
                *names,
                _dest(setting),
                multiple=True,
                metavar=setting.metavar,
                help=f"{setting.help} (repeatable)",
            )
        ]
    if setting.is_bool and where == "update" and not setting.flag.startswith("no-"):
        return [
            click.option(
                *([f"-{setting.short}"] if setting.short else []),
                f"--{setting.flag}/--no-{setting.flag}",
                _dest(setting),
                default=None,
                help=setting.help,
            )
        ]
    if setting.is_bool:
        return [click.option(*names, _dest(setting), is_flag=True, help=setting.help)]
    return [
        click.option(
            *names, _dest(setting), default=None, metavar=setting.metavar, help=setting.help
        )
    ]


def setting_options(where: str) -> Callable[[F], F]:
    """Every setting that makes sense for `where` (create, update or job), as options."""

    def decorate(command: F) -> F:
        decorators = [d for s in SETTINGS if where in s.where for d in _options(s, where)]
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def setting_values(kwargs: dict[str, Any], *, update: bool = False) -> dict[str, Any]:
    """The settings given on the command line (flag name -> value), removed from kwargs.
    An unset on/off flag is False for create, None for update (where False is `--no-X`)."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = kwargs.pop(_dest(setting), None)
        if value is None or value == ():
            continue
        if value is False and (not update or setting.flag.startswith("no-")):
            continue
        values[setting.flag] = value
    return values


def list_edits(kwargs: dict[str, Any]) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """`--X-add` / `--X-rm` of `service update`, removed from kwargs."""
    edits = []
    for setting in SETTINGS:
        if not setting.is_list:
            continue
        add = kwargs.pop(_dest(setting, "_add"), ())
        remove = kwargs.pop(_dest(setting, "_rm"), ())
        if add or remove:
            edits.append((setting.flag, tuple(add), tuple(remove)))
    return edits


def apply_edits(spec: Any, edits: list[tuple[str, tuple[str, ...], tuple[str, ...]]]) -> None:
    for flag, add, remove in edits:
        apply_list_edits(spec, flag, add, remove)


def resolve_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--resolve-image",
        type=click.Choice(["always", "changed", "never"]),
        default=None,
        help="Pin the image tag to the digest the registry serves now, so every task runs "
        "the same bytes [the controller's --resolve-image, always by default].",
    )(command)


def resolve_mode(choice: str | None) -> ResolveImage.ValueType:
    """The ResolveImage value of a --resolve-image choice (unset: the controller's)."""
    from dockyard.v1.control_pb2 import ResolveImage

    return ResolveImage.Value(choice.upper()) if choice else ResolveImage.RESOLVE_IMAGE_UNSPECIFIED
