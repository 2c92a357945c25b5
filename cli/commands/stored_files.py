"""What `dockyard secret` and `dockyard config` share: both store small named files in
the cluster (at most 500 KiB each) that services mount; they differ in who may read the
data back, which stays in their own modules."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import CliError, Target
from dockyard.cli.options import GlobalOptions
from dockyard.cli.render import to_data

MAX_DATA_BYTES = 500 * 1024
FILTER_KEYS = ("id", "name", "label")


def checked_labels(name: str, labels: tuple[str, ...]) -> dict[str, str]:
    """``--label`` pairs, after checking NAME; a bad one is the flag's error."""
    from dockyard.common.validation import ValidationError, check_name, parse_label

    try:
        check_name("NAME", name)
        return dict(parse_label("--label", text) for text in labels)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc


def read_data(file: str, kind: str) -> bytes:
    """FILE's bytes (``-``: standard input), refused when empty or above 500 KiB."""
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_DATA_BYTES + 1)
        else:
            with Path(file).open("rb") as source:
                data = source.read(MAX_DATA_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if not data:
        raise CliError(f"{'standard input' if file == '-' else file} is empty: a {kind} needs data")
    if len(data) > MAX_DATA_BYTES:
        raise CliError(f"{file}: a {kind} is at most {MAX_DATA_BYTES} bytes (500 KiB)")
    return data


def show_list(
    options: GlobalOptions,
    filters: tuple[str, ...],
    quiet: bool,
    records_of: Callable[[Target], Iterable[Any]],
) -> None:
    """`ls`: ID, NAME, SIZE and CREATED of the records that match ``--filter``."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing, show_listing

    wanted = Filters(filters, FILTER_KEYS)

    def fetch(target: Target) -> Listing:
        records = [
            r
            for r in records_of(target)
            if wanted.prefix("id", r.id)
            and wanted.substring("name", r.spec.name)
            and wanted.labels(r.spec.labels)
        ]
        rows = [
            [r.id, r.spec.name, str(r.size_bytes), to_data(r.meta).get("created_at", "")]
            for r in records
        ]
        return Listing(
            ["ID", "NAME", "SIZE", "CREATED"],
            rows,
            records,
            [r.id for r in records],
            ["ID", "Name", "Size", "CreatedAt"],
        )

    show_listing(options, fetch, quiet)


def remove_each(
    options: GlobalOptions, names: tuple[str, ...], remove: Callable[[Target, str], Any]
) -> None:
    """`rm`: each name printed once removed; exit 1 when any was refused."""
    target = options.target()

    def remove_one(name: str) -> None:
        remove(target, name)
        click.echo(name)

    if each_ref(names, remove_one)[1]:
        sys.exit(1)
