"""The lease keeper's renewals and key check over etcd's HTTP/JSON gateway
(`LeaseRenewer` → controller/etcd_gateway.py), against a real etcd: renewals keep a
lease past its TTL, a revoked or expired lease is reported gone, an unreachable first
endpoint falls over to the next, and TLS checks etcd by the CA and the server name
and shows the client's certificate, as the gRPC client does."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from dockyard.common.etcd_pki import make_etcd_pki
from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.store import Fence, LeaseRenewer, Store, StoreUnavailable
from tests.ports import free_port

TTL = 2


def renewer(endpoints: list[str]) -> LeaseRenewer:
    return LeaseRenewer(endpoints, {"ca_cert": None}, None)


async def test_renewals_keep_a_lease_past_its_ttl_and_a_revoked_one_is_gone(
    etcd: EtcdServer,
) -> None:
    store = Store([etcd.endpoint])
    await store.connect()
    blocking = renewer([etcd.endpoint])
    try:
        lease = await store.grant_lease(TTL)
        until = time.monotonic() + 2.5 * TTL
        while time.monotonic() < until:
            assert await asyncio.to_thread(blocking.refresh_lease, lease, 1.0)
            await asyncio.sleep(TTL / 4)
        # the lease outlived its TTL on the gateway's renewals alone
        assert await store.refresh_lease(lease)
        await store.revoke_lease(lease)
        assert not await asyncio.to_thread(blocking.refresh_lease, lease, 1.0)
    finally:
        blocking.close()
        await store.close()


async def test_an_unrenewed_lease_expires_and_is_reported_gone(etcd: EtcdServer) -> None:
    store = Store([etcd.endpoint])
    await store.connect()
    blocking = renewer([etcd.endpoint])
    try:
        lease = await store.grant_lease(TTL)
        assert await asyncio.to_thread(blocking.refresh_lease, lease, 1.0)
        await asyncio.sleep(TTL + 1.5)
        assert not await asyncio.to_thread(blocking.refresh_lease, lease, 1.0)
    finally:
        blocking.close()
        await store.close()


async def test_an_unreachable_first_endpoint_falls_over_to_the_next(etcd: EtcdServer) -> None:
    store = Store([etcd.endpoint])
    await store.connect()
    dead = f"127.0.0.1:{free_port()}"
    blocking = renewer([dead, etcd.endpoint])
    alone = renewer([dead])
    try:
        lease = await store.grant_lease(TTL)
        assert await asyncio.to_thread(blocking.refresh_lease, lease, 1.0)
        assert await asyncio.to_thread(blocking.refresh_lease, lease, 1.0)
        with pytest.raises(StoreUnavailable):
            await asyncio.to_thread(alone.refresh_lease, lease, 1.0)
    finally:
        blocking.close()
        alone.close()
        await store.close()


async def test_the_key_check_compares_the_create_revision(etcd: EtcdServer) -> None:
    store = Store([etcd.endpoint])
    await store.connect()
    blocking = renewer([etcd.endpoint])
    try:
        key = "/dockyard/test/leader"
        assert not await asyncio.to_thread(blocking.fence_holds, Fence(key, 1), 1.0)
        created = await store._kv.put(key.encode(), b"me")
        revision = int(created.header.revision)
        assert await asyncio.to_thread(blocking.fence_holds, Fence(key, revision), 1.0)
        assert not await asyncio.to_thread(blocking.fence_holds, Fence(key, revision - 1), 1.0)
    finally:
        blocking.close()
        await store.close()


async def test_over_tls_etcd_is_checked_by_ca_and_server_name(tmp_path: Path) -> None:
    tls = await asyncio.to_thread(make_etcd_pki, tmp_path / "pki")
    server = EtcdServer(tmp_path / "data", log_path=tmp_path / "etcd.log", tls=tls)
    await server.start()
    store = Store([server.endpoint], **tls.store_credentials())
    credentials: dict[str, bytes | None] = dict(tls.store_credentials())
    named = LeaseRenewer([server.endpoint], credentials, "localhost")
    misnamed = LeaseRenewer([server.endpoint], credentials, "elsewhere")
    anonymous = LeaseRenewer([server.endpoint], {"ca_cert": tls.ca.read_bytes()}, None)
    try:
        await store.connect(5)
        lease = await store.grant_lease(TTL)
        assert await asyncio.to_thread(named.refresh_lease, lease, 2.0)
        for refused in (misnamed, anonymous):
            with pytest.raises(StoreUnavailable):
                await asyncio.to_thread(refused.refresh_lease, lease, 2.0)
    finally:
        for client in (named, misnamed, anonymous):
            client.close()
        await store.close()
        await server.stop()


async def test_an_endpoint_that_never_answers_fails_the_renewal_in_its_time() -> None:
    """An endpoint that accepts and never answers: the renewal gives up at its timeout
    (the keeper's window) instead of blocking the keeper's thread."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    blocking = renewer([f"127.0.0.1:{port}"])
    try:
        asked = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await asyncio.to_thread(blocking.refresh_lease, 7, 0.5)
        assert time.monotonic() - asked < 5.0
    finally:
        blocking.close()
        silent.close()
