"""Swarm's rules on a valid compose file: which keys `docker stack deploy` honours.

A file that follows the compose specification may hold keys a Swarm service has no use
for (`build`, `depends_on`, `container_name`, `restart`, ...): they are listed as
ignored, one key path each, as `docker stack deploy` lists them, and the deployment goes
on. `x-` extension keys are accepted and ignored silently at every level.

`HONOURED` is a tree: `True` honours a key with everything under it, a mapping names the
keys honoured under it, and `ITEMS` holds the tree for each mapping of a list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HONOURED", "TOP_HONOURED", "ignored_keys"]

ITEMS = "[]"
_UPDATE = {
    k: True
    for k in ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
}
_FILE_REF = {ITEMS: {k: True for k in ("source", "target", "uid", "gid", "mode")}}

HONOURED: dict[str, Any] = {
    **{
        key: True
        for key in (
            "image",
            "command",
            "entrypoint",
            "environment",
            "env_file",
            "working_dir",
            "user",
            "hostname",
            "labels",
            "read_only",
            "cap_add",
            "cap_drop",
            "privileged",
            "stop_grace_period",
            "network_mode",
            "networks",  # wired by the overlay network code
            "tmpfs",
            "extra_hosts",
            "dns",
            "dns_search",
            "init",
            "tty",
            "stop_signal",
            "ulimits",
            "sysctls",
        )
    },
    "healthcheck": {
        k: True for k in ("test", "interval", "timeout", "retries", "start_period", "disable")
    },
    "logging": {"driver": True, "options": {"max-size": True, "max-file": True}},
    "ports": {ITEMS: {k: True for k in ("target", "published", "protocol", "mode")}},
    "volumes": {
        ITEMS: {
            "type": True,
            "source": True,
            "target": True,
            "read_only": True,
            "tmpfs": {"size": True},
        }
    },
    "secrets": _FILE_REF,
    "configs": _FILE_REF,
    "deploy": {
        "mode": True,
        "replicas": True,
        "labels": True,
        "endpoint_mode": True,  # wired by the overlay network code
        "resources": {
            "limits": {"cpus": True, "memory": True, "pids": True},
            "reservations": {"cpus": True, "memory": True},
        },
        "restart_policy": {k: True for k in ("condition", "delay", "max_attempts", "window")},
        "update_config": _UPDATE,
        "rollback_config": _UPDATE,
        "placement": {"constraints": True, "preferences": True, "max_replicas_per_node": True},
    },
}
_EXTERNAL_OR_FILE = {
    "file": True,
    "environment": True,
    "content": True,
    "external": True,
    "name": True,
}
TOP_HONOURED: dict[str, Any] = {
    "version": True,  # obsolete, and nothing to do
    "name": True,  # the stack's name comes from the command line, as with docker
    "networks": True,  # created and wired by the overlay network code
    "volumes": {},  # a named volume is the node's volume: driver options do not apply
    "secrets": _EXTERNAL_OR_FILE,
    "configs": _EXTERNAL_OR_FILE,
}


def _walk(value: Any, tree: Any, where: str, found: list[str]) -> None:
    if tree is True or value is None:
        return
    if isinstance(value, list):
        items = tree.get(ITEMS) if isinstance(tree, Mapping) else None
        for index, item in enumerate(value):
            if isinstance(item, Mapping) and items is not None:
                _walk(item, items, f"{where}[{index}]", found)
        return
    if not isinstance(value, Mapping):
        return
    for key, child in value.items():
        if str(key).startswith("x-"):
            continue
        path = f"{where}.{key}" if where else str(key)
        if key not in tree:
            found.append(path)
        else:
            _walk(child, tree[key], path, found)


def ignored_keys(document: Mapping[str, Any]) -> list[str]:
    """The key paths of a (valid, merged) compose document that Swarm ignores."""
    found: list[str] = []
    for key, value in document.items():
        if str(key).startswith("x-") or key == "services":
            continue
        if key not in TOP_HONOURED:
            found.append(str(key))
        elif isinstance(value, Mapping) and TOP_HONOURED[key] is not True:
            for name, entry in value.items():
                _walk(entry, TOP_HONOURED[key], f"{key}.{name}", found)
    for name, service in (document.get("services") or {}).items():
        _walk(service, HONOURED, f"services.{name}", found)
    return found
