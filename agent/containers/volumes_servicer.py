"""The `Volumes` gRPC service: the node's named volumes (`docker volume`)."""

from __future__ import annotations

import asyncio

from dockyard.agent.containers.convert import timestamp
from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.containers.status import Context, unary
from dockyard.agent.containers.volumes import Volume
from dockyard.common.validation import ValidationError, check_labels
from dockyard.v1 import containers_pb2 as pb
from dockyard.v1 import containers_pb2_grpc

__all__ = ["VolumesServicer"]


def volume_record(volume: Volume, used_by: list[str]) -> pb.VolumeRecord:
    return pb.VolumeRecord(
        name=volume.name,
        mountpoint=str(volume.mountpoint),
        created_at=timestamp(volume.created_at),
        labels=volume.labels,
        used_by=used_by,
    )


class VolumesServicer(containers_pb2_grpc.VolumesServicer):
    def __init__(self, manager: ContainerService) -> None:
        self._manager = manager

    @unary
    async def Create(self, request: pb.CreateVolumeRequest, context: Context) -> pb.VolumeRecord:
        try:
            check_labels("labels", dict(request.labels))
        except ValidationError as exc:
            raise InvalidArgument(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None
        volume = await asyncio.to_thread(
            self._manager.volume_store().create, request.name, dict(request.labels)
        )
        return volume_record(volume, await self._manager.volume_users(volume.name))

    @unary
    async def List(
        self, request: pb.ListVolumesRequest, context: Context
    ) -> pb.ListVolumesResponse:
        volumes = await asyncio.to_thread(self._manager.volume_store().list)
        return pb.ListVolumesResponse(
            volumes=[volume_record(v, await self._manager.volume_users(v.name)) for v in volumes]
        )

    @unary
    async def Inspect(self, request: pb.VolumeRef, context: Context) -> pb.VolumeRecord:
        volume = await asyncio.to_thread(self._manager.volume_store().get, request.name)
        return volume_record(volume, await self._manager.volume_users(volume.name))

    @unary
    async def Remove(
        self, request: pb.RemoveVolumeRequest, context: Context
    ) -> pb.RemoveVolumeResponse:
        await self._manager.remove_volume(request.name, request.force)
        return pb.RemoveVolumeResponse(name=request.name)
