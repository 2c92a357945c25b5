"""`HollowRuntime`: the `ContainerRuntime` protocol without processes.

Each container costs one small record and, while it runs with a command that ends,
one event-loop timer; thousands fit in one process.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import operator
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ExecChunk,
    ExecResult,
    ExitInfo,
    InvalidConfig,
    LogRecord,
    NameConflict,
    NetworkEndpoint,
    NoInteractiveStdio,
    Stats,
)

__all__ = ["HollowExecSession", "HollowRuntime", "Outcome", "simulate"]

_SHELLS = {"sh", "bash", "ash", "dash"}
_STATE_FIELDS = operator.attrgetter(*(f.name for f in fields(ContainerState)))
"""A `ContainerState`'s fields in order: a snapshot's copy in one call (a quarter of
`dataclasses.replace`'s time, twice a task)."""
_SIGTERM_EXIT = 143
_SIGKILL_EXIT = 137


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a simulated command ends: after `seconds` (None: never) with `exit_code`."""

    seconds: float | None
    exit_code: int = 0
    output: str = ""


def simulate(argv: Sequence[str], exit_delay: float = 0.1) -> Outcome:
    """Decide how `argv` would end, from the command alone.

    `true` → 0 and `false` → 1 after `exit_delay`; `sleep N` → 0 after N s; `exit N`;
    `sh -c SCRIPT` runs those (and `echo`) joined by `;`, `&&` or newlines; anything
    else never ends.
    """
    if not argv:
        return Outcome(None)
    if os.path.basename(argv[0]) in _SHELLS and len(argv) >= 3 and argv[1] == "-c":
        return _script(argv[2], exit_delay)
    return _simple(list(argv), exit_delay)


def _simple(words: list[str], exit_delay: float) -> Outcome:
    program = os.path.basename(words[0])
    if program == "true":
        return Outcome(exit_delay, 0)
    if program == "false":
        return Outcome(exit_delay, 1)
    if program == "exit":
        return Outcome(exit_delay, _int(words[1]) if len(words) > 1 else 0)
    if program == "echo":
        return Outcome(0.0, 0, " ".join(words[1:]) + "\n")
    if program == "sleep" and len(words) == 2:
        try:
            return Outcome(max(0.0, float(words[1].rstrip("s"))), 0)
        except ValueError:
            return Outcome(exit_delay, 1, f"sleep: invalid number '{words[1]}'\n")
    return Outcome(None)


def _script(script: str, exit_delay: float) -> Outcome:
    seconds, code, output = 0.0, 0, ""
    for part in re.split(r";|&&|\n", script):
        words = part.split()
        if not words:
            continue
        step = _simple(words, exit_delay)
        if step.seconds is None:
            return Outcome(None, 0, output)
        seconds += step.seconds
        code, output = step.exit_code, output + step.output
        if words[0] == "exit":
            break
    return Outcome(max(seconds, exit_delay), code, output)


def _int(text: str) -> int:
    try:
        return int(text) & 0xFF
    except ValueError:
        return 2


class _Container:
    __slots__ = ("config", "created_at", "snapshot", "state", "timer", "waiters")

    def __init__(self, config: ContainerSpec) -> None:
        self.config = config
        self.created_at = datetime.now(UTC)
        self.state = ContainerState()
        self.waiters: list[asyncio.Future[None]] | None = None
        """Futures of the `wait`s for the current run, resolved by its exit. One each
        rather than an `asyncio.Event`: the same wake-up without an event, its deque and
        an `Event.wait` coroutine held by every waiter (a task and the supervisor)."""
        self.timer: asyncio.TimerHandle | None = None
        self.snapshot: ContainerInfo | None = None

    def info(self) -> ContainerInfo:
        """The container as callers see it: one snapshot (its state a copy of ours) per
        change, shared by every inspect until the next change (`changed`), as a runtime
        keeping its records in memory would: a task's pipeline inspects its container
        several times between two changes."""
        if self.snapshot is None:
            config = self.config
            self.snapshot = ContainerInfo(
                config.id,
                config.name,
                config.image,
                self.created_at,
                config,
                ContainerState(*_STATE_FIELDS(self.state)),
            )
        return self.snapshot

    def changed(self) -> None:
        """Its state or config changed: the next `info` is a new snapshot."""
        self.snapshot = None

    def exit_info(self) -> ExitInfo:
        state = self.state
        code = state.exit_code if state.exit_code is not None else -1
        return ExitInfo(code, state.oom_killed, state.finished_at, state.error)


class HollowExecSession:
    """An exec whose result is decided up front (implements `ExecSession`)."""

    def __init__(self, outcome: Outcome) -> None:
        self._outcome = outcome
        self._killed = asyncio.Event()

    async def output(self) -> AsyncIterator[ExecChunk]:
        if self._outcome.output:
            yield ExecChunk("stdout", self._outcome.output.encode())

    async def wait(self) -> int:
        if self._outcome.seconds is None:
            await self._killed.wait()  # never ends by itself: the caller times out
            return _SIGKILL_EXIT
        await asyncio.sleep(self._outcome.seconds)
        return self._outcome.exit_code

    async def collect(self) -> ExecResult:
        code = await self.wait()
        return ExecResult(code, self._outcome.output.encode())

    async def kill(self) -> None:
        self._killed.set()


class HollowRuntime(NoInteractiveStdio):
    """Simulated containers (implements `ContainerRuntime`).

    Args:
        start_delay: Seconds `start` takes.
        exit_delay: Seconds before `true`, `false` and `exit N` end.
    """

    runtime_name = "hollow"

    def __init__(self, start_delay: float = 0.05, exit_delay: float = 0.1) -> None:
        self.start_delay = start_delay
        self.exit_delay = exit_delay
        self._containers: dict[str, _Container] = {}
        self._names: dict[str, str] = {}

    def _get(self, ref: str) -> _Container:
        container = self._containers.get(ref) or self._containers.get(self._names.get(ref, ""))
        if container is None:
            raise ContainerNotFound(ref)
        return container

    async def create(
        self, config: ContainerSpec, record: Callable[[], None] | None = None
    ) -> ContainerInfo:
        if config.name in self._names:
            raise NameConflict(config.name, self._names[config.name][:12])
        if not config.image:
            raise InvalidConfig("no image")
        if record is not None:
            await asyncio.to_thread(record)
        if not config.id:  # the service names its containers: no copy of the spec then
            config = replace(config, id=secrets.token_hex(32))
        container = _Container(config)
        self._containers[config.id] = container
        self._names[config.name] = config.id
        return container.info()

    async def start(self, container_id: str) -> None:
        container = self._get(container_id)
        if container.state.status is ContainerStatus.RUNNING:
            return
        if self.start_delay > 0:
            await asyncio.sleep(self.start_delay)
        if container.config.id not in self._containers:
            raise ContainerNotFound(container_id)
        state = container.state
        if state.status is ContainerStatus.EXITED:
            state.restart_count += 1
        state.status = ContainerStatus.RUNNING
        state.pid = 1
        state.exit_code = None
        state.started_at = datetime.now(UTC)
        state.finished_at = None
        container.changed()
        config = container.config
        argv = [*(config.entrypoint or ()), *(config.command or ())]
        outcome = simulate(argv, self.exit_delay)
        if outcome.seconds is not None:
            container.timer = asyncio.get_running_loop().call_later(
                outcome.seconds, self._finish, container, outcome.exit_code
            )

    def _finish(self, container: _Container, exit_code: int) -> None:
        if container.state.status is not ContainerStatus.RUNNING:
            return
        if container.timer is not None:
            container.timer.cancel()
            container.timer = None
        container.state.status = ContainerStatus.EXITED
        container.state.pid = 0
        container.state.exit_code = exit_code
        container.state.finished_at = datetime.now(UTC)
        container.changed()
        waiters, container.waiters = container.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, container_id: str) -> ExitInfo:
        container = self._get(container_id)
        if container.state.status in (ContainerStatus.EXITED, ContainerStatus.DEAD):
            return container.exit_info()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if container.waiters is None:
            container.waiters = []
        waiters = container.waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done() or waiter.cancelled():  # cancelled: no longer waiting
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
        return container.exit_info()

    async def stop(self, container_id: str, timeout: float = 10.0) -> ExitInfo | None:
        container = self._get(container_id)
        if container.state.status is not ContainerStatus.RUNNING:
            return None
        # a simulated process dies of SIGTERM at once; with no grace at all, of SIGKILL
        self._finish(container, _SIGTERM_EXIT if timeout > 0 else _SIGKILL_EXIT)
        return container.exit_info()

    async def kill(self, container_id: str, signal: int | str = "KILL") -> None:
        container = self._get(container_id)
        if container.state.status is not ContainerStatus.RUNNING:
            raise ContainerNotRunning(container.config.id, container.state.status.value)
        self._finish(container, _SIGKILL_EXIT)

    async def remove(self, container_id: str, force: bool = False) -> None:
        container = self._get(container_id)
        if container.state.status is ContainerStatus.RUNNING:
            if not force:
                raise ContainerNotRunning(container.config.id, "running: stop it first")
            self._finish(container, _SIGKILL_EXIT)
        del self._containers[container.config.id]
        self._names.pop(container.config.name, None)

    async def list(self, all: bool = False) -> builtins.list[ContainerInfo]:
        return [
            c.info()
            for c in self._containers.values()
            if all or c.state.status is ContainerStatus.RUNNING
        ]

    async def inspect(self, container_id: str) -> ContainerInfo:
        return self._get(container_id).info()

    async def logs(
        self,
        container_id: str,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[LogRecord]:
        self._get(container_id)
        records: tuple[LogRecord, ...] = ()
        for record in records:
            yield record

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> HollowExecSession:
        container = self._get(container_id)
        if container.state.status is not ContainerStatus.RUNNING:
            raise ContainerNotRunning(container.config.id, container.state.status.value)
        outcome = simulate(cmd, 0.0)
        if outcome.seconds is None and cmd and os.path.basename(cmd[0]) not in _SHELLS:
            outcome = Outcome(0.0, 0)  # an unknown probe: it "works"
        return HollowExecSession(outcome)

    async def stats(self, container_id: str) -> Stats:
        container = self._get(container_id)
        return Stats(datetime.now(UTC), 0, 0.0, 0, container.config.memory_bytes, 1)

    async def recover(self) -> builtins.list[ContainerInfo]:
        return await self.list(all=True)

    async def rename(self, container_id: str, name: str) -> None:
        container = self._get(container_id)
        holder = self._names.get(name)
        if holder is not None and holder != container.config.id:
            raise NameConflict(name, holder[:12])
        self._names.pop(container.config.name, None)
        container.config = replace(container.config, name=name)
        container.changed()
        self._names[name] = container.config.id

    async def set_endpoint(self, container_id: str, endpoint: NetworkEndpoint) -> None:
        """Nothing derives from a simulated container's endpoint."""
        self._get(container_id)

    async def close(self) -> None:
        """Nothing to release: simulated containers end with the process."""
