"""The cluster record and the policy in its spec (what services may ask for)."""

from __future__ import annotations

import structlog

from dockyard.common.validation import ValidationError
from dockyard.controller.store import CLUSTER, Conflict, Store
from dockyard.v1.types_pb2 import Cluster, ClusterSpec
from dockyard.v1.workloads_pb2 import ServiceSpec

__all__ = ["CLUSTER_ID", "ClusterRecord", "PolicyDenied"]

log = structlog.get_logger(__name__)

CLUSTER_ID = "id"  # the one record's key


class PolicyDenied(Exception):
    """The cluster's policy does not allow what the request asks for."""


class ClusterRecord:
    """Reads and updates the cluster record; checks service specs against its policy."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self) -> Cluster:
        return await self._store.get(CLUSTER, CLUSTER_ID)

    async def update(self, version: int, spec: ClusterSpec) -> Cluster:
        """A new spec; `version` (Meta.version as read) guards against lost updates."""
        if version <= 0:
            raise ValidationError("version", "must be the version the cluster was read at")
        cluster = await self.get()
        if cluster.meta.version != version:
            raise Conflict(
                f"the cluster changed since it was read (version {version}, now "
                f"{cluster.meta.version}): read it again and retry"
            )
        cluster.spec.CopyFrom(spec)
        cluster.meta.version = await self._store.update(CLUSTER, CLUSTER_ID, cluster)
        log.info("cluster.updated", allow_privileged=spec.allow_privileged)
        return cluster

    async def check_spec(self, spec: ServiceSpec) -> None:
        """Raises PolicyDenied when the spec asks for what the policy forbids."""
        if not spec.task.container.privileged:
            return
        if not (await self.get()).spec.allow_privileged:
            raise PolicyDenied(
                "spec.task.container.privileged: the cluster's policy does not allow "
                "privileged containers (an admin can allow them with "
                "`dockyard cluster update --allow-privileged=true`)"
            )
