"""Leader election over an etcd lease: one controller runs the control loops.

The leader key holds a LeaderRecord attached to a lease that the leader keeps
alive; when the leader dies its lease expires and another controller takes
the key. A controller that restarts with the same ID takes its own stale key
back at once instead of waiting for the lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.store import LEADER, Conflict, NotFound, Store, StoreError
from dockyard.v1.types_pb2 import LeaderRecord

log = structlog.get_logger(__name__)

LEADER_KEY = "current"


class Leadership:
    def __init__(self, store: Store, controller_id: str, api_address: str, ttl: int = 10) -> None:
        self._store = store
        self._record = LeaderRecord(controller_id=controller_id, api_address=api_address)
        self._ttl = ttl
        self.is_leader = False
        self.leader: LeaderRecord | None = None
        self._lease = 0

    def leader_address(self) -> str | None:
        """None while this controller leads; else the leader's address or ""."""
        if self.is_leader:
            return None
        return self.leader.api_address if self.leader else ""

    async def run(
        self,
        on_elected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        """Campaign, lead, and campaign again after losing, until cancelled."""
        try:
            while True:
                try:
                    if await self._campaign():
                        await on_elected()
                        await self._hold()
                        self.is_leader = False
                        await on_lost()
                    else:
                        await asyncio.sleep(self._ttl / 3)
                except StoreError as exc:
                    if self.is_leader:
                        self.is_leader = False
                        await on_lost()
                    log.warning("leadership.store_error", error=str(exc))
                    await asyncio.sleep(self._ttl / 3)
        finally:
            await self._resign()

    async def _campaign(self) -> bool:
        await self._take_back_own_key()
        self._lease = await self._store.grant_lease(self._ttl)
        self._record.since.CopyFrom(now_timestamp())
        try:
            await self._store.commit(
                [self._store.leased_op(LEADER, LEADER_KEY, self._record, self._lease)]
            )
        except Conflict:
            await self._store.revoke_lease(self._lease)
            self._lease = 0
            self.leader = await self._current_leader()
            return False
        self.is_leader = True
        self.leader = self._record
        log.info("leadership.elected", controller_id=self._record.controller_id)
        return True

    async def _take_back_own_key(self) -> None:
        current = await self._current_leader()
        if current is not None and current.controller_id == self._record.controller_id:
            await self._store.delete(LEADER, LEADER_KEY)

    async def _current_leader(self) -> LeaderRecord | None:
        try:
            return await self._store.get(LEADER, LEADER_KEY)
        except NotFound:
            return None

    async def _hold(self) -> None:
        """Keep the lease alive; return when it is lost.

        A failed refresh (etcd restarting) is retried until the lease could
        have expired: only then may another controller have taken over.
        """
        loop = asyncio.get_running_loop()
        expires = loop.time() + self._ttl
        while True:
            await asyncio.sleep(min(self._ttl / 3, max(0.1, expires - loop.time() - 1)))
            try:
                alive = await self._store.refresh_lease(self._lease)
                expires = loop.time() + self._ttl
            except StoreError as exc:
                log.warning("leadership.refresh_failed", error=str(exc))
                alive = loop.time() < expires - 1
            if not alive:
                log.warning("leadership.lost", controller_id=self._record.controller_id)
                return

    async def _resign(self) -> None:
        if self._lease:
            with contextlib.suppress(StoreError):
                await self._store.revoke_lease(self._lease)
            self._lease = 0
        self.is_leader = False
