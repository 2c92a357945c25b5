"""The service registry: service records and the name index beside them.

Creating, updating and removing a service only changes its record; the
orchestrators see the change through the store and make or replace tasks.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import structlog

from dockyard.common.lookup import match_reference
from dockyard.common.timestamps import now_timestamp
from dockyard.common.validation import ValidationError, check_ref
from dockyard.controller.at_rest import SecretCipher, data_record
from dockyard.controller.cluster import Policy
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.specs import check_service_spec
from dockyard.controller.store import (
    REGISTRY_AUTHS,
    SERVICE_NAMES,
    SERVICES,
    TASKS,
    AlreadyExists,
    Conflict,
    NotFound,
    Op,
    Store,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import (
    RegistryAuth,
    RestartPolicy,
    Service,
    ServiceSpec,
    UpdateConfig,
    UpdateStatus,
)

log = structlog.get_logger(__name__)

DEFAULT_STOP_GRACE = 10.0
DEFAULT_RESTART_DELAY = 5.0
DEFAULT_MONITOR = 5.0


def apply_defaults(spec: ServiceSpec) -> ServiceSpec:
    """Docker's defaults, written into the stored spec so that it says what runs."""
    filled = ServiceSpec()
    filled.CopyFrom(spec)
    container = filled.task.container
    if not container.HasField("stop_grace_seconds"):
        container.stop_grace_seconds = DEFAULT_STOP_GRACE
    policy = filled.task.restart_policy
    if policy.condition == RestartPolicy.CONDITION_UNSPECIFIED:
        policy.condition = RestartPolicy.ON_FAILURE if filled.HasField("job") else RestartPolicy.ANY
        if policy.delay_seconds == 0:
            policy.delay_seconds = DEFAULT_RESTART_DELAY
    for update in (filled.update, filled.rollback):
        if update.order == UpdateConfig.ORDER_UNSPECIFIED:
            update.order = UpdateConfig.STOP_FIRST
        if update.failure_action == UpdateConfig.FAILURE_ACTION_UNSPECIFIED:
            update.failure_action = UpdateConfig.PAUSE
        if update.monitor_seconds == 0:
            update.monitor_seconds = DEFAULT_MONITOR
    if filled.update.parallelism == 0 and not spec.HasField("update"):
        filled.update.parallelism = 1
    if filled.rollback.parallelism == 0 and not spec.HasField("rollback"):
        filled.rollback.parallelism = 1
    if filled.HasField("job") and filled.job.parallelism == 0:
        filled.job.parallelism = 1
    return filled


class ServiceRegistry:
    def __init__(self, store: Store, cipher: SecretCipher | None = None) -> None:
        """`cipher` encrypts the services' registry credentials at rest, as secrets'
        data (controller/at_rest.py); default: plaintext."""
        self._store = store
        self._cipher = cipher or SecretCipher()

    async def list_all(self) -> list[Service]:
        services, _ = await self._store.list_all(SERVICES)
        return services

    async def find(self, ref: str) -> Service:
        """A service by ID, name or unique ID prefix."""
        check_ref("service", ref)
        matches = match_reference(ref, await self.list_all(), lambda s: s.id, lambda s: s.spec.name)
        if len(matches) > 1:
            raise ValidationError("service", f"{ref!r} is ambiguous ({len(matches)} services)")
        if not matches:
            raise NotFound(f"service {ref!r} not found")
        return matches[0]

    async def create(
        self, spec: ServiceSpec, checks: Sequence[Op] = (), auth: RegistryAuth | None = None
    ) -> Service:
        """`checks`: compares that must hold too (the secrets the spec uses still exist);
        `auth`: registry credentials its tasks pull with, written in the same commit."""
        check_service_spec(spec)
        service = Service(id=secrets.token_hex(12), spec=apply_defaults(spec), spec_version=1)
        if auth is not None:
            service.registry_auth = auth.registry
        ops = [
            self._store.put_op(SERVICES, service.id, service, expect=0),
            self._store.raw_op(SERVICE_NAMES, spec.name, service.id.encode(), expect=0),
            *self.auth_ops(service.id, auth),
        ]
        try:
            service.meta.version = await self._store.commit([*ops, *checks])
        except Conflict as exc:
            if not checks or await self._store.get_raw(SERVICE_NAMES, spec.name) is not None:
                raise AlreadyExists(f"service {spec.name!r} already exists") from exc
            raise Conflict(
                f"a secret service {spec.name!r} uses was just removed, or the "
                "cluster's policy changed: read again and retry"
            ) from exc
        log.info("service.created", service_id=service.id, name=spec.name)
        return service

    def auth_ops(self, service_id: str, auth: RegistryAuth | None) -> list[Op]:
        """Write (or, with None, nothing) a service's registry credentials."""
        if auth is None:
            return []
        sealed = self._cipher.seal(
            data_record(REGISTRY_AUTHS, service_id), auth.SerializeToString()
        )
        return [self._store.raw_op(REGISTRY_AUTHS, service_id, sealed, expect=None)]

    async def update(
        self,
        ref: str,
        version: int,
        spec: ServiceSpec,
        force: bool,
        checks: Sequence[Op] = (),
        policy: Policy | None = None,
        auth: RegistryAuth | None = None,
    ) -> Service:
        """A new spec (and a rolling update); `version` guards against lost updates.

        With `policy`, the old spec is kept as the rollback target only if the policy
        allows it, and the write compares the policy's revision. `auth`: new registry
        credentials for its tasks (None: it keeps those it has).
        """
        check_service_spec(spec)
        service = await self._read_at(ref, version)
        if spec.name != service.spec.name:
            raise ValidationError("spec.name", "a service cannot be renamed")
        if _mode(spec) != _mode(service.spec):
            raise ValidationError("spec.mode", "the mode of a service cannot change")
        new_spec = apply_defaults(spec)
        if auth is not None:
            service.registry_auth = auth.registry
            checks = [*checks, *self.auth_ops(service.id, auth)]
        if new_spec == service.spec and not force:
            # New credentials alone: the spec and its rollback target stay as they are.
            return await self._write(service, checks) if auth is not None else service
        replace_tasks = force or new_spec.task != service.spec.task
        service.previous_spec.CopyFrom(service.spec)
        service.spec.CopyFrom(new_spec)
        checks = _under_policy(service, checks, policy, self._store)
        if not replace_tasks:  # scaling, labels, update settings: the tasks stay as they are
            return await self._write(service, checks)
        return await self._write_new_spec(service, UpdateStatus.UPDATING, "update started", checks)

    async def rollback(
        self, ref: str, version: int, checks: Sequence[Op] = (), policy: Policy | None = None
    ) -> Service:
        """Back to the previous spec. With `policy`, that spec must be allowed by it (and
        the write compares the policy's revision); the spec left behind is kept as the
        next rollback target only if the policy allows it."""
        service = await self._read_at(ref, version)
        if not service.HasField("previous_spec"):
            raise FailedPrecondition(
                f"service {service.spec.name} has no previous spec to roll back to (a spec the "
                "cluster's policy forbids is not kept as one)"
            )
        if policy is not None:
            policy.check(service.previous_spec, "previous_spec")
        current = ServiceSpec()
        current.CopyFrom(service.spec)
        service.spec.CopyFrom(service.previous_spec)
        service.previous_spec.CopyFrom(current)
        checks = _under_policy(service, checks, policy, self._store)
        if service.spec.task == current.task:  # e.g. back to the replica count before a scale
            return await self._write(service, checks)
        return await self._write_new_spec(
            service, UpdateStatus.ROLLBACK_STARTED, "manually requested rollback", checks
        )

    async def _read_at(self, ref: str, version: int) -> Service:
        if version <= 0:
            raise ValidationError("version", "must be the version the service was read at")
        service = await self.find(ref)
        if service.meta.version != version:
            raise Conflict(
                f"service {service.spec.name} changed since it was read (version {version}, "
                f"now {service.meta.version}): read it again and retry"
            )
        return service

    async def _write_new_spec(
        self,
        service: Service,
        state: UpdateStatus.State.ValueType,
        message: str,
        checks: Sequence[Op] = (),
    ) -> Service:
        """A new task spec: every task is outdated and replaced by a rolling update."""
        service.spec_version += 1
        service.update_status.state = state
        service.update_status.started_at.CopyFrom(now_timestamp())
        service.update_status.ClearField("completed_at")
        service.update_status.message = message
        return await self._write(service, checks)

    async def _write(self, service: Service, checks: Sequence[Op] = ()) -> Service:
        version = service.meta.version
        try:
            service.meta.version = await self._store.commit(
                [self._store.put_op(SERVICES, service.id, service, expect=version), *checks]
            )
        except Conflict as exc:
            raise Conflict(
                f"service {service.spec.name} changed while it was being updated: read it again "
                "and retry"
            ) from exc
        log.info("service.updated", service_id=service.id, spec_version=service.spec_version)
        return service

    async def remove(self, ref: str) -> Service:
        """Delete the service; its tasks are told to shut down, then reaped.

        The leader writes the record too (a rolling update's batch start), so a
        removal that meets such a write reads the service again and retries: a user's
        `service rm` is not refused because the orchestrator was at work."""
        for attempt in range(1, _REMOVE_ATTEMPTS + 1):
            service = await self.find(ref)
            ops = [
                self._store.raw_op(SERVICES, service.id, None, expect=service.meta.version),
                self._store.raw_op(SERVICE_NAMES, service.spec.name, None, expect=None),
                self._store.raw_op(REGISTRY_AUTHS, service.id, None, expect=None),
            ]
            try:
                await self._store.commit(ops)
                break
            except Conflict:
                if attempt == _REMOVE_ATTEMPTS:
                    raise
        tasks, _ = await self._store.list_all(TASKS)
        shutdowns = []
        for task in tasks:
            if task.service_id == service.id and task.desired_state != TaskStatus.SHUTDOWN:
                task.desired_state = TaskStatus.SHUTDOWN
                shutdowns.append(self._store.put_op(TASKS, task.id, task, expect=task.meta.version))
        if shutdowns:
            await self._store.commit_each(shutdowns)
        log.info("service.removed", service_id=service.id, name=service.spec.name)
        return service


# Removals that meet a concurrent write of the record read it again this many times.
_REMOVE_ATTEMPTS = 5


def _mode(spec: ServiceSpec) -> str | None:
    return spec.WhichOneof("mode")


def _under_policy(
    service: Service, checks: Sequence[Op], policy: Policy | None, store: Store
) -> list[Op]:
    """Drop a rollback target `policy` forbids; add the policy's fence to `checks`."""
    if policy is None:
        return list(checks)
    forbidden = policy.forbidden(service.previous_spec, "previous_spec")
    if forbidden:
        service.ClearField("previous_spec")
        log.warning(
            "service.rollback_target_dropped",
            service_id=service.id,
            name=service.spec.name,
            reason=str(forbidden[0]),
        )
    return [*checks, policy.fence(store)]
