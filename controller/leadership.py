"""Leader election over an etcd lease: one controller runs the control loops.

The leader key holds a LeaderRecord attached to a lease that the leader keeps
alive; when the leader dies its lease expires and another controller takes
the key. A controller that restarts with the same ID takes its own stale key
back at once instead of waiting for the lease to expire.

Leadership is a fence, not a flag: a term is the leader key as created at one
revision (`Fence`). The term's loops write through a store fenced with it, so
every write of theirs fails once the key is gone or re-created, and the term
ends (its loops cancelled) as soon as the lease cannot be shown alive, the key
is no longer ours, or the loops fail. See docs/reliability.md, "Leadership".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.store import (
    LEADER,
    Conflict,
    Fence,
    LeadershipLost,
    NotFound,
    Store,
    StoreError,
)
from dockyard.v1.types_pb2 import LeaderRecord

log = structlog.get_logger(__name__)

LEADER_KEY = "current"
# A lease is given up this long before etcd could expire it, so the loops have
# stopped before another controller can be elected.
EXPIRY_MARGIN = 1.0
# Bound on giving a lease back when a term ends (etcd may be unreachable).
RESIGN_TIMEOUT = 2.0

Lead = Callable[[Fence], Awaitable[None]]
"""Runs one term's loops, writing through a store fenced with the given Fence, until
cancelled (the term is over); returning or raising ends the term."""


class _TermOver(Exception):
    """Ends a term's task group: the lease was lost or the leader loops ended."""


class Leadership:
    def __init__(self, store: Store, controller_id: str, api_address: str, ttl: int = 10) -> None:
        self._store = store
        self._record = LeaderRecord(controller_id=controller_id, api_address=api_address)
        self._ttl = ttl
        self.is_leader = False
        self.leader: LeaderRecord | None = None
        self.fence: Fence | None = None
        self.terms = 0
        self._lease = 0
        self._expires = 0.0  # loop time by which the lease may have expired
        self._closed = False

    def holds(self) -> bool:
        """Whether this controller leads and its lease is provably alive now (on this
        controller's monotonic clock): False at once after a pause longer than the
        lease, before the keep-alive task has even run. What is sent to agents
        (no etcd transaction to fence it) is sent only while this holds."""
        if not self.is_leader:
            return False
        return asyncio.get_running_loop().time() < self._expires - EXPIRY_MARGIN

    def leader_address(self) -> str | None:
        """None while this controller leads; else the leader's address or ""."""
        if self.is_leader:
            return None
        return self.leader.api_address if self.leader else ""

    async def run(self, lead: Lead) -> None:
        """Campaign; while elected run `lead` beside the lease keep-alive and cancel it
        the moment the term is over; campaign again; until cancelled."""
        try:
            while not self._closed:
                try:
                    elected = await self._campaign()
                except Exception as exc:  # any failure: campaign again later
                    log.warning("leadership.campaign_failed", error=_describe(exc))
                    elected = False
                if elected and not self._closed:
                    await self._term(lead)
                if not self._closed:
                    await asyncio.sleep(self._ttl / 3)
        finally:
            await self._resign()

    def close(self) -> None:
        """Campaign no more: `run` returns after the current term, even if its
        cancellation is lost (Python 3.11's TaskGroup can swallow a cancel that
        arrives while it is already cancelling its children, gh-116720)."""
        self._closed = True

    async def _term(self, lead: Lead) -> None:
        """One term: `lead` and the keep-alive in one task group, until either ends."""
        assert self.fence is not None
        self.terms += 1
        reason = "unknown"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._hold_until_lost())
                group.create_task(self._lead_until_done(lead, self.fence))
        except* _TermOver as over:
            reason = _reasons(over)
        except* LeadershipLost as lost:
            reason = _reasons(lost)
        except* Exception as failed:
            reason = _reasons(failed)
        finally:
            self.is_leader = False
            self.fence = None
        log.warning("leadership.lost", controller_id=self._record.controller_id, reason=reason)
        await self._resign()

    async def _hold_until_lost(self) -> None:
        try:
            await self._hold()
        finally:
            self.is_leader = False
        raise _TermOver("the lease could not be kept")

    async def _lead_until_done(self, lead: Lead, fence: Fence) -> None:
        try:
            await lead(fence)
        finally:
            self.is_leader = False
        raise _TermOver("the leader loops ended")

    async def _campaign(self) -> bool:
        await self._take_back_own_key()
        loop = asyncio.get_running_loop()
        asked = loop.time()
        self._lease = await self._store.grant_lease(self._ttl)
        self._expires = asked + self._ttl
        self._record.since.CopyFrom(now_timestamp())
        try:
            revision = await self._store.commit(
                [self._store.leased_op(LEADER, LEADER_KEY, self._record, self._lease)]
            )
        except Conflict:
            await self._store.revoke_lease(self._lease)
            self._lease = 0
            self.leader = await self._current_leader()
            return False
        # The key was created by this transaction: its create_revision is the txn's.
        self.fence = self._store.fence(LEADER, LEADER_KEY, revision)
        self.is_leader = True
        self.leader = self._record
        log.info(
            "leadership.elected", controller_id=self._record.controller_id, fence_revision=revision
        )
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
        """Keep the lease alive; return when it is lost or the key is not ours.

        A failed refresh, whatever the error (etcd restarting, a broken keep-alive
        stream), is retried until the lease could have expired, less a margin: only
        then may another controller be elected, and by then this term is over.
        """
        loop = asyncio.get_running_loop()
        assert self.fence is not None
        fence = self.fence
        while True:
            left = self._expires - EXPIRY_MARGIN - loop.time()
            await asyncio.sleep(max(0.0, min(self._ttl / 3, left)))
            asked = loop.time()
            left = self._expires - EXPIRY_MARGIN - asked
            if left <= 0:
                log.warning("leadership.lease_expiring", controller_id=self._record.controller_id)
                return
            try:
                async with asyncio.timeout(left):
                    alive = await self._store.refresh_lease(self._lease)
                    ours = alive and await self._store.fence_holds(fence)
            except Exception as exc:  # any failure is a missed refresh
                log.warning("leadership.refresh_failed", error=_describe(exc))
                continue
            if not ours:
                log.warning("leadership.key_lost", lease_alive=alive)
                return
            self._expires = asked + self._ttl

    async def _resign(self) -> None:
        """Give the lease back (its key goes with it), within RESIGN_TIMEOUT."""
        lease, self._lease = self._lease, 0
        self.is_leader = False
        self.fence = None
        if lease:
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(RESIGN_TIMEOUT):
                    await self._store.revoke_lease(lease)


def _reasons(group: BaseExceptionGroup[BaseException]) -> str:
    """The leaf errors of a (nested) exception group, described."""
    leaves: list[str] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.append(_reasons(exc))
        else:
            leaves.append(str(exc) if isinstance(exc, _TermOver) else _describe(exc))
    return "; ".join(leaves)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
