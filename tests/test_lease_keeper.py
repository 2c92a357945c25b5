"""The lease keeper against a slow etcd (a test double that answers each renewal late).

The double counts the lease as etcd does: a renewal extends it from the moment etcd
handles it (at once here: the delay is all on the way back, as when the controller's
thread is starved before it reads the answer), and a lease not renewed within its TTL
is gone for good. The keeper must give the term up when the answers come too late,
and never claim the lease (its `expires` less the margin, what `Leadership.holds`
reads) after etcd expired it, nor again once it gave it up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from dockyard.controller.leadership import EXPIRY_MARGIN, LeaseKeeper
from dockyard.controller.records import Fence
from dockyard.controller.store import StoreUnavailable
from dockyard.v1.types_pb2 import LeaderRecord

TTL = 2
SAMPLE = 0.02  # how often the test looks at what the keeper claims


@dataclass
class SlowEtcd:
    """A lease in a fake etcd whose renewals are answered `delay` seconds after asked."""

    delay: float
    ttl: float = TTL
    expires: float = field(default_factory=lambda: time.monotonic() + TTL)
    renewals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def renewer(self) -> SlowRenewer:
        return SlowRenewer(self)

    def alive(self, now: float) -> bool:
        with self.lock:
            return now < self.expires

    def handle(self, at: float) -> bool:
        """etcd handles a renewal at `at`: it extends a lease that has not expired."""
        with self.lock:
            if at >= self.expires:
                return False
            self.expires = max(self.expires, at + self.ttl)
            self.renewals += 1
            return True


@dataclass
class SlowRenewer:
    """`store.LeaseRenewer`'s surface: a renewal answered `delay` after it was asked,
    cancelled (StoreUnavailable) when the caller's timeout comes first."""

    etcd: SlowEtcd

    def refresh_lease(self, lease_id: int, timeout: float) -> bool:
        asked = time.monotonic()
        alive = self.etcd.handle(asked)
        if self.etcd.delay > timeout:
            time.sleep(max(0.0, asked + timeout - time.monotonic()))
            raise StoreUnavailable("etcd lease keep-alive: cancelled (deadline)")
        time.sleep(max(0.0, asked + self.etcd.delay - time.monotonic()))
        return alive

    def fence_holds(self, fence: Fence, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


def _watch(etcd: SlowEtcd, keeper: LeaseKeeper, seconds: float) -> tuple[float, list[str]]:
    """For `seconds` (while ticking the keeper, as the controller's loop does): the time
    the keeper stopped claiming the lease (0: it never did; the term ends there), and
    every moment it claimed a lease etcd had expired or claimed it again once stopped."""
    unsafe: list[str] = []
    stopped = 0.0
    start = time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        keeper.tick()
        claimed = now < keeper.expires - EXPIRY_MARGIN
        if claimed and not etcd.alive(now):
            unsafe.append(f"claimed at +{now - start:.2f} s, etcd expired it")
        if claimed and stopped:
            unsafe.append(f"claimed again at +{now - start:.2f} s after the term ended")
        if not claimed and not stopped:
            stopped = now - start
        time.sleep(SAMPLE)
    return stopped, unsafe


def _keeper(etcd: SlowEtcd) -> LeaseKeeper:
    fence = Fence("/dockyard/leader/current", 7)
    keeper = LeaseKeeper(etcd, 1, fence, TTL, etcd.expires, LeaderRecord())  # type: ignore[arg-type]
    keeper.start()
    return keeper


def test_a_renewal_answered_after_the_lease_loses_the_term() -> None:
    """Keep-alives answered 1.2 s late on a 2 s lease with its 1 s margin: no renewal
    can be shown in time, so the keeper stops claiming the lease (before etcd expires
    it, whatever etcd made of the late renewals)."""
    etcd = SlowEtcd(delay=1.2)
    keeper = _keeper(etcd)
    try:
        stopped, unsafe = _watch(etcd, keeper, 2 * TTL)
        assert not unsafe
        assert 0 < stopped < TTL
    finally:
        asyncio.run(keeper.stop())
