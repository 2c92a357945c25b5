"""The container service's background tasks (its supervisor's watchers, `Containers.Run`
lifecycles) live in task scopes the service closes: none is left pending after `close`,
a failing watcher is logged without ending the others, and an auto-removal is not
stuck behind its own watcher. Over the hollow runtime (no runc needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog.testing

from dockyard.agent.containers.backends import EngineImages, EngineNetwork
from dockyard.agent.containers.errors import NotFound
from dockyard.agent.containers.request import ContainerRequest
from dockyard.agent.containers.run_call import run_container
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.runtime.base import ContainerSpec
from dockyard.agent.runtime.hollow import HollowRuntime
from tests.busy_worker import settle
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(30)


def _service(runtime: HollowRuntime | None = None) -> ContainerService:
    return ContainerService(runtime or HollowRuntime(), EngineImages(), None, None, EngineNetwork())


def _request(name: str, *command: str, auto_remove: bool = False) -> ContainerRequest:
    spec = ContainerSpec(id="", name=name, image="busybox", lower_dirs=(), command=list(command))
    return ContainerRequest(spec, parse_reference("busybox"), auto_remove=auto_remove)


async def _gone(service: ContainerService, ref: str) -> bool:
    try:
        await service.inspect(ref)
    except NotFound:
        return True
    return False


def _others() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_an_exited_rm_container_is_removed_by_its_watcher() -> None:
    service = _service()
    view = await service.create(_request("quick", "true", auto_remove=True))
    await service.start_container(view.info.id)
    await wait_until(lambda: _gone(service, view.info.id), "the --rm container removed")
    await service.close()
    assert _others() == set()


async def test_a_failing_watcher_is_logged_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = HollowRuntime()
    service = _service(runtime)
    broken = await service.create(_request("broken", "true"))
    other = await service.create(_request("other", "sleep", "30"))
    inspect = runtime.inspect

    async def failing_inspect(ref: str) -> Any:
        if ref == broken.info.id:
            raise RuntimeError("inspect broke")
        return await inspect(ref)

    monkeypatch.setattr(runtime, "inspect", failing_inspect)
    with structlog.testing.capture_logs() as logs:
        await service.start_container(other.info.id)
        await runtime.start(broken.info.id)
        await service._supervisor.watch(broken.info.id)
        await runtime.wait(broken.info.id)
        await wait_until(lambda: any(e["event"] == "task.failed" for e in logs), "the failure")
    failed = next(e for e in logs if e["event"] == "task.failed")
    assert (failed["scope"], failed["error"]) == (
        "container-supervisor",
        "RuntimeError: inspect broke",
    )
    assert other.info.id in service._supervisor._watchers  # still watched
    await service.close()
    assert _others() == set()


async def test_a_run_calls_removal_is_awaited_by_close(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = HollowRuntime()
    service = _service(runtime)
    await service.calls.open()
    removing, release = asyncio.Event(), asyncio.Event()
    remove = runtime.remove

    async def slow_remove(ref: str, force: bool = False) -> None:
        removing.set()
        await release.wait()
        await remove(ref, force)

    monkeypatch.setattr(runtime, "remove", slow_remove)
    call = run_container(service, _request("call", "sleep", "30"))
    created = await anext(call)
    assert created.created.id
    await call.aclose()  # the client went away: the lifecycle removes the container
    await removing.wait()
    closing = asyncio.create_task(service.close())
    await settle()
    assert not closing.done()  # main: closed, the lifecycle still pending
    release.set()
    await closing
    assert _others() == set()
    assert await _gone(service, created.created.id)


async def test_a_watcher_drops_its_own_entry_as_it_ends() -> None:
    """A container that exits (no restart policy) or fails its watcher is not watched any
    more; a running one, and one started again after its exit, is."""
    runtime = HollowRuntime(start_delay=0, exit_delay=0.01)
    service = _service(runtime)
    watchers = service._supervisor._watchers
    quick = await service.create(_request("quick", "true"))
    long = await service.create(_request("long", "sleep", "30"))
    await service.start_container(quick.info.id)
    await service.start_container(long.info.id)
    await wait_until(lambda: quick.info.id not in watchers, "the exited one dropped")
    assert long.info.id in watchers
    await service.start_container(quick.info.id)  # started again: a new watcher
    assert quick.info.id in watchers
    await wait_until(lambda: quick.info.id not in watchers, "dropped again")
    await service.stop(long.info.id, 0)
    await wait_until(lambda: long.info.id not in watchers, "the stopped one dropped")
    await service.close()
    assert _others() == set()
