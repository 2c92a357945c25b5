"""The instructions that change only an image's config: CMD, ENTRYPOINT, ENV, EXPOSE,
LABEL, USER, WORKDIR, VOLUME, STOPSIGNAL, SHELL, MAINTAINER, ONBUILD.

Used by ``docker build`` for these steps and by ``docker commit --change``. Each
applies to the config's ``config`` object (``Cmd``, ``Env``, ...) as dockerd's builder
does; words are substituted from the build's environment first where Docker does.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.agent.build.dockerfile import DockerfileError, Instruction, expand, parse

__all__ = [
    "COMMIT_CHANGES",
    "CONFIG_INSTRUCTIONS",
    "DEFAULT_SHELL",
    "ConfigState",
    "apply_changes",
    "apply_config",
    "env_map",
    "parse_changes",
]

DEFAULT_SHELL = ["/bin/sh", "-c"]
CONFIG_INSTRUCTIONS = frozenset(
    {
        "CMD",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "LABEL",
        "USER",
        "WORKDIR",
        "VOLUME",
        "STOPSIGNAL",
        "SHELL",
        "MAINTAINER",
        "ONBUILD",
        "HEALTHCHECK",
    }
)
COMMIT_CHANGES = frozenset(
    {"CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "WORKDIR", "VOLUME", "STOPSIGNAL"}
)
"""What ``docker commit --change`` takes (dockerd's list, without ONBUILD)."""
MAX_CHANGES = 256


@dataclass
class ConfigState:
    """What one build stage remembers besides the config: whether CMD was set in it
    (ENTRYPOINT clears an inherited CMD), and the build arguments in scope."""

    cmd_set: bool = False
    args: dict[str, str] = field(default_factory=dict)


def env_map(runtime: Mapping[str, Any]) -> dict[str, str]:
    """The config's ``Env`` as a mapping (later entries win)."""
    found: dict[str, str] = {}
    for item in runtime.get("Env") or []:
        key, _, value = str(item).partition("=")
        found[key] = value
    return found


def _set_env(runtime: dict[str, Any], key: str, value: str) -> None:
    env = [e for e in runtime.get("Env") or [] if str(e).partition("=")[0] != key]
    runtime["Env"] = [*env, f"{key}={value}"]


def _pairs(step: Instruction, words: list[str]) -> list[tuple[str, str]]:
    if len(words) % 2:
        raise DockerfileError(f"{step.where()}: expected KEY=VALUE pairs")
    return [(words[i], words[i + 1]) for i in range(0, len(words), 2)]


def _command(step: Instruction, runtime: Mapping[str, Any]) -> list[str]:
    if step.json:
        return list(step.values)
    shell = runtime.get("Shell") or DEFAULT_SHELL
    return [*shell, " ".join(step.values)]


def _port(step: Instruction, text: str) -> str:
    number, _, proto = text.partition("/")
    proto = proto or "tcp"
    low, _, high = number.partition("-")
    if not low.isdigit() or (high and not high.isdigit()) or proto not in ("tcp", "udp", "sctp"):
        raise DockerfileError(f"{step.where()}: invalid port {text!r}")
    return f"{number}/{proto}"


def apply_config(
    step: Instruction, runtime: dict[str, Any], state: ConfigState, env: Mapping[str, str]
) -> None:
    """Apply a config-only instruction to ``runtime`` (the config's ``config``).

    ``env`` is what its words are substituted from (the config's Env and the build args).

    Raises:
        DockerfileError: a malformed instruction (naming its line).
    """

    def words() -> list[str]:
        return list(step.values) if step.json else [expand(v, env) for v in step.values]

    match step.cmd:
        case "CMD":
            runtime["Cmd"] = _command(step, runtime)
            state.cmd_set = True
        case "ENTRYPOINT":
            runtime["Entrypoint"] = _command(step, runtime) if step.values else None
            if not state.cmd_set:
                runtime["Cmd"] = None
        case "ENV":
            for key, value in _pairs(step, words()):
                _set_env(runtime, key, value)
        case "LABEL":
            labels = dict(runtime.get("Labels") or {})
            labels.update(_pairs(step, words()))
            runtime["Labels"] = labels
        case "EXPOSE":
            ports = dict(runtime.get("ExposedPorts") or {})
            ports.update({_port(step, w): {} for w in words()})
            runtime["ExposedPorts"] = ports
        case "USER":
            runtime["User"] = _one(step, words())
        case "WORKDIR":
            path = _one(step, words())
            runtime["WorkingDir"] = posixpath.normpath(
                posixpath.join("/", runtime.get("WorkingDir") or "/", path)
            )
        case "VOLUME":
            volumes = dict(runtime.get("Volumes") or {})
            volumes.update({w: {} for w in words() if w})
            runtime["Volumes"] = volumes
        case "STOPSIGNAL":
            runtime["StopSignal"] = _one(step, words())
        case "SHELL":
            if not step.json or not step.values:
                raise DockerfileError(f"{step.where()}: SHELL requires the JSON form")
            runtime["Shell"] = list(step.values)
        case "MAINTAINER":
            pass  # the author, set by the caller
        case "ONBUILD":
            trigger = step.original.split(None, 1)[1] if " " in step.original else ""
            runtime["OnBuild"] = [*(runtime.get("OnBuild") or []), trigger]
        case "HEALTHCHECK":
            runtime["Healthcheck"] = _healthcheck(step)
        case _:
            raise DockerfileError(f"{step.where()}: {step.cmd} is not a config instruction")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_HEALTH_FLAGS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}


def _duration(step: Instruction, text: str) -> int:
    """A Go duration (``30s``, ``1m30s``) in nanoseconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise DockerfileError(f"{step.where()}: invalid duration {text!r}")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))


def _healthcheck(step: Instruction) -> dict[str, Any]:
    if not step.values:
        raise DockerfileError(f"{step.where()}: HEALTHCHECK needs CMD or NONE")
    kind, rest = step.values[0].upper(), list(step.values[1:])
    if kind == "NONE":
        return {"Test": ["NONE"]}
    if kind != "CMD" or not rest:
        raise DockerfileError(f"{step.where()}: HEALTHCHECK needs CMD or NONE")
    check: dict[str, Any] = {"Test": ["CMD", *rest] if step.json else ["CMD-SHELL", *rest]}
    for flag in step.flags:
        name, _, value = flag.removeprefix("--").partition("=")
        if name in _HEALTH_FLAGS:
            check[_HEALTH_FLAGS[name]] = _duration(step, value)
        elif name == "retries" and value.isdigit():
            check["Retries"] = int(value)
        else:
            raise DockerfileError(f"{step.where()}: unknown flag {flag}")
    return check


def _one(step: Instruction, words: list[str]) -> str:
    if len(words) != 1 or not words[0]:
        raise DockerfileError(f"{step.where()}: {step.cmd} takes exactly one argument")
    return words[0]


def apply_changes(changes: list[str], runtime: dict[str, Any]) -> None:
    """``docker commit --change`` lines applied to ``runtime``.

    Raises:
        DockerfileError: an instruction commit does not take, or a malformed one.
    """
    if len(changes) > MAX_CHANGES:
        raise DockerfileError(f"more than {MAX_CHANGES} changes")
    state = ConfigState(cmd_set=True)  # a commit's ENTRYPOINT keeps the container's CMD
    for text in changes:
        for step in parse(text):
            if step.cmd not in COMMIT_CHANGES:
                raise DockerfileError(f"{step.cmd} is not a valid change command")
            apply_config(step, runtime, state, env_map(runtime))


def parse_changes(query: list[str]) -> list[str]:
    """The ``changes`` query values; a JSON list (older clients) is accepted too."""
    out: list[str] = []
    for value in query:
        if value.startswith("["):
            try:
                loaded = json.loads(value)
            except ValueError:
                loaded = [value]
            out.extend(str(v) for v in loaded)
        elif value:
            out.append(value)
    return out
