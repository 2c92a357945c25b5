"""`--publish` of services: the short form with ranges and the long form with `mode`.

One flag value can stand for several ports (a range), so it parses to a list; each item
is one `PortConfig` of the spec. As docker's CLI, a port given with no mode is the
routing mesh's (`ingress`), and an ingress port with no published port gets one from the
leader (30000-32767); `mode=host` publishes on the node that runs the task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dockyard.cli.commands.service_parse import invalid

__all__ = ["DEFAULT_MODE", "MAX_PORT_RANGE", "PUBLISH_MODES", "PublishedPort", "parse_publish"]

MAX_PORT_RANGE = 1000
PUBLISH_MODES = ("ingress", "host")
DEFAULT_MODE = "ingress"
"""Swarm's default: a port given with no mode is the routing mesh's."""
_SHORT = re.compile(r"^(?:(\d+(?:-\d+)?):)?(\d+(?:-\d+)?)(?:/([a-z]+))?$")
_LONG_KEYS = {
    "published": "published",
    "target": "target",
    "protocol": "protocol",
    "mode": "mode",
}


@dataclass(frozen=True)
class PublishedPort:
    """One port of a service: `published` 0 lets the leader (ingress) or the node (host)
    pick one."""

    published: int
    target: int
    protocol: str = "tcp"
    mode: str = DEFAULT_MODE

    @property
    def key(self) -> str:
        """What `--publish-rm` names: the published port (or the target) and protocol."""
        return f"{self.published or self.target}/{self.protocol}"


def _range(label: str, text: str, part: str) -> list[int]:
    low, sep, high = part.partition("-")
    first, last = int(low), int(high if sep else low)
    if last < first or last - first >= MAX_PORT_RANGE:
        raise invalid(label, text, f"{part}: a range goes up, by at most {MAX_PORT_RANGE} ports")
    return list(range(first, last + 1))


def _long(label: str, text: str) -> tuple[str, str, str, str]:
    found: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        name = _LONG_KEYS.get(key)
        if name is None or not eq:
            known = ", ".join(_LONG_KEYS)
            raise invalid(label, text, f"unknown or empty option {key!r} ({known})")
        if name in found:
            raise invalid(label, text, f"{name} given twice")
        found[name] = value.strip()
    if not found.get("target"):
        raise invalid(label, text, "target= is required")
    return (
        found.get("published", ""),
        found["target"],
        found.get("protocol", "tcp"),
        found.get("mode") or DEFAULT_MODE,
    )


def parse_publish(label: str, text: str) -> list[PublishedPort]:
    """`[PUBLISHED:]TARGET[/udp]` (ranges `8080-8081:80-81`) or
    `published=P,target=T[,protocol=udp][,mode=ingress|host]`: one item per port."""
    text = text.strip()
    if "=" in text:
        published, target, protocol, mode = _long(label, text)
    else:
        match = _SHORT.match(text)
        if not match:
            raise invalid(
                label, text, "use PUBLISHED:TARGET[/tcp|udp] (ranges too) or target=T,..."
            )
        published, target, protocol = match.group(1) or "", match.group(2), match.group(3)
        protocol, mode = protocol or "tcp", DEFAULT_MODE
    if protocol not in ("tcp", "udp"):
        raise invalid(label, text, "the protocol must be tcp or udp")
    if mode not in PUBLISH_MODES:
        raise invalid(label, text, "the mode must be ingress or host")
    if not re.fullmatch(r"\d+(-\d+)?", target) or not re.fullmatch(r"(\d+(-\d+)?)?", published):
        raise invalid(label, text, "ports are numbers or ranges LOW-HIGH")
    targets = _range(label, text, target)
    publisheds = _range(label, text, published) if published else [0] * len(targets)
    if len(publisheds) != len(targets):
        if len(targets) != 1:
            raise invalid(label, text, "the two ranges differ in length")
        targets = targets * len(publisheds)  # docker: 8000-8002:80 publishes three ports
    if any(not 0 < t < 65536 for t in targets) or any(not 0 <= p < 65536 for p in publisheds):
        raise invalid(label, text, "ports must be between 1 and 65535")
    return [PublishedPort(p, t, protocol, mode) for p, t in zip(publisheds, targets, strict=True)]
