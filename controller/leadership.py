"""Leader election over an etcd lease: one controller runs the control loops.

The leader key holds a LeaderRecord attached to a lease that the leader keeps
alive; when the leader dies its lease expires and another controller takes
the key. A controller that restarts with the same ID takes its own stale key
back at once instead of waiting for the lease to expire.

The lease is kept alive from a process of its own (`LeaseKeeper`,
controller/keeper_process.py), so a busy event loop (tens of thousands of tasks to plan)
cannot starve the renewals, not even for the GIL; a follower watches the leader key and
campaigns the moment it goes.

Leadership is a fence, not a flag: a term is the leader key as created at one
revision (`Fence`). The term's loops write through a store fenced with it, so
every write of theirs fails once the key is gone or re-created, and the term
ends (its loops cancelled) as soon as the lease cannot be shown alive, the key
is no longer ours, or the loops fail. See docs/reliability.md, "Leadership".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.keeper_process import EXPIRY_MARGIN, TICK, KeeperSetup, encode
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
# EXPIRY_MARGIN (controller/keeper_process.py): a lease is given up this long before
# etcd could expire it, so the loops have stopped before another controller is elected.
# Bound on giving a lease back when a term ends (etcd may be unreachable).
RESIGN_TIMEOUT = 2.0
# The default lease: short, as its renewals run on their own thread.
DEFAULT_TTL = 3
# How often the term's task looks at what the keeper process reported.
HOLD_CHECK = 0.1
# The keeper stops renewing when the controller's event loop has not run for this long
# (hung, not merely busy): the lease then expires and another controller leads.
LOOP_STALL_LIMIT = 30.0
# The keeper's renewal times kept (`LeaseKeeper.renewals`).
RENEWALS_KEPT = 1000

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
        self._spare: KeeperProcess | None = None  # the next term's keeper, started ahead
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

    @property
    def keeper_pid(self) -> int | None:
        """The term's lease keeper process (None: no term, or none started)."""
        keeper = self._keeper
        return keeper.pid if keeper is not None else None

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
        self._start_spare()
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
            try:
                await self._resign()
            finally:
                spare, self._spare = self._spare, None
                if spare is not None:
                    await spare.stop()

    def _start_spare(self) -> None:
        """Start the next term's keeper process now, while nothing waits for it."""
        if self._spare is None and not self._closed:
            try:
                self._spare = KeeperProcess.spawn()
            except OSError as exc:  # the term will try again
                log.error("leadership.keeper_start_failed", error=_describe(exc))

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
        the keeper's process (so a busy event loop, or the GIL, cannot starve it) and,
        as before, a task on the loop (asyncio's relative timeouts, so a wall clock that
        jumps cannot stall it). A failed refresh, whatever the error, is retried until
        the lease could have expired, less a margin. This task reads the keeper's
        reports every HOLD_CHECK and ends the term when the lease's time is up or either
        renewer found the key gone. A keeper that could not start or died leaves the
        term to the loop's renewer (as a keeper thread that stopped did).
        """
        assert self.fence is not None
        keeper = LeaseKeeper(
            self._store, self._lease, self.fence, self._ttl, self._expires, self._record
        )
        self._keeper = keeper
        self._key_lost = False
        spare, self._spare = self._spare, None
        try:
            keeper.start(spare)
        except OSError as exc:
            log.error("leadership.keeper_start_failed", error=_describe(exc))
        try:
            async with asyncio.TaskGroup() as group:
                renewing = group.create_task(self._renew_on_loop(self.fence))
                await self._watch_lease(keeper)
                renewing.cancel()
        finally:
            self._expires = self._lease_expiry()
            self._keeper = None
            await keeper.stop()
            self._start_spare()

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


@dataclass(frozen=True)
class KeeperProcess:
    """A lease keeper process (controller/keeper_process.py) and the controller's ends
    of its pipes; it waits for its term's setup on its stdin."""

    process: subprocess.Popen[bytes]
    ticks: int  # the write end of its stdin
    reports: int  # the read end of its stdout

    @classmethod
    def spawn(cls) -> KeeperProcess:
        """Start one. Called on the event loop's thread (as asyncio starts its own
        subprocesses): its PR_SET_PDEATHSIG follows the thread that started it, which
        must live as long as the controller."""
        ticks_read, ticks = os.pipe()
        reports, reports_write = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "dockyard.controller.keeper_process", str(os.getpid())],
                stdin=ticks_read,
                stdout=reports_write,
                close_fds=True,
            )
        except OSError:
            os.close(ticks)
            os.close(reports)
            raise
        finally:
            os.close(ticks_read)
            os.close(reports_write)
        os.set_blocking(ticks, False)
        os.set_blocking(reports, False)
        return cls(process, ticks, reports)

    async def stop(self) -> None:
        """Kill it (it renews no more once this returns), reap it, close the pipes."""
        for fd in (self.ticks, self.reports):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        # Reaped even if this task is cancelled meanwhile (a term ends in a cancel).
        await asyncio.shield(asyncio.to_thread(self.process.wait))


class LeaseKeeper:
    """Renews one leader lease every TTL/3 from a process of its own
    (controller/keeper_process.py), over etcd's HTTP/JSON gateway, and checks the key is
    still the term's: nothing it does waits for the controller's event loop or its GIL.

    `expires` is the monotonic time by which the lease may have expired (the time the
    last successful refresh was asked, plus the TTL), as the keeper last reported it;
    `lost` names why the keeper gave up (the key is not ours, the event loop hung). The
    controller's loop calls `tick` while it runs: a loop that has not for `stall_limit`
    seconds gets no more renewals. The keeper's reports are read (without blocking)
    each time `expires` or `lost` is looked at, so what the loop checks is what the
    keeper knew then, however long the loop was busy before.
    """

    def __init__(
        self,
        store: Store,
        lease: int,
        fence: Fence,
        ttl: int,
        expires: float,
        record: LeaderRecord,
        stall_limit: float = LOOP_STALL_LIMIT,
    ) -> None:
        credentials, server_name = store.client_settings()
        self._setup = KeeperSetup(
            lease=lease,
            fence_key=fence.key,
            fence_revision=fence.create_revision,
            ttl=ttl,
            expires=expires,
            stall_limit=stall_limit,
            etcd_endpoints=list(store.endpoints),
            etcd_credentials={k: encode(v) for k, v in credentials.items()},
            etcd_server_name=server_name,
        )
        self._expires = expires
        self._lost: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ticks = -1  # the write end of the keeper's stdin
        self._reports = -1  # the read end of its stdout
        self._pending = b""
        self.exited = False  # its stdout ended: it renews no more
        # How long the last renewals took, as the keeper saw them.
        self.renewals: deque[float] = deque(maxlen=RENEWALS_KEPT)

    @property
    def expires(self) -> float:
        self._read_reports()
        return self._expires

    @property
    def lost(self) -> str | None:
        self._read_reports()
        return self._lost

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, spare: KeeperProcess | None = None) -> None:
        """Give the term to a keeper process: `spare`, started ahead (so the term does
        not wait for a Python process to start on a loaded host), or a new one."""
        process = spare if spare is not None else KeeperProcess.spawn()
        self._process, self._ticks, self._reports = process.process, process.ticks, process.reports
        self._send(self._setup.to_line())

    def tick(self) -> None:
        self._send(TICK)

    async def stop(self) -> None:
        """End the keeper (it renews no more once this returns) and reap it."""
        process, self._process = self._process, None
        if process is not None:
            await KeeperProcess(process, self._ticks, self._reports).stop()
        self._ticks = self._reports = -1

    def _send(self, data: bytes) -> None:
        if self._ticks < 0:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._ticks, data)

    def _read_reports(self) -> None:
        while self._reports >= 0 and not self.exited:
            try:
                data = os.read(self._reports, 65536)
            except BlockingIOError:
                return
            if not data:
                self.exited = True
                if self._lost is None:
                    log.warning("leadership.keeper_exited", pid=self.pid)
                return
            lines = (self._pending + data).split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                self._take(json.loads(line))

    def _take(self, report: dict[str, Any]) -> None:
        if "expires" in report:
            self._expires = max(self._expires, float(report["expires"]))
            self.renewals.append(float(report.get("took", 0.0)))
        if "lost" in report:
            self._lost = str(report["lost"])


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
