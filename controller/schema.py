"""The schema version of the cluster's records in etcd, and its forward migrations.

etcd holds one record, `PREFIX/meta/schema`: the schema version the records are in, the
oldest schema version whose controllers can still read them (`readable_by`) and the
Dockyard version that wrote it. Every controller checks it at start and refuses to run
when its own SCHEMA_VERSION is older than `readable_by` (a downgrade across an
incompatible change). The leader, once per term, runs the migrations from the stored
version up to its own, each then recorded with a fenced write that also compares the
schema record's revision: a migration runs once, by the one controller that leads.

A migration must be idempotent (a leader may die after migrating, before recording)
and must leave records that controllers of `readable_by` and newer still read: that is
what lets controllers of two adjacent versions share a cluster during a rolling upgrade
(docs/upgrades.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from dockyard.common.version import package_version
from dockyard.controller.store import Conflict, Kind, Store, StoreError
from dockyard.v1 import types_pb2

log = structlog.get_logger("dockyard.controller.schema")

# Only raw reads and writes use it: the message type is never decoded.
META: Kind[types_pb2.Cluster] = Kind("meta", types_pb2.Cluster)
SCHEMA_RECORD = "schema"
MAX_RECORD_BYTES = 4096


class SchemaError(StoreError):
    """The stored schema cannot be read by this controller, or its record is damaged."""


@dataclass(frozen=True)
class Migration:
    """From `version - 1` to `version`; afterwards, controllers of schema `readable_by`
    or newer can read the records."""

    version: int
    readable_by: int
    description: str
    apply: Callable[[Store], Awaitable[None]]


@dataclass(frozen=True)
class SchemaState:
    version: int
    readable_by: int
    written_by: str
    revision: int  # the record's mod_revision; 0 when there is none


async def _record_version(store: Store) -> None:
    """Clusters made before the schema record had none: version 1 is that layout."""


MIGRATIONS: tuple[Migration, ...] = (Migration(1, 0, "record the schema version", _record_version),)
SCHEMA_VERSION = MIGRATIONS[-1].version


async def read(store: Store) -> SchemaState:
    """The stored schema record; version 0 (the layout before it) when there is none."""
    found = await store.get_raw(META, SCHEMA_RECORD)
    if found is None:
        return SchemaState(0, 0, "", 0)
    raw, revision = found
    try:
        data = json.loads(raw[:MAX_RECORD_BYTES])
        state = SchemaState(
            int(data["version"]),
            int(data["readable_by"]),
            str(data.get("written_by", "")),
            revision,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SchemaError(
            f"the schema record in etcd ({store.prefix}/meta/schema) is "
            f"damaged: {exc}; restore etcd from a backup"
        ) from exc
    if not 0 <= state.readable_by <= state.version:
        raise SchemaError(
            f"the schema record in etcd says version {state.version}, "
            f"readable by {state.readable_by}: damaged; restore etcd from a "
            "backup"
        )
    return state


def check_readable(state: SchemaState, own: int = SCHEMA_VERSION) -> None:
    """Raise SchemaError when this controller's schema is too old for the stored records."""
    if own >= state.readable_by:
        return
    writer = f"dockyard {state.written_by}" if state.written_by else "a newer dockyard"
    raise SchemaError(
        f"etcd holds the cluster's records in schema version {state.version} (written by "
        f"{writer}), which controllers older than schema {state.readable_by} cannot read; "
        f"this dockyard-controller {package_version()} has schema {own}. A downgrade across "
        f"an incompatible schema is refused: run {state.written_by or 'the newer version'} "
        "or newer, or restore the etcd backup taken before the upgrade (docs/upgrades.md)"
    )


async def check(store: Store) -> SchemaState:
    """At a controller's start: the stored schema, if this controller can read it."""
    state = await read(store)
    check_readable(state)
    return state


async def migrate(store: Store, migrations: Sequence[Migration] = MIGRATIONS) -> SchemaState:
    """Bring the stored schema up to the newest of `migrations`. `store` is the leader's
    fenced store: a controller that no longer leads writes nothing (LeadershipLost)."""
    state = await read(store)
    own = migrations[-1].version if migrations else 0
    check_readable(state, own)
    for migration in migrations:
        if migration.version <= state.version:
            continue
        log.info("schema.migrating", to=migration.version, description=migration.description)
        await migration.apply(store)
        state = await _write(store, state, migration)
        log.info("schema.migrated", version=state.version, readable_by=state.readable_by)
    return state


async def _write(store: Store, before: SchemaState, migration: Migration) -> SchemaState:
    record = {
        "version": migration.version,
        "readable_by": migration.readable_by,
        "written_by": package_version(),
    }
    op = store.raw_op(META, SCHEMA_RECORD, json.dumps(record).encode(), expect=before.revision)
    try:
        revision = await store.commit([op])
    except Conflict as exc:
        raise SchemaError(
            "the schema record changed while this leader migrated (another "
            "controller led in between): the next term migrates again"
        ) from exc
    return SchemaState(migration.version, migration.readable_by, package_version(), revision)
