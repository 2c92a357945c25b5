"""A controller's own record in etcd, so every controller can list the others.

The record (`controllers/<id>`: API and HTTP address, version, start time) sits on
a lease of its own, not the leader lease, refreshed every third of its TTL while the
controller runs: a controller that dies leaves the list within one TTL, and one that
stops gives its lease back and leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from dockyard.controller.store import CONTROLLERS, Store, StoreError
from dockyard.v1.types_pb2 import ControllerRecord

log = structlog.get_logger(__name__)

# Bound on giving the lease back when the controller stops (etcd may be unreachable).
WITHDRAW_TIMEOUT = 2.0


class Registration:
    """Keeps `record` in etcd under its controller ID while `run` runs.

    Args:
        store: the controller's store (not fenced: this is no leader's write).
        record: what is published; `started_at` should be set by the caller.
        ttl: the lease's TTL in seconds (the record outlives a dead controller by at
            most this long).
    """

    def __init__(self, store: Store, record: ControllerRecord, ttl: int) -> None:
        self._store = store
        self._record = record
        self._ttl = max(2, ttl)
        self._lease = 0
        self.registered = False

    async def run(self) -> None:
        """Publish the record and keep its lease alive until cancelled; any failure
        (etcd down, the lease expired meanwhile, a broken keep-alive stream's raw gRPC
        error) is retried with a new lease."""
        try:
            while True:
                try:
                    await self._keep()
                except Exception as exc:  # every failure: publish again on a new lease
                    log.warning("registration.failed", error=f"{type(exc).__name__}: {exc}")
                self.registered = False
                await asyncio.sleep(self._ttl / 3)
        finally:
            await self._withdraw()

    async def _keep(self) -> None:
        """One lease: publish on it, then refresh it until it is lost; a record gone
        from under a live lease (deleted by hand, etcd restored from a snapshot) is
        published again on it."""
        self._lease = await self._store.grant_lease(self._ttl)
        await self._publish()
        while True:
            await asyncio.sleep(self._ttl / 3)
            if not await self._store.refresh_lease(self._lease):
                log.warning("registration.lease_expired", controller_id=self._record.controller_id)
                self._lease = 0
                return
            if await self._store.get_raw(CONTROLLERS, self._record.controller_id) is None:
                log.warning("registration.record_gone", controller_id=self._record.controller_id)
                await self._publish()

    async def _publish(self) -> None:
        # Unconditional: a restart under the same ID replaces its stale record, which
        # then follows the new lease (a key belongs to the lease of its last put).
        await self._store.put_leased(
            CONTROLLERS, self._record.controller_id, self._record, self._lease
        )
        self.registered = True
        log.info(
            "registration.published",
            controller_id=self._record.controller_id,
            lease=self._lease,
            ttl=self._ttl,
        )

    async def _withdraw(self) -> None:
        """Give the lease back (the record goes with it), within WITHDRAW_TIMEOUT."""
        lease, self._lease = self._lease, 0
        self.registered = False
        if lease:
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(WITHDRAW_TIMEOUT):
                    await self._store.revoke_lease(lease)
