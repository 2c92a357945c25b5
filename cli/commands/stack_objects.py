"""The secrets and configs a stack makes (from files, variables or inline content), made
before its services and removed with the stack, as `docker stack deploy` does.

An object of the stack's is labelled `com.docker.stack.namespace=<stack>`; one that
exists already is kept as it is (secrets and configs cannot change: rename the object
in the compose file to roll out new data, as with docker).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.compose_service import STACK_LABEL, StackObject
from dockyard.cli.commands.service_wait import control_stub

__all__ = ["KINDS", "create_objects", "read_objects", "remove_objects"]

MAX_OBJECT_BYTES = 500 * 1024
REMOVE_WAIT = 60.0  # seconds the tasks of removed services get to stop


@dataclass(frozen=True)
class Kind:
    """The RPCs and messages of one kind of object (secret or config)."""

    name: str
    create: str
    listing: str
    remove: str

    def messages(self) -> tuple[Any, Any, Any, Any]:
        from dockyard.v1 import control_pb2, workloads_pb2

        title = self.name.capitalize()
        return (
            getattr(control_pb2, f"Create{title}Request"),
            getattr(control_pb2, f"List{title}sRequest"),
            getattr(control_pb2, f"Remove{title}Request"),
            getattr(workloads_pb2, f"{title}Spec"),
        )


KINDS = {
    "secrets": Kind("secret", "CreateSecret", "ListSecrets", "RemoveSecret"),
    "configs": Kind("config", "CreateConfig", "ListConfigs", "RemoveConfig"),
}


def read_objects(objects: Mapping[str, StackObject]) -> dict[str, bytes]:
    """The data of every object the stack makes (from a file, read before the first
    request; from a variable or inline content, as loaded)."""
    found: dict[str, bytes] = {}
    for obj in objects.values():
        if obj.data is not None:
            if not obj.data or len(obj.data) > MAX_OBJECT_BYTES:
                raise CliError(f"{obj.key}: its data must hold 1 byte to 500 KiB")
            found[obj.name] = obj.data
            continue
        if obj.file is None:
            continue
        try:
            with Path(obj.file).open("rb") as source:
                data = source.read(MAX_OBJECT_BYTES + 1)
        except OSError as exc:
            raise CliError(f"{obj.key}: cannot read {obj.file}: {exc.strerror}") from None
        if not data or len(data) > MAX_OBJECT_BYTES:
            raise CliError(f"{obj.key}: {obj.file} must hold 1 byte to 500 KiB")
        found[obj.name] = data
    return found


def _records(target: Target, kind: Kind) -> list[Any]:
    _, list_request, _, _ = kind.messages()
    return list(getattr(call(target, control_stub, kind.listing, list_request()), f"{kind.name}s"))


def create_objects(target: Target, stack: str, kind_key: str, data: Mapping[str, bytes]) -> None:
    """Create the stack's objects of one kind that do not exist yet."""
    if not data:
        return
    kind = KINDS[kind_key]
    create_request, _, _, spec_type = kind.messages()
    existing = {r.spec.name for r in _records(target, kind)}
    for name, payload in data.items():
        if name in existing:
            continue
        click.echo(f"Creating {kind.name} {name}", err=True)
        spec = spec_type(name=name, labels={STACK_LABEL: stack}, data=payload)
        call(target, control_stub, kind.create, create_request(spec=spec))


def remove_objects(
    target: Target, stack: str, kind_key: str, wait_seconds: float = REMOVE_WAIT
) -> None:
    """Remove the stack's objects of one kind, once its services are gone. The tasks of
    a removed service keep an object in use until they have stopped: wait for them (at
    most `wait_seconds`, then the controller's refusal is the error)."""
    kind = KINDS[kind_key]
    _, _, remove_request, _ = kind.messages()
    for record in sorted(_records(target, kind), key=lambda r: r.spec.name):
        if record.spec.labels.get(STACK_LABEL) != stack:
            continue
        click.echo(f"Removing {kind.name} {record.spec.name}", err=True)
        request = remove_request(**{kind.name: record.id})
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                call(target, control_stub, kind.remove, request)
                break
            except CliError as exc:
                if "in use" not in exc.message or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
