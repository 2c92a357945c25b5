"""Compose files (`docker stack deploy -c`) to service specs.

The subset Swarm honours: image, command, entrypoint, environment, working_dir,
user, hostname, labels, read_only, cap_add/cap_drop, privileged, healthcheck,
stop_grace_period, ports, network_mode, volumes (absolute paths are bind mounts,
names are the node's named volumes), tmpfs and `deploy:` (mode, replicas, labels,
resources, restart_policy, update_config, rollback_config, placement). Compose keys
Swarm ignores (build, depends_on, container_name, volumes, ...) are reported as
ignored, as `docker stack deploy` does; anything else is an error naming the key.
`${VAR}`, `${VAR:-default}` and `$$` are interpolated from the environment.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.service_spec import apply_settings, finish_spec, new_spec

__all__ = ["STACK_LABEL", "Stack", "load_stack", "stack_from_documents"]

STACK_LABEL = "com.docker.stack.namespace"  # the label docker puts on a stack's services
SERVICE_KEYS = {
    "image",
    "command",
    "entrypoint",
    "environment",
    "working_dir",
    "user",
    "hostname",
    "labels",
    "read_only",
    "cap_add",
    "cap_drop",
    "privileged",
    "healthcheck",
    "stop_grace_period",
    "ports",
    "network_mode",
    "deploy",
    "volumes",
    "tmpfs",
    "secrets",
}
IGNORED_KEYS = {
    "build",
    "depends_on",
    "container_name",
    "restart",
    "networks",
    "configs",
    "logging",
    "links",
    "external_links",
    "expose",
    "extra_hosts",
    "dns",
    "dns_search",
    "ulimits",
    "sysctls",
    "init",
    "tty",
    "stdin_open",
    "devices",
    "env_file",
    "profiles",
    "pull_policy",
    "platform",
    "shm_size",
    "stop_signal",
    "isolation",
    "security_opt",
    "userns_mode",
    "pid",
    "ipc",
    "cgroup_parent",
    "domainname",
    "mac_address",
}
TOP_KEYS = {"version", "name", "services", "networks", "volumes", "secrets", "configs"}
_VARIABLE = re.compile(  # $$ | ${NAME} | ${NAME:-default} | $NAME
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass
class Stack:
    """The services of a stack, by their short name, and what was ignored."""

    specs: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    documents: list[tuple[str, Any]] = field(default_factory=list)  # (source, interpolated)


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """`${VAR}`, `${VAR:-default}`, `$VAR` and `$$` in every string of a document."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            name = match.group(2) or match.group(4)
            default = match.group(3)
            found = environ.get(name)
            return found if found else (default if default is not None else "")

        return _VARIABLE.sub(one, value)
    if isinstance(value, Mapping):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    return value


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: expected a mapping")
    return value


def _pairs(where: str, value: Any) -> list[str]:
    """`KEY=VALUE` texts from a list or a mapping (a None value is empty)."""
    if isinstance(value, Mapping):
        return [f"{k}={'' if v is None else v}" for k, v in value.items()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise SpecError(f"{where}: expected a list or a mapping")


def _command(where: str, value: Any) -> str:
    if isinstance(value, list):
        return shlex.join(str(v) for v in value)
    if isinstance(value, str):
        return value
    raise SpecError(f"{where}: expected a string or a list")


def _port(where: str, value: Any) -> str:
    if isinstance(value, Mapping):
        target = value.get("target")
        if target is None:
            raise SpecError(f"{where}: a long-syntax port needs `target`")
        published = value.get("published")
        protocol = value.get("protocol", "tcp")
        text = f"{published}:{target}" if published else str(target)
        return text if protocol == "tcp" else f"{text}/{protocol}"
    text = str(value)
    if text.count(":") > 1:
        raise SpecError(f"{where}: {text!r}: a host IP cannot be given for a service's port")
    return text


def _volume(where: str, value: Any) -> str:
    """A compose volume as a --mount text: bind mounts of absolute paths only."""
    if isinstance(value, Mapping):
        kind = value.get("type", "volume")
        source, target = value.get("source", ""), value.get("target", "")
        read_only = bool(value.get("read_only"))
        if kind == "tmpfs":
            size = (value.get("tmpfs") or {}).get("size")
            return f"type=tmpfs,target={target}" + (f",tmpfs-size={size}" if size else "")
    else:
        parts = str(value).split(":")
        kind = "volume"
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
    if str(source).startswith("/") and kind in ("bind", "volume"):
        kind = "bind"
    elif kind not in ("bind", "volume") or str(source).startswith("."):
        raise SpecError(
            f"{where}: {value!r}: use an absolute path on the node, a volume "
            "name or a tmpfs (relative paths mean nothing on a node)"
        )
    else:
        kind = "volume"
    return f"type={kind},source={source},target={target}" + (",readonly" if read_only else "")


def _duration(value: Any) -> str:
    return str(value)


def _healthcheck(where: str, value: Any, values: dict[str, Any]) -> list[str] | None:
    """Sets the health flags; returns an exec-form test (["CMD", ...]) to set after."""
    check = _mapping(where, value)
    if check.get("disable"):
        values["no-healthcheck"] = True
        return None
    for key, flag in (
        ("interval", "health-interval"),
        ("timeout", "health-timeout"),
        ("start_period", "health-start-period"),
    ):
        if key in check:
            values[flag] = _duration(check[key])
    if "retries" in check:
        values["health-retries"] = str(check["retries"])
    test = check.get("test")
    if test is None:
        return None
    if isinstance(test, str):
        values["health-cmd"] = test
        return None
    if not isinstance(test, list) or not test:
        raise SpecError(f"{where}.test: expected a string or a list")
    kind, *rest = (str(t) for t in test)
    if kind == "NONE":
        values["no-healthcheck"] = True
        return None
    if kind == "CMD-SHELL" and len(rest) == 1:
        values["health-cmd"] = rest[0]
        return None
    if kind == "CMD" and rest:
        return ["CMD", *rest]
    raise SpecError(f'{where}.test: use ["CMD", ...], ["CMD-SHELL", "..."] or a string')


def _deploy(where: str, value: Any, values: dict[str, Any]) -> None:
    deploy = _mapping(where, value)
    unknown = set(deploy) - {
        "mode",
        "replicas",
        "labels",
        "resources",
        "restart_policy",
        "update_config",
        "rollback_config",
        "placement",
        "endpoint_mode",
    }
    if unknown:
        raise SpecError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "mode" in deploy:
        values["mode"] = str(deploy["mode"])
    if "replicas" in deploy:
        values["replicas"] = str(deploy["replicas"])
    if "labels" in deploy:
        values["label"] = _pairs(f"{where}.labels", deploy["labels"])
    resources = _mapping(f"{where}.resources", deploy.get("resources"))
    for kind, prefix in (("limits", "limit"), ("reservations", "reserve")):
        section = _mapping(f"{where}.resources.{kind}", resources.get(kind))
        for key, flag in (("cpus", "cpu"), ("memory", "memory"), ("pids", "pids")):
            if key in section and not (prefix == "reserve" and key == "pids"):
                values[f"{prefix}-{flag}"] = str(section[key])
    policy = _mapping(f"{where}.restart_policy", deploy.get("restart_policy"))
    for key in ("condition", "delay", "max_attempts", "window"):
        if key in policy:
            values[f"restart-{key.replace('_', '-')}"] = str(policy[key])
    for section_key, prefix in (("update_config", "update"), ("rollback_config", "rollback")):
        section = _mapping(f"{where}.{section_key}", deploy.get(section_key))
        for key in (
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ):
            if key in section:
                values[f"{prefix}-{key.replace('_', '-')}"] = str(section[key])
    placement = _mapping(f"{where}.placement", deploy.get("placement"))
    if "constraints" in placement:
        values["constraint"] = [str(c) for c in placement["constraints"]]
    if "preferences" in placement:
        values["placement-pref"] = [
            f"spread={_mapping(f'{where}.placement.preferences', p).get('spread', '')}"
            for p in placement["preferences"]
        ]
    if "max_replicas_per_node" in placement:
        values["max-replicas-per-node"] = str(placement["max_replicas_per_node"])


def top_secrets(where: str, value: Any) -> dict[str, str]:
    """Top-level `secrets:`: each compose name -> the cluster secret it is (external ones
    only: `stack deploy` does not create secrets from files)."""
    found: dict[str, str] = {}
    for key, raw in _mapping(where, value or {}).items():
        entry = _mapping(f"{where}.{key}", raw or {})
        if "file" in entry or "environment" in entry:
            raise SpecError(
                f"{where}.{key}: stack deploy does not create secrets: run "
                f"`dockyard secret create {key} FILE` and declare it "
                "`external: true`"
            )
        if not entry.get("external"):
            raise SpecError(f"{where}.{key}: declare an existing secret with `external: true`")
        found[str(key)] = str(entry.get("name") or key)
    return found


def _secret(where: str, value: Any, declared: Mapping[str, str]) -> str:
    """A service's secret (short or long form) as the text of `--secret`."""
    entry = {"source": value} if isinstance(value, str) else dict(_mapping(where, value))
    source = str(entry.pop("source", ""))
    if source not in declared:
        raise SpecError(f"{where}: secret {source!r} is not declared in the top-level secrets")
    parts = [f"source={declared[source]}", f"target={entry.pop('target', source)}"]
    for key in ("uid", "gid"):
        if key in entry:
            parts.append(f"{key}={entry.pop(key)}")
    if "mode" in entry:  # YAML reads 0440 as an octal number
        mode = entry.pop("mode")
        parts.append(f"mode={format(mode, 'o') if isinstance(mode, int) else mode}")
    if entry:
        raise SpecError(
            f"{where}: unknown key {next(iter(entry))!r} (source, target, uid, gid, mode)"
        )
    return ",".join(parts)


def service_spec(
    stack: str, name: str, doc: Any, ignored: list[str], secrets: Mapping[str, str] | None = None
) -> Any:
    """One compose service as a ServiceSpec named `<stack>_<name>`."""
    where = f"services.{name}"
    service = _mapping(where, doc)
    for key in service:
        if key in IGNORED_KEYS:
            ignored.append(f"{where}.{key}")
        elif key not in SERVICE_KEYS:
            raise SpecError(f"{where}: unknown key {key!r}")
    if not service.get("image"):
        raise SpecError(f"{where}: an image is required (build is not supported)")
    values: dict[str, Any] = {}
    command = service.get("command")
    spec = new_spec(str(service["image"]))
    if command is not None:
        values["args"] = _command(f"{where}.command", command)
    if "entrypoint" in service:
        values["entrypoint"] = _command(f"{where}.entrypoint", service["entrypoint"])
    for key, flag in (
        ("working_dir", "workdir"),
        ("user", "user"),
        ("hostname", "hostname"),
        ("stop_grace_period", "stop-grace-period"),
    ):
        if key in service:
            values[flag] = str(service[key])
    if "network_mode" in service:  # `--network` is a list (cluster networks, or one mode)
        values["network"] = [str(service["network_mode"])]
    for key, flag in (("environment", "env"), ("labels", "container-label")):
        if key in service:
            values[flag] = _pairs(f"{where}.{key}", service[key])
    for key, flag in (("cap_add", "cap-add"), ("cap_drop", "cap-drop")):
        if key in service:
            values[flag] = [str(c) for c in service[key]]
    for key, flag in (("read_only", "read-only"), ("privileged", "privileged")):
        if key in service:
            values[flag] = bool(service[key])
    if "ports" in service:
        values["publish"] = [_port(f"{where}.ports", p) for p in service["ports"]]
    mounts = [_volume(f"{where}.volumes", v) for v in service.get("volumes") or []]
    tmpfs = service.get("tmpfs") or []
    mounts += [f"type=tmpfs,target={t}" for t in ([tmpfs] if isinstance(tmpfs, str) else tmpfs)]
    if mounts:
        values["mount"] = mounts
    if service.get("secrets"):
        values["secret"] = [
            _secret(f"{where}.secrets", s, secrets or {}) for s in service["secrets"]
        ]
    exec_test = _healthcheck(f"{where}.healthcheck", service.get("healthcheck"), values)
    _deploy(f"{where}.deploy", service.get("deploy"), values)
    try:
        apply_settings(spec, values)
        if exec_test:
            spec.task.container.healthcheck.test[:] = exec_test
        spec.name = f"{stack}_{name}"
        spec.labels[STACK_LABEL] = stack
        spec.task.container.labels[STACK_LABEL] = stack
        finish_spec(spec)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc.message}") from None
    return spec


def stack_from_documents(
    stack: str, documents: list[tuple[str, Any]], environ: Mapping[str, str] | None = None
) -> Stack:
    """Every service of the files (a later file's service replaces an earlier one's)."""
    result = Stack()
    services: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for source, raw in documents:
        doc = interpolate(raw, os.environ if environ is None else environ)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("services"), Mapping):
            raise SpecError(f"{source}: a compose file needs a `services:` mapping")
        result.documents.append((source, doc))
        for key in doc:
            if key not in TOP_KEYS and not str(key).startswith("x-"):
                raise SpecError(f"{source}: unknown top-level key {key!r}")
            if key == "secrets":
                try:
                    secrets.update(top_secrets("secrets", doc[key]))
                except SpecError as exc:
                    raise SpecError(f"{source}: {exc.message}") from None
            elif key in ("networks", "configs") and doc[key]:
                result.ignored.append(str(key))
            elif key == "volumes" and isinstance(doc[key], Mapping) and any(doc[key].values()):
                result.ignored.append("volumes (driver options)")
        services.update(doc["services"])
    for name, service in services.items():
        result.specs[str(name)] = service_spec(stack, str(name), service, result.ignored, secrets)
    return result


def load_stack(stack: str, paths: list[str]) -> Stack:
    """Read compose files (`-` is stdin); SpecError names the file and the key."""
    import sys

    import yaml

    documents = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
            documents.append((path, yaml.safe_load(text)))
        except OSError as exc:
            raise SpecError(f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return stack_from_documents(stack, documents)
