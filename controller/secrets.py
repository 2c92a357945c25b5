"""Secrets: small blobs (at most 500 KiB, as in Swarm) that services get as files.

A secret is three keys written in one transaction: its record (`secrets/<id>`: name,
labels, size; never the data), its data (`secretdata/<id>`, raw bytes) and its name
index (`names/secrets/<name>`). The data is kept apart so that listing secrets never
reads the data (and a list stays far below gRPC's message limit). A secret is
immutable: to rotate it, create a new one and update the services.

A service spec names its secrets; the controller resolves each name to the secret's ID
when the spec is written, and the write compares the secret's revision, so a secret
removed at the same moment makes the service write fail instead of pointing nowhere.
A removal is refused while a service's spec or previous spec (its rollback target)
names the secret, or a task that has not ended has it; it compares that no service
record changed since it checked. Tasks are not compared (their status changes all the
time): a new task gets its secrets only from its service's spec, which is.
Only the node that runs a task gets the data, in its assignment set
(`controller/assignments.py`).
"""

from __future__ import annotations

import secrets as token_source
from collections.abc import Sequence

import structlog

from dockyard.common.lookup import match_reference
from dockyard.common.validation import ValidationError, check_labels, check_name, check_ref
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.store import (
    SECRET_DATA,
    SECRET_NAMES,
    SECRETS,
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
    Secret,
    SecretReference,
    SecretSpec,
    Service,
    ServiceSpec,
    Task,
)

log = structlog.get_logger(__name__)

MAX_SECRET_BYTES = 500 * 1024  # Swarm's limit
# A task in one of these states has stopped (or never started): its node no longer
# holds the secret for it.
_ENDED = frozenset(
    {
        TaskStatus.COMPLETE,
        TaskStatus.SHUTDOWN,
        TaskStatus.FAILED,
        TaskStatus.REJECTED,
        TaskStatus.ORPHANED,
    }
)
DEFAULT_MODE = 0o444


def check_secret_spec(spec: SecretSpec) -> None:
    check_name("spec.name", spec.name)
    check_labels("spec.labels", dict(spec.labels))
    if not spec.data:
        raise ValidationError("spec.data", "must not be empty")
    if len(spec.data) > MAX_SECRET_BYTES:
        raise ValidationError(
            "spec.data", f"is {len(spec.data)} bytes, at most {MAX_SECRET_BYTES} (500 KiB)"
        )


def without_data(secret: Secret) -> Secret:
    shown = Secret()
    shown.CopyFrom(secret)
    shown.spec.ClearField("data")
    return shown


def _uses(container_secrets: Sequence[SecretReference], secret_id: str) -> bool:
    return any(r.secret_id == secret_id for r in container_secrets)


def secret_users(secret_id: str, services: Sequence[Service], tasks: Sequence[Task]) -> list[str]:
    """What still needs the secret, one phrase per service: its spec, its previous spec
    (a rollback, manual or automatic, would bring it back) or its tasks that have not
    ended (a task being stopped still has the secret's file). Empty when nothing does.
    """
    live: dict[str, list[str]] = {}
    for task in tasks:
        if task.status.state not in _ENDED and _uses(task.spec.container.secrets, secret_id):
            live.setdefault(task.service_name or task.service_id, []).append(task.id[:12])
    phrases: dict[str, str] = {}
    for service in services:
        name = service.spec.name
        if _uses(service.spec.task.container.secrets, secret_id):
            phrases[name] = f"service {name}"
        elif _uses(service.previous_spec.task.container.secrets, secret_id):
            phrases[name] = f"service {name} (its previous spec, the rollback target)"
    for name, task_ids in live.items():
        more = f" and {len(task_ids) - 5} more" if len(task_ids) > 5 else ""
        shown = ", ".join(task_ids[:5]) + more
        running = f"task{'s' if len(task_ids) > 1 else ''} {shown} of service {name}"
        phrases[name] = f"{phrases[name]} and its {running}" if name in phrases else running
    return [phrases[name] for name in sorted(phrases)]


class SecretRegistry:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def list_all(self) -> list[Secret]:
        """Every secret's record (no data)."""
        found, _ = await self._store.list_all(SECRETS)
        return found

    async def find(self, ref: str) -> Secret:
        """A secret (no data) by ID, name or unique ID prefix."""
        check_ref("secret", ref)
        matches = match_reference(ref, await self.list_all(), lambda s: s.id, lambda s: s.spec.name)
        if len(matches) > 1:
            raise ValidationError("secret", f"{ref!r} is ambiguous ({len(matches)} secrets)")
        if not matches:
            raise NotFound(f"secret {ref!r} not found")
        return matches[0]

    async def list_named(self, names: Sequence[str]) -> list[Secret]:
        for index, name in enumerate(names):
            check_ref(f"names[{index}]", name)
        found = [s for s in await self.list_all() if not names or s.spec.name in names]
        return sorted(found, key=lambda s: s.spec.name)

    async def create(self, spec: SecretSpec) -> Secret:
        check_secret_spec(spec)
        secret = Secret(id=token_source.token_hex(12), size_bytes=len(spec.data))
        secret.spec.CopyFrom(spec)
        secret.spec.ClearField("data")
        ops = [
            self._store.put_op(SECRETS, secret.id, secret, expect=0),
            self._store.raw_op(SECRET_DATA, secret.id, bytes(spec.data), expect=0),
            self._store.raw_op(SECRET_NAMES, spec.name, secret.id.encode(), expect=0),
        ]
        try:
            secret.meta.version = await self._store.commit(ops)
        except Conflict as exc:
            raise AlreadyExists(f"secret {spec.name!r} already exists") from exc
        log.info("secret.created", secret_id=secret.id, name=spec.name, size=secret.size_bytes)
        return secret

    async def remove(self, ref: str) -> Secret:
        """Delete the secret, unless a service's spec or previous spec (its rollback
        target), or a task that may still run, uses it."""
        secret = await self.find(ref)
        services, revision = await self._store.list_all(SERVICES)
        tasks, _ = await self._store.list_all(TASKS)
        users = secret_users(secret.id, services, tasks)
        if users:
            raise FailedPrecondition(
                f"secret {secret.spec.name} is in use by {'; '.join(users)}: remove it from "
                "the service (service update --secret-rm) and let the update finish; a "
                "previous spec that has it goes with the next update (service update "
                "--force SERVICE once the new spec runs well)"
            )
        ops = [
            self._store.raw_op(SECRETS, secret.id, None, expect=secret.meta.version),
            self._store.raw_op(SECRET_DATA, secret.id, None, expect=None),
            self._store.raw_op(SECRET_NAMES, secret.spec.name, None, expect=None),
            self._store.unchanged_op(SERVICES, revision),
        ]
        try:
            await self._store.commit(ops)
        except Conflict as exc:
            raise Conflict(
                f"secret {secret.spec.name} or the services changed while it was being "
                "removed: try again"
            ) from exc
        log.info("secret.removed", secret_id=secret.id, name=secret.spec.name)
        return secret

    async def resolve(self, spec: ServiceSpec) -> tuple[ServiceSpec, list[Op]]:
        """The spec with every secret reference's ID, name, target and mode filled in,
        and the compares that keep those secrets alive until the spec is written.

        Raises:
            NotFound: a referenced secret does not exist (the message names the field).
        """
        resolved = ServiceSpec()
        resolved.CopyFrom(spec)
        refs = resolved.task.container.secrets
        if not refs:
            return resolved, []
        by_id = {s.id: s for s in await self.list_all()}
        by_name = {s.spec.name: s for s in by_id.values()}
        checks: dict[str, Op] = {}
        for index, ref in enumerate(refs):
            field = f"spec.task.container.secrets[{index}]"
            if ref.secret_name:
                secret = by_name.get(ref.secret_name)
                if secret is None:
                    raise NotFound(f"{field}.secret_name: secret {ref.secret_name!r} not found")
            else:
                secret = by_id.get(ref.secret_id)
                if secret is None:
                    raise NotFound(f"{field}.secret_id: secret {ref.secret_id!r} not found")
            ref.secret_id, ref.secret_name = secret.id, secret.spec.name
            ref.target = ref.target or secret.spec.name
            ref.mode = ref.mode or DEFAULT_MODE
            checks[secret.id] = self._store.check_op(SECRETS, secret.id, secret.meta.version)
        return resolved, list(checks.values())
