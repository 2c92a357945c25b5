"""`cluster_info` (GetInfo, /v1/info) reads its parts at once: etcd's unavailability is
reported in `state_error`, and any other store error reaches the caller as itself (not
wrapped in the task group's ExceptionGroup, which the API would answer as INTERNAL)."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.controller.api.control import ControllerIdentity, cluster_info
from dockyard.controller.store import StoreError, StoreUnavailable
from dockyard.v1.control_pb2 import ListNodesResponse


class Nodes:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    async def list(self, request: Any) -> ListNodesResponse:
        if self.error is not None:
            raise self.error
        return ListNodesResponse()


class Services:
    async def task_counts(self) -> tuple[int, int, int]:
        return 3, 2, 1


class EtcdStore:
    async def server_version(self) -> str:
        return "3.4.23"


IDENTITY = ControllerIdentity("cluster", "controller", ["127.0.0.1:2379"], False, 0.0)


async def info_with(error: Exception | None) -> Any:
    return await cluster_info(IDENTITY, EtcdStore(), Nodes(error), Services(), [], None)  # type: ignore[arg-type]


async def test_the_counts_come_when_etcd_answers() -> None:
    info = await info_with(None)
    assert (info.tasks_total, info.tasks_running, info.tasks_pending) == (3, 2, 1)
    assert info.etcd_version == "3.4.23" and not info.state_error


async def test_an_unavailable_etcd_is_reported_not_raised() -> None:
    info = await info_with(StoreUnavailable("etcd is unavailable"))
    assert info.state_error == "the cluster's state cannot be read: etcd is unavailable"
    assert info.tasks_total == 0 and info.etcd_version == "3.4.23"


async def test_another_store_error_reaches_the_caller_as_itself() -> None:
    with pytest.raises(StoreError, match="corrupt nodes record"):
        await info_with(StoreError("corrupt nodes record at 'n1'"))
