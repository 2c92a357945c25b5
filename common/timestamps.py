"""Conversions between protobuf Timestamps, datetimes and human ages."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def now_timestamp() -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def to_seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def is_set(stamp: Timestamp) -> bool:
    return stamp.seconds != 0 or stamp.nanos != 0


def human_age(stamp: Timestamp, now: float | None = None) -> str:
    """'3 seconds ago', '2 minutes ago', as docker prints ages."""
    if not is_set(stamp):
        return "never"
    delta = max(0.0, (now if now is not None else time.time()) - to_seconds(stamp))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= size:
            count = int(delta // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    count = int(delta)
    return "just now" if count == 0 else f"{count} second{'s' if count != 1 else ''} ago"
