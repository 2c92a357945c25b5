"""The schema version in etcd: the leader's forward migrations run once and are fenced,
and a controller too old for the stored records refuses to start (real etcd)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller import schema
from dockyard.controller.leadership import LEADER_KEY
from dockyard.controller.store import LEADER, LeadershipLost, Store
from dockyard.v1.types_pb2 import LeaderRecord
from tests.conftest import BIN
from tests.etcd_store import connected_store
from tests.ports import free_port

PREFIX = "/schema-test"


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, PREFIX) as store:
        yield store


async def leader_store(store: Store) -> Store:
    """`store` fenced on a leader key this test created."""
    revision = await store.create(LEADER, LEADER_KEY, LeaderRecord(controller_id="c1"))
    return store.fenced(store.fence(LEADER, LEADER_KEY, revision))


async def put_record(store: Store, record: dict[str, object]) -> None:
    await store.commit(
        [store.raw_op(schema.META, schema.SCHEMA_RECORD, json.dumps(record).encode(), expect=None)]
    )


async def test_a_cluster_without_a_record_is_migrated_once_by_the_leader(store: Store) -> None:
    assert (await schema.read(store)).version == 0
    ran: list[int] = []

    async def second(_: Store) -> None:
        ran.append(2)

    migrations = (*schema.MIGRATIONS, schema.Migration(2, 1, "test step", second))
    fenced = await leader_store(store)
    state = await schema.migrate(fenced, migrations)
    assert (state.version, state.readable_by) == (2, 1)
    again = await schema.migrate(fenced, migrations)
    assert ran == [2] and again.version == 2
    stored = await schema.read(store)
    assert (stored.version, stored.readable_by, stored.revision) == (2, 1, state.revision)
    # A controller of schema 1 still reads what schema 2 wrote (readable_by 1) ...
    schema.check_readable(stored, own=1)
    # ... and its own migrate leaves the newer record alone.
    assert (await schema.migrate(fenced, schema.MIGRATIONS)).revision == state.revision


async def test_a_deposed_leader_migrates_nothing(store: Store) -> None:
    fenced = await leader_store(store)
    await store.delete(LEADER, LEADER_KEY)  # the lease expired; the term is over
    with pytest.raises(LeadershipLost):
        await schema.migrate(fenced)
    assert (await schema.read(store)).version == 0


async def test_a_schema_too_new_is_refused_with_what_to_do(store: Store) -> None:
    await put_record(store, {"version": 7, "readable_by": 6, "written_by": "0.9.0"})
    with pytest.raises(schema.SchemaError) as refused:
        await schema.check(store)
    message = str(refused.value)
    assert "schema version 7 (written by dockyard 0.9.0)" in message
    assert f"has schema {schema.SCHEMA_VERSION}" in message
    assert "A downgrade across an incompatible schema is refused: run 0.9.0 or newer" in message
    with pytest.raises(schema.SchemaError):
        await schema.migrate(await leader_store(store))


async def test_a_damaged_record_is_named(store: Store) -> None:
    await put_record(store, {"version": 1})
    with pytest.raises(schema.SchemaError, match="meta/schema\\) is damaged"):
        await schema.read(store)


async def test_the_controller_refuses_to_start_on_a_newer_schema(
    store: Store, etcd: EtcdServer, tmp_path: Path
) -> None:
    await put_record(store, {"version": 9, "readable_by": 9, "written_by": "1.4.0"})
    done = await asyncio.to_thread(
        subprocess.run,
        [
            str(BIN / "dockyard-controller"),
            "run",
            "--insecure",
            "--etcd",
            etcd.endpoint,
            "--etcd-prefix",
            PREFIX,
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--http-listen",
            "",
            "--state-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "A downgrade across an incompatible schema is refused: run 1.4.0" in done.stderr


async def test_a_new_controller_records_the_schema_when_it_leads(
    store: Store, etcd: EtcdServer, tmp_path: Path
) -> None:
    from tests.polling import wait_until

    process = await asyncio.create_subprocess_exec(
        str(BIN / "dockyard-controller"),
        "run",
        "--insecure",
        "--etcd",
        etcd.endpoint,
        "--etcd-prefix",
        PREFIX,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--http-listen",
        "",
        "--join-listen",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "c"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def recorded() -> bool:
            return (await schema.read(store)).version == schema.SCHEMA_VERSION

        await wait_until(recorded, "the leader records the schema", timeout=30)
    finally:
        process.terminate()
        await process.wait()
