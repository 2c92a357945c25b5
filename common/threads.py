"""A blocking call in a worker thread that a cancelled caller does not cut short.

``asyncio.to_thread`` cancelled while its job waits for a free worker drops the job (the
executor skips a cancelled future); cancelled once the job runs, it loses the result.
For a call with an effect that must be undone later (a mount, an open file descriptor),
either way leaves that effect behind with nobody who knows of it: an aiohttp handler
is cancelled when its client hangs up, which ``docker cp`` does as soon as it has read
the archive, while the handler still unmounts the container's root filesystem.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["to_thread_to_end"]

T = TypeVar("T")


async def to_thread_to_end(call: Callable[[], T], undo: Callable[[T], object] | None = None) -> T:
    """``call()`` in a worker thread, run to its end even when the caller is cancelled.

    Cancelled, this waits for the call to finish, passes its result to ``undo`` (in a
    thread too: a mount unmounted, a descriptor closed) and then lets the cancellation
    go on. A caller cancelled again while it waits leaves at once; the call and its undo
    still run.
    """
    job = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        # exception() before undo: a failed call's error is retrieved, not logged at GC
        if not job.cancelled() and job.exception() is None and undo is not None:
            result = job.result()
            await to_thread_to_end(lambda: undo(result))
        raise
