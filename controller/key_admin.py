"""`dockyard-controller encryption-key ls | add`: the key file of secrets at rest, offline.

A rotation (docs/secrets.md): `add FILE` (the new key last: it only decrypts), the file
copied to every controller and each restarted; then `promote FILE KEY_ID`, copied and
restarted again: the leader re-encrypts every secret with the new key; then the old key
can be removed (`remove FILE KEY_ID`).
"""

from __future__ import annotations

from pathlib import Path

import click

from dockyard.controller.encryption_keys import (
    KeyFileError,
    add_key,
    create_key_file,
    load_key_file,
    promote_key,
    remove_key,
)

_FILE = click.argument("key_file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("encryption-key")
def encryption_key() -> None:
    """The key file of --encryption-key-file (secrets encrypted at rest)."""


@encryption_key.command("create")
@_FILE
def create(key_file: Path) -> None:
    """Make FILE with one generated key (0600, written atomically); refused if it exists."""
    try:
        ring = create_key_file(key_file)
    except (KeyFileError, OSError) as exc:
        raise _fail(exc) from exc
    click.echo(ring.write_key.id)


@encryption_key.command("ls")
@_FILE
def list_keys(key_file: Path) -> None:
    """The key ids of FILE, the one that encrypts first (never the keys)."""
    try:
        ring = load_key_file(key_file)
    except KeyFileError as exc:
        raise _fail(exc) from exc
    for index, key_id in enumerate(ring.ids):
        click.echo(f"{key_id}\t{'encrypts and decrypts' if index == 0 else 'decrypts'}")


@encryption_key.command("add")
@_FILE
@click.option(
    "--first",
    is_flag=True,
    help="Make the new key the one that encrypts at once (safe with one controller only).",
)
def add(key_file: Path, first: bool) -> None:
    """Add a generated key to FILE (last: it decrypts only, until promoted)."""
    try:
        key = add_key(key_file, first=first)
    except KeyFileError as exc:
        raise _fail(exc) from exc
    click.echo(key.id)


@encryption_key.command("promote")
@_FILE
@click.argument("key_id")
def promote(key_file: Path, key_id: str) -> None:
    """Move KEY_ID first in FILE: after a restart, new secrets and the leader's
    re-encryption use it."""
    try:
        promote_key(key_file, key_id)
    except KeyFileError as exc:
        raise _fail(exc) from exc
    click.echo(f"{key_id} encrypts (restart the controller to use it)")


@encryption_key.command("remove")
@_FILE
@click.argument("key_id")
def remove(key_file: Path, key_id: str) -> None:
    """Remove KEY_ID from FILE (not the first key): only once no secret is encrypted with
    it (the leader logs secrets.rewrapped with what it found, by key id)."""
    try:
        remove_key(key_file, key_id)
    except KeyFileError as exc:
        raise _fail(exc) from exc
    click.echo(f"{key_id} removed")
