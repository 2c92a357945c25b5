"""The hollow runtime's containers as callers see them: every inspect shows the container
as it is now, and a snapshot is the caller's (what it holds does not move, and changing
it changes nothing of the runtime's)."""

from __future__ import annotations

import asyncio

import pytest

from dockyard.agent.runtime.base import (
    ContainerRuntime,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerStatus,
)
from dockyard.agent.runtime.hollow import HollowRuntime


def _spec(name: str = "web", container_id: str = "") -> ContainerSpec:
    return ContainerSpec(
        id=container_id, name=name, image="busybox", lower_dirs=(), command=["sleep", "60"]
    )


async def test_every_inspect_shows_the_latest_change() -> None:
    runtime = HollowRuntime(start_delay=0)
    created = await runtime.create(_spec())
    cid = created.id
    assert (await runtime.inspect(cid)).state.status is ContainerStatus.CREATED
    assert (await runtime.inspect("web")).state.status is ContainerStatus.CREATED

    await runtime.start(cid)
    running = await runtime.inspect(cid)
    assert running.state.status is ContainerStatus.RUNNING
    assert running.state.pid == 1 and running.state.started_at is not None

    await runtime.stop(cid, 5.0)
    exited = await runtime.inspect("web")
    assert exited.state.status is ContainerStatus.EXITED
    assert exited.state.exit_code == 143 and exited.state.finished_at is not None

    await runtime.start(cid)
    again = await runtime.inspect(cid)
    assert again.state.status is ContainerStatus.RUNNING
    assert again.state.restart_count == 1 and again.state.exit_code is None

    await runtime.kill(cid)
    assert (await runtime.inspect(cid)).state.exit_code == 137

    await runtime.rename(cid, "api")
    renamed = await runtime.inspect("api")
    assert renamed.name == "api" and renamed.config.name == "api" and renamed.id == cid
    assert [i.name for i in await runtime.list(all=True)] == ["api"]
    await runtime.close()


async def test_a_snapshot_is_the_callers() -> None:
    runtime = HollowRuntime(start_delay=0)
    cid = (await runtime.create(_spec())).id
    before = await runtime.inspect(cid)
    await runtime.start(cid)
    assert before.state.status is ContainerStatus.CREATED  # taken before the start
    assert before.state.started_at is None

    seen = await runtime.inspect(cid)
    seen.state.status = ContainerStatus.EXITED  # a caller scribbling on its copy
    seen.state.pid = 0
    assert (await runtime.stop(cid, 0.0)) is not None  # still running for the runtime
    assert (await runtime.wait(cid)).exit_code == 137
    await runtime.close()


async def test_a_container_keeps_the_id_it_is_given_or_gets_one() -> None:
    runtime = HollowRuntime(start_delay=0)
    given = await runtime.create(_spec("a", "f" * 64))
    made = await runtime.create(_spec("b"))
    assert given.id == "f" * 64 and given.config.id == "f" * 64
    assert len(made.id) == 64 and made.config.id == made.id and made.id != given.id
    await runtime.close()


async def test_interactive_stdio_is_refused_naming_the_runtime() -> None:
    runtime = HollowRuntime(start_delay=0)
    assert isinstance(runtime, ContainerRuntime)
    cid = (await runtime.create(_spec())).id
    await runtime.start(cid)
    with pytest.raises(ContainerRuntimeError, match=r"^attach is not supported by the hollow"):
        await runtime.attach(cid)
    with pytest.raises(ContainerRuntimeError, match=r"^resize is not supported by the hollow"):
        await runtime.resize(cid, 24, 80)
    with pytest.raises(ContainerRuntimeError, match=r"^interactive exec is not supported by the"):
        await runtime.exec_interactive(cid, ["sh"])


async def test_every_waiter_wakes_on_exit_and_a_cancelled_one_leaves_the_rest() -> None:
    """Waits are futures of the container's current run: all wake on its exit, one that
    is cancelled leaves the others waiting, and a wait after a restart waits for the
    next exit (not the last one)."""
    runtime = HollowRuntime(start_delay=0)
    cid = (await runtime.create(_spec())).id
    await runtime.start(cid)
    first, second, gone = (asyncio.create_task(runtime.wait(cid)) for _ in range(3))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    await runtime.stop(cid, 5.0)
    assert [(await t).exit_code for t in (first, second)] == [143, 143]
    assert gone.cancelled()

    await runtime.start(cid)
    again = asyncio.create_task(runtime.wait(cid))
    await asyncio.sleep(0.01)
    assert not again.done()  # the last run's exit is not this run's
    await runtime.kill(cid)
    assert (await again).exit_code == 137
    await runtime.close()


async def test_a_cancelled_wait_is_dropped_from_its_container() -> None:
    """A cancelled wait holds nothing in the runtime (a task that left the set)."""
    runtime = HollowRuntime(start_delay=0)
    cid = (await runtime.create(_spec())).id
    await runtime.start(cid)
    waits = [asyncio.create_task(runtime.wait(cid)) for _ in range(5)]
    await asyncio.sleep(0)
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    assert not runtime._containers[cid].waiters
    await runtime.close()
