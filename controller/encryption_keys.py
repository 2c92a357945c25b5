"""The key file of `--encryption-key-file`: named 256-bit keys that seal secrets at rest.

One key a line, `ID BASE64` (32 bytes once decoded), `#` comments and blank lines
ignored. As in Kubernetes' EncryptionConfiguration, the first key seals every new
write and every key opens what it sealed: rotating is adding a key first, restarting
the controllers, and letting the leader re-seal (controller/secret_rewrap.py). The file
must be readable by its owner only; a file that is not, or that does not parse, is
refused with an error naming the file, the line and the problem (never the key).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import secrets as token_source
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dockyard.common.statedir import write_private

KEY_BYTES = 32  # AES-256
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_FILE_BYTES = 64 * 1024
HEADER = (
    "# dockyard-controller --encryption-key-file: one key a line, `ID BASE64` (32 bytes).\n"
    "# The first key encrypts new secrets; every key decrypts. Keep this file 0600 and\n"
    "# the same on every controller (docs/secrets.md, Encryption at rest).\n"
)

__all__ = [
    "KEY_BYTES",
    "DataKey",
    "KeyFileError",
    "KeyRing",
    "add_key",
    "create_key_file",
    "load_key_file",
    "new_key_id",
    "parse_keys",
    "promote_key",
    "remove_key",
]


class KeyFileError(ValueError):
    """The key file is missing, too open, or malformed (the message says which)."""


@dataclass(frozen=True)
class DataKey:
    id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyRing:
    """The keys of one file, in its order: `keys[0]` seals, each opens."""

    keys: tuple[DataKey, ...]
    source: str = ""  # the file, for messages

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyFileError(f"{self.source or 'key ring'}: no key")

    @property
    def write_key(self) -> DataKey:
        return self.keys[0]

    @property
    def ids(self) -> list[str]:
        return [k.id for k in self.keys]

    def find(self, key_id: str) -> DataKey | None:
        return next((k for k in self.keys if k.id == key_id), None)


def parse_keys(text: str, source: str) -> KeyRing:
    """The keys of a key file's text; KeyFileError naming `source` and the line."""
    keys: list[DataKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.strip()
        if not content or content.startswith("#"):
            continue
        where = f"{source}, line {number}"
        fields = content.split()
        if len(fields) != 2:
            raise KeyFileError(f"{where}: expected `ID BASE64`, found {len(fields)} fields")
        key_id, encoded = fields
        if not KEY_ID.fullmatch(key_id):
            raise KeyFileError(
                f"{where}: key id {key_id[:70]!r} must be 1-64 of [A-Za-z0-9_.-], "
                "starting with a letter or digit"
            )
        try:
            secret = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise KeyFileError(f"{where}: the key of {key_id!r} is not base64") from None
        if len(secret) != KEY_BYTES:
            raise KeyFileError(
                f"{where}: the key of {key_id!r} is {len(secret)} bytes, must be {KEY_BYTES} "
                "(head -c 32 /dev/urandom | base64)"
            )
        if any(k.id == key_id for k in keys):
            raise KeyFileError(f"{where}: key id {key_id!r} appears twice")
        keys.append(DataKey(key_id, secret))
    if not keys:
        raise KeyFileError(f"{source}: no key in the file")
    return KeyRing(tuple(keys), source)


def _check_private(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    loose = stat.S_IMODE(status.st_mode) & 0o077
    if loose:
        raise KeyFileError(
            f"{path}: mode {stat.S_IMODE(status.st_mode):04o} lets its group or others "
            f"read or write the keys; it must be 0600 or stricter (chmod 600 {path})"
        )


def load_key_file(path: Path) -> KeyRing:
    """The keys of `path`, refused unless it is a private, well-formed key file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        _check_private(path, os.fstat(file.fileno()))
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes: not a key file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not ASCII text: not a key file") from None
    return parse_keys(text, str(path))


def new_key_id(now: dt.datetime | None = None) -> str:
    """A key id that says when the key was made: key-YYYYMMDD-XXXX."""
    when = now or dt.datetime.now(dt.UTC)
    return f"key-{when:%Y%m%d}-{token_source.token_hex(2)}"


def _line(key: DataKey) -> str:
    return f"{key.id} {base64.b64encode(key.secret).decode()}\n"


def _write_keys(path: Path, keys: Sequence[DataKey]) -> None:
    write_private(path, (HEADER + "".join(_line(k) for k in keys)).encode("ascii"))


def create_key_file(path: Path) -> KeyRing:
    """A new key file with one generated key; KeyFileError if `path` exists."""
    if path.exists() or path.is_symlink():
        raise KeyFileError(f"{path}: already exists")
    key = DataKey(new_key_id(), token_source.token_bytes(KEY_BYTES))
    _write_keys(path, (key,))
    return KeyRing((key,), str(path))


def add_key(path: Path, *, first: bool) -> DataKey:
    """Add a generated key to an existing key file: first (it then encrypts) or last
    (every controller can then decrypt with it before one encrypts with it)."""
    ring = load_key_file(path)
    key = DataKey(new_key_id(), token_source.token_bytes(KEY_BYTES))
    while ring.find(key.id) is not None:
        key = DataKey(new_key_id(), key.secret)
    keys = (key, *ring.keys) if first else (*ring.keys, key)
    _write_keys(path, keys)
    return key


def promote_key(path: Path, key_id: str) -> None:
    """Move `key_id` first in the key file: it then encrypts."""
    ring = load_key_file(path)
    key = ring.find(key_id)
    if key is None:
        raise KeyFileError(f"{path}: no key {key_id!r} (it holds {', '.join(ring.ids)})")
    keys = (key, *(k for k in ring.keys if k.id != key_id))
    _write_keys(path, keys)


def remove_key(path: Path, key_id: str) -> None:
    """Remove a key that does not encrypt from the key file."""
    ring = load_key_file(path)
    if ring.find(key_id) is None:
        raise KeyFileError(f"{path}: no key {key_id!r} (it holds {', '.join(ring.ids)})")
    if ring.write_key.id == key_id:
        raise KeyFileError(f"{path}: {key_id!r} is the key that encrypts: promote another first")
    keys = [k for k in ring.keys if k.id != key_id]
    _write_keys(path, keys)
