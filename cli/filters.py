"""`--filter KEY=VALUE` on list commands, with docker's keys and semantics.

The same key given twice matches either value; different keys must all match;
`label` filters must all match (`label=K` the key present, `label=K=V` that value).
Each command names the keys it knows; any other key is an error naming them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
MAX_FILTERS = 64


class Filters:
    """Parsed --filter values by key."""

    def __init__(self, items: Sequence[str], allowed: Sequence[str]) -> None:
        if len(items) > MAX_FILTERS:
            raise click.BadParameter(f"at most {MAX_FILTERS} filters", param_hint="--filter")
        self.values: dict[str, list[str]] = {}
        for item in items:
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not key:
                raise click.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--filter")
            if key not in allowed:
                raise click.BadParameter(
                    f"unknown filter {key!r} (known: {', '.join(allowed)})", param_hint="--filter"
                )
            self.values.setdefault(key, []).append(value)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str) -> list[str]:
        return self.values.get(key, [])

    def exact(self, key: str, *actual: str) -> bool:
        """No such filter, or one of its values equals one of `actual`."""
        return key not in self.values or any(v in actual for v in self.values[key])

    def prefix(self, key: str, actual: str) -> bool:
        """IDs: a value that is a prefix of `actual`."""
        return key not in self.values or any(actual.startswith(v) for v in self.values[key])

    def substring(self, key: str, actual: str) -> bool:
        """Names, as docker matches them: a value contained in `actual`."""
        return key not in self.values or any(v in actual for v in self.values[key])

    def glob(self, key: str, *actual: str) -> bool:
        """`reference=busybox:*`: a shell pattern matching one of `actual`."""
        return key not in self.values or any(
            fnmatch.fnmatchcase(a, v) for v in self.values[key] for a in actual
        )

    def labels(self, labels: Mapping[str, str], key: str = "label") -> bool:
        """Every label filter holds (K present, or K=V)."""
        for wanted in self.values.get(key, []):
            name, eq, value = wanted.partition("=")
            if name not in labels or (eq and labels[name] != value):
                return False
        return True

    def flag(self, key: str) -> bool | None:
        """A true/false filter (dangling=true); None when not given."""
        if key not in self.values:
            return None
        values = {v.lower() for v in self.values[key]}
        if not values <= {"true", "false", "1", "0"} or len(values) > 1:
            raise click.BadParameter(f"{key} takes true or false", param_hint="--filter")
        return values.pop() in ("true", "1")


def filter_option(keys: Sequence[str]) -> Callable[[F], F]:
    """`-f/--filter KEY=VALUE` (repeatable), documenting the keys."""
    return click.option(
        "-f",
        "--filter",
        "filters",
        multiple=True,
        metavar="KEY=VALUE",
        help=f"Only matching items; keys: {', '.join(keys)} (repeat to add).",
    )
