"""The leader re-encrypts what is kept encrypted at rest under the key file's first key,
once a term: secrets' data (`secretdata/<id>`) and services' registry credentials
(`registryauth/<service id>`).

What it re-seals: plaintext values written before `--encryption-key-file` was given,
and values sealed with a key that is no longer first (a rotation). Each write compares
the value's mod_revision (a value removed or replaced meanwhile is left alone) and is
fenced like every write of the term. A value this controller cannot open (a key missing
from its file) is logged, counted and left as it is; the pass goes on with the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from dockyard.controller.at_rest import SealedDataError, SecretCipher, data_record, sealed_key_id
from dockyard.controller.store import (
    REGISTRY_AUTHS,
    SECRET_DATA,
    SECRETS,
    SERVICES,
    Conflict,
    Kind,
    Store,
)

log = structlog.get_logger(__name__)

__all__ = ["RewrapResult", "SecretRewrapper", "rewrap_all"]


@dataclass
class RewrapResult:
    rewrapped: int = 0
    current: int = 0  # already under the first key
    failed: list[str] = field(default_factory=list)  # records that do not open
    before: Counter[str] = field(default_factory=Counter)  # key id ("plaintext") -> count


async def _sealed_ids(store: Store) -> list[tuple[Kind[Any], str]]:
    """Every value kept encrypted at rest: each secret's data, each service's credentials."""
    secrets, _ = await store.list_all(SECRETS)
    services, _ = await store.list_all(SERVICES)
    return [(SECRET_DATA, s.id) for s in secrets] + [
        (REGISTRY_AUTHS, s.id) for s in services if s.registry_auth
    ]


async def _rewrap_one(
    store: Store, cipher: SecretCipher, kind: Kind[Any], record_id: str, result: RewrapResult
) -> None:
    found = await store.get_raw(kind, record_id)
    if found is None:  # removed since the list
        return
    stored, revision = found
    result.before[sealed_key_id(stored) or "plaintext"] += 1
    if cipher.current(stored):
        result.current += 1
        return
    name = data_record(kind, record_id)
    try:
        data = cipher.open(name, stored)
    except SealedDataError as exc:
        result.failed.append(name)
        log.error("secrets.rewrap_failed", record=name, error=str(exc))
        return
    op = store.raw_op(kind, record_id, cipher.seal(name, data), expect=revision)
    try:
        await store.commit([op])
    except Conflict:  # removed or replaced meanwhile: the new value is sealed already
        return
    result.rewrapped += 1


async def rewrap_all(store: Store, cipher: SecretCipher) -> RewrapResult:
    """Re-seal every value that is not under the first key (`store`: the term's fenced
    store). One value is in memory at a time."""
    result = RewrapResult()
    if not cipher.enabled:
        return result
    for kind, record_id in await _sealed_ids(store):
        await _rewrap_one(store, cipher, kind, record_id, result)
    return result


class SecretRewrapper:
    """The term loop: one pass when the term starts, then idle until the term ends."""

    def __init__(self, store: Store, cipher: SecretCipher) -> None:
        self._store = store
        self._cipher = cipher

    async def run(self) -> None:
        result = await rewrap_all(self._store, self._cipher)
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
