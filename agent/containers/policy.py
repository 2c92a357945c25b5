"""Restart policies, as dockerd's restart manager applies them."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.agent.runtime.base import RestartPolicy, RestartPolicyName

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "RESET_AFTER", "Backoff", "should_restart"]

BACKOFF_START = 0.1
"""First delay before a restart, in seconds (doubles per restart)."""
BACKOFF_MAX = 60.0
"""Longest delay between restarts."""
RESET_AFTER = 10.0
"""A run at least this long resets the delay to ``BACKOFF_START``."""


def should_restart(
    policy: RestartPolicy, exit_code: int, manually_stopped: bool, restarts: int
) -> bool:
    """Whether an exited container is started again.

    Args:
        policy: The container's restart policy.
        exit_code: How it exited.
        manually_stopped: The user stopped or killed it (no policy restarts it then).
        restarts: Restarts the policy already made since the user last started it.
    """
    if manually_stopped:
        return False
    match policy.name:
        case RestartPolicyName.ALWAYS | RestartPolicyName.UNLESS_STOPPED:
            return True
        case RestartPolicyName.ON_FAILURE:
            within = policy.max_retries == 0 or restarts < policy.max_retries
            return exit_code != 0 and within
        case _:
            return False


@dataclass
class Backoff:
    """Docker's restart delay: 100 ms doubling up to a minute, reset after 10 s running."""

    delay: float = 0.0

    def next(self, ran_for: float) -> float:
        """The delay before the next restart, given how long the last run lasted."""
        if ran_for >= RESET_AFTER:
            self.delay = 0.0
        self.delay = BACKOFF_START if self.delay == 0.0 else min(self.delay * 2, BACKOFF_MAX)
        return self.delay
