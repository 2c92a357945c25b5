"""Per-identity rate limits (a token bucket each), for calls that write to etcd on a
node's behalf and that a node could otherwise repeat without end: certificate renewal."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter", "renewal_limiter"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`burst` calls at once per key, then one every `interval` seconds.

    Keys are authenticated identities, so there are as many as the cluster has; idle
    keys (a full bucket) are forgotten once more than `max_keys` are held.
    """

    def __init__(
        self,
        burst: int,
        interval: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("a rate limit needs burst >= 1 and interval > 0")
        self.burst = burst
        self.interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one call of `key`: 0.0 when allowed, else the seconds until it would be."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(
            float(self.burst), bucket.tokens + (now - bucket.updated) / self.interval
        )
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) * self.interval

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < self._max_keys:
            return
        full = self.burst * self.interval
        for key in [
            k
            for k, b in self._buckets.items()
            if now - b.updated + b.tokens * self.interval >= full
        ]:
            del self._buckets[key]


def renewal_limiter(validity_seconds: float) -> RateLimiter:
    """Renewals of one identity: a few at once (retries after a failed save), then one
    per tenth of a certificate's life, at most one a minute. An agent renews once per
    two thirds of that life, so only a node renewing in a loop is ever refused."""
    return RateLimiter(burst=3, interval=max(0.1, min(60.0, validity_seconds / 10)))
