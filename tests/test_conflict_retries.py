"""A removal that lost its etcd race to an unrelated write is checked and tried again."""

from __future__ import annotations

import pytest

from dockyard.controller import conflicts
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.store import Conflict


class Attempts:
    """Fails with the given errors in turn, then answers "removed"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "removed"


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conflicts, "PAUSE", 0.0)


async def test_a_lost_race_is_checked_and_tried_again() -> None:
    attempt = Attempts(Conflict("services changed"), Conflict("services changed"))
    assert await conflicts.retry_conflicts(attempt) == "removed"
    assert attempt.calls == 3


async def test_a_race_lost_every_time_says_so_after_the_last_attempt() -> None:
    attempt = Attempts(*[Conflict(f"lost {n}") for n in range(conflicts.ATTEMPTS)])
    with pytest.raises(Conflict, match=f"lost {conflicts.ATTEMPTS - 1}"):
        await conflicts.retry_conflicts(attempt)
    assert attempt.calls == conflicts.ATTEMPTS


async def test_a_refusal_is_not_retried() -> None:
    attempt = Attempts(FailedPrecondition("in use by service web"))
    with pytest.raises(FailedPrecondition):
        await conflicts.retry_conflicts(attempt)
    assert attempt.calls == 1
