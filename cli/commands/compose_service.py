"""One compose service (interpolated, validated, merged) to a ServiceSpec.

The keys Swarm honours (compose_swarm.HONOURED) become the same settings as the
`service create` flags (service_spec.SETTINGS), so a compose file and the flags are
checked by the same code. Top-level `secrets:` and `configs:` are either `external`
(an existing object, by `name:` or its key) or made from a `file:` under the name
`<stack>_<key>` (or `name:`), as `docker stack deploy` does.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dockyard.cli.commands.compose_merge import as_mapping, hosts_mapping
from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.service_spec import BY_FLAG, apply_settings, finish_spec, new_spec

__all__ = ["STACK_LABEL", "StackObject", "service_spec", "top_objects"]

STACK_LABEL = "com.docker.stack.namespace"  # the label docker puts on a stack's services
MAX_PORT_RANGE = 1000


@dataclass(frozen=True)
class StackObject:
    """A top-level secret or config: the cluster object it is, and the file that makes it
    or its data (`environment:`, `content:`); neither for an external one."""

    key: str
    name: str
    file: str | None = None
    data: bytes | None = None


_SOURCES = ("file", "environment", "content")


def _inline(where: str, entry: Mapping[str, Any], environ: Mapping[str, str]) -> bytes:
    """The data of an `environment:` (the deploying shell's variable) or `content:`
    (inline, interpolated as the rest of the file) source."""
    if "content" in entry:
        text = entry["content"]
        if not isinstance(text, str):
            raise SpecError(f"{where}.content: must be a string")
        return text.encode()
    variable = str(entry["environment"])
    if variable not in environ:
        raise SpecError(f"{where}.environment: the variable {variable} is not set")
    return environ[variable].encode()


def top_objects(
    stack: str, kind: str, value: Any, environ: Mapping[str, str] | None = None
) -> dict[str, StackObject]:
    """The top-level `secrets:` or `configs:`: external ones, and the stack's own (made
    as `STACK_KEY` from `file:`, `environment:` or `content:`, as docker does)."""
    found: dict[str, StackObject] = {}
    for key, raw in (value or {}).items():
        entry = raw or {}
        where = f"{kind}.{key}"
        external = entry.get("external")
        sources = [s for s in _SOURCES if s in entry]
        if len(sources) > 1 or (external and sources):
            given = ", ".join(sources + (["external"] if external else []))
            raise SpecError(f"{where}: give one source, not {given}")
        name = str(entry.get("name") or f"{stack}_{key}")
        if external:  # `external: {name: N}` is the older form of `name: N`
            named = external.get("name") if isinstance(external, Mapping) else None
            found[str(key)] = StackObject(str(key), str(entry.get("name") or named or key))
        elif sources == ["file"] and entry["file"]:
            found[str(key)] = StackObject(str(key), name, str(entry["file"]))
        elif sources in (["environment"], ["content"]):
            data = _inline(where, entry, os.environ if environ is None else environ)
            found[str(key)] = StackObject(str(key), name, data=data)
        else:
            raise SpecError(
                f"{where}: give a `file:`, `environment:` or `content:` to create it from, "
                "or `external: true` for an existing one"
            )
    return found


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


def _range(where: str, text: str) -> list[int]:
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise SpecError(f"{where}: {text!r} is not a port or a range of ports") from None
    if last < first or last - first >= MAX_PORT_RANGE:
        raise SpecError(f"{where}: {text!r}: a range goes up, by at most {MAX_PORT_RANGE}")
    return list(range(first, last + 1))


def _ports(where: str, value: Any) -> list[str]:
    """A compose port (short or long form, ranges too) as `--publish` texts, one a port."""
    if isinstance(value, Mapping):
        target, published = str(value.get("target", "")), str(value.get("published") or "")
        protocol = str(value.get("protocol") or "tcp")
    else:
        body, _, protocol = str(value).partition("/")
        protocol = protocol or "tcp"
        parts = body.split(":")
        if len(parts) > 2:
            raise SpecError(f"{where}: {value!r}: a host IP cannot be given for a service's port")
        published, target = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    targets = _range(where, target)
    publisheds = _range(where, published) if published else []
    if publisheds and len(publisheds) != len(targets):
        if len(targets) != 1:
            raise SpecError(f"{where}: {value!r}: the two ranges differ in length")
        targets = targets * len(publisheds)  # docker: 8000-8002:80 publishes three ports
    mode = str(value.get("mode") or "") if isinstance(value, Mapping) else ""
    if mode:  # the long form of --publish carries it, one text a port
        return [
            f"published={p},target={t},protocol={protocol},mode={mode}"
            for p, t in zip(publisheds or [0] * len(targets), targets, strict=True)
        ]
    suffix = "" if protocol == "tcp" else f"/{protocol}"
    if not publisheds:
        return [f"{t}{suffix}" for t in targets]
    return [f"{p}:{t}{suffix}" for p, t in zip(publisheds, targets, strict=True)]


def _volume(where: str, value: Any) -> str:
    """A compose volume (paths already absolute, see compose_paths) as a --mount text."""
    if isinstance(value, Mapping):
        kind = str(value.get("type", "volume"))
        source, target = str(value.get("source") or ""), str(value.get("target", ""))
        read_only = bool(value.get("read_only"))
        if kind == "tmpfs":
            size = (value.get("tmpfs") or {}).get("size")
            return f"type=tmpfs,target={target}" + (f",tmpfs-size={size}" if size else "")
    else:
        parts = str(value).split(":")
        kind = "volume"
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
    if kind not in ("bind", "volume"):
        raise SpecError(f"{where}: {value!r}: type {kind} is not supported (bind, volume, tmpfs)")
    if source.startswith("/"):
        kind = "bind"
    if not source:  # anonymous: the node's volume of this task's slot, made on first use
        digest = hashlib.sha256(target.encode()).hexdigest()[:8]
        source = f"{{{{.Service.Name}}}}-{{{{.Task.Slot}}}}-{digest}"
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


def _file_ref(where: str, kind: str, value: Any, declared: Mapping[str, StackObject]) -> str:
    """A service's secret or config (short or long form) as the text of its flag."""
    entry = {"source": value} if isinstance(value, str) else dict(_mapping(where, value))
    source = str(entry.get("source", ""))
    if source not in declared:
        raise SpecError(f"{where}: {source!r} is not declared in the top-level {kind}")
    default_target = source if kind == "secrets" else f"/{source}"
    parts = [f"source={declared[source].name}", f"target={entry.get('target') or default_target}"]
    for key in ("uid", "gid"):
        if key in entry:
            parts.append(f"{key}={entry[key]}")
    if "mode" in entry:  # YAML reads 0440 as an octal number
        mode = entry["mode"]
        parts.append(f"mode={format(mode, 'o') if isinstance(mode, int) else mode}")
    return ",".join(parts)


def _scalars(service: Mapping[str, Any], values: dict[str, Any]) -> None:
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
    for key, flag in (("read_only", "read-only"), ("privileged", "privileged")):
        if key in service:
            values[flag] = bool(service[key])


def service_values(
    where: str,
    service: Mapping[str, Any],
    secrets: Mapping[str, StackObject],
    configs: Mapping[str, StackObject],
) -> tuple[dict[str, Any], list[str] | None]:
    """The settings (flag name -> value) of one service, and an exec-form health test."""
    values: dict[str, Any] = {}
    if service.get("command") is not None:
        values["args"] = _command(f"{where}.command", service["command"])
    if service.get("entrypoint") is not None:
        values["entrypoint"] = _command(f"{where}.entrypoint", service["entrypoint"])
    _scalars(service, values)
    if "environment" in service:  # a mapping of strings by now (compose_paths)
        values["env"] = [f"{k}={v}" for k, v in service["environment"].items()]
    if "labels" in service:
        values["container-label"] = _pairs(f"{where}.labels", service["labels"])
    for key, flag in (("cap_add", "cap-add"), ("cap_drop", "cap-drop")):
        if key in service:
            values[flag] = [str(c) for c in service[key]]
    if service.get("ports"):
        values["publish"] = [
            text for port in service["ports"] for text in _ports(f"{where}.ports", port)
        ]
    mounts = [_volume(f"{where}.volumes", v) for v in service.get("volumes") or []]
    tmpfs = service.get("tmpfs") or []
    mounts += [f"type=tmpfs,target={t}" for t in ([tmpfs] if isinstance(tmpfs, str) else tmpfs)]
    if mounts:
        values["mount"] = mounts
    if service.get("secrets"):
        values["secret"] = [
            _file_ref(f"{where}.secrets", "secrets", s, secrets) for s in service["secrets"]
        ]
    if service.get("configs"):
        if "config" not in BY_FLAG:
            raise SpecError(f"{where}.configs: configs are not supported yet")
        values["config"] = [
            _file_ref(f"{where}.configs", "configs", c, configs) for c in service["configs"]
        ]
    _extras(where, service, values)
    exec_test = _healthcheck(f"{where}.healthcheck", service.get("healthcheck"), values)
    _deploy(f"{where}.deploy", service.get("deploy"), values)
    return values, exec_test


def _ulimit_texts(where: str, value: Any) -> list[str]:
    texts = []
    for name, limit in _mapping(where, value).items():
        if isinstance(limit, Mapping):
            texts.append(f"{name}={limit.get('soft')}:{limit.get('hard')}")
        else:
            texts.append(f"{name}={limit}")
    return texts


def _extras(where: str, service: Mapping[str, Any], values: dict[str, Any]) -> None:
    """extra_hosts, dns, dns_search, init, tty, ulimits, sysctls, stop_signal, logging."""
    if service.get("extra_hosts"):
        values["host"] = [f"{k}:{v}" for k, v in hosts_mapping(service["extra_hosts"]).items()]
    for key, flag in (("dns", "dns"), ("dns_search", "dns-search")):
        if service.get(key):
            found = service[key]
            values[flag] = [str(v) for v in ([found] if isinstance(found, str) else found)]
    for key in ("init", "tty"):
        if key in service:
            values[key] = bool(service[key])
    if service.get("ulimits"):
        values["ulimit"] = _ulimit_texts(f"{where}.ulimits", service["ulimits"])
    if service.get("sysctls"):
        values["sysctl"] = [f"{k}={v}" for k, v in as_mapping(service["sysctls"]).items()]
    if service.get("stop_signal"):
        values["stop-signal"] = str(service["stop_signal"])
    options = (service.get("logging") or {}).get("options") or {}
    rotation = [f"{k}={options[k]}" for k in ("max-size", "max-file") if k in options]
    if rotation:
        values["log-opt"] = ",".join(rotation)


def logging_ignored(where: str, service: Mapping[str, Any]) -> list[str]:
    """A logging driver other than json-file/local: the agent keeps its own log files."""
    driver = (service.get("logging") or {}).get("driver")
    if driver and driver not in ("json-file", "local"):
        return [f"{where}.logging.driver ({driver}: the agent keeps json-file-like logs)"]
    return []


def service_spec(
    stack: str,
    name: str,
    service: Mapping[str, Any],
    secrets: Mapping[str, StackObject] | None = None,
    configs: Mapping[str, StackObject] | None = None,
) -> Any:
    """One compose service as a ServiceSpec named `<stack>_<name>`."""
    where = f"services.{name}"
    if not service.get("image"):
        raise SpecError(f"{where}: an image is required (build is not supported)")
    values, exec_test = service_values(where, service, secrets or {}, configs or {})
    spec = new_spec(str(service["image"]))
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
