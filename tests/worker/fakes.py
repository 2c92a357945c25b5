"""A fake `Executor` for unit tests of the task controller and the worker.

Each step does what the test sets up (fail, block until released) and every call is
recorded. Its calls are idempotent per task, as the protocol asks of a real backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from dockyard.agent.executor import ExecutorError, ExitInfo, Progress, Started
from dockyard.v1.workloads_pb2 import Task


@dataclass
class FakeExecutor:
    calls: list[tuple[str, str]] = field(default_factory=list)
    prepare_error: Exception | None = None
    start_error: Exception | None = None
    stop_errors: list[Exception] = field(default_factory=list)  # raised by the next stops
    prepare_gate: asyncio.Event | None = None  # prepare waits for it when set
    health: list[int] = field(default_factory=list)  # exit codes of the next checks
    containers: dict[str, str] = field(default_factory=dict)  # task id -> container id
    running: set[str] = field(default_factory=set)
    prepares_cancelled: int = 0
    _exits: dict[str, asyncio.Future[ExitInfo]] = field(default_factory=dict)

    def named(self, method: str) -> list[str]:
        return [target for name, target in self.calls if name == method]

    def exit(self, container_id: str, code: int, oom_killed: bool = False) -> None:
        """The container's process ends with `code`."""
        self.running.discard(container_id)
        future = self._exit_of(container_id)
        if not future.done():
            future.set_result(ExitInfo(code, oom_killed, None))

    async def prepare(self, task: Task, progress: Progress) -> None:
        self.calls.append(("prepare", task.id))
        progress("pulling busybox")
        if self.prepare_gate is not None:
            try:
                await self.prepare_gate.wait()
            except asyncio.CancelledError:
                self.prepares_cancelled += 1
                raise
        if self.prepare_error is not None:
            raise self.prepare_error
        self.containers.setdefault(task.id, f"c-{task.id}")

    async def start(self, task: Task) -> Started:
        self.calls.append(("start", task.id))
        if self.start_error is not None:
            raise self.start_error
        container_id = self.containers[task.id]
        self.running.add(container_id)
        return Started(container_id, "10.87.0.2")

    async def wait(self, container_id: str) -> ExitInfo:
        self.calls.append(("wait", container_id))
        return await asyncio.shield(self._exit_of(container_id))

    async def stop(self, container_id: str, grace: float) -> None:
        self.calls.append(("stop", container_id))
        if self.stop_errors:
            raise self.stop_errors.pop(0)
        if container_id in self.running:
            self.exit(container_id, 137 if grace == 0 else 143)

    async def remove(self, container_id: str) -> None:
        self.calls.append(("remove", container_id))
        self.running.discard(container_id)
        for task_id in [t for t, c in self.containers.items() if c == container_id]:
            del self.containers[task_id]

    async def exec(self, container_id: str, cmd: Sequence[str], timeout: float) -> tuple[int, str]:
        self.calls.append(("exec", container_id))
        if container_id not in self.running:
            raise ExecutorError(f"container {container_id} is not running")
        code = self.health.pop(0) if self.health else 0
        return code, "ok\n" if code == 0 else "not ok\n"

    async def task_containers(self) -> dict[str, str]:
        return dict(self.containers)

    def _exit_of(self, container_id: str) -> asyncio.Future[ExitInfo]:
        if container_id not in self._exits:
            self._exits[container_id] = asyncio.get_running_loop().create_future()
        return self._exits[container_id]
