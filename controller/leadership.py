"""Leader election over an etcd lease: one controller runs the control loops.

The leader key holds a LeaderRecord attached to a lease that the leader keeps
alive; when the leader dies its lease expires and another controller takes
the key. A controller that restarts with the same ID takes its own stale key
back at once instead of waiting for the lease to expire.

The lease is kept alive from a thread of its own (`LeaseKeeper`: its own event loop and
etcd client), so a busy event loop (tens of thousands of tasks to plan) cannot starve
the renewals; a follower watches the leader key and campaigns the moment it goes.

Leadership is a fence, not a flag: a term is the leader key as created at one
revision (`Fence`). The term's loops write through a store fenced with it, so
every write of theirs fails once the key is gone or re-created, and the term
ends (its loops cancelled) as soon as the lease cannot be shown alive, the key
is no longer ours, or the loops fail. See docs/reliability.md, "Leadership".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
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
    relative_sleep,
)
from dockyard.v1.types_pb2 import LeaderRecord

log = structlog.get_logger(__name__)

LEADER_KEY = "current"
# A lease is given up this long before etcd could expire it, so the loops have
# stopped before another controller can be elected.
EXPIRY_MARGIN = 1.0
# Bound on giving a lease back when a term ends (etcd may be unreachable).
RESIGN_TIMEOUT = 2.0
# The default lease: short, as its renewals run on their own thread.
DEFAULT_TTL = 3
# How often the term's task looks at what the keeper thread found.
HOLD_CHECK = 0.1
# The keeper stops renewing when the controller's event loop has not run for this long
# (hung, not merely busy): the lease then expires and another controller leads.
LOOP_STALL_LIMIT = 30.0

Lead = Callable[[Fence], Awaitable[None]]
"""Runs one term's loops, writing through a store fenced with the given Fence, until
cancelled (the term is over); returning or raising ends the term."""


class _TermOver(Exception):
    """Ends a term's task group: the lease was lost or the leader loops ended."""


class Leadership:
    def __init__(
        self, store: Store, controller_id: str, api_address: str, ttl: int = DEFAULT_TTL
    ) -> None:
        self._store = store
        self._record = LeaderRecord(controller_id=controller_id, api_address=api_address)
        self._ttl = ttl
        self.is_leader = False
        self.leader: LeaderRecord | None = None
        self.fence: Fence | None = None
        self.terms = 0
        self._lease = 0
        self._expires = 0.0  # monotonic time by which the lease may have expired
        self._keeper: LeaseKeeper | None = None
        # The revision the leader key was last read at: its term (the key is written
        # once per term, so its mod_revision is its create_revision).
        self._leader_revision = 0
        self._key_lost = False  # the loop's renewer found the key not ours
        self._closed = False
        self._changed = asyncio.Event()  # set (and replaced) when the leader changes

    def holds(self) -> bool:
        """Whether this controller leads and its lease is provably alive now (on this
        controller's monotonic clock): False at once after a pause longer than the
        lease, before the keep-alive task has even run. What is sent to agents
        (no etcd transaction to fence it) is sent only while this holds."""
        if not self.is_leader:
            return False
        return time.monotonic() < self._lease_expiry() - EXPIRY_MARGIN

    def _lease_expiry(self) -> float:
        keeper = self._keeper
        return max(self._expires, keeper.expires) if keeper is not None else self._expires

    def leader_address(self) -> str | None:
        """None while this controller leads; else the leader's address or ""."""
        if self.is_leader:
            return None
        other = self._other_leader()
        return other.api_address if other else ""

    def _other_leader(self) -> LeaderRecord | None:
        """The leader last read, unless it is this controller's own record: a term that
        is ending (the flag already down) or a key left by an earlier run of this
        controller. Agents are not sent back to a controller that does not lead."""
        leader = self.leader
        if leader is None or leader.controller_id == self._record.controller_id:
            return None
        return leader

    def _leader_changed(self) -> None:
        """Wake the `await_leader` calls (a leader was elected, found, or lost)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _known_leader(self) -> tuple[str, int]:
        """The leader's address ("" : none known) and the revision its key was read at
        (a new term of the same controller reads at a newer one)."""
        if self.is_leader:
            return self._record.api_address, self.fence.create_revision if self.fence else 0
        other = self._other_leader()
        return (other.api_address, self._leader_revision) if other else ("", 0)

    @property
    def term(self) -> int:
        """This controller's term while it leads (its fence revision), else 0."""
        return self.fence.create_revision if self.is_leader and self.fence else 0

    async def await_leader(self, not_address: str, timeout: float, lost_term: int = 0) -> str:
        """The leader's address once one is known other than `not_address` in its term
        `lost_term` (so a new term of the same address, or this controller leading),
        waiting at most `timeout` seconds; "" when none is by then: what the dispatcher
        tells an agent whose session ended (agent/session.py), so it connects the
        moment a leader is elected. `lost_term` 0: the term known now is the one lost.

        The term matters when a controller is restarted and re-elected at the address
        the agent lost: asked after the new term began, a follower would otherwise wait
        for a change that already happened."""
        lost = lost_term or self._known_leader()[1]
        try:
            async with asyncio.timeout(timeout):
                while True:
                    address, revision = self._known_leader()
                    if address and (self.is_leader or address != not_address or revision != lost):
                        return address
                    await self._changed.wait()
        except TimeoutError:
            return ""

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
                    self._leader_revision = 0
                if elected and not self._closed:
                    await self._term(lead)
                elif not self._closed:
                    await self._wait_for_vacancy()
                if not self._closed and elected:
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
            self._leader_changed()
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
        asked = time.monotonic()
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
            self.leader, self._leader_revision = await self._read_leader()
            self._leader_changed()
            return False
        # The key was created by this transaction: its create_revision is the txn's.
        self.fence = self._store.fence(LEADER, LEADER_KEY, revision)
        self.is_leader = True
        self.leader = self._record
        self._leader_changed()
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

    async def _read_leader(self) -> tuple[LeaderRecord | None, int]:
        """The leader's record and the revision it was read at (0: no leader)."""
        raw = await self._store.get_raw(LEADER, LEADER_KEY)
        if raw is None:
            return None, 0
        return LeaderRecord.FromString(raw[0]), raw[1]

    async def _wait_for_vacancy(self) -> None:
        """Until the leader key changes (its lease expired, it resigned) or TTL/3 passed:
        a watch on the key, so a follower campaigns as soon as the leader is gone; the
        timeout is the fallback when the watch cannot be opened."""
        revision = self._leader_revision
        try:
            async with asyncio.timeout(self._ttl / 3 if not revision else self._ttl * 3):
                if not revision:
                    await asyncio.sleep(self._ttl / 3)
                    return
                async for event in self._store.watch(LEADER, revision):
                    if event.id == LEADER_KEY:
                        return
        except (TimeoutError, StoreError):
            return
        except Exception as exc:  # a broken watch: campaign as before
            log.warning("leadership.watch_failed", error=_describe(exc))

    async def _hold(self) -> None:
        """Keep the lease alive; return when it is lost or the key is not ours.

        Two renewers extend the same lease, and the lease holds while either succeeds:
        the keeper's thread (blocking gRPC, so a busy event loop cannot starve it) and,
        as before, a task on the loop (asyncio's relative timeouts, so a wall clock that
        jumps cannot stall it: blocking gRPC's deadlines and timed thread waits follow
        the wall clock). A failed refresh, whatever the error, is retried until the
        lease could have expired, less a margin. This task looks every HOLD_CHECK and
        ends the term when the lease's time is up or either renewer found the key gone.
        """
        assert self.fence is not None
        keeper = LeaseKeeper(
            self._store, self._lease, self.fence, self._ttl, self._expires, self._record
        )
        self._keeper = keeper
        self._key_lost = False
        keeper.start()
        try:
            async with asyncio.TaskGroup() as group:
                renewing = group.create_task(self._renew_on_loop(self.fence))
                await self._watch_lease(keeper)
                renewing.cancel()
        finally:
            self._expires = self._lease_expiry()
            self._keeper = None
            await keeper.stop()

    async def _watch_lease(self, keeper: LeaseKeeper) -> None:
        while True:
            keeper.tick()
            if keeper.lost is not None or self._key_lost:
                log.warning(
                    keeper.lost or "leadership.key_lost",
                    controller_id=self._record.controller_id,
                )
                return
            if time.monotonic() >= self._lease_expiry() - EXPIRY_MARGIN:
                log.warning("leadership.lease_expiring", controller_id=self._record.controller_id)
                return
            await asyncio.sleep(HOLD_CHECK)

    async def _renew_on_loop(self, fence: Fence) -> None:
        """The loop's renewer: every TTL/3 while the lease can still be renewed."""
        while True:
            left = self._lease_expiry() - EXPIRY_MARGIN - time.monotonic()
            await asyncio.sleep(max(HOLD_CHECK, min(self._ttl / 3, left)))
            asked = time.monotonic()
            left = self._lease_expiry() - EXPIRY_MARGIN - asked
            if left <= 0:
                log.warning("leadership.loop_renewer_late", late=round(-left, 3))
                continue  # the term is ending (`_watch_lease`)
            try:
                async with asyncio.timeout(left):
                    alive = await self._store.refresh_lease(self._lease)
                    ours = alive and await self._store.fence_holds(fence)
            except Exception as exc:  # any failure is a missed refresh
                log.warning("leadership.refresh_failed", error=_describe(exc), on="loop")
                continue
            if not ours:
                if time.monotonic() < self._lease_expiry() - EXPIRY_MARGIN:
                    self._key_lost = True
                return
            self._expires = max(self._expires, asked + self._ttl)

    async def _resign(self) -> None:
        """Give the lease back (its key goes with it), within RESIGN_TIMEOUT."""
        lease, self._lease = self._lease, 0
        self.is_leader = False
        self.fence = None
        if lease:
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(RESIGN_TIMEOUT):
                    await self._store.revoke_lease(lease)


class LeaseKeeper:
    """Renews one leader lease every TTL/3 from a thread of its own, over etcd's
    HTTP/JSON gateway (`Store.renewer`, controller/etcd_gateway.py: one blocking request
    read on this thread, not a gRPC call's several GIL-bound threads), and checks the
    key is still the term's: nothing it does waits on the controller's event loop.

    `expires` is the monotonic time by which the lease may have expired (the time the
    last successful refresh was asked, plus the TTL); `lost` names why the keeper gave
    up (the key is not ours, the event loop hung). The controller's loop calls `tick`
    while it runs: a loop that has not for LOOP_STALL_LIMIT seconds gets no more
    renewals.
    """

    def __init__(
        self,
        store: Store,
        lease: int,
        fence: Fence,
        ttl: int,
        expires: float,
        record: LeaderRecord,
    ) -> None:
        self._renewer = store.renewer()
        self._lease = lease
        self._fence = fence
        self._ttl = ttl
        self.expires = expires
        self.lost: str | None = None
        self._ticked = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-keeper-{lease:x}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def tick(self) -> None:
        self._ticked = time.monotonic()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 10.0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                left = self.expires - EXPIRY_MARGIN - time.monotonic()
                wake = time.monotonic() + max(0.0, min(self._ttl / 3, left))
                self._sleep(wake - time.monotonic())
                if (overslept := time.monotonic() - wake) > HOLD_CHECK:
                    log.warning("leadership.keeper_overslept", seconds=round(overslept, 3))
                if self._stop.is_set() or not self._refresh():
                    return
        finally:
            self._renewer.close()

    def _sleep(self, seconds: float) -> None:
        """Short relative sleeps (`relative_sleep`), not a timed `Event.wait`: a timed
        wait may follow the wall clock (under libfaketime it waited out a jump of the
        clock back by an hour) and the lease would go unrenewed."""
        until = time.monotonic() + seconds
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            relative_sleep(min(HOLD_CHECK, left))

    def _refresh(self) -> bool:
        """One renewal; False when the keeper is done (the key is not ours, the
        controller's loop hung, or the lease's time is up)."""
        asked = time.monotonic()
        if asked - self._ticked > LOOP_STALL_LIMIT:
            self.lost = "leadership.loop_stalled"
            return False
        left = self.expires - EXPIRY_MARGIN - asked
        if left <= 0:
            log.warning("leadership.keeper_late", late=round(-left, 3), slept_past="window")
            return False
        try:
            alive = self._renewer.refresh_lease(self._lease, left)
            renewed = time.monotonic()
            left = self.expires - EXPIRY_MARGIN - renewed
            ours = alive and left > 0 and self._renewer.fence_holds(self._fence, left)
        except Exception as exc:  # any failure is a missed refresh
            log.warning(
                "leadership.refresh_failed",
                error=_describe(exc),
                took=round(time.monotonic() - asked, 3),
                window=round(self.expires - EXPIRY_MARGIN - asked, 3),
            )
            return True
        took = time.monotonic() - asked
        if took > self._ttl / 6:
            log.warning(
                "leadership.refresh_slow",
                took=round(took, 3),
                keep_alive=round(renewed - asked, 3),
                window=round(self.expires - EXPIRY_MARGIN - asked, 3),
                ok=ours,
            )
        if not ours:
            if time.monotonic() >= self.expires - EXPIRY_MARGIN:
                log.warning("leadership.keeper_late", late=round(took, 3), slept_past="answer")
                return False
            log.warning("leadership.key_lost", lease_alive=alive)
            self.lost = "leadership.key_lost"
            return False
        self.expires = asked + self._ttl
        return True


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
