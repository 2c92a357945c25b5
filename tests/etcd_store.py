"""A `Store` connected to a test's etcd server under a key prefix of its own, closed
after the block (the `store` fixture of many test modules)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.store import Store


@contextlib.asynccontextmanager
async def connected_store(etcd: EtcdServer, prefix: str) -> AsyncIterator[Store]:
    store = Store([etcd.endpoint], prefix)
    await store.connect(5)
    try:
        yield store
    finally:
        await store.close()
