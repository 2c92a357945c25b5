"""The worker: the controller's assignment set becomes one task controller per task.

The worker reconciles each full set against its running task controllers
(`dockyard.agent.tasks.controller`): a new task gets a controller, a changed one is
updated, a task that left the set has its controller remove its container. A delta set
(which the session applies only on top of the set it follows) does the same for the
tasks it names. A container of no assigned task is removed (an orphan sweep after each
full set). Every status
goes to the controller through the session (`dockyard.agent.tasks.reporting`), and the
set with the statuses is kept in `<state dir>/worker.json`
(`dockyard.agent.tasks.persistence`), so after an agent restart the worker goes on
managing its containers (found again by their `dockyard.task.id` label) even when no
controller answers.

Everything the worker runs lives in one task group: the controllers, the orphan sweep,
the saver and the reporter. A failure there is a bug: it is logged (`worker.failed`) and
raised by `wait`, where the daemon's supervision sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.executor import Executor
from dockyard.agent.secret_files import SecretFiles
from dockyard.agent.tasks.controller import TaskController
from dockyard.agent.tasks.disposal import DEFAULT_STOP_GRACE, Disposer
from dockyard.agent.tasks.persistence import STATE_FILE, SavedTask, StateFile
from dockyard.agent.tasks.reporting import FOLD_WINDOW, SessionLike, StatusReporter
from dockyard.common.taskscope import wait_for_owned
from dockyard.v1.dispatcher_pb2 import AssignmentSet
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Task

__all__ = ["STATE_FILE", "SessionLike", "Worker"]

log = structlog.get_logger(__name__)

SAVE_DELAY = 0.05
"""Seconds status changes are gathered before `worker.json` is written once for all."""
SAVE_GAP = 0.5
"""Seconds at least between the ends of two writes of `worker.json` while changes keep
coming (a scale-up of 100 tasks: every task's four statuses over a few seconds). Each
write is the whole file (every task), synced twice: at SAVE_DELAY alone, a burst wrote
it up to 20 times a second. A change is on disk at most SAVE_GAP + SAVE_DELAY after it
is made (a restarted agent resumes from an older status: each step is idempotent), and
at once when the worker closes."""


class Worker:
    """Runs the tasks the controller assigns to this node.

    Args:
        executor: The backend that makes and runs containers.
        session: Where statuses go (`ControllerSession`); `report_many` returns False
            while disconnected.
        state_dir: Where `worker.json` is kept (the agent's state dir).
        persist: False keeps no worker.json: for simulated agents, whose containers do
            not outlive the process anyway.
        secrets: The secrets the sets deliver, in memory only (worker.json keeps tasks'
            references, never data), and the executor's files of them (removed with
            each task's container).
        report_window: Seconds within which a task's statuses fold into its newest
            (`StatusReporter`); 0 reports every step as it comes.
    """

    def __init__(
        self,
        executor: Executor,
        session: SessionLike,
        state_dir: Path,
        persist: bool = True,
        secrets: SecretFiles | None = None,
        report_window: float = FOLD_WINDOW,
    ) -> None:
        self.executor = executor
        self.session = session
        self.secrets = secrets
        self.state = StateFile(state_dir / STATE_FILE) if persist else None
        self.reporter = StatusReporter(session, self.statuses, report_window)
        self._disposer = Disposer(executor, secrets)
        self._controllers: dict[str, TaskController] = {}
        self._dirty = asyncio.Event()  # worker.json is behind
        self._sweep_wanted = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._root: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def path(self) -> Path | None:
        return self.state.path if self.state is not None else None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load `worker.json`, find the containers again and resume every task."""
        saved = await asyncio.to_thread(self.state.load) if self.state is not None else []
        containers = await self.executor.task_containers()
        if self.secrets is not None:  # files of tasks this node no longer holds
            await asyncio.to_thread(self.secrets.prune, [s.task.id for s in saved])
        ready = asyncio.Event()
        self._root = asyncio.create_task(self._run(ready), name="worker")
        await ready.wait()
        for entry in saved:
            self._spawn(entry.task, entry.status, containers.get(entry.task.id, ""))
        log.info("worker.started", tasks=len(self._controllers), containers=len(containers))
        if self._controllers:  # the controller may have missed the last statuses
            self.reporter.resend_all()

    async def wait(self) -> None:
        """Return when the worker is closed; raise what broke it (a bug) if it broke."""
        root = self._root
        assert root is not None, "start() first"
        await wait_for_owned(root)  # whoever waits does not stop the worker

    async def close(self) -> None:
        """Stop driving tasks and write the state; the containers keep running."""
        self._closed = True
        if self._root is not None:
            self._root.cancel()
            await asyncio.gather(self._root, return_exceptions=True)  # logged by _run
        if self.state is not None:
            await asyncio.to_thread(self.state.write, self.state.snapshot(self._saved()))
        if self.secrets is not None:
            await asyncio.to_thread(self.secrets.close)

    async def _run(self, ready: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self.reporter.run(), name="worker-reporter")
                group.create_task(self._sweep_loop(), name="worker-sweeper")
                if self.state is not None:
                    group.create_task(self._save_loop(), name="worker-saver")
                ready.set()
        except Exception as exc:
            log.error("worker.failed", error=str(exc), exc_info=True)
            raise
        finally:
            self._group = None

    def service_ids(self) -> set[str]:
        """The services of the tasks this node holds."""
        return {c.task.service_id for c in self._controllers.values()}

    def statuses(self) -> dict[str, TaskStatus]:
        """The latest status of every assigned task."""
        return {task_id: c.status for task_id, c in self._controllers.items()}

    # --------------------------------------------------------------- assignments

    async def on_assignments(self, assignments: AssignmentSet) -> None:
        """Reconcile with a set from the controller: a full set replaces everything, a
        delta adds, changes and removes the tasks it names."""
        if not self._takes(assignments):
            return
        if not assignments.full:
            self._patch(assignments)
            return
        if self.secrets is not None:
            self.secrets.update(assignments.secrets, assignments.configs)
        incoming = {task.id: task for task in assignments.tasks}
        for task_id in [t for t in self._controllers if t not in incoming]:
            self._controllers.pop(task_id).remove()
        for task in incoming.values():
            self._take(task)
        self._dirty.set()
        self.reporter.resync()
        self._sweep_wanted.set()

    def _patch(self, delta: AssignmentSet) -> None:
        for task_id in delta.removed_task_ids:
            controller = self._controllers.pop(task_id, None)
            if controller is not None:
                controller.remove()
        for task in delta.tasks:
            self._take(task)
        if self.secrets is not None:
            held = [c.task for c in self._controllers.values()]
            self.secrets.merge(delta.secrets, delta.configs, held)
        self._dirty.set()

    def _take(self, task: Task) -> None:
        controller = self._controllers.get(task.id)
        if controller is not None:
            controller.update(task)
            return
        status = TaskStatus()  # new to this node: what the controller knows of it
        status.CopyFrom(task.status)
        self._spawn(task, status, "")

    def _takes(self, assignments: AssignmentSet) -> bool:
        if self._closed:
            return False
        if self._group is None:
            log.error(
                "worker.assignments_ignored",
                reason="the worker is not running",
                tasks=len(assignments.tasks),
            )
            return False
        return True

    def _spawn(self, task: Task, status: TaskStatus, container_id: str) -> None:
        controller = TaskController(
            task, status, self.executor, self._disposer, self._status_changed, container_id
        )
        self._controllers[task.id] = controller
        self._start(controller.run(), f"task-{task.id[:12]}")

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        assert self._group is not None, "the worker is not running"
        self._group.create_task(work, name=name)

    def _status_changed(self, controller: TaskController) -> None:
        self._dirty.set()
        self.reporter.send(controller.task_id, controller.status)

    # ----------------------------------------------------------------- orphans

    async def _sweep_loop(self) -> None:
        """After each set: stop and remove containers of tasks that are in no set."""
        while True:
            await self._sweep_wanted.wait()
            self._sweep_wanted.clear()
            try:
                containers = await self.executor.task_containers()
            except Exception as exc:  # whatever the backend says: the next set tries again
                log.warning("worker.list_failed", error=str(exc))
                continue
            for task_id, container_id in containers.items():
                if task_id not in self._controllers:
                    log.info("worker.orphan", task_id=task_id, container_id=container_id)
                    self._start(
                        self._disposer.dispose(task_id, container_id, DEFAULT_STOP_GRACE),
                        f"dispose-{container_id[:12]}",
                    )

    # ---------------------------------------------------------------- persistence

    async def _save_loop(self) -> None:
        """Write worker.json once per burst of changes (SAVE_DELAY gathers them), at
        most once per SAVE_GAP while they keep coming."""
        assert self.state is not None
        while True:
            await self._dirty.wait()
            await asyncio.sleep(SAVE_DELAY)
            self._dirty.clear()  # a change from now on is saved by the next round
            snapshot = self.state.snapshot(self._saved())
            try:
                await asyncio.to_thread(self.state.write, snapshot)
            except OSError as exc:  # a full disk: the next change tries again
                log.error("worker.save_failed", path=str(self.state.path), error=str(exc))
            await asyncio.sleep(SAVE_GAP)

    def _saved(self) -> list[SavedTask]:
        return [SavedTask(c.task, c.status, c.container_id) for c in self._controllers.values()]
