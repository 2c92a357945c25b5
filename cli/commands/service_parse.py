"""Parsers of single flag values: each names its flag in a one-line error (exit 1)."""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from dockyard.cli.client import CliError
from dockyard.common.validation import VOLUME_NAME_PATTERN

__all__ = [
    "SpecError",
    "invalid",
    "parse_bytes",
    "parse_choice",
    "parse_command",
    "parse_constraint",
    "parse_count",
    "parse_env",
    "parse_label",
    "parse_nano_cpus",
    "parse_port",
    "parse_ratio",
    "parse_seconds",
    "parse_spread",
]

_ENV_KEY = re.compile(r"^[^=\s]+$")
_NODE_KEYS = frozenset(
    {"node.id", "node.hostname", "node.name", "node.role", "node.platform.os", "node.platform.arch"}
)
_LABEL_PREFIX = "node.labels."
_LABEL_KEY = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_./-]*[a-zA-Z0-9])?$")
_CONSTRAINT_VALUE = re.compile(r"^[a-zA-Z0-9:\-_\s.*()?+\[\]\\^$|/@]+$")
_PORT = re.compile(r"^(?:(\d+):)?(\d+)(?:/([a-z]+))?$")


class SpecError(CliError):
    """A bad flag or spec-file value: one line naming it, exit 1, nothing sent."""


def invalid(label: str, value: object, why: str) -> SpecError:
    return SpecError(f"invalid {label} {value!r}: {why}")


def parse_count(label: str, text: str, minimum: int = 0) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        raise invalid(label, text, "not a whole number") from None
    if number < minimum:
        raise invalid(label, text, f"must be a whole number >= {minimum}")
    return number


def parse_seconds(label: str, text: str) -> float:
    from dockyard.common.sizes import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise invalid(label, text, "use a duration such as 500ms, 10s or 1m30s") from None


def parse_bytes(label: str, text: str) -> int:
    from dockyard.common.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise invalid(label, text, "use a size such as 64M or 1.5G") from None


def parse_nano_cpus(label: str, text: str) -> int:
    try:
        cpus = float(text)
    except ValueError:
        raise invalid(label, text, "not a number") from None
    if not (math.isfinite(cpus) and cpus >= 0):
        raise invalid(label, text, "must be a number of CPUs >= 0, such as 0.5")
    return round(cpus * 1e9)


def parse_ratio(label: str, text: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        raise invalid(label, text, "not a number") from None
    if not 0 <= ratio <= 1:
        raise invalid(label, text, "must be between 0 and 1")
    return ratio


def parse_choice(label: str, text: str, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if text not in options:
        raise invalid(label, text, f"use one of {', '.join(options)}")
    return text


def parse_env(label: str, text: str, environ: Mapping[str, str] | None = None) -> str | None:
    """`K=V`; a bare `K` takes K from this shell's environment (None: unset there)."""
    key, eq, _ = text.partition("=")
    if not key:
        raise invalid(label, text, "the variable name is empty (use KEY=VALUE)")
    if not _ENV_KEY.match(key):
        raise invalid(label, text, "the variable name must not contain whitespace")
    if eq:
        return text
    environ = os.environ if environ is None else environ
    return f"{key}={environ[key]}" if key in environ else None


def parse_label(label: str, text: str) -> tuple[str, str]:
    from dockyard.common.validation import ValidationError
    from dockyard.common.validation import parse_label as check

    try:
        return check(label, text)
    except ValidationError as exc:
        raise SpecError(str(exc)) from None


def parse_constraint(label: str, text: str) -> str:
    """`KEY==VALUE` or `KEY!=VALUE` with the keys the scheduler knows (swarmkit's syntax)."""
    for operator in ("==", "!="):
        key, found, value = text.partition(operator)
        if found:
            break
    else:
        raise invalid(label, text, "use KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a")
    key, value = key.strip(), value.strip()
    if key.lower().startswith(_LABEL_PREFIX):
        if not _LABEL_KEY.match(key[len(_LABEL_PREFIX) :]):
            raise invalid(label, text, "needs a valid label key after node.labels.")
    elif key.lower() not in _NODE_KEYS:
        known = ", ".join(sorted(_NODE_KEYS))
        raise invalid(label, text, f"unknown key {key!r} (use node.labels.<key>, {known})")
    if not value or not _CONSTRAINT_VALUE.match(value):
        raise invalid(label, text, f"needs a value after {operator} (without '=' or '!')")
    return f"{key}{operator}{value}"


def parse_spread(label: str, text: str) -> str:
    """`spread=node.labels.zone` -> `node.labels.zone`."""
    kind, eq, descriptor = text.partition("=")
    if kind != "spread" or not eq:
        raise invalid(label, text, "use spread=node.labels.<key>")
    if not (
        descriptor.startswith(_LABEL_PREFIX) and _LABEL_KEY.match(descriptor[len(_LABEL_PREFIX) :])
    ):
        raise invalid(label, text, "spread over a node label: spread=node.labels.<key>")
    return descriptor


def parse_port(label: str, text: str) -> tuple[int, int, str]:
    """`[PUBLISHED:]TARGET[/tcp|udp]` -> (published, target, protocol)."""
    match = _PORT.match(text.strip())
    if not match:
        raise invalid(label, text, "use PUBLISHED:TARGET[/tcp|udp]")
    published, target = int(match.group(1) or 0), int(match.group(2))
    protocol = match.group(3) or "tcp"
    if protocol not in ("tcp", "udp"):
        raise invalid(label, text, "the protocol must be tcp or udp")
    if not 0 < target < 65536 or not 0 <= published < 65536:
        raise invalid(label, text, "ports must be between 1 and 65535")
    return published, target, protocol


_MOUNT_KEYS = {
    "type": "type",
    "source": "source",
    "src": "source",
    "target": "target",
    "destination": "target",
    "dst": "target",
    "readonly": "readonly",
    "ro": "readonly",
    "tmpfs-size": "tmpfs-size",
}


def _options(
    label: str, text: str, keys: Mapping[str, str], what: str
) -> Iterator[tuple[str, str, bool, str]]:
    """The comma-separated ``key[=value]`` parts of ``text``: (the key's name in ``keys``,
    the key as written, whether it had ``=``, the value). An unknown key is refused,
    listing the known names."""
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        name = keys.get(key)
        if name is None:
            known = ", ".join(dict.fromkeys(keys.values()))
            raise invalid(label, text, f"unknown {what} option {key!r} ({known})")
        yield name, key, bool(eq), value


def parse_mount(label: str, text: str) -> dict[str, str]:
    """Docker's `--mount type=bind,source=/data,target=/data[,readonly]` or
    `type=tmpfs,target=/cache[,tmpfs-size=64m]`, as key -> value (checked)."""
    found: dict[str, str] = {}
    for name, key, eq, value in _options(label, text, _MOUNT_KEYS, "mount"):
        if name == "readonly" and (not eq or value in ("1", "true")):
            found[name] = "true"
        elif name == "readonly" and value in ("0", "false"):
            continue
        elif not eq or not value:
            raise invalid(label, text, f"{key} needs a value")
        else:
            found[name] = value
    kind = found.get("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise invalid(label, text, f"unknown type {kind!r} (bind, volume or tmpfs)")
    if not found.get("target", "").startswith("/"):
        raise invalid(label, text, "target must be an absolute path in the container")
    if kind == "bind" and not found.get("source", "").startswith("/"):
        raise invalid(label, text, "a bind source must be an absolute path on the node")
    if kind == "tmpfs" and "source" in found:
        raise invalid(label, text, "a tmpfs has no source")
    source = re.sub(r"\{\{\s*\.(Service|Task|Node)\.\w+\s*\}\}", "x", found.get("source", ""))
    if kind == "volume" and not VOLUME_NAME_PATTERN.match(source):
        raise invalid(label, text, "a volume's source is its name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    if kind != "tmpfs" and "tmpfs-size" in found:
        raise invalid(label, text, "tmpfs-size is for type=tmpfs")
    found["type"] = kind
    return found


_SECRET_KEYS = {
    "source": "source",
    "src": "source",
    "target": "target",
    "uid": "uid",
    "gid": "gid",
    "mode": "mode",
}
_SECRET_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
_SECRET_TARGET = re.compile(r"[a-zA-Z0-9_.-]{1,255}")


def parse_secret(label: str, text: str) -> dict[str, Any]:
    """Docker's `--secret NAME` or `--secret source=NAME,target=FILE,uid=0,gid=0,mode=0444`:
    source, target (a file name in /run/secrets), uid, gid, mode (octal)."""
    if "=" not in text:
        found: dict[str, Any] = {"source": text.strip()}
    else:
        found = {}
        for name, key, eq, value in _options(label, text, _SECRET_KEYS, "secret"):
            if not eq or not value:
                raise invalid(label, text, f"{key} needs a value")
            found[name] = value
    if not _SECRET_NAME.fullmatch(found.get("source", "")):
        raise invalid(label, text, "source must be a secret's name")
    target = found.get("target", found["source"])
    if target.startswith("/run/secrets/"):
        target = target[len("/run/secrets/") :]
    if not _SECRET_TARGET.fullmatch(target) or target in (".", ".."):
        raise invalid(label, text, "target is a file name in /run/secrets")
    found["target"] = target
    for key in ("uid", "gid"):
        if not str(found.get(key, "0")).isdigit() or int(found.get(key, 0)) >= 2**32:
            raise invalid(label, text, f"{key} must be a number")
        found[key] = int(found.get(key, 0))
    try:
        mode = int(str(found.get("mode", "0444")), 8)
    except ValueError:
        raise invalid(label, text, "mode is octal, e.g. 0440") from None
    if not 0 < mode <= 0o777:
        raise invalid(label, text, "mode is octal, from 01 to 0777")
    found["mode"] = mode
    return found


_NETWORK_KEYS = {"name": "name", "target": "name", "alias": "alias"}
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NETWORK_MODES = ("none", "host", "bridge")


def parse_network(label: str, text: str) -> tuple[str, list[str]]:
    """Docker's `--network NAME` or `--network name=NAME,alias=A[,alias=B]`: the network
    (a cluster network's name or ID, or a node-local mode: none, host, bridge) and the
    aliases its tasks answer to there."""
    aliases: list[str] = []
    if "=" not in text:
        name = text.strip()
    else:
        name = ""
        for key, written, eq, value in _options(label, text, _NETWORK_KEYS, "network"):
            if not eq or not value:
                raise invalid(label, text, f"{written} needs a value")
            if key == "alias":
                aliases.append(value)
            else:
                name = value
    if not _NETWORK_NAME.fullmatch(name):
        raise invalid(label, text, "name must be a network's name or ID")
    for alias in aliases:
        if not _NETWORK_NAME.fullmatch(alias):
            raise invalid(label, text, f"alias {alias!r} is not a DNS name")
    if name in NETWORK_MODES and aliases:
        raise invalid(label, text, f"--network {name} is a node-local mode: it takes no alias")
    return name, aliases


def parse_command(label: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise invalid(label, text, str(exc)) from None
