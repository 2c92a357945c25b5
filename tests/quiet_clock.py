"""A clock for `common/quiet_edge.py` in tests of the control loops: every wait it times
looks `offset` seconds long, so each change ends a quiet time."""

from __future__ import annotations

import time


class LaterClock:
    """A monotonic clock `offset` seconds ahead at every read after the first: a wait
    timed with it lasted at least `offset`."""

    def __init__(self, offset: float) -> None:
        self._offset = offset
        self._reads = 0

    def monotonic(self) -> float:
        self._reads += 1
        return time.monotonic() + (self._offset if self._reads > 1 else 0.0)
