"""The cluster record and the policy in its spec (what services may ask for).

The policy's one rule today: what is privileged in effect (`common/privilege.py`:
`privileged`, capabilities beyond the default set, bind mounts of protected host paths,
the host's network) needs `allow_privileged`. It holds for every spec a service can
come to run, not only the one a request sends:

- a write that depends on the policy compares the cluster record's revision, so a
  policy changed at the same moment makes the write fail instead of slipping past;
- a previous spec (the rollback target, manual or automatic) that the policy forbids
  is never stored: an update away from a privileged spec under a policy that no longer
  allows it drops the rollback target, and turning the policy off drops, in the same
  transaction, every rollback target it now forbids. The orchestrator's automatic
  rollback compares the service's revision, so it cannot restore a dropped one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from dockyard.common.privilege import Privilege, privileges
from dockyard.common.validation import ValidationError
from dockyard.controller.store import CLUSTER, MAX_TXN_OPS, SERVICES, Conflict, Op, Store
from dockyard.v1.types_pb2 import Cluster, ClusterSpec
from dockyard.v1.workloads_pb2 import Service, ServiceSpec

__all__ = ["CLUSTER_ID", "ClusterRecord", "Policy", "PolicyDenied", "privileges_of"]

log = structlog.get_logger(__name__)

CLUSTER_ID = "id"  # the one record's key
_ATTEMPTS = 3  # of a policy change racing service writes
HOW_TO_ALLOW = (
    "the cluster's policy does not allow privileged containers (an admin can "
    "allow them with `dockyard cluster update --allow-privileged=true`)"
)


class PolicyDenied(Exception):
    """The cluster's policy does not allow what the request asks for."""


def privileges_of(spec: ServiceSpec, field: str = "spec") -> list[Privilege]:
    """What makes a service spec's containers privileged in effect (empty: nothing)."""
    container = spec.task.container
    binds = [
        (f"mounts[{i}].source", m.source)
        for i, m in enumerate(container.mounts)
        if m.type == "bind"
    ]
    return privileges(
        privileged=container.privileged,
        cap_add=list(container.cap_add),
        binds=binds,
        network=container.network,
        prefix=f"{field}.task.container.",
    )


@dataclass(frozen=True)
class Policy:
    """The cluster's policy as read at one revision of its record."""

    spec: ClusterSpec
    version: int

    def forbidden(self, spec: ServiceSpec, field: str = "spec") -> list[Privilege]:
        """What in `spec` this policy does not allow (empty: all of it is allowed)."""
        return [] if self.spec.allow_privileged else privileges_of(spec, field)

    def check(self, spec: ServiceSpec, field: str = "spec") -> None:
        """Raises PolicyDenied naming each field the policy forbids, and why."""
        found = self.forbidden(spec, field)
        if found:
            raise PolicyDenied(f"{'; '.join(str(p) for p in found)}: {HOW_TO_ALLOW}")

    def fence(self, store: Store) -> Op:
        """A compare for the write that relies on this policy: the record is unchanged."""
        return store.check_op(CLUSTER, CLUSTER_ID, self.version)


class ClusterRecord:
    """Reads and updates the cluster record; checks service specs against its policy."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self) -> Cluster:
        return await self._store.get(CLUSTER, CLUSTER_ID)

    async def policy(self) -> Policy:
        cluster = await self.get()
        return Policy(cluster.spec, cluster.meta.version)

    async def update(self, version: int, spec: ClusterSpec) -> Cluster:
        """A new spec; `version` (Meta.version as read) guards against lost updates.

        Rollback targets the new policy forbids are dropped in the same transaction.
        """
        if version <= 0:
            raise ValidationError("version", "must be the version the cluster was read at")
        for attempt in range(1, _ATTEMPTS + 1):
            cluster = await self.get()
            if cluster.meta.version != version:
                raise Conflict(
                    f"the cluster changed since it was read (version {version}, now "
                    f"{cluster.meta.version}): read it again and retry"
                )
            cluster.spec.CopyFrom(spec)
            services, _ = await self._store.list_all(SERVICES)
            dropped = _forbidden_rollbacks(Policy(spec, version), services)
            if len(dropped) >= MAX_TXN_OPS:
                raise ValidationError(
                    "spec.allow_privileged",
                    (
                        f"{len(dropped)} services keep a privileged previous spec, more than "
                        f"{MAX_TXN_OPS - 1} can be dropped at once: update some of them first"
                    ),
                )
            ops = [self._store.put_op(CLUSTER, CLUSTER_ID, cluster, expect=version)]
            ops += [self._store.put_op(SERVICES, s.id, s, expect=s.meta.version) for s in dropped]
            try:
                cluster.meta.version = await self._store.commit(ops)
            except Conflict:
                if attempt == _ATTEMPTS:
                    raise
                continue  # a service changed meanwhile (or the cluster: caught above)
            for service in dropped:
                log.warning(
                    "service.rollback_target_dropped",
                    service_id=service.id,
                    name=service.spec.name,
                    reason="the cluster's policy forbids it",
                )
            log.info(
                "cluster.updated",
                allow_privileged=spec.allow_privileged,
                rollback_targets_dropped=len(dropped),
            )
            return cluster
        raise AssertionError("unreachable")

    async def check_spec(self, spec: ServiceSpec, field: str = "spec") -> Policy:
        """Raises PolicyDenied when the spec asks for what the policy forbids; returns
        the policy it was checked against (for the write's fence)."""
        policy = await self.policy()
        policy.check(spec, field)
        return policy


def _forbidden_rollbacks(policy: Policy, services: Sequence[Service]) -> list[Service]:
    """Copies of the services whose previous spec `policy` forbids, with it cleared."""
    dropped = []
    for service in services:
        if service.HasField("previous_spec") and policy.forbidden(service.previous_spec):
            copy = Service()
            copy.CopyFrom(service)
            copy.ClearField("previous_spec")
            dropped.append(copy)
    return dropped
