"""The container settings Swarm services have beyond the first table: configs, env files,
/etc/hosts entries, DNS, an init, a terminal, ulimits, sysctls, the stop signal and log rotation.
`service_spec.SETTINGS` takes them from `extra_settings()`; compose keys map onto the
same flags (compose_service.py).
"""

from __future__ import annotations

import ipaddress
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockyard.cli.commands.service_parse import SpecError, invalid, parse_bytes, parse_count
from dockyard.common.validation import SYSCTL_KEY_PATTERN, ULIMIT_NAMES

if TYPE_CHECKING:
    from dockyard.cli.commands.service_spec import Setting

__all__ = [
    "expand_env_files",
    "extra_settings",
    "parse_config",
    "parse_host",
    "parse_stop_signal",
    "parse_ulimit",
]

_CONFIG_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
_HOST_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9._-]{0,252})")
_CONFIG_KEYS = ("source", "src", "target", "uid", "gid", "mode")


def parse_config(label: str, text: str) -> dict[str, Any]:
    """`--config NAME` or `source=NAME,target=/PATH,uid=0,gid=0,mode=0444`."""
    if "=" not in text:
        found: dict[str, str] = {"source": text.strip()}
    else:
        found = {}
        for part in text.split(","):
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            if key not in _CONFIG_KEYS or not eq or not value:
                raise invalid(label, text, f"use {', '.join(_CONFIG_KEYS[:1] + _CONFIG_KEYS[2:])}")
            found["source" if key == "src" else key] = value.strip()
    if not _CONFIG_NAME.fullmatch(found.get("source", "")):
        raise invalid(label, text, "source must be a config's name")
    target = found.get("target", f"/{found['source']}")
    if not target.startswith("/"):  # docker: a relative target is under /
        target = f"/{target}"
    if ".." in target.split("/") or target.endswith("/") or len(target) > 4096:
        raise invalid(label, text, "target is an absolute file path in the container")
    result: dict[str, Any] = {"source": found["source"], "target": target}
    for key in ("uid", "gid"):
        value = found.get(key, "0")
        if not value.isdigit() or int(value) >= 2**32:
            raise invalid(label, text, f"{key} must be a number")
        result[key] = int(value)
    try:
        mode = int(found.get("mode", "0444"), 8)
    except ValueError:
        raise invalid(label, text, "mode is octal, e.g. 0440") from None
    if not 0 < mode <= 0o777:
        raise invalid(label, text, "mode is octal, from 01 to 0777")
    result["mode"] = mode
    return result


def parse_host(label: str, text: str) -> tuple[str, str]:
    """`NAME:IP` (docker's --host / compose extra_hosts; `NAME=IP` too) -> (name, ip)."""
    separator = "=" if "=" in text else ":"
    name, _, address = text.partition(separator)
    name, address = name.strip(), address.strip().strip("[]")
    if not _HOST_NAME.fullmatch(name):
        raise invalid(label, text, "use NAME:IP")
    if address == "host-gateway":
        raise invalid(label, text, "host-gateway is not supported: give the address")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise invalid(label, text, "use NAME:IP with an IP address") from None
    return name, address


def _ip(label: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise invalid(label, text, "not an IP address") from None


def _domain(label: str, text: str) -> str:
    if text != "." and not _HOST_NAME.fullmatch(text.strip()):
        raise invalid(label, text, "not a domain name")
    return text.strip()


def parse_ulimit(label: str, text: str) -> tuple[str, int, int]:
    """`nofile=1024[:2048]` -> (name, soft, hard); -1 is unlimited."""
    name, eq, values = text.partition("=")
    name = name.strip().lower()
    if not eq or name not in ULIMIT_NAMES:
        raise invalid(
            label, text, f"use NAME=SOFT[:HARD], NAME one of {', '.join(sorted(ULIMIT_NAMES))}"
        )
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise invalid(label, text, "limits are whole numbers (-1: unlimited)") from None
    if soft < -1 or hard < -1 or (hard != -1 and (soft == -1 or soft > hard)):
        raise invalid(label, text, "the soft limit must not exceed the hard one")
    return name, soft, hard


def parse_stop_signal(label: str, text: str) -> str:
    """`SIGTERM`, `TERM`, `15` or `SIGRTMIN+3` -> the signal's name as given, checked."""
    name = text.strip().upper()
    if name.isdigit():
        if not 0 < int(name) < signal.NSIG:
            raise invalid(label, text, "not a signal number")
        return name
    full = name if name.startswith("SIG") else f"SIG{name}"
    base, plus, offset = full.partition("+")
    if plus and base == "SIGRTMIN" and offset.isdigit():
        return full
    if full not in signal.Signals.__members__:
        raise invalid(label, text, "not a signal name (SIGTERM, SIGQUIT, SIGINT, ...)")
    return full


def _sysctl(label: str, text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not SYSCTL_KEY_PATTERN.match(key):
        raise invalid(
            label,
            text,
            "use KEY=VALUE with a namespaced key (net.*, kernel.shm*/msg*/sem, fs.mqueue.*)",
        )
    return key, value.strip()


def _log_opt(spec: Any, label: str, text: str) -> None:
    """`max-size=10m,max-file=3`: the agent's rotation of the task's log."""
    container = spec.task.container
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if key == "max-size" and eq:
            container.log_max_size_bytes = parse_bytes(label, value)
        elif key == "max-file" and eq:
            container.log_max_files = parse_count(label, value, minimum=1)
        else:
            raise invalid(label, text, "use max-size=SIZE,max-file=N")


def expand_env_files(values: Mapping[str, Any]) -> dict[str, Any]:
    """`--env-file` read into `env` (file entries first, then the `--env` flags)."""
    from dockyard.cli.commands.compose_paths import read_env_file

    found = dict(values)
    files = found.pop("env-file", ())
    if not files:
        return found
    import os

    entries: list[str] = []
    for name in files:
        read = read_env_file("--env-file", Path(name), os.environ, unquote=False)
        entries += [f"{k}={v}" for k, v in read.items()]
    found["env"] = entries + list(found.get("env", ()))
    return found


def _config_item(label: str, text: str) -> tuple[str, Any]:
    from dockyard.v1.workloads_pb2 import ConfigReference

    found = parse_config(label, text)
    return found["source"], ConfigReference(
        config_name=found["source"],
        target=found["target"],
        uid=found["uid"],
        gid=found["gid"],
        mode=found["mode"],
    )


def _host_item(label: str, text: str) -> tuple[str, Any]:
    name, address = parse_host(label, text)
    return name, f"{address} {name}"


def _ulimit_item(label: str, text: str) -> tuple[str, Any]:
    from dockyard.v1.workloads_pb2 import Ulimit

    name, soft, hard = parse_ulimit(label, text)
    return name, Ulimit(name=name, soft=soft, hard=hard)


def _same(parse: Any) -> Any:
    def item(label: str, text: str) -> tuple[str, Any]:
        value = parse(label, text)
        return value, value

    return item


def _stop_signal(spec: Any, label: str, text: str) -> None:
    spec.task.container.stop_signal = parse_stop_signal(label, text) if text else ""


def _flag(path: str) -> Any:
    def apply(spec: Any, label: str, text: str) -> None:
        setattr(spec.task.container, path, text == "true")

    return apply


def extra_settings() -> list[Setting]:
    from dockyard.cli.commands.service_spec import CREATE_ONLY, Setting

    return [
        Setting(
            "env-file",
            "FILE",
            "Read environment variables from a file (KEY=VALUE lines).",
            where=CREATE_ONLY,
            item=lambda label, text: (text, None),
            field=lambda s: [],
        ),
        Setting(
            "config",
            "NAME|source=NAME[,target=/PATH,uid=0,gid=0,mode=0444]",
            "Give the tasks a config, read-only at /NAME or the target (--config-rm takes "
            "the name).",
            item=_config_item,
            field=lambda s: s.task.container.configs,
        ),
        Setting(
            "host",
            "NAME:IP",
            "Add a line to the tasks' /etc/hosts.",
            item=_host_item,
            field=lambda s: s.task.container.extra_hosts,
        ),
        Setting(
            "dns",
            "IP",
            "A nameserver for the tasks' resolv.conf.",
            item=_same(_ip),
            field=lambda s: s.task.container.dns_servers,
        ),
        Setting(
            "dns-search",
            "DOMAIN",
            "A search domain for the tasks' resolv.conf.",
            item=_same(_domain),
            field=lambda s: s.task.container.dns_search,
        ),
        Setting(
            "init",
            "",
            "Run an init as PID 1 that forwards signals and reaps zombies.",
            is_bool=True,
            apply=_flag("init"),
        ),
        Setting(
            "tty",
            "",
            "Give the tasks' process a pseudo-terminal (its logs are one stream).",
            short="t",
            is_bool=True,
            apply=_flag("tty"),
        ),
        Setting(
            "ulimit",
            "NAME=SOFT[:HARD]",
            "A resource limit, e.g. nofile=1024:2048.",
            item=_ulimit_item,
            field=lambda s: s.task.container.ulimits,
        ),
        Setting(
            "sysctl",
            "KEY=VALUE",
            "A namespaced kernel parameter, e.g. net.core.somaxconn=1024.",
            item=_sysctl,
            field=lambda s: s.task.container.sysctls,
        ),
        Setting(
            "stop-signal",
            "SIGNAL",
            "The signal that stops a task (default SIGTERM).",
            apply=_stop_signal,
        ),
        Setting(
            "log-opt",
            "max-size=SIZE,max-file=N",
            "Rotate the task's log at SIZE, keeping N files.",
            apply=_log_opt,
        ),
    ]


def check_extras(spec: Any) -> None:
    """Raise SpecError on a combination the flags alone cannot see."""
    container = spec.task.container
    if container.log_max_files and not container.log_max_size_bytes:
        raise SpecError("--log-opt: max-file needs max-size")
