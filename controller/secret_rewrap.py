"""The leader re-encrypts secrets' data under the key file's first key, once a term.

What it re-seals: plaintext data written before `--encryption-key-file` was given, and
data sealed with a key that is no longer first (a rotation). Each write compares the
value's mod_revision (a secret removed meanwhile is left alone) and is fenced like
every write of the term. A value this controller cannot open (a key missing from its
file) is logged, counted and left as it is; the pass goes on with the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import structlog

from dockyard.controller.at_rest import SealedDataError, SecretCipher, data_record, sealed_key_id
from dockyard.controller.store import SECRET_DATA, SECRETS, Conflict, Store

log = structlog.get_logger(__name__)

__all__ = ["RewrapResult", "SecretRewrapper", "rewrap_secrets"]


@dataclass
class RewrapResult:
    rewrapped: int = 0
    current: int = 0  # already under the first key
    failed: list[str] = field(default_factory=list)  # secret ids that do not open
    before: Counter[str] = field(default_factory=Counter)  # key id ("plaintext") -> count


async def rewrap_secrets(store: Store, cipher: SecretCipher) -> RewrapResult:
    """Re-seal every secret's data that is not under the first key (`store`: the term's
    fenced store). One secret's data is in memory at a time."""
    result = RewrapResult()
    if not cipher.enabled:
        return result
    records, _ = await store.list_all(SECRETS)
    for record in records:
        found = await store.get_raw(SECRET_DATA, record.id)
        if found is None:  # removed since the list
            continue
        stored, revision = found
        result.before[sealed_key_id(stored) or "plaintext"] += 1
        if cipher.current(stored):
            result.current += 1
            continue
        name = data_record(SECRET_DATA, record.id)
        try:
            data = cipher.open(name, stored)
        except SealedDataError as exc:
            result.failed.append(record.id)
            log.error("secrets.rewrap_failed", secret_id=record.id, error=str(exc))
            continue
        op = store.raw_op(SECRET_DATA, record.id, cipher.seal(name, data), expect=revision)
        try:
            await store.commit([op])
        except Conflict:  # removed meanwhile (secret data never changes otherwise)
            continue
        result.rewrapped += 1
    return result


class SecretRewrapper:
    """The term loop: one pass when the term starts, then idle until the term ends."""

    def __init__(self, store: Store, cipher: SecretCipher) -> None:
        self._store = store
        self._cipher = cipher

    async def run(self) -> None:
        result = await rewrap_secrets(self._store, self._cipher)
        keys = self._cipher.keys
        log.info(
            "secrets.rewrapped",
            rewrapped=result.rewrapped,
            current=result.current,
            failed=len(result.failed),
            found=dict(result.before),
            key_id=keys.write_key.id if keys is not None else "",
        )
        await asyncio.Event().wait()  # a term loop runs until the term ends
