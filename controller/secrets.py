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

Configs (docs/configs.md) are kept, resolved, guarded and delivered by the same code:
an `ObjectKind` names the keys, messages and reference field of each. Unlike a
secret's, a config's data is returned by Get, and is never encrypted at rest; a
secret's is when the controller has an `--encryption-key-file` (controller/at_rest.py).
"""

from __future__ import annotations

import secrets as token_source
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from dockyard.common.lookup import match_reference
from dockyard.common.validation import ValidationError, check_labels, check_name, check_ref
from dockyard.controller.at_rest import MAGIC, SecretCipher, data_record
from dockyard.controller.conflicts import retry_conflicts
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.store import (
    CONFIG_DATA,
    CONFIG_NAMES,
    CONFIGS,
    SECRET_DATA,
    SECRET_NAMES,
    SECRETS,
    SERVICES,
    TASKS,
    AlreadyExists,
    Conflict,
    Kind,
    NotFound,
    Op,
    Store,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import (
    Config,
    ConfigSpec,
    ContainerSpec,
    Secret,
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


@dataclass(frozen=True)
class ObjectKind:
    """Secrets or configs: where they are kept and how a container spec refers to them."""

    word: str  # "secret" | "config"
    records: Kind[Any]
    data: Kind[Any]
    names: Kind[Any]
    record: Callable[..., Any]  # Secret | Config
    refs: Callable[[ContainerSpec], Any]  # the repeated reference field
    id_field: str  # secret_id | config_id
    name_field: str
    default_target: Callable[[str], str]  # the target of a reference that names none
    rm_flag: str
    sealed: bool  # its data is encrypted at rest when the controller has keys


SECRET_KIND = ObjectKind(
    "secret",
    SECRETS,
    SECRET_DATA,
    SECRET_NAMES,
    Secret,
    lambda c: c.secrets,
    "secret_id",
    "secret_name",
    lambda name: name,
    "--secret-rm",
    True,
)
CONFIG_KIND = ObjectKind(
    "config",
    CONFIGS,
    CONFIG_DATA,
    CONFIG_NAMES,
    Config,
    lambda c: c.configs,
    "config_id",
    "config_name",
    lambda name: f"/{name}",
    "--config-rm",
    False,
)


def check_secret_spec(spec: SecretSpec | ConfigSpec, sealed: bool = False) -> None:
    """`sealed`: a secret's, whose data must not pass for an encrypted value."""
    check_name("spec.name", spec.name)
    check_labels("spec.labels", dict(spec.labels))
    if not spec.data:
        raise ValidationError("spec.data", "must not be empty")
    if len(spec.data) > MAX_SECRET_BYTES:
        raise ValidationError(
            "spec.data", f"is {len(spec.data)} bytes, at most {MAX_SECRET_BYTES} (500 KiB)"
        )
    if sealed and spec.data.startswith(MAGIC):
        raise ValidationError(
            "spec.data", f"starts with {MAGIC!r}, the mark of data encrypted at rest"
        )


def without_data(secret: Secret) -> Secret:
    shown = Secret()
    shown.CopyFrom(secret)
    shown.spec.ClearField("data")
    return shown


def _uses(refs: Sequence[Any], secret_id: str, kind: ObjectKind = SECRET_KIND) -> bool:
    return any(getattr(r, kind.id_field) == secret_id for r in refs)


def secret_users(
    secret_id: str,
    services: Sequence[Service],
    tasks: Sequence[Task],
    kind: ObjectKind = SECRET_KIND,
) -> list[str]:
    """What still needs the secret, one phrase per service: its spec, its previous spec
    (a rollback, manual or automatic, would bring it back) or its tasks that have not
    ended (a task being stopped still has the secret's file). Empty when nothing does.
    """
    live: dict[str, list[str]] = {}
    for task in tasks:
        in_use = _uses(kind.refs(task.spec.container), secret_id, kind)
        if task.status.state not in _ENDED and in_use:
            live.setdefault(task.service_name or task.service_id, []).append(task.id[:12])
    phrases: dict[str, str] = {}
    for service in services:
        name = service.spec.name
        if _uses(kind.refs(service.spec.task.container), secret_id, kind):
            phrases[name] = f"service {name}"
        elif _uses(kind.refs(service.previous_spec.task.container), secret_id, kind):
            phrases[name] = f"service {name} (its previous spec, the rollback target)"
    for name, task_ids in live.items():
        more = f" and {len(task_ids) - 5} more" if len(task_ids) > 5 else ""
        shown = ", ".join(task_ids[:5]) + more
        running = f"task{'s' if len(task_ids) > 1 else ''} {shown} of service {name}"
        phrases[name] = f"{phrases[name]} and its {running}" if name in phrases else running
    return [phrases[name] for name in sorted(phrases)]


class SecretRegistry:
    """The secrets (or, with CONFIG_KIND, the configs) of the cluster."""

    def __init__(
        self, store: Store, kind: ObjectKind = SECRET_KIND, cipher: SecretCipher | None = None
    ) -> None:
        """`cipher` seals a secret's data at rest (the default: none, plaintext writes;
        encrypted values are still recognised). A config's data is never sealed."""
        self._store = store
        self.kind = kind
        self._cipher = cipher or SecretCipher()

    async def list_all(self) -> list[Any]:
        """Every record (no data)."""
        found, _ = await self._store.list_all(self.kind.records)
        return found

    async def find(self, ref: str) -> Any:
        """A record (no data) by ID, name or unique ID prefix."""
        word = self.kind.word
        check_ref(word, ref)
        matches = match_reference(ref, await self.list_all(), lambda s: s.id, lambda s: s.spec.name)
        if len(matches) > 1:
            raise ValidationError(word, f"{ref!r} is ambiguous ({len(matches)} {word}s)")
        if not matches:
            raise NotFound(f"{word} {ref!r} not found")
        return matches[0]

    async def data(self, record_id: str) -> bytes:
        """The data of a record (configs show it; a secret's is only ever dispatched)."""
        raw = await self._store.get_raw(self.kind.data, record_id)
        if raw is None:
            return b""
        if not self.kind.sealed:
            return bytes(raw[0])
        return self._cipher.open(data_record(self.kind.data, record_id), bytes(raw[0]))

    async def list_named(self, names: Sequence[str]) -> list[Any]:
        for index, name in enumerate(names):
            check_ref(f"names[{index}]", name)
        found = [s for s in await self.list_all() if not names or s.spec.name in names]
        return sorted(found, key=lambda s: s.spec.name)

    async def create(self, spec: SecretSpec | ConfigSpec) -> Any:
        kind = self.kind
        check_secret_spec(spec, kind.sealed)
        record = kind.record(id=token_source.token_hex(12), size_bytes=len(spec.data))
        record.spec.CopyFrom(spec)
        record.spec.ClearField("data")
        data = bytes(spec.data)
        if kind.sealed:
            data = self._cipher.seal(data_record(kind.data, record.id), data)
        ops = [
            self._store.put_op(kind.records, record.id, record, expect=0),
            self._store.raw_op(kind.data, record.id, data, expect=0),
            self._store.raw_op(kind.names, spec.name, record.id.encode(), expect=0),
        ]
        try:
            record.meta.version = await self._store.commit(ops)
        except Conflict as exc:
            raise AlreadyExists(f"{kind.word} {spec.name!r} already exists") from exc
        log.info(f"{kind.word}.created", id=record.id, name=spec.name, size=record.size_bytes)
        return record

    async def remove(self, ref: str) -> Any:
        """Delete the record, unless a service's spec or previous spec (its rollback
        target), or a task that may still run, uses it (checked again if a service
        changed meanwhile)."""
        return await retry_conflicts(lambda: self._remove_once(ref))

    async def _remove_once(self, ref: str) -> Any:
        kind = self.kind
        record = await self.find(ref)
        services, revision = await self._store.list_all(SERVICES)
        tasks, _ = await self._store.list_all(TASKS)
        users = secret_users(record.id, services, tasks, kind)
        if users:
            raise FailedPrecondition(
                f"{kind.word} {record.spec.name} is in use by {'; '.join(users)}: remove it "
                f"from the service (service update {kind.rm_flag}) and let the update "
                "finish; a previous spec that has it goes with the next update (service "
                "update --force SERVICE once the new spec runs well)"
            )
        ops = [
            self._store.raw_op(kind.records, record.id, None, expect=record.meta.version),
            self._store.raw_op(kind.data, record.id, None, expect=None),
            self._store.raw_op(kind.names, record.spec.name, None, expect=None),
            self._store.unchanged_op(SERVICES, revision),
        ]
        try:
            await self._store.commit(ops)
        except Conflict as exc:
            raise Conflict(
                f"{kind.word} {record.spec.name} or the services changed while it was being "
                "removed: try again"
            ) from exc
        log.info(f"{kind.word}.removed", id=record.id, name=record.spec.name)
        return record

    async def resolve(self, spec: ServiceSpec) -> tuple[ServiceSpec, list[Op]]:
        """The spec with every reference's ID, name, target and mode filled in, and the
        compares that keep those records alive until the spec is written.

        Raises:
            NotFound: a referenced record does not exist (the message names the field).
        """
        resolved = ServiceSpec()
        resolved.CopyFrom(spec)
        checks = await self._resolve_into(resolved)
        return resolved, checks

    async def _resolve_into(self, resolved: ServiceSpec) -> list[Op]:
        kind = self.kind
        refs = kind.refs(resolved.task.container)
        if not refs:
            return []
        by_id = {s.id: s for s in await self.list_all()}
        by_name = {s.spec.name: s for s in by_id.values()}
        checks: dict[str, Op] = {}
        for index, ref in enumerate(refs):
            field = f"spec.task.container.{kind.word}s[{index}]"
            name, record_id = getattr(ref, kind.name_field), getattr(ref, kind.id_field)
            if name:
                record = by_name.get(name)
                if record is None:
                    raise NotFound(f"{field}.{kind.name_field}: {kind.word} {name!r} not found")
            else:
                record = by_id.get(record_id)
                if record is None:
                    raise NotFound(f"{field}.{kind.id_field}: {kind.word} {record_id!r} not found")
            setattr(ref, kind.id_field, record.id)
            setattr(ref, kind.name_field, record.spec.name)
            ref.target = ref.target or kind.default_target(record.spec.name)
            ref.mode = ref.mode or DEFAULT_MODE
            checks[record.id] = self._store.check_op(kind.records, record.id, record.meta.version)
        return list(checks.values())


class ObjectRegistries:
    """Secrets and configs together: what a service spec refers to."""

    def __init__(self, store: Store) -> None:
        self.secrets = SecretRegistry(store, SECRET_KIND)
        self.configs = SecretRegistry(store, CONFIG_KIND)

    async def resolve(self, spec: ServiceSpec) -> tuple[ServiceSpec, list[Op]]:
        resolved = ServiceSpec()
        resolved.CopyFrom(spec)
        checks = await self.secrets._resolve_into(resolved)
        checks += await self.configs._resolve_into(resolved)
        return resolved, checks
