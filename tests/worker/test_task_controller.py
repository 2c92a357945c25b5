"""The per-task controller, step by step, over a fake executor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import structlog

from dockyard.agent.executor import ExecutorError, ExitInfo
from dockyard.agent.tasks.controller import TaskController
from dockyard.agent.tasks.disposal import Disposer
from dockyard.common.session_limits import MAX_STATUS_TEXT
from dockyard.common.states import TaskState
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import HealthCheck, Task
from tests.worker.conftest import make_task, until
from tests.worker.fakes import FakeExecutor

UP_TO_RUNNING = ["ACCEPTED", "PREPARING", "STARTING", "RUNNING"]


@dataclass
class Recorder:
    """The `on_status` hook: every status the controller reports, in order."""

    statuses: list[TaskStatus] = field(default_factory=list)

    def __call__(self, controller: TaskController) -> None:
        self.statuses.append(controller.status)

    def states(self) -> list[str]:
        return [TaskStatus.State.Name(s.state) for s in self.statuses]

    def last(self) -> TaskStatus:
        return self.statuses[-1]


def controller_for(
    executor: FakeExecutor, task: Task, status: TaskStatus | None = None, container_id: str = ""
) -> tuple[TaskController, Recorder]:
    recorder = Recorder()
    if status is None:
        status = TaskStatus()
        status.CopyFrom(task.status)
    made = TaskController(task, status, executor, Disposer(executor, None), recorder, container_id)
    return made, recorder


@contextlib.asynccontextmanager
async def driving(controller: TaskController) -> AsyncIterator[asyncio.Task[None]]:
    """Run the controller for the block (as the worker's task group would)."""
    async with asyncio.TaskGroup() as group:
        job = group.create_task(controller.run())
        try:
            yield job
        finally:
            job.cancel()


def shutdown(task: Task) -> Task:
    changed = Task()
    changed.CopyFrom(task)
    changed.desired_state = TaskStatus.SHUTDOWN
    return changed


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


async def test_each_step_is_reported_in_order_up_to_running(executor: FakeExecutor) -> None:
    controller, recorder = controller_for(executor, make_task("t1"))
    async with driving(controller):
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
    status = recorder.last()
    assert status.container_id == "c-t1" and status.address == "10.87.0.2"
    assert status.timestamp.seconds > 0
    assert executor.named("prepare") == ["t1"] and executor.named("start") == ["t1"]


async def test_a_failing_prepare_rejects_the_task(executor: FakeExecutor) -> None:
    executor.prepare_error = ExecutorError("invalid image reference 'Bad//Image'")
    controller, recorder = controller_for(executor, make_task("t1"))
    async with driving(controller):
        await until(lambda: recorder.states()[-1:] == ["REJECTED"], "REJECTED")
        await asyncio.sleep(0.05)  # and it stays there
    assert recorder.states() == ["ACCEPTED", "PREPARING", "REJECTED"]
    assert recorder.last().error == "invalid image reference 'Bad//Image'"
    assert executor.named("start") == []


async def test_a_failing_start_fails_the_task(executor: FakeExecutor) -> None:
    executor.start_error = ExecutorError("runc: exec format error")
    controller, recorder = controller_for(executor, make_task("t1"))
    async with driving(controller):
        await until(lambda: recorder.states()[-1:] == ["FAILED"], "FAILED")
    assert recorder.states() == ["ACCEPTED", "PREPARING", "STARTING", "FAILED"]
    assert recorder.last().message == "starting failed"
    assert recorder.last().error == "runc: exec format error"


@pytest.mark.parametrize(
    ("code", "oom", "state", "error"),
    [
        (0, False, "COMPLETE", ""),
        (3, False, "FAILED", "task: non-zero exit (3)"),
        (137, True, "FAILED", "task: out of memory"),
    ],
)
async def test_the_exit_decides_complete_or_failed(
    executor: FakeExecutor, code: int, oom: bool, state: str, error: str
) -> None:
    controller, recorder = controller_for(executor, make_task("t1"))
    async with driving(controller):
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
        executor.exit("c-t1", code, oom)
        await until(lambda: recorder.states()[-1:] == [state], state)
    assert recorder.states() == [*UP_TO_RUNNING, state]
    assert recorder.last().exit_code == code and recorder.last().oom_killed is oom
    assert recorder.last().error == error


async def test_a_backends_own_timeout_is_an_error_not_a_change(executor: FakeExecutor) -> None:
    """A TimeoutError the backend raises (a pull that timed out) rejects or fails the
    task; only a change of the task cuts a step short."""
    executor.prepare_error = TimeoutError("pull timed out")
    controller, recorder = controller_for(executor, make_task("t1"))
    async with driving(controller):
        await until(lambda: recorder.states()[-1:] == ["REJECTED"], "REJECTED")
    assert recorder.last().error == "pull timed out"

    class TimingOut(FakeExecutor):
        async def wait(self, container_id: str) -> ExitInfo:
            raise TimeoutError("runtime did not answer")

    timing_out = TimingOut()
    controller, recorder = controller_for(timing_out, make_task("t2"))
    async with driving(controller):
        await until(lambda: recorder.states()[-1:] == ["FAILED"], "FAILED")
    assert recorder.states() == [*UP_TO_RUNNING, "FAILED"]
    assert recorder.last().error == "runtime did not answer"


async def test_a_change_while_running_cuts_the_wait_short(executor: FakeExecutor) -> None:
    task = make_task("t1")
    controller, recorder = controller_for(executor, task)
    async with driving(controller) as job:
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
        waits = len(executor.named("wait"))
        changed = Task()
        changed.CopyFrom(task)
        changed.spec.container.image = "busybox:2"  # not a new desired state: no interrupt
        controller.update(changed)
        await asyncio.sleep(0.05)
        assert len(executor.named("wait")) == waits
        controller.remove()  # the task left the set: the wait ends, the container goes
        await asyncio.wait_for(asyncio.shield(job), 5)
    assert executor.named("remove") == ["c-t1"]
    assert recorder.states() == UP_TO_RUNNING


async def test_shutdown_while_preparing_cancels_the_prepare(executor: FakeExecutor) -> None:
    executor.prepare_gate = asyncio.Event()  # the pull never ends by itself
    task = make_task("t1")
    controller, recorder = controller_for(executor, task)
    async with driving(controller):
        await until(lambda: executor.named("prepare") == ["t1"], "prepare called")
        controller.update(shutdown(task))
        await until(lambda: recorder.states()[-1:] == ["SHUTDOWN"], "SHUTDOWN")
        await asyncio.sleep(0.05)
    assert recorder.states() == ["ACCEPTED", "PREPARING", "SHUTDOWN"]
    assert executor.prepares_cancelled == 1
    assert executor.named("start") == [] and executor.named("stop") == []


async def test_shutdown_while_running_stops_the_container(executor: FakeExecutor) -> None:
    task = make_task("t1", grace=2.0)
    controller, recorder = controller_for(executor, task)
    async with driving(controller):
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
        controller.update(shutdown(task))
        await until(lambda: recorder.states()[-1:] == ["SHUTDOWN"], "SHUTDOWN")
    assert recorder.last().exit_code == 143  # SIGTERM, with the grace period
    assert executor.named("stop") == ["c-t1"] and executor.named("remove") == []


async def test_a_failed_stop_on_shutdown_is_tried_again(executor: FakeExecutor) -> None:
    executor.stop_errors = [ExecutorError("runc kill: device busy")]
    task = make_task("t1")
    controller, recorder = controller_for(executor, task)
    async with driving(controller):
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
        controller.update(shutdown(task))
        await until(lambda: recorder.states()[-1:] == ["SHUTDOWN"], "SHUTDOWN", timeout=5)
    assert executor.named("stop") == ["c-t1", "c-t1"]


async def test_a_task_that_ended_is_not_shut_down_again(executor: FakeExecutor) -> None:
    task = make_task("t1")
    controller, recorder = controller_for(executor, task)
    async with driving(controller):
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
        executor.exit("c-t1", 1)
        await until(lambda: recorder.states()[-1:] == ["FAILED"], "FAILED")
        controller.update(shutdown(task))
        await asyncio.sleep(0.05)
    assert recorder.states()[-1] == "FAILED" and executor.named("stop") == []


async def test_removal_disposes_of_the_container_and_ends_the_controller(
    executor: FakeExecutor,
) -> None:
    controller, recorder = controller_for(executor, make_task("t1"))
    async with driving(controller) as job:
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
        reported = len(recorder.statuses)
        controller.remove()
        await asyncio.wait_for(asyncio.shield(job), 5)
    assert executor.named("stop") == ["c-t1"] and executor.named("remove") == ["c-t1"]
    assert executor.containers == {} and len(recorder.statuses) == reported


async def test_an_agent_restart_while_preparing_prepares_once_more_and_goes_on(
    executor: FakeExecutor,
) -> None:
    executor.prepare_gate = asyncio.Event()
    task = make_task("t1")
    first, recorder = controller_for(executor, task)
    async with driving(first):
        await until(lambda: recorder.states() == ["ACCEPTED", "PREPARING"], "PREPARING")
        await until(lambda: executor.named("prepare") == ["t1"], "prepare called")
    # the agent stopped in the middle of the pull; a new controller resumes the saved status
    assert executor.prepares_cancelled == 1
    executor.prepare_gate.set()
    second, resumed = controller_for(executor, task, first.status)
    async with driving(second):
        await until(lambda: resumed.states() == ["STARTING", "RUNNING"], "RUNNING")
    assert executor.named("prepare") == ["t1", "t1"] and executor.named("start") == ["t1"]
    assert executor.containers == {"t1": "c-t1"}


async def test_an_agent_restart_while_running_waits_for_the_same_container(
    executor: FakeExecutor,
) -> None:
    task = make_task("t1")
    first, recorder = controller_for(executor, task)
    async with driving(first):
        await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
    second, resumed = controller_for(executor, task, first.status, "c-t1")
    async with driving(second):
        await until(lambda: executor.named("wait") == ["c-t1", "c-t1"], "waiting again")
        executor.exit("c-t1", 0)
        await until(lambda: resumed.states() == ["COMPLETE"], "COMPLETE")
    assert executor.named("prepare") == ["t1"] and executor.named("start") == ["t1"]


async def test_a_running_task_whose_container_is_gone_fails(executor: FakeExecutor) -> None:
    task = make_task("t1")
    status = TaskStatus(state=TaskStatus.RUNNING, container_id="c-t1")
    controller, recorder = controller_for(executor, task, status)  # no container listed
    async with driving(controller):
        await until(lambda: recorder.states() == ["FAILED"], "FAILED")
    assert recorder.last().error == "task: container not found on this node"


def health_task(retries: int = 1) -> Task:
    check = HealthCheck(test=["CMD", "true"], interval_seconds=0.01, retries=retries)
    return make_task("t1", healthcheck=check)


async def test_a_health_check_holds_the_task_starting_until_it_passes(
    executor: FakeExecutor,
) -> None:
    executor.health = [1, 0]
    controller, recorder = controller_for(executor, health_task(retries=3))
    async with driving(controller):
        await until(lambda: recorder.states()[-1:] == ["RUNNING"], "RUNNING")
    assert recorder.states() == ["ACCEPTED", "PREPARING", "STARTING", "STARTING", "RUNNING"]
    healths = [s.health for s in recorder.statuses[-2:]]
    assert healths == [TaskStatus.HEALTH_STARTING, TaskStatus.HEALTHY]


async def test_an_unhealthy_task_is_killed_and_failed(executor: FakeExecutor) -> None:
    executor.health = [1, 1]
    controller, recorder = controller_for(executor, health_task(retries=2))
    async with driving(controller):
        await until(lambda: recorder.states()[-1:] == ["FAILED"], "FAILED")
    assert recorder.last().error == "task: unhealthy: not ok"
    assert recorder.last().exit_code == 137 and recorder.last().health == TaskStatus.UNHEALTHY
    assert "RUNNING" not in recorder.states()


async def test_a_restart_while_starting_with_a_check_does_not_report_starting_again(
    executor: FakeExecutor,
) -> None:
    task = health_task()
    executor.containers["t1"] = "c-t1"  # prepared and started before the restart
    executor.running.add("c-t1")
    status = TaskStatus(state=TaskStatus.STARTING, health=TaskStatus.HEALTH_STARTING)
    controller, recorder = controller_for(executor, task, status, "c-t1")
    async with driving(controller):
        await until(lambda: recorder.states() == ["RUNNING"], "RUNNING")
    assert recorder.last().health == TaskStatus.HEALTHY
    assert executor.named("prepare") == [] and executor.named("start") == ["t1"]


async def test_a_cancellation_beside_an_interruption_stays_a_cancellation(
    executor: FakeExecutor,
) -> None:
    """The worker closing (its group cancels the controller) while a change cuts the
    wait short: the controller ends cancelled, it does not go on to remove the
    container; and a controller interrupted twice (prepare, then its wait) is cut short
    both times."""
    executor.prepare_gate = asyncio.Event()
    task = make_task("t1")
    controller, recorder = controller_for(executor, task)
    job = asyncio.create_task(controller.run())
    await until(lambda: executor.named("prepare") == ["t1"], "prepare called")
    executor.prepare_gate.set()
    await until(lambda: recorder.states() == UP_TO_RUNNING, "RUNNING")
    controller.remove()  # the change cuts the wait short...
    job.cancel()  # ...and the worker closes at once
    with pytest.raises(asyncio.CancelledError):
        await job
    assert executor.named("remove") == []

    executor.prepare_gate = asyncio.Event()
    again, recorder = controller_for(executor, make_task("t2"))
    job = asyncio.create_task(again.run())
    await until(lambda: executor.named("prepare")[-1:] == ["t2"], "prepare called")
    again.update(shutdown(again.task))  # cuts the prepare short
    await until(lambda: recorder.states()[-1:] == ["SHUTDOWN"], "SHUTDOWN")
    again.remove()
    await asyncio.wait_for(job, 5)
    assert executor.prepares_cancelled == 1


def test_a_report_clips_only_a_long_text_and_stamps_the_time() -> None:
    """A status's message and error are clipped when too long (and only then), and the
    report carries the time it was made, to the nanosecond."""
    seen: list[TaskStatus] = []
    controller = TaskController(
        make_task("t1", ["true"]),
        TaskStatus(),
        None,
        None,
        lambda c: seen.append(c.status),  # type: ignore[arg-type]
    )
    before = time.time_ns()
    controller._report(TaskState.FAILED, "failed", error="x" * (MAX_STATUS_TEXT + 10))
    controller._report(TaskState.RUNNING, "y" * MAX_STATUS_TEXT)
    after = time.time_ns()
    assert len(seen[0].error) <= MAX_STATUS_TEXT and "characters cut" in seen[0].error
    assert seen[1].message == "y" * MAX_STATUS_TEXT and not seen[1].error
    for status in seen:
        assert before <= status.timestamp.ToNanoseconds() <= after


def test_every_report_logs_its_status() -> None:
    controller = TaskController(
        make_task("t1", ["true"]),
        TaskStatus(),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        lambda c: None,
    )
    with structlog.testing.capture_logs() as logs:
        controller._report(TaskState.ACCEPTED, "accepted")
        controller._report(TaskState.FAILED, "failed", error="boom")
    lines = [(e["log_level"], e["event"], e["task_id"], e["state"], e["error"]) for e in logs]
    assert lines == [
        ("info", "task.status", "t1", "ACCEPTED", None),
        ("info", "task.status", "t1", "FAILED", "boom"),
    ]
