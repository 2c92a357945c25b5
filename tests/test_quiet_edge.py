"""The control loops' debounce (common/quiet_edge.py): the first change after a quiet
time is taken at once, a burst's later changes gather."""

from __future__ import annotations

import types

import pytest

from dockyard.common import quiet_edge

PERIOD = 0.05


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(quiet_edge, "time", clock)
    monkeypatch.setattr(quiet_edge, "asyncio", types.SimpleNamespace(sleep=clock.sleep))
    return clock


def change_after(clock: Clock, seconds: float) -> object:
    async def wait() -> None:
        clock.now += seconds

    return wait()


async def test_a_change_after_a_quiet_time_goes_at_once(clock: Clock) -> None:
    edge = quiet_edge.QuietEdge(PERIOD)
    assert await edge.wait(change_after(clock, 0.0))  # no round had work yet
    edge.worked()
    assert await edge.wait(change_after(clock, 2.0))
    edge.worked()
    assert await edge.wait(change_after(clock, PERIOD * 1.5))
    assert clock.sleeps == []


async def test_a_change_of_a_burst_gathers(clock: Clock) -> None:
    """A change already there when the loop looks (it came during its last round with
    work), or one right after: the burst's others gather for the period."""
    edge = quiet_edge.QuietEdge(PERIOD)
    edge.worked()
    assert not await edge.wait(change_after(clock, 0.0))
    edge.worked()
    assert not await edge.wait(change_after(clock, PERIOD / 2))
    assert clock.sleeps == [PERIOD, PERIOD]


async def test_a_round_without_work_does_not_end_the_quiet_time(clock: Clock) -> None:
    """The loops wake on each other's changes (the service's record comes before its
    task): a change right after a round that found nothing to do still goes at once."""
    edge = quiet_edge.QuietEdge(PERIOD)
    edge.worked()
    assert await edge.wait(change_after(clock, 2.0))  # a round with nothing to do
    assert await edge.wait(change_after(clock, PERIOD / 10))  # its input, right after
    assert clock.sleeps == []


async def test_a_stream_of_changes_without_work_is_debounced(clock: Clock) -> None:
    """Changes that are no loop's work (heartbeats, status reports), one every ms: after
    AT_ONCE wakes at once in a period, each waits the period."""
    edge = quiet_edge.QuietEdge(PERIOD)
    went = [await edge.wait(change_after(clock, 0.001)) for _ in range(6)]
    assert went == [True] * quiet_edge.AT_ONCE + [False, True, True]
    assert clock.sleeps == [PERIOD]
