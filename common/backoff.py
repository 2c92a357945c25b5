"""Exponential backoff with full jitter, for reconnect loops."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `initial` up to `maximum`, each drawn uniformly
    from [initial/2, current] so that many agents restarted together spread out."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    _current: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        self._current = (
            self.initial if self._current == 0 else min(self._current * self.factor, self.maximum)
        )
        return random.uniform(min(self.initial / 2, self._current), self._current)

    def reset(self) -> None:
        self._current = 0.0
