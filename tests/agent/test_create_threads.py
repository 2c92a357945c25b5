"""A container create that has nothing blocking to do (no mounts to resolve, records
kept in memory: the hollow and docker backends) takes no thread: a hollow fleet
creates thousands a second, and each thread hop costs a wake-up and a GIL hand-over.
One that has mounts still resolves them in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.containers import service as service_module
from dockyard.agent.containers.backends import EngineImages
from dockyard.agent.containers.request import ContainerRequest
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.runtime.base import ContainerSpec, VolumeMount
from dockyard.agent.runtime.hollow import HollowRuntime


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the service ran in a thread."""
    calls: list[str] = []
    real = asyncio.to_thread

    async def counted(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(service_module.asyncio, "to_thread", counted)
    return calls


def request(volumes: list[VolumeMount] | None = None) -> ContainerRequest:
    spec = ContainerSpec(
        id="",
        name="web",
        image="busybox",
        lower_dirs=(),
        command=["sleep", "5"],
        volumes=volumes or [],
    )
    return ContainerRequest(spec, parse_reference("busybox"))


async def test_a_create_without_mounts_takes_no_thread(hops: list[str]) -> None:
    service = ContainerService(HollowRuntime(start_delay=0), EngineImages(), None, None, None)
    view = await service.create(request())
    assert view.info.config.volumes == []
    assert hops == []
    await service.close()


async def test_mounts_are_still_resolved_in_a_thread(hops: list[str], tmp_path: Path) -> None:
    service = ContainerService(HollowRuntime(start_delay=0), EngineImages(), None, None, None)
    mount = VolumeMount(host=str(tmp_path), container="/data")
    view = await service.create(request([mount]))
    assert [v.container for v in view.info.config.volumes] == ["/data"]
    assert "_mounts" in hops
    await service.close()
