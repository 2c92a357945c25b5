"""The worker: the controller's assignments become containers, and every change goes back.

One asyncio task per assigned task drives it one step at a time, as swarmkit's
`exec.Do` does: ACCEPTED → PREPARING (pull, create) → STARTING → RUNNING → COMPLETE |
FAILED, or SHUTDOWN when the controller asks, or REJECTED when the image or the config
is bad. Errors before STARTING reject the task, later ones fail it. The node never
restarts a container: the controller's restart policy replaces the task.

Every status is reported through the session. While it is disconnected the latest
status of every task is kept, and after each reconnect the current status of every task
is sent once. The assignment set and the statuses are kept in `<state dir>/worker.json`,
so after an agent restart the worker goes on managing its containers (found again by
their `dockyard.task.id` label) even when no controller answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from google.protobuf import json_format

from dockyard.agent.executor import Executor, ExecutorError, ExitInfo
from dockyard.agent.secret_files import SecretFiles
from dockyard.common.session_limits import clip_status
from dockyard.v1.dispatcher_pb2 import AssignmentSet, TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import HealthCheck, Task

__all__ = ["STATE_FILE", "SessionLike", "Worker"]

log = structlog.get_logger(__name__)

STATE_FILE = "worker.json"
DEFAULT_STOP_GRACE = 10.0
SAVE_DELAY = 0.05
"""Seconds status changes are gathered before `worker.json` is written once for all."""

State = TaskStatus.State
ACCEPTED, PREPARING, STARTING = State.ACCEPTED, State.PREPARING, State.STARTING
RUNNING, COMPLETE, SHUTDOWN = State.RUNNING, State.COMPLETE, State.SHUTDOWN
FAILED, REJECTED = State.FAILED, State.REJECTED
Health = TaskStatus.Health
T = TypeVar("T")


class SessionInfo(Protocol):
    @property
    def session_id(self) -> str: ...


class SessionLike(Protocol):
    """What the worker needs of `dockyard.agent.session.ControllerSession`."""

    @property
    def connected(self) -> asyncio.Event: ...

    @property
    def status(self) -> SessionInfo: ...

    def report(self, report: TaskStatusReport) -> bool: ...


@dataclass(eq=False)
class _Tracked:
    """The worker's record of one assigned task."""

    task: Task
    status: TaskStatus
    container_id: str = ""
    address: str = ""  # the container's on the bridge network
    removed: bool = False
    unhealthy: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    health: asyncio.Task[None] | None = None


class _Interrupted(Exception):
    pass


class Worker:
    """Runs the tasks the controller assigns to this node.

    Args:
        executor: The backend that makes and runs containers.
        session: Where statuses go (`ControllerSession`); `report` returns False while
            disconnected.
        state_dir: Where `worker.json` is kept (the agent's state dir).
    """

    def __init__(
        self, executor: Executor, session: SessionLike, state_dir: Path, persist: bool = True,
        secrets: SecretFiles | None = None,
    ) -> None:
        """`persist=False` keeps no worker.json: for simulated agents, whose
        containers do not outlive the process anyway. `secrets` holds the secrets the
        sets deliver, in memory only (worker.json keeps tasks' references, never data),
        and the executor's files of them (removed with each task's container)."""
        self.executor = executor
        self.session = session
        self.path = state_dir / STATE_FILE
        self._persist = persist
        self._tasks: dict[str, _Tracked] = {}
        self._containers: dict[str, str] = {}  # task id -> container id, as last listed
        self._removing: set[asyncio.Task[None]] = set()
        self._disposing: set[str] = set()  # container ids being stopped and removed
        self._synced_session = ""
        self._unsent = False
        self._flusher: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_again = False
        self._closed = False
        self._write_lock = threading.Lock()  # a cancelled save may still be writing
        self._sequence = self._written = 0
        self.secrets = secrets

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load `worker.json`, find the containers again and resume every task."""
        saved = await asyncio.to_thread(_load, self.path)
        self._containers = await self.executor.task_containers()
        if self.secrets is not None:  # files of tasks this node no longer holds
            await asyncio.to_thread(self.secrets.prune, [task.id for task, _ in saved])
        for task, status in saved:
            self._track(task, status)
        log.info("worker.started", tasks=len(self._tasks), containers=len(self._containers))
        if self._tasks:  # the controller may have missed the last statuses
            self._unsent = True
            self._flusher = asyncio.create_task(self._flush_when_connected())

    async def close(self) -> None:
        """Stop driving tasks and write the state; the containers keep running."""
        self._closed = True
        tasks = [t for t in (self._flusher, self._saver, self._sweeper) if t is not None]
        for tracked in self._tasks.values():
            tasks += [t for t in (tracked.runner, tracked.health) if t is not None]
        tasks += list(self._removing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._persist:
            await asyncio.to_thread(self._write, self._snapshot())
        if self.secrets is not None:
            await asyncio.to_thread(self.secrets.close)

    def statuses(self) -> dict[str, TaskStatus]:
        """The latest status of every assigned task."""
        return {task_id: tracked.status for task_id, tracked in self._tasks.items()}

    # --------------------------------------------------------------- assignments

    async def on_assignments(self, assignments: AssignmentSet) -> None:
        """Reconcile with a set from the controller (full: it replaces everything)."""
        if self._closed:
            return
        incoming = {task.id: task for task in assignments.tasks}
        if assignments.full and self.secrets is not None:
            self.secrets.update(assignments.secrets)
        if assignments.full:
            gone = [task_id for task_id in self._tasks if task_id not in incoming]
        else:
            gone = [task_id for task_id in assignments.removed_task_ids if task_id in self._tasks]
        for task_id in gone:
            self._forget(task_id)
        for task in incoming.values():
            tracked = self._tasks.get(task.id)
            if tracked is None:
                self._track(task, None)
            else:
                desired_before, tracked.task = tracked.task.desired_state, task
                if task.desired_state != desired_before:
                    tracked.changed.set()
        self._save_soon()
        self._resync()
        if assignments.full:
            self._sweep()

    def _track(self, task: Task, status: TaskStatus | None) -> None:
        if status is None:  # new to this node: what the controller knows of it
            status = TaskStatus()
            status.CopyFrom(task.status)
        tracked = _Tracked(task, status, self._containers.get(task.id, ""), status.address)
        self._tasks[task.id] = tracked
        tracked.runner = asyncio.create_task(self._drive(tracked), name=f"task-{task.id[:12]}")

    def _forget(self, task_id: str) -> None:
        """The task left the set: its runner stops and removes its container."""
        tracked = self._tasks.pop(task_id)
        tracked.removed = True
        tracked.changed.set()

    def _sweep(self) -> None:
        """Soon: stop and remove containers of tasks that are in no set."""
        if self._sweeper is not None and not self._sweeper.done():
            self._sweep_again = True
            return
        self._sweeper = asyncio.create_task(self._sweep_orphans())

    async def _sweep_orphans(self) -> None:
        while True:
            self._sweep_again = False
            try:
                self._containers = await self.executor.task_containers()
            except Exception as exc:  # the next set tries again
                log.warning("worker.list_failed", error=str(exc))
                return
            for task_id, container_id in self._containers.items():
                if task_id not in self._tasks:
                    log.info("worker.orphan", task_id=task_id, container_id=container_id)
                    self._dispose_later(task_id, container_id, DEFAULT_STOP_GRACE)
            if not self._sweep_again:
                return

    def _dispose_later(self, task_id: str, container_id: str, grace: float) -> None:
        job = asyncio.create_task(self._dispose(task_id, container_id, grace))
        self._removing.add(job)
        job.add_done_callback(self._removing.discard)

    async def _dispose(self, task_id: str, container_id: str, grace: float) -> None:
        if container_id in self._disposing:
            return
        self._disposing.add(container_id)
        try:
            await self.executor.stop(container_id, grace)
            await self.executor.remove(container_id)
            if self.secrets is not None:
                self.secrets.remove(task_id)
            log.info("worker.removed", task_id=task_id, container_id=container_id)
        except Exception as exc:
            log.warning("worker.remove_failed", container_id=container_id, error=str(exc))
        finally:
            self._disposing.discard(container_id)
            if self._containers.get(task_id) == container_id:
                del self._containers[task_id]

    # ------------------------------------------------------------- state machine

    async def _drive(self, tracked: _Tracked) -> None:
        try:
            while not tracked.removed:
                tracked.changed.clear()
                await self._step(tracked)
            await self._stop_health(tracked)
            container_id = tracked.container_id or await self._find_container(tracked)
            if container_id:
                await self._dispose(tracked.task.id, container_id, _grace(tracked.task))
            elif self.secrets is not None:  # prepare may have written them
                self.secrets.remove(tracked.task.id)
        except asyncio.CancelledError:
            await self._stop_health(tracked)
            raise
        except Exception:
            log.exception("worker.task_crashed", task_id=tracked.task.id)

    async def _step(self, tracked: _Tracked) -> None:
        """Move the task one step (or wait for a change when there is none to make)."""
        state = tracked.status.state
        if state >= COMPLETE:
            await tracked.changed.wait()
        elif tracked.task.desired_state > RUNNING:
            await self._shutdown(tracked)
        elif state < ACCEPTED:
            self._report(tracked, ACCEPTED, "accepted")
        elif state == ACCEPTED:
            self._report(tracked, PREPARING, "preparing")
        elif state == PREPARING:
            await self._prepare(tracked)
        elif state == STARTING:
            await self._start(tracked)
        else:  # RUNNING
            await self._running(tracked)

    async def _start(self, tracked: _Tracked) -> None:
        """Start the container. A task with a health check is RUNNING only once the check
        first passes (as in Swarm), so a rolling update waits for healthy tasks."""
        try:
            tracked.container_id = await self.executor.start(tracked.task)
            tracked.address = await self.executor.address(tracked.container_id)
        except Exception as exc:
            self._report(tracked, FAILED, "starting failed", error=_text(exc))
            return
        if _probe_command(tracked.task.spec.container.healthcheck) is None:
            self._report(tracked, RUNNING, "started")
            return
        if tracked.status.health != Health.HEALTH_STARTING:
            self._report(tracked, STARTING, "started; waiting for the health check to pass",
                         health=Health.HEALTH_STARTING)  # fmt: skip
        await self._running(tracked)

    async def _prepare(self, tracked: _Tracked) -> None:
        task_id = tracked.task.id

        def progress(line: str) -> None:
            log.info("task.progress", task_id=task_id, progress=line)

        try:
            await self._unless_changed(tracked, self.executor.prepare(tracked.task, progress))
        except _Interrupted:
            return
        except Exception as exc:
            self._report(tracked, REJECTED, "rejected", error=_text(exc))
            return
        self._report(tracked, STARTING, "starting")

    async def _running(self, tracked: _Tracked) -> None:
        if not tracked.container_id:
            tracked.container_id = await self._find_container(tracked)
            if not tracked.container_id:
                self._report(tracked, FAILED, "failed",
                             error="task: container not found on this node")  # fmt: skip
                return
        self._start_health(tracked)
        try:
            exit_info = await self._unless_changed(
                tracked, self.executor.wait(tracked.container_id)
            )
        except _Interrupted:
            return
        except Exception as exc:
            await self._stop_health(tracked)
            self._report(tracked, FAILED, "failed", error=_text(exc))
            return
        await self._stop_health(tracked)
        self._report_exit(tracked, exit_info)

    async def _shutdown(self, tracked: _Tracked) -> None:
        await self._stop_health(tracked)
        fields: dict[str, Any] = {}
        if tracked.status.state in (STARTING, RUNNING) and tracked.container_id:
            await self.executor.stop(tracked.container_id, _grace(tracked.task))
            with contextlib.suppress(Exception):
                exit_info = await self.executor.wait(tracked.container_id)
                fields = {"exit_code": exit_info.exit_code, "oom_killed": exit_info.oom_killed}
        if tracked.status.state < COMPLETE:
            self._report(tracked, SHUTDOWN, "shutdown", **fields)

    async def _unless_changed(self, tracked: _Tracked, work: Awaitable[T]) -> T:
        """Await `work`, or cancel it and raise `_Interrupted` when the task changes."""
        job = asyncio.ensure_future(work)
        changed = asyncio.ensure_future(tracked.changed.wait())
        try:
            await asyncio.wait({job, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (job, changed):
                if not future.done():
                    future.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await future
        if job.cancelled():
            raise _Interrupted
        return job.result()

    async def _find_container(self, tracked: _Tracked) -> str:
        with contextlib.suppress(Exception):
            self._containers = await self.executor.task_containers()
        return self._containers.get(tracked.task.id, "")

    def _report_exit(self, tracked: _Tracked, exit_info: ExitInfo) -> None:
        fields = {"exit_code": exit_info.exit_code, "oom_killed": exit_info.oom_killed}
        if tracked.unhealthy is not None:
            self._report(tracked, FAILED, "failed",
                         error=f"task: unhealthy: {tracked.unhealthy}", **fields)  # fmt: skip
        elif exit_info.oom_killed:
            self._report(tracked, FAILED, "failed", error="task: out of memory", **fields)
        elif exit_info.exit_code == 0:
            self._report(tracked, COMPLETE, "finished", **fields)
        else:
            error = f"task: non-zero exit ({exit_info.exit_code})"
            if exit_info.error:
                error += f": {exit_info.error}"
            self._report(tracked, FAILED, "failed", error=error, **fields)

    # -------------------------------------------------------------- health checks

    def _start_health(self, tracked: _Tracked) -> None:
        check = tracked.task.spec.container.healthcheck
        command = _probe_command(check)
        if command is None or tracked.health is not None:
            return
        tracked.health = asyncio.create_task(self._probe(tracked, check, command))

    async def _stop_health(self, tracked: _Tracked) -> None:
        job, tracked.health = tracked.health, None
        if job is not None and job is not asyncio.current_task():
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)

    async def _probe(self, tracked: _Tracked, check: HealthCheck, command: list[str]) -> None:
        """Docker's health check: `retries` failures in a row (not counted during the
        start period until the first success) make the task unhealthy; it is killed."""
        interval = check.interval_seconds or 30.0
        timeout = check.timeout_seconds or 30.0
        retries = check.retries or 3
        started = time.monotonic()
        failures, healthy_once = 0, False
        container_id = tracked.container_id
        while True:
            await asyncio.sleep(interval)
            try:
                code, output = await self.executor.exec(container_id, command, timeout)
            except TimeoutError:
                code, output = -1, f"health check timed out after {timeout:g} s"
            except ExecutorError as exc:
                code, output = -1, str(exc)
            if code == 0:
                failures, healthy_once = 0, True
                if tracked.status.health != Health.HEALTHY:
                    self._report(tracked, RUNNING, "started", health=Health.HEALTHY)
                continue
            if not healthy_once and time.monotonic() - started < check.start_period_seconds:
                continue
            failures += 1
            log.info("task.health_failed", task_id=tracked.task.id, failures=failures,
                     exit_code=code, output=output.strip()[-200:])  # fmt: skip
            if failures >= retries:
                tracked.unhealthy = output.strip() or f"exit code {code}"
                self._report(tracked, tracked.status.state, "unhealthy: stopping",
                             health=Health.UNHEALTHY)  # fmt: skip
                await self.executor.stop(container_id, 0.0)
                return

    # ------------------------------------------------------------------ reporting

    def _report(self, tracked: _Tracked, state: TaskStatus.State.ValueType, message: str,
                **fields: Any) -> None:  # fmt: skip
        fields.setdefault("health", tracked.status.health)  # a check's verdict stays
        status = TaskStatus(state=state, message=message, container_id=tracked.container_id,
                            address=tracked.address, **fields)  # fmt: skip
        clip_status(status)
        status.timestamp.FromNanoseconds(time.time_ns())
        tracked.status = status
        log.info("task.status", task_id=tracked.task.id, state=TaskStatus.State.Name(state),
                 error=status.error or None)  # fmt: skip
        self._save_soon()
        self._send(tracked.task.id, status)

    def _send(self, task_id: str, status: TaskStatus) -> None:
        if self._unsent or not self.session.report(
            TaskStatusReport(task_id=task_id, status=status)
        ):
            self._unsent = True  # all go again once connected
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_when_connected())

    async def _flush_when_connected(self) -> None:
        while self._unsent:
            await self.session.connected.wait()
            self._synced_session = ""
            self._resync()
            if self._unsent:
                await asyncio.sleep(0.2)  # connected but not accepting yet

    def _resync(self) -> None:
        """Once per session: send the current status of every task."""
        session_id = self.session.status.session_id
        if not session_id or not self.session.connected.is_set():
            return
        if session_id == self._synced_session and not self._unsent:
            return
        for task_id, tracked in self._tasks.items():
            if tracked.status.state < ACCEPTED:
                continue  # nothing observed yet
            if not self.session.report(TaskStatusReport(task_id=task_id, status=tracked.status)):
                self._unsent = True
                return
        self._synced_session = session_id
        self._unsent = False

    # ---------------------------------------------------------------- persistence

    def _save_soon(self) -> None:
        if not self._persist or self._closed or (
            self._saver is not None and not self._saver.done()
        ):
            return
        self._saver = asyncio.create_task(self._save())

    async def _save(self) -> None:
        await asyncio.sleep(SAVE_DELAY)
        try:
            await asyncio.to_thread(self._write, self._snapshot())
        except OSError as exc:
            log.error("worker.save_failed", path=str(self.path), error=str(exc))

    def _write(self, data: dict[str, Any]) -> None:
        with self._write_lock:
            if data["sequence"] < self._written:
                return  # a newer snapshot is on disk already
            _write_atomically(self.path, data)
            self._written = data["sequence"]

    def _snapshot(self) -> dict[str, Any]:
        self._sequence += 1
        return {
            "version": 1,
            "sequence": self._sequence,
            "tasks": [
                {
                    "task": json_format.MessageToDict(tracked.task),
                    "status": json_format.MessageToDict(tracked.status),
                    "container_id": tracked.container_id,
                }
                for tracked in self._tasks.values()
            ],
        }


def _grace(task: Task) -> float:
    container = task.spec.container
    return (
        container.stop_grace_seconds
        if container.HasField("stop_grace_seconds")
        else DEFAULT_STOP_GRACE
    )


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _probe_command(check: HealthCheck) -> list[str] | None:
    test: Sequence[str] = list(check.test)
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    if test[0] == "CMD":
        return list(test[1:]) or None
    return list(test)


def _load(path: Path) -> list[tuple[Task, TaskStatus]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.error("worker.state_unreadable", path=str(path), error=str(exc))
        return []
    loaded = []
    for entry in data.get("tasks", []):
        task = json_format.ParseDict(entry.get("task", {}), Task(), ignore_unknown_fields=True)
        status = json_format.ParseDict(entry.get("status", {}), TaskStatus(),
                                       ignore_unknown_fields=True)  # fmt: skip
        if entry.get("container_id") and not status.container_id:
            status.container_id = entry["container_id"]
        loaded.append((task, status))
    return loaded


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
