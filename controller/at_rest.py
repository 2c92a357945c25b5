"""Secrets' data sealed at rest: AES-256-GCM under the first key of the key file.

A sealed value is `MAGIC, version byte, key id length, key id, 12-byte nonce,
ciphertext and 16-byte tag`. The nonce is fresh and random for every write; the
associated data is the header and the record's key (`secretdata/<id>`), so that a
ciphertext copied to another secret, or a header edited, does not open. A value
without MAGIC is a plaintext record written before encryption was turned on: it is
read as it is (the leader re-seals it). A value that does not open, or that names a
key the file does not hold, raises `SealedDataError` naming the key id: it is never
passed on as if it were the data.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dockyard.controller.encryption_keys import KeyRing
from dockyard.controller.records import Kind, StoreError

MAGIC = b"\x00dky:enc:"
VERSION_AES_GCM = 1
NONCE_BYTES = 12

__all__ = [
    "MAGIC",
    "SealedDataError",
    "SecretCipher",
    "data_record",
    "is_sealed",
    "sealed_key_id",
]


class SealedDataError(StoreError):
    """Stored secret data that this controller cannot open (the message says why)."""


def data_record(kind: Kind[Any], record_id: str) -> str:
    """The name a value is sealed for (its key without the cluster's prefix): what binds a
    ciphertext to its secret."""
    return f"{kind.name}/{record_id}"


def is_sealed(stored: bytes) -> bool:
    return stored.startswith(MAGIC)


def _split(record: str, stored: bytes) -> tuple[int, str, bytes, memoryview]:
    """The version, key id, header and the rest (nonce + ciphertext, not copied: secrets
    go up to 500 KiB) of a sealed value."""
    at = len(MAGIC)
    if len(stored) < at + 2:
        raise SealedDataError(f"{record}: sealed value truncated")
    version, id_length = stored[at], stored[at + 1]
    header_end = at + 2 + id_length
    key_id = stored[at + 2 : header_end].decode("ascii", errors="replace")
    if len(stored) < header_end + NONCE_BYTES + 16:
        raise SealedDataError(f"{record}: sealed value (key id {key_id!r}) truncated")
    return version, key_id, stored[:header_end], memoryview(stored)[header_end:]


def sealed_key_id(stored: bytes) -> str | None:
    """The id of the key a stored value was sealed with; None for plaintext."""
    if not is_sealed(stored):
        return None
    try:
        return _split("", stored)[1]
    except SealedDataError:
        return "(damaged)"


class SecretCipher:
    """Seals and opens secrets' data for the store; `keys=None`: encryption at rest is
    off (writes stay plaintext), but a sealed value is still recognised and refused."""

    def __init__(self, keys: KeyRing | None = None) -> None:
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def seal(self, record: str, data: bytes) -> bytes:
        """`data` as it is to be stored under `record` (e.g. `secretdata/<id>`)."""
        if self.keys is None:
            return data
        key = self.keys.write_key
        key_id = key.id.encode("ascii")
        header = MAGIC + bytes([VERSION_AES_GCM, len(key_id)]) + key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key.secret).encrypt(nonce, data, header + record.encode())
        return header + nonce + sealed

    def open(self, record: str, stored: bytes) -> bytes:
        """The data stored under `record`: plaintext as it is, a sealed value opened.

        Raises:
            SealedDataError: sealed with a key this controller lacks, with an unknown
                format version, or it does not open (damaged, or moved from another record).
        """
        if not is_sealed(stored):
            return stored
        version, key_id, header, rest = _split(record, stored)
        if version != VERSION_AES_GCM:
            raise SealedDataError(
                f"{record}: sealed with format version {version} (key id {key_id!r}); this "
                f"controller reads version {VERSION_AES_GCM}: a newer dockyard wrote it"
            )
        if self.keys is None:
            raise SealedDataError(
                f"{record}: encrypted at rest with key id {key_id!r}, and this controller "
                "has no --encryption-key-file: give it the cluster's key file"
            )
        key = self.keys.find(key_id)
        if key is None:
            raise SealedDataError(
                f"{record}: encrypted with key id {key_id!r}, which is not in "
                f"{self.keys.source or 'the key file'} (it holds {', '.join(self.keys.ids)})"
            )
        nonce, sealed = bytes(rest[:NONCE_BYTES]), rest[NONCE_BYTES:]
        try:
            return AESGCM(key.secret).decrypt(nonce, sealed, header + record.encode())
        except InvalidTag:
            raise SealedDataError(
                f"{record}: does not decrypt with key id {key_id!r}: the value was damaged "
                "or copied from another record"
            ) from None

    def current(self, stored: bytes) -> bool:
        """Whether `stored` is as a write now would store it (no re-seal needed)."""
        if self.keys is None:
            return True
        return sealed_key_id(stored) == self.keys.write_key.id
