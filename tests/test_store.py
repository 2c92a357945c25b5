"""The store against a real etcd: round trips, conflicts, batches, watches."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.common import etcd_server
from dockyard.common.etcd_server import EtcdServer, EtcdServerError
from dockyard.common.etcd_server import free_port as real_free_port
from dockyard.controller.store import (
    NODES,
    AlreadyExists,
    Compacted,
    Conflict,
    NotFound,
    Store,
    StoreUnavailable,
    WatchEvent,
)
from dockyard.v1.types_pb2 import Node
from tests.etcd_store import connected_store


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, "/test") as store:
        yield store


def make_node(node_id: str, name: str = "") -> Node:
    node = Node(id=node_id)
    node.spec.name = name or node_id
    return node


async def test_round_trip_keeps_fields_and_fills_version(store: Store) -> None:
    node = make_node("n1")
    node.spec.labels["zone"] = "a"
    revision = await store.create(NODES, "n1", node)
    read = await store.get(NODES, "n1")
    assert read.spec.labels["zone"] == "a"
    assert read.meta.version == revision
    assert read.meta.created_at.seconds > 0


async def test_create_twice_is_refused(store: Store) -> None:
    await store.create(NODES, "n1", make_node("n1"))
    with pytest.raises(AlreadyExists):
        await store.create(NODES, "n1", make_node("n1"))


async def test_update_from_a_stale_read_is_a_conflict_and_writes_nothing(store: Store) -> None:
    await store.create(NODES, "n1", make_node("n1"))
    first = await store.get(NODES, "n1")
    second = await store.get(NODES, "n1")
    first.spec.labels["a"] = "1"
    await store.update(NODES, "n1", first)
    second.spec.labels["b"] = "2"
    with pytest.raises(Conflict):
        await store.update(NODES, "n1", second)
    stored = await store.get(NODES, "n1")
    assert dict(stored.spec.labels) == {"a": "1"}


async def test_get_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get(NODES, "nope")


async def test_commit_is_all_or_nothing(store: Store) -> None:
    await store.create(NODES, "taken", make_node("taken"))
    ops = [
        store.put_op(NODES, "new", make_node("new"), expect=0),
        store.put_op(NODES, "taken", make_node("taken"), expect=0),
    ]
    with pytest.raises(Conflict):
        await store.commit(ops)
    with pytest.raises(NotFound):
        await store.get(NODES, "new")


async def test_commit_each_drops_only_the_conflicting_ops(store: Store) -> None:
    await store.create(NODES, "taken", make_node("taken"))
    ops = [store.put_op(NODES, f"n{i}", make_node(f"n{i}"), expect=0) for i in range(200)]
    ops.append(store.put_op(NODES, "taken", make_node("taken"), expect=0))
    results = await store.commit_each(ops)
    assert results == [True] * 200 + [False]
    nodes, _ = await store.list_all(NODES)
    assert len(nodes) == 201


async def test_watch_sees_puts_and_deletes_after_the_listed_revision(store: Store) -> None:
    await store.create(NODES, "before", make_node("before"))
    _, revision = await store.list_all(NODES)
    events: list[WatchEvent[Node]] = []

    async def collect() -> None:
        async for event in store.watch(NODES, revision):
            events.append(event)
            if len(events) == 2:
                return

    watcher = asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    await store.create(NODES, "after", make_node("after"))
    await store.delete(NODES, "before")
    await asyncio.wait_for(watcher, 10)
    assert [(e.id, e.deleted) for e in events] == [("after", False), ("before", True)]
    assert events[0].value is not None and events[0].value.spec.name == "after"


async def test_watch_resumes_across_an_etcd_restart(store: Store, etcd: EtcdServer) -> None:
    _, revision = await store.list_all(NODES)
    seen: list[str] = []

    async def collect() -> None:
        async for event in store.watch(NODES, revision):
            seen.append(event.id)
            if len(seen) == 2:
                return

    watcher = asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    await store.create(NODES, "one", make_node("one"))
    await etcd.stop()
    with pytest.raises(StoreUnavailable):
        await store.create(NODES, "lost", make_node("lost"))
    await etcd.start()
    await store.create(NODES, "two", make_node("two"))
    await asyncio.wait_for(watcher, 20)
    assert seen == ["one", "two"]


async def test_watch_from_a_compacted_revision_says_so(store: Store) -> None:
    for i in range(3):
        await store.put(NODES, "n", make_node(f"n{i}"))
    _, revision = await store.list_all(NODES)
    assert store._client.kv is not None
    await store._client.kv.compact(revision)
    with pytest.raises(Compacted):
        async for _ in store.watch(NODES, 1):
            pass


async def test_unreachable_etcd_fails_after_a_bounded_wait() -> None:
    from tests.ports import free_port

    store = Store([f"127.0.0.1:{free_port()}"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StoreUnavailable, match=r"cannot reach etcd at 127\.0\.0\.1"):
        await store.connect(timeout=1.5)
    assert loop.time() - start < 10


async def test_a_list_larger_than_one_page_is_one_consistent_snapshot(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dockyard.controller.store as store_module

    monkeypatch.setattr(store_module, "LIST_FIRST_PAGE", 7)
    monkeypatch.setattr(store_module, "LIST_PAGE_BYTES", 400)  # a handful of node records
    await store.commit_each(
        [store.put_op(NODES, f"n{i:03}", make_node(f"n{i:03}"), expect=0) for i in range(50)]
    )
    nodes, revision = await store.list_all(NODES)
    assert [n.id for n in nodes] == [f"n{i:03}" for i in range(50)]
    await store.delete(NODES, "n000")
    before, _ = await store.list_all(NODES, at_revision=revision)
    assert len(before) == 50


async def test_embedded_etcd_chooses_again_when_its_chosen_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race a daemon loses when something binds the port between choosing and binding.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(etcd_server, "free_port", lambda: next(ports, None) or real_free_port())
        server = EtcdServer(tmp_path / "data", log_path=tmp_path / "etcd.log")
        await server.start()
        try:
            assert server.client_port != taken
            assert "address already in use" in (tmp_path / "etcd.log").read_text()
        finally:
            await server.stop()


async def test_embedded_etcd_on_a_given_taken_port_fails_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = EtcdServer(tmp_path / "data", client_port=taken, log_path=tmp_path / "etcd.log")
        with pytest.raises(EtcdServerError, match=f"{taken}.*address already in use"):
            await server.start()
