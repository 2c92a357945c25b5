"""The worker's state machine, driven over the hollow runtime and a fake session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.agent.daemon import hollow_executor
from dockyard.agent.executor import LABEL_SERVICE_NAME, LABEL_SLOT, LABEL_TASK_ID
from dockyard.agent.runtime.base import ContainerSpec, ContainerStatus
from dockyard.agent.runtime.hollow import HollowRuntime, simulate
from dockyard.agent.worker import STATE_FILE, Worker
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import HealthCheck
from tests.worker.conftest import FakeSession, State, full_set, make_task, until

RUNNING_STATES = ["ACCEPTED", "PREPARING", "STARTING", "RUNNING"]
Health = TaskStatus.Health


@pytest.fixture
def runtime() -> HollowRuntime:
    return HollowRuntime(start_delay=0.01, exit_delay=0.05)


@pytest.fixture
def session() -> FakeSession:
    fake = FakeSession()
    fake.connect()
    return fake


@pytest.fixture
async def worker(
    tmp_path: Path, runtime: HollowRuntime, session: FakeSession
) -> AsyncIterator[Worker]:
    # every step reported as it comes: these tests read the steps (folding: test_reporting.py)
    made = Worker(hollow_executor(runtime), session, tmp_path, report_window=0)
    await made.start()
    try:
        yield made
    finally:
        await made.close()


async def test_an_assignment_runs_and_reports_each_step_in_order(
    worker: Worker, session: FakeSession, runtime: HollowRuntime
) -> None:
    await worker.on_assignments(full_set(make_task("t1", ["serve"])))
    await until(lambda: session.states("t1") == RUNNING_STATES, "t1 RUNNING")
    status = session.last("t1")
    assert status.container_id and status.timestamp.seconds > 0
    info = await runtime.inspect(status.container_id)
    assert info.name == "web.1.t1"
    assert info.state.status is ContainerStatus.RUNNING
    assert info.labels[LABEL_TASK_ID] == "t1"
    assert info.labels[LABEL_SERVICE_NAME] == "web"
    assert info.labels[LABEL_SLOT] == "1"


async def test_a_global_tasks_name_carries_the_node_id(
    worker: Worker, session: FakeSession, runtime: HollowRuntime
) -> None:
    await worker.on_assignments(full_set(make_task("g1", ["serve"], slot=0)))
    await until(lambda: session.states("g1")[-1:] == ["RUNNING"], "g1 RUNNING")
    info = await runtime.inspect(session.last("g1").container_id)
    assert info.name == "web.node01234567.g1"


async def test_exits_become_complete_or_failed_with_the_exit_code(
    worker: Worker, session: FakeSession
) -> None:
    await worker.on_assignments(
        full_set(make_task("ok", ["true"]), make_task("bad", ["sh", "-c", "exit 3"]))
    )
    await until(lambda: session.states("bad")[-1:] == ["FAILED"], "bad FAILED")
    await until(lambda: session.states("ok")[-1:] == ["COMPLETE"], "ok COMPLETE")
    failed = session.last("bad")
    assert failed.exit_code == 3
    assert failed.error == "task: non-zero exit (3)"
    assert session.states("bad") == [*RUNNING_STATES, "FAILED"]
    assert session.last("ok").exit_code == 0 and not session.last("ok").error


async def test_a_bad_image_is_rejected(worker: Worker, session: FakeSession) -> None:
    await worker.on_assignments(full_set(make_task("r1", ["true"], image="Bad//Image")))
    await until(lambda: session.states("r1")[-1:] == ["REJECTED"], "r1 REJECTED")
    assert session.states("r1") == ["ACCEPTED", "PREPARING", "REJECTED"]
    assert "image: invalid reference format" in session.last("r1").error


async def test_desired_shutdown_stops_the_container_and_reports_shutdown(
    worker: Worker, session: FakeSession, runtime: HollowRuntime
) -> None:
    task = make_task("t1", ["serve"])
    await worker.on_assignments(full_set(task))
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
    task.desired_state = State.SHUTDOWN
    await worker.on_assignments(full_set(task))
    await until(lambda: session.states("t1")[-1:] == ["SHUTDOWN"], "t1 SHUTDOWN")
    info = await runtime.inspect(session.last("t1").container_id)
    assert info.state.status is ContainerStatus.EXITED  # kept until the task leaves the set
    await asyncio.sleep(0.1)
    assert session.states("t1") == [*RUNNING_STATES, "SHUTDOWN"]


async def test_a_task_that_already_ended_is_not_reported_again_on_shutdown(
    worker: Worker, session: FakeSession
) -> None:
    task = make_task("t1", ["false"])
    await worker.on_assignments(full_set(task))
    await until(lambda: session.states("t1")[-1:] == ["FAILED"], "t1 FAILED")
    task.desired_state = State.SHUTDOWN
    await worker.on_assignments(full_set(task))
    await asyncio.sleep(0.1)
    assert session.states("t1")[-1] == "FAILED"


async def test_a_task_removed_from_the_set_loses_its_container(
    worker: Worker, session: FakeSession, runtime: HollowRuntime
) -> None:
    await worker.on_assignments(full_set(make_task("t1", ["serve"]), make_task("t2", ["serve"])))
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
    await until(lambda: session.states("t2")[-1:] == ["RUNNING"], "t2 RUNNING")
    reported = len(session.states("t1"))
    await worker.on_assignments(full_set(make_task("t2", ["serve"])))
    await until(lambda: len(runtime._containers) == 1, "t1's container removed")
    assert [i.labels[LABEL_TASK_ID] for i in await runtime.list(all=True)] == ["t2"]
    assert len(session.states("t1")) == reported  # no report for a removed task
    assert set(worker.statuses()) == {"t2"}


async def test_a_container_of_no_assigned_task_is_removed(
    worker: Worker, runtime: HollowRuntime
) -> None:
    await runtime.create(
        ContainerSpec(
            id="", name="old.1.zzz", image="busybox", lower_dirs=(), labels={LABEL_TASK_ID: "zzz"}
        )
    )
    await worker.on_assignments(full_set())
    await until(lambda: not runtime._containers, "orphan removed")


async def test_statuses_are_kept_while_disconnected_and_resent_after(
    worker: Worker, session: FakeSession
) -> None:
    await worker.on_assignments(
        full_set(make_task("t1", ["serve"]), make_task("t2", ["sleep", "0.3"]))
    )
    await until(lambda: session.states("t2")[-1:] == ["RUNNING"], "t2 RUNNING")
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
    session.disconnect()
    await asyncio.sleep(0.5)  # t2 completes meanwhile
    assert "COMPLETE" not in session.states("t2")
    session.reports.clear()
    session.connect("s2")
    await until(lambda: session.states("t2") == ["COMPLETE"], "t2 COMPLETE after reconnect")
    await until(lambda: session.states("t1") == ["RUNNING"], "t1 resent")
    # the new session's first set does not send them a second time
    await worker.on_assignments(
        full_set(make_task("t1", ["serve"]), make_task("t2", ["sleep", "0.3"]))
    )
    await asyncio.sleep(0.05)
    assert session.states("t1") == ["RUNNING"] and session.states("t2") == ["COMPLETE"]


async def test_every_status_is_resent_once_after_a_reconnect(
    worker: Worker, session: FakeSession
) -> None:
    task = make_task("t1", ["serve"])
    await worker.on_assignments(full_set(task))
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
    session.disconnect()
    session.connect("s2")  # nothing changed meanwhile: the first set triggers the resend
    session.reports.clear()
    await worker.on_assignments(full_set(task))
    await worker.on_assignments(full_set(task))
    assert session.states("t1") == ["RUNNING"]


async def test_a_new_worker_on_the_same_state_dir_resumes_the_tasks(
    tmp_path: Path, runtime: HollowRuntime
) -> None:
    session = FakeSession()
    session.connect()
    first = Worker(hollow_executor(runtime), session, tmp_path, report_window=0)
    await first.start()
    task = make_task("t1", ["serve"])
    await first.on_assignments(full_set(task, make_task("t2", ["true"])))
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
    await until(lambda: session.states("t2")[-1:] == ["COMPLETE"], "t2 COMPLETE")
    container_id = session.last("t1").container_id
    await first.close()
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert {entry["task"]["id"] for entry in saved["tasks"]} == {"t1", "t2"}

    # the agent restarts with no controller: the container keeps running
    offline = FakeSession()
    second = Worker(hollow_executor(runtime), offline, tmp_path, report_window=0)
    await second.start()
    try:
        await asyncio.sleep(0.1)
        assert (await runtime.inspect(container_id)).state.status is ContainerStatus.RUNNING
        assert second.statuses()["t1"].state == State.RUNNING
        offline.connect("s9")  # statuses go out once the controller is back
        await until(lambda: offline.states("t1") == ["RUNNING"], "t1 resent")
        assert offline.states("t2") == ["COMPLETE"]
        task.desired_state = State.SHUTDOWN  # and the container is still managed
        await second.on_assignments(full_set(task))
        await until(lambda: offline.states("t1")[-1:] == ["SHUTDOWN"], "t1 SHUTDOWN")
        assert offline.last("t1").container_id == container_id
        await second.on_assignments(full_set())
        await until(lambda: not runtime._containers, "containers removed")
    finally:
        await second.close()


async def test_a_task_that_never_turns_healthy_is_killed_and_failed(
    worker: Worker, session: FakeSession, runtime: HollowRuntime
) -> None:
    check = HealthCheck(
        test=["CMD-SHELL", "echo not ok; exit 1"],
        interval_seconds=0.05,
        timeout_seconds=1,
        retries=2,
    )
    await worker.on_assignments(full_set(make_task("t1", ["serve"], healthcheck=check)))
    await until(lambda: session.states("t1")[-1:] == ["FAILED"], "t1 FAILED")
    status = session.last("t1")
    assert status.error == "task: unhealthy: not ok"
    assert status.exit_code == 137 and status.health == Health.UNHEALTHY
    # never RUNNING: it was STARTING (health: starting) until the check gave up on it
    assert "RUNNING" not in session.states("t1")
    assert session.states("t1")[:3] == RUNNING_STATES[:3]


async def test_a_task_with_a_health_check_runs_once_healthy(
    worker: Worker, session: FakeSession
) -> None:
    check = HealthCheck(test=["CMD", "true"], interval_seconds=0.02, retries=1)
    await worker.on_assignments(full_set(make_task("t1", ["serve"], healthcheck=check)))
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
    await asyncio.sleep(0.2)
    assert session.states("t1") == [*RUNNING_STATES[:3], "STARTING", "RUNNING"]
    healths = [r.status.health for r in session.reports if r.task_id == "t1"]
    assert healths[-2:] == [Health.HEALTH_STARTING, Health.HEALTHY]


def test_the_command_decides_how_a_hollow_container_ends() -> None:
    assert simulate(["true"], 0.1).exit_code == 0
    assert simulate(["false"], 0.1).exit_code == 1
    assert simulate(["sh", "-c", "exit 3"], 0.1).exit_code == 3
    assert simulate(["sleep", "2"]).seconds == 2.0
    assert simulate(["nginx", "-g", "daemon off;"]).seconds is None
    assert simulate([]).seconds is None
    assert simulate(["/bin/sh", "-c", "echo hi; exit 4"]).output == "hi\n"
