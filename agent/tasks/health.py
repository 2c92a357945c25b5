"""A task's health check, as Docker runs it: a command in the container, every interval.

`retries` failures in a row make the task unhealthy; failures during the start period do
not count until the check has passed once. The verdict is a pure function of the results
(`HealthCounter`), the loop that runs the command is `HealthProbe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import structlog

from dockyard.agent.executor import Executor
from dockyard.v1.workloads_pb2 import HealthCheck

__all__ = ["HealthCounter", "HealthProbe", "Verdict", "probe_command"]

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3


def probe_command(check: HealthCheck) -> list[str] | None:
    """The command the check runs, or None when the task has no check."""
    test: Sequence[str] = list(check.test)
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    if test[0] == "CMD":
        return list(test[1:]) or None
    return list(test)


class Verdict(Enum):
    HEALTHY = "healthy"
    STARTING = "starting"  # a failure in the start period: not counted
    FAILING = "failing"  # a counted failure, fewer than `retries` in a row
    UNHEALTHY = "unhealthy"


@dataclass
class HealthCounter:
    """Docker's rule over the results of one check, oldest first."""

    retries: int
    start_period: float
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    healthy_once: bool = False

    def record(self, exit_code: int, now: float | None = None) -> Verdict:
        if exit_code == 0:
            self.failures, self.healthy_once = 0, True
            return Verdict.HEALTHY
        now = time.monotonic() if now is None else now
        if not self.healthy_once and now - self.started < self.start_period:
            return Verdict.STARTING
        self.failures += 1
        return Verdict.UNHEALTHY if self.failures >= self.retries else Verdict.FAILING


@dataclass
class HealthProbe:
    """Runs one task's check in its container until the task is found unhealthy.

    `on_healthy` is called after each passing check; `run` returns the output of the
    last failing check once the task is unhealthy (the caller stops the container).
    """

    executor: Executor
    task_id: str
    container_id: str
    check: HealthCheck
    command: list[str]
    on_healthy: Callable[[], None]

    async def run(self) -> str:
        interval = self.check.interval_seconds or DEFAULT_INTERVAL
        timeout = self.check.timeout_seconds or DEFAULT_TIMEOUT
        counter = HealthCounter(
            self.check.retries or DEFAULT_RETRIES, self.check.start_period_seconds
        )
        while True:
            await asyncio.sleep(interval)
            code, output = await self._run_once(timeout)
            verdict = counter.record(code)
            if verdict is Verdict.HEALTHY:
                self.on_healthy()
                continue
            if verdict is Verdict.STARTING:
                continue
            log.info(
                "task.health_failed",
                task_id=self.task_id,
                failures=counter.failures,
                exit_code=code,
                output=output.strip()[-200:],
            )
            if verdict is Verdict.UNHEALTHY:
                return output.strip() or f"exit code {code}"

    async def _run_once(self, timeout: float) -> tuple[int, str]:
        try:
            return await self.executor.exec(self.container_id, self.command, timeout)
        except TimeoutError:
            return -1, f"health check timed out after {timeout:g} s"
        except Exception as exc:  # the container is gone, the backend failed: a failure
            return -1, str(exc) or type(exc).__name__
