"""Listing large kinds from a real etcd: pages are bounded by bytes, not by count,
so a kind whose records add up to more than gRPC's default 4 MiB still lists whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller import store as store_module
from dockyard.controller.store import MAX_TXN_OPS, TASKS, Op, Store
from dockyard.v1 import workloads_pb2
from tests.etcd_store import connected_store


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, "/test") as store:
        yield store


def task(index: int, size: int) -> workloads_pb2.Task:
    record = workloads_pb2.Task(id=f"t{index:06d}", service_id="svc", slot=index)
    record.spec.container.env.append("PAD=" + "x" * size)
    return record


async def write_tasks(store: Store, first: int, count: int, size: int, per_txn: int) -> None:
    ops: list[Op] = [
        store.put_op(TASKS, f"t{i:06d}", task(i, size), expect=None)
        for i in range(first, first + count)
    ]
    for start in range(0, len(ops), per_txn):
        await store.commit(ops[start : start + per_txn])


async def test_three_thousand_tasks_of_three_kilobytes_list_whole(store: Store) -> None:
    # About 9 MiB in all: more than 2,000 records of this size in one gRPC message.
    await write_tasks(store, 0, 3000, 3000, per_txn=MAX_TXN_OPS)
    tasks, revision = await store.list_all(TASKS)
    assert len(tasks) == 3000
    assert [t.id for t in tasks] == [f"t{i:06d}" for i in range(3000)]
    assert all(t.meta.version > 0 for t in tasks)
    assert revision >= max(t.meta.version for t in tasks)


async def test_small_records_then_large_ones_list_whole(
    store: Store, etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page sized from small records meets large ones: it comes back over the
    # receive limit and is asked again with fewer records, not given up.
    monkeypatch.setattr(store_module, "LIST_PAGE_BYTES", 256 * 1024)
    monkeypatch.setattr(store_module, "MAX_RECEIVE_BYTES", 1024 * 1024)
    small = Store([etcd.endpoint], "/test")
    await small.connect(5)
    try:
        await write_tasks(small, 0, 2000, 50, per_txn=MAX_TXN_OPS)
        await write_tasks(small, 2000, 12, 300 * 1024, per_txn=1)
        tasks, _ = await small.list_all(TASKS)
    finally:
        await small.close()
    assert len(tasks) == 2012
    assert sum(len(t.spec.container.env[0]) > 1000 for t in tasks) == 12
