"""Waiting, in async tests, for something the code under test does on its own time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20
) -> None:
    """Poll `predicate` (sync or async) until true; fail naming `what` after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
