"""`now_timestamp` is the step-free wall clock (`wall_time_ns`) as a protobuf Timestamp,
split as protobuf's own `FromNanoseconds` splits it."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.common.timestamps import now_timestamp, wall_time_ns


def test_now_is_the_wall_clock_split_into_seconds_and_nanos() -> None:
    before = wall_time_ns()
    stamp = now_timestamp()
    after = wall_time_ns()
    assert before <= stamp.ToNanoseconds() <= after
    assert 0 <= stamp.nanos < 1_000_000_000
    expected = Timestamp()
    expected.FromNanoseconds(stamp.ToNanoseconds())
    assert stamp == expected
