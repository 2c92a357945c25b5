"""A stack's networks, as `docker stack deploy` makes them.

Every stack has `STACK_default` (overlay); a service joins it unless it names networks.
Networks the files declare are created as `STACK_NAME` (with their `driver_opts`-free
options: `internal`, `attachable`, `labels`, `ipam.config[].subnet`), unless `external:
true` (then `name:` or the key names an existing network). Each service is also known
by its short name (`redis` for `STACK_redis`) and its `aliases:` on each of its networks.
Networks made for a stack carry the stack's label and go with `stack rm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.cli.commands.compose import Stack
from dockyard.cli.commands.service_parse import SpecError

__all__ = ["StackNetworks", "plan_networks"]

DEFAULT = "default"


@dataclass
class StackNetworks:
    """What a deploy needs: networks to make (name -> spec fields) and external ones."""

    create: dict[str, dict[str, Any]] = field(default_factory=dict)
    external: set[str] = field(default_factory=set)


def _service_networks(where: str, service: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """A service's `networks:` as key -> aliases (None when it names none)."""
    if "networks" not in service:
        return None
    given = service["networks"]
    if isinstance(given, list):
        return {str(n): [] for n in given}
    if isinstance(given, Mapping):
        found: dict[str, list[str]] = {}
        for key, value in given.items():
            aliases = (value or {}).get("aliases", []) if isinstance(value, Mapping) else []
            if not isinstance(aliases, list):
                raise SpecError(f"{where}.networks.{key}.aliases must be a list")
            found[str(key)] = [str(a) for a in aliases]
        return found
    raise SpecError(f"{where}.networks must be a list or a mapping")


def plan_networks(stack: str, loaded: Stack) -> StackNetworks:
    """Fill each service spec's `task.networks` (and endpoint mode) and say which
    networks the deploy needs.

    Raises:
        SpecError: a service names a network the files do not declare (naming both).
    """
    from dockyard.v1.networks_pb2 import NetworkAttachmentConfig

    declared: dict[str, Mapping[str, Any]] = {}
    for key, value in loaded.networks.items():
        if value is not None and not isinstance(value, Mapping):
            raise SpecError(f"networks.{key} must be a mapping")
        declared[str(key)] = value or {}
    plan = StackNetworks()

    def real_name(key: str) -> str:
        options = declared.get(key, {})
        if options.get("external"):
            name = str(options.get("name") or key)
            plan.external.add(name)
            return name
        name = str(options.get("name") or f"{stack}_{key}")
        plan.create[name] = _spec_fields(options)
        return name

    for short, service in loaded.services.items():
        spec = service.spec
        if service.endpoint_mode:
            spec.task.endpoint_mode = service.endpoint_mode
        if service.document.get("network_mode"):
            continue  # host / none / bridge: node-local, no cluster network
        where = f"services.{short}"
        named = _service_networks(where, service.document)
        if named is None:
            named = {DEFAULT: []}
        for key in named:
            if key != DEFAULT and key not in declared:
                raise SpecError(f"{where}.networks: network {key!r} is not declared in networks:")
        del spec.task.networks[:]
        for key, aliases in named.items():
            spec.task.networks.append(
                NetworkAttachmentConfig(target=real_name(key), aliases=[short, *aliases])
            )
    return plan


def _spec_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "internal": bool(options.get("internal", False)),
        "attachable": bool(options.get("attachable", False)),
        "labels": {str(k): str(v) for k, v in _labels(options.get("labels")).items()},
    }
    ipam = options.get("ipam") or {}
    configs = ipam.get("config") if isinstance(ipam, Mapping) else None
    if isinstance(configs, list) and configs and isinstance(configs[0], Mapping):
        fields["subnet"] = str(configs[0].get("subnet", ""))
    return fields


def _labels(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, list):
        return dict(str(item).partition("=")[::2] for item in value)
    return {}
