"""Several compose files into one, by the compose specification's merge rules.

A later file overrides fields, not whole services: mappings merge key by key, scalars
are replaced; `command`, `entrypoint` and `healthcheck.test` are replaced whole;
`environment`, `labels`, `sysctls`, `extra_hosts`, `ulimits` (list or mapping form)
merge by key; `ports`, `volumes`, `secrets`, `configs` and `devices` merge by their
target (a later entry with the same one replaces the earlier); `networks` merge by
name; any other list (`dns`, `cap_add`, `tmpfs`, `env_file`, ...) is the union in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["as_mapping", "hosts_mapping", "merge_documents"]

REPLACED = {"command", "entrypoint", "test"}
BY_KEY = {"environment", "labels", "sysctls", "extra_hosts", "ulimits", "annotations", "args"}
BY_NAME = {"networks"}


def as_mapping(value: Any, separator: str = "=") -> dict[str, Any]:
    """A list of `KEY=VALUE` (or `KEY`: None) as a mapping; a mapping as it is."""
    if isinstance(value, Mapping):
        return dict(value)
    found: dict[str, Any] = {}
    for item in value or []:
        key, sep, rest = str(item).partition(separator)
        found[key] = rest if sep else None
    return found


def hosts_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    found: dict[str, Any] = {}
    for item in value or []:  # `name:ip` or `name=ip`; an IPv6 address holds colons
        text = str(item)
        key, _, rest = text.partition("=") if "=" in text else text.partition(":")
        found[key] = rest
    return found


def _port_key(port: Any) -> str:
    if isinstance(port, Mapping):
        published, protocol = port.get("published", ""), port.get("protocol", "tcp")
        return f"{port.get('host_ip', '')}:{published}:{port.get('target')}/{protocol}"
    text = str(port)
    body, _, protocol = text.partition("/")
    parts = body.split(":")
    target = parts[-1]
    published = parts[-2] if len(parts) > 1 else ""
    host_ip = ":".join(parts[:-2])
    return f"{host_ip}:{published}:{target}/{protocol or 'tcp'}"


def _mount_key(volume: Any) -> str:
    if isinstance(volume, Mapping):
        return str(volume.get("target", ""))
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _file_key(item: Any) -> str:
    if isinstance(item, Mapping):
        return str(item.get("target") or item.get("source", ""))
    return str(item)


BY_TARGET: dict[str, Callable[[Any], str]] = {
    "ports": _port_key,
    "volumes": _mount_key,
    "devices": _mount_key,
    "secrets": _file_key,
    "configs": _file_key,
}


def _merge_list(key: str, old: list[Any], new: list[Any]) -> list[Any]:
    keyed = BY_TARGET.get(key)
    if keyed is not None:
        merged = {keyed(item): item for item in old}
        merged.update({keyed(item): item for item in new})
        return list(merged.values())
    union = list(old)
    union.extend(item for item in new if item not in union)
    return union


def _merge(key: str, old: Any, new: Any) -> Any:
    if key in REPLACED or new is None or old is None:
        return new
    if key in BY_KEY:
        pair = hosts_mapping if key == "extra_hosts" else as_mapping
        return {**pair(old), **pair(new)}
    if key in BY_NAME and (isinstance(old, list) or isinstance(new, list)):
        return merge_mappings(as_mapping(old), as_mapping(new))
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return merge_mappings(old, new)
    if isinstance(old, list) and isinstance(new, list):
        return _merge_list(key, old, new)
    if isinstance(new, list) and isinstance(old, str):  # `dns: 1.1.1.1` then a list
        return _merge_list(key, [old], new)
    return new


def merge_mappings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merge(str(key), merged[key], value) if key in merged else value
    return merged


def merge_documents(documents: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The files merged in order (each already interpolated, validated and resolved)."""
    merged: dict[str, Any] = {}
    for document in documents:
        merged = merge_mappings(merged, document)
    return merged
