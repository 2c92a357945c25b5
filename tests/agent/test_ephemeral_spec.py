"""Which containers the service marks one-run (`ContainerSpec.ephemeral`, a writable layer
that need not survive a crash): those removed after their run (`--rm`, and
`Containers.Run`'s) and those asked so (a task's), never one that lives on. Over the
hollow runtime."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dockyard.agent.containers.backends import EngineImages, EngineNetwork
from dockyard.agent.containers.request import ContainerRequest
from dockyard.agent.containers.run_call import run_container
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.runtime.base import ContainerSpec
from dockyard.agent.runtime.hollow import HollowRuntime

pytestmark = pytest.mark.timeout(30)


def _request(name: str, **kwargs: bool) -> ContainerRequest:
    spec = ContainerSpec(id="", name=name, image="busybox", lower_dirs=(), command=["true"])
    return ContainerRequest(spec, parse_reference("busybox"), **kwargs)


async def test_rm_and_run_call_containers_are_ephemeral_and_others_not() -> None:
    runtime = HollowRuntime()
    service = ContainerService(runtime, EngineImages(), None, None, EngineNetwork())
    seen: dict[str, bool] = {}
    create = runtime.create

    async def spy(config: ContainerSpec, record=None):  # type: ignore[no-untyped-def]
        seen[config.name] = config.ephemeral
        return await create(config, record)

    runtime.create = spy  # type: ignore[method-assign]
    try:
        await service.create(_request("kept"))
        await service.create(_request("rm", auto_remove=True))
        asked = _request("task")
        await service.create(replace(asked, spec=replace(asked.spec, ephemeral=True)))
        answers = [a async for a in run_container(service, _request("call"))]
        assert answers[-1].WhichOneof("kind") == "removed"
        assert seen == {"kept": False, "rm": True, "task": True, "call": True}
    finally:
        await service.close()
