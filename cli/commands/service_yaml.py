"""Spec files (`service create -f web.yaml`) to a ServiceSpec.

Keys are the long flag names (`limit-memory`, `restart-condition`, ...); a mapping
under a group (`update`, `rollback`, `restart`, `health`, `limit`, `reserve`)
stands for its prefixed keys; `_` and `-` are the same, a `-seconds` suffix is
dropped and plural forms (`constraints`, `labels`, `ports`) are accepted, so the
proto field names work too. A document with a `task:` key is read as a
ServiceSpec in the proto's own JSON shape instead. See deploy/examples/web.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dockyard.cli.commands.service_parse import SpecError, parse_command
from dockyard.cli.commands.service_spec import BY_FLAG, apply_settings, new_spec

__all__ = ["load_spec_file", "spec_from_document"]


_GROUPS = {
    "update": "update",
    "rollback": "rollback",
    "restart": "restart",
    "restart-policy": "restart",
    "health": "health",
    "healthcheck": "health",
    "limit": "limit",
    "limits": "limit",
    "reserve": "reserve",
    "reservations": "reserve",
}
_ALIASES = {
    "constraints": "constraint",
    "labels": "label",
    "container-labels": "container-label",
    "ports": "publish",
    "preferences": "placement-pref",
    "placement-prefs": "placement-pref",
    "stop-grace": "stop-grace-period",
    "pids-limit": "limit-pids",
    "limit-pids-limit": "limit-pids",
    "limit-memory-bytes": "limit-memory",
    "reserve-memory-bytes": "reserve-memory",
    "limit-nano-cpus": "limit-cpu",
    "reserve-nano-cpus": "reserve-cpu",
}
_TOP = {"image", "command", "args"}


def _normal(key: object) -> str:
    text = str(key).strip().lower().replace("_", "-")
    text = text.removesuffix("-seconds") if text != "stop-grace-seconds" else "stop-grace-period"
    return _ALIASES.get(text, text)


def _flatten(doc: Mapping[Any, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for raw_key, value in doc.items():
        key = _normal(raw_key)
        group = _GROUPS.get(key)
        if group is not None and isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                sub = str(sub_key).strip().lower().replace("_", "-")
                flat[_normal(f"{group}-{sub}")] = sub_value
        else:
            flat[key] = value
    for key in flat:
        if key not in BY_FLAG and key not in _TOP:
            raise SpecError(f"{source}: unknown key {key!r}")
    return flat


def _texts(source: str, key: str, value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [f"{k}={'' if v is None else v}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def spec_from_document(doc: Any, source: str) -> tuple[Any, dict[str, Any]]:
    """A parsed YAML document -> (spec, the flag-named values it set)."""
    if not isinstance(doc, Mapping):
        raise SpecError(f"{source}: the spec must be a mapping of keys to values")
    if "task" in doc:
        return _proto_document(doc, source), {}
    flat = _flatten(doc, source)
    command = flat.pop("command", flat.pop("args", None))
    image = flat.pop("image", "")
    if isinstance(command, str):
        command = parse_command(f"{source}: command", command)
    spec = new_spec(str(image or ""), [str(c) for c in command or ()])
    values: dict[str, Any] = {}
    for key, value in flat.items():
        setting = BY_FLAG[key]
        if setting.is_list:
            values[key] = _texts(source, key, value)
        elif setting.is_bool:
            if not isinstance(value, bool):
                raise SpecError(f"{source}: invalid {key} {value!r}: use true or false")
            values[key] = value
        else:
            values[key] = "" if value is None else str(value)
    try:
        apply_settings(spec, values, {key: key for key in values})
    except SpecError as exc:
        raise SpecError(f"{source}: {exc.message}") from None
    return spec, values


def _proto_document(doc: Mapping[str, Any], source: str) -> Any:
    from google.protobuf.json_format import ParseDict, ParseError

    from dockyard.v1.workloads_pb2 import ServiceSpec

    try:
        return ParseDict(dict(doc), ServiceSpec())
    except ParseError as exc:
        raise SpecError(f"{source}: {' '.join(str(exc).split())}") from None


def load_spec_file(path: str) -> tuple[Any, dict[str, Any]]:
    """Read a YAML spec file (`-` is stdin); SpecError names the file and the key."""
    import sys

    import yaml

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        doc = yaml.safe_load(text)
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return spec_from_document(doc, path)
