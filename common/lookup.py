"""How a reference names one of many records, as docker resolves them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def match_reference(
    ref: str, items: Iterable[T], id_of: Callable[[T], str], name_of: Callable[[T], str]
) -> list[T]:
    """The records `ref` names: the one whose ID is `ref`, else the one whose name
    is `ref`, else every record whose ID starts with `ref` (one is a match, more
    are ambiguous). Empty when nothing matches."""
    records = list(items)
    for exact in (id_of, name_of):
        found = [r for r in records if exact(r) == ref]
        if found:
            return found[:1]
    return [r for r in records if id_of(r).startswith(ref)]
