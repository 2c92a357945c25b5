"""Retrying a read-check-write whose etcd transaction lost a race.

A removal that checks its users (services, tasks, attachments) and then writes with
"unchanged since my read" compares loses whenever anything it read changes meanwhile,
e.g. the orchestrator writing a service's update status. The caller should not be
told "try again" for that: the whole check is run again on fresh reads, a few times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dockyard.controller.store import Conflict

__all__ = ["ATTEMPTS", "PAUSE", "retry_conflicts"]

T = TypeVar("T")

ATTEMPTS = 5
PAUSE = 0.05  # seconds before the next attempt, doubled each time


async def retry_conflicts(attempt: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """`attempt()`, again (on fresh reads) after each Conflict, at most `attempts` times;
    the last Conflict is raised. Any other error ends it at once."""
    pause = PAUSE
    for _ in range(attempts - 1):
        try:
            return await attempt()
        except Conflict:
            await asyncio.sleep(pause)
            pause *= 2
    return await attempt()
