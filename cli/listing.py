"""List and inspect commands, once for one daemon or fanned out to many.

A command says how to ask one target (`fetch`: a `Listing`); this module asks every
target (concurrently, see fanout.py), then prints one table with a TARGET column
(or, as JSON/YAML, each record wrapped with its target), and a line on stderr for
each target that failed. The exit code is 1 when any target failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from dockyard.cli.client import CliError, Target
from dockyard.cli.fanout import Outcome, run_each
from dockyard.cli.options import GlobalOptions
from dockyard.cli.render import emit_data, emit_table, to_data

TARGET_HEADER = "TARGET"


@dataclass
class Listing:
    """What one target answered to a list command."""

    headers: Sequence[str]
    rows: list[list[str]]
    records: list[Any]
    """The whole records (protobuf messages or plain data) for -o json|yaml."""
    ids: list[str] = field(default_factory=list)
    """What -q prints, one per line."""
    names: Sequence[str] = ()
    """The --format field name of each column (docker's, e.g. `.ID`, `.Names`); by
    default the header in CamelCase (`DESIRED STATE` -> `.DesiredState`)."""

    def fields(self) -> list[dict[str, str]]:
        """Each row as --format sees it."""
        names = list(self.names) or [field_name(h) for h in self.headers]
        return [dict(zip(names, row, strict=True)) for row in self.rows]


def field_name(header: str) -> str:
    return "".join(word if word == "ID" else word.capitalize() for word in header.split())


def ask_all(options: GlobalOptions, fetch: Callable[[Target], Any]) -> list[Outcome[Any]]:
    """`fetch` on every target; with one target (and no fan-out) a failure raises as before."""
    targets = options.targets()
    if not options.many:
        return [Outcome(targets[0], value=fetch(targets[0]))]
    return run_each(targets, fetch, options.target_timeout, options.concurrency)


def report_failures(outcomes: Sequence[Outcome[Any]]) -> bool:
    """One stderr line per failed target, naming it and the cause; True if any failed."""
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        click.echo(f"dockyard: {outcome.target.label}: {outcome.error}", err=True)
    return bool(failed)


def finish(outcomes: Sequence[Outcome[Any]]) -> None:
    if report_failures(outcomes):
        sys.exit(1)


def show_listing(
    options: GlobalOptions, fetch: Callable[[Target], Listing], quiet: bool = False
) -> None:
    """Ask every target and print what they answered (see the module's docstring)."""
    outcomes = ask_all(options, fetch)
    answered = [(o.target, o.value) for o in outcomes if o.ok and o.value is not None]
    if quiet:
        for _, listing in answered:
            for ident in listing.ids:
                click.echo(ident)
    elif options.format and options.format != "table":
        _emit_formatted(options, answered)
    elif options.output != "table":
        if options.many:
            emit_data(
                [
                    {"target": t.label, "record": to_data(r)}
                    for t, listing in answered
                    for r in listing.records
                ],
                options.output,
            )
        else:
            emit_data(answered[0][1].records, options.output)
    elif not options.many:
        listing = answered[0][1]
        emit_table(listing.headers, listing.rows)
    elif answered:
        emit_table(*merge_tables([(t.label, listing) for t, listing in answered]))
    finish(outcomes)


def _emit_formatted(options: GlobalOptions, answered: Sequence[tuple[Target, Listing]]) -> None:
    from dockyard.cli.template import TemplateError, render_all

    assert options.format is not None
    text = options.format
    records = [
        {**({"Target": t.label} if options.many else {}), **row}
        for t, listing in answered
        for row in listing.fields()
    ]
    if options.many and text.startswith("table") and ".Target" not in text:
        text = "table {{.Target}}\t" + text[len("table") :].lstrip(" ")
    try:
        lines = render_all(text, records)
    except TemplateError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from exc
    for line in lines:
        click.echo(line)


def merge_tables(parts: Sequence[tuple[str, Listing]]) -> tuple[list[str], list[list[str]]]:
    """One table of several targets' listings: TARGET first; when targets answered with
    different columns (a controller and an agent), the union, in first-seen order."""
    headers: list[str] = []
    for _, listing in parts:
        headers += [h for h in listing.headers if h not in headers]
    rows = []
    for label, listing in parts:
        index = {h: i for i, h in enumerate(listing.headers)}
        rows += [
            [label, *(row[index[h]] if h in index else "" for h in headers)] for row in listing.rows
        ]
    return [TARGET_HEADER, *headers], rows


def show_records(
    options: GlobalOptions, refs: Sequence[str], get: Callable[[Target, str], Any]
) -> None:
    """`inspect`: the whole record of every reference (JSON unless -o yaml). A reference
    that one target lacks is one stderr line; the others still print."""
    output = "yaml" if options.output == "yaml" else "json"

    def fetch(target: Target) -> tuple[list[Any], list[str]]:
        found, missing = [], []
        for ref in refs:
            try:
                found.append(get(target, ref))
            except CliError as exc:
                missing.append(exc.message)
        return found, missing

    outcomes = ask_all(options, fetch)
    failed = report_failures(outcomes)
    data: list[Any] = []
    for outcome in outcomes:
        if outcome.value is None:
            continue
        found, missing = outcome.value
        for message in missing:
            failed = True
            prefix = f"{outcome.target.label}: " if options.many else ""
            click.echo(f"dockyard: {prefix}{message}", err=True)
        if options.many:
            data += [{"target": outcome.target.label, "record": to_data(r)} for r in found]
        else:
            data += found
    emit_data(data, output)
    if failed:
        sys.exit(1)
