"""Compose files (`docker stack deploy -c`) to service specs.

Each file is interpolated (compose_interpolate.py), checked against the compose
specification's JSON schema (compose_schema.py) and its relative paths resolved
against its own directory (compose_paths.py); then the files are merged
(compose_merge.py). Keys Swarm has no use for are listed as ignored (compose_swarm.py);
the rest becomes one ServiceSpec per service (compose_service.py). `networks:` and
`deploy.endpoint_mode` are carried through untouched in `LoadedService` and
`Stack.networks` for the network code to wire.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.cli.commands.compose_interpolate import Interpolator
from dockyard.cli.commands.compose_merge import merge_documents
from dockyard.cli.commands.compose_paths import resolve_paths
from dockyard.cli.commands.compose_schema import validate_document
from dockyard.cli.commands.compose_service import (
    STACK_LABEL,
    StackObject,
    logging_ignored,
    service_spec,
    top_objects,
)
from dockyard.cli.commands.compose_swarm import ignored_keys
from dockyard.cli.commands.service_parse import SpecError

__all__ = [
    "STACK_LABEL",
    "LoadedService",
    "Stack",
    "StackObject",
    "interpolate",
    "load_stack",
    "stack_from_documents",
]

MAX_FILE_BYTES = 4 << 20


@dataclass
class LoadedService:
    """One service of a stack: its spec and what the network code wires (as written)."""

    name: str
    spec: Any
    networks: Any = None  # the service's `networks:` (a list or a mapping), untouched
    endpoint_mode: str = ""  # `deploy.endpoint_mode`: vip, dnsrr or ""
    ports: list[Any] = field(default_factory=list)  # `ports:` as written (long form: `mode`)
    document: Mapping[str, Any] = field(default_factory=dict)  # the merged service


@dataclass
class Stack:
    """A loaded stack: its services by short name, what it creates, what was ignored."""

    services: dict[str, LoadedService] = field(default_factory=dict)
    networks: Mapping[str, Any] = field(default_factory=dict)  # top-level `networks:`
    secrets: dict[str, StackObject] = field(default_factory=dict)  # by compose name
    configs: dict[str, StackObject] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def specs(self) -> dict[str, Any]:
        return {name: loaded.spec for name, loaded in self.services.items()}


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """Every string of a document interpolated from `environ` (see compose_interpolate)."""
    return Interpolator(environ).document(value)


def _base_dir(source: str) -> Path:
    return Path.cwd() if source == "-" else Path(source).absolute().parent


def stack_from_documents(
    stack: str, documents: list[tuple[str, Any]], environ: Mapping[str, str] | None = None
) -> Stack:
    """The stack the files describe, merged in order; SpecError names the file and key."""
    env = os.environ if environ is None else environ
    result = Stack()
    interpolator = Interpolator(env)
    prepared = []
    for source, raw in documents:
        if not isinstance(raw, Mapping):
            raise SpecError(f"{source}: a compose file is a mapping with a `services:` key")
        try:
            document = interpolator.document(raw)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc.message}") from None
        validate_document(source, document)
        try:
            prepared.append(resolve_paths(document, _base_dir(source), env))
        except SpecError as exc:
            raise SpecError(f"{source}: {exc.message}") from None
    result.warnings = [
        f'The "{name}" variable is not set. Defaulting to a blank string.'
        for name in interpolator.unset
    ]
    merged = merge_documents(prepared)
    if not isinstance(merged.get("services"), Mapping) or not merged["services"]:
        raise SpecError("the compose files define no `services:`")
    result.ignored = ignored_keys(merged)
    result.networks = dict(merged.get("networks") or {})
    result.secrets = top_objects(stack, "secrets", merged.get("secrets"), env)
    result.configs = top_objects(stack, "configs", merged.get("configs"), env)
    for name, raw_service in merged["services"].items():
        service = dict(raw_service or {})
        spec = service_spec(stack, str(name), service, result.secrets, result.configs)
        result.ignored += logging_ignored(f"services.{name}", service)
        result.services[str(name)] = LoadedService(
            name=str(name),
            spec=spec,
            networks=service.get("networks"),
            endpoint_mode=str((service.get("deploy") or {}).get("endpoint_mode") or ""),
            ports=list(service.get("ports") or []),
            document=service,
        )
    return result


def load_stack(stack: str, paths: list[str], environ: Mapping[str, str] | None = None) -> Stack:
    """Read compose files (`-` is stdin); SpecError names the file and the key."""
    import sys

    import yaml

    documents = []
    for path in paths:
        try:
            if path == "-":
                text = sys.stdin.read(MAX_FILE_BYTES + 1)
            else:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise SpecError(f"cannot read {path}: {exc.strerror}") from None
        if len(text) > MAX_FILE_BYTES:
            raise SpecError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        try:
            documents.append((path, yaml.safe_load(text)))
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return stack_from_documents(stack, documents, environ)
