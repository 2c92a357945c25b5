"""A container create that has nothing blocking to do (no mounts to resolve, records
kept in memory: the hollow and docker backends) takes no thread: a hollow fleet
creates thousands a second, and each thread hop costs a wake-up and a GIL hand-over.
One that has mounts still resolves them in a thread. A record kept in a file is written
by the runtime, in its create's thread hop where it has one (runc: see
tests/runtime/test_runc_start_files.py), before the container exists."""

from __future__ import annotations

from pathlib import Path

from dockyard.agent.containers.backends import EngineImages
from dockyard.agent.containers.request import ContainerRequest
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.runtime.base import ContainerSpec, VolumeMount
from dockyard.agent.runtime.hollow import HollowRuntime


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


async def test_a_create_without_mounts_takes_no_thread(thread_hops: list[str]) -> None:
    service = ContainerService(HollowRuntime(start_delay=0), EngineImages(), None, None, None)
    view = await service.create(request())
    assert view.info.config.volumes == ()
    assert thread_hops == []
    await service.close()


async def test_mounts_are_still_resolved_in_a_thread(
    thread_hops: list[str], tmp_path: Path
) -> None:
    service = ContainerService(HollowRuntime(start_delay=0), EngineImages(), None, None, None)
    mount = VolumeMount(host=str(tmp_path), container="/data")
    view = await service.create(request([mount]))
    assert [v.container for v in view.info.config.volumes] == ["/data"]
    assert "_mounts" in thread_hops
    await service.close()


async def test_a_record_kept_in_a_file_is_written_before_the_container_exists(
    thread_hops: list[str], tmp_path: Path
) -> None:
    runtime = HollowRuntime(start_delay=0)
    service = ContainerService(runtime, EngineImages(), tmp_path / "meta", None, None)
    create = runtime.create
    existed: list[bool] = []

    async def spy(config: ContainerSpec, record=None):  # type: ignore[no-untyped-def]
        assert record is not None
        assert not (tmp_path / "meta" / f"{config.id}.json").exists()
        info = await create(config, record)
        existed.append((tmp_path / "meta" / f"{config.id}.json").exists())
        return info

    runtime.create = spy  # type: ignore[method-assign]
    view = await service.create(request())
    assert existed == [True]
    assert len(thread_hops) == 1  # the record's, in a thread of its own
    assert "MetaStore.save" in thread_hops[0]
    assert (tmp_path / "meta" / f"{view.info.id}.json").exists()
    await service.close()
