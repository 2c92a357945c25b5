"""What the network keeps per container: ``<root>/containers/<id>.json``.

The record is written *before* anything is set up (state ``attaching``), so that an agent
killed halfway leaves a record that recovery releases; it holds the exact network
configuration and the ADD result, which DEL must be given again.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.agent.runtime.base import NetworkInfo, PortMapping
from dockyard.common.atomic_file import write_atomic

__all__ = ["ATTACHED", "ATTACHING", "STALE", "Attachment", "AttachmentStore"]

ATTACHING = "attaching"
"""Being set up (or the agent died while it was)."""
ATTACHED = "attached"
STALE = "stale"
"""Its container is gone but a DEL failed: recovery tries again."""


@dataclass(slots=True)
class Attachment:
    """One container's place on the bridge."""

    container_id: str
    netns: str
    netns_path: str
    bridge: str
    conflist: dict[str, Any]
    ifname: str = "eth0"
    ports: list[PortMapping] = field(default_factory=list)
    """As bound: a picked host port is filled in."""
    state: str = ATTACHING
    result: dict[str, Any] | None = None
    ip_address: str = ""
    prefix_length: int = 0
    gateway: str = ""
    mac_address: str = ""

    def info(self) -> NetworkInfo:
        """The runtime's view of it."""
        return NetworkInfo(
            mode="bridge",
            ip_address=self.ip_address,
            prefix_length=self.prefix_length,
            gateway=self.gateway,
            bridge=self.bridge,
            mac_address=self.mac_address,
            ports=tuple(self.ports),
        )

    def runtime_config(self) -> dict[str, Any]:
        """CNI ``runtimeConfig`` (``portMappings`` for portmap)."""
        return {
            "portMappings": [
                {
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                    **({"hostIP": p.host_ip} if p.host_ip else {}),
                }
                for p in self.ports
            ]
        }

    def take_result(self, result: dict[str, Any]) -> None:
        """Fill in the address, gateway and MAC from a CNI (1.0) ADD result."""
        self.result = result
        interfaces = result.get("interfaces") or []
        for entry in result.get("ips") or []:
            address = str(entry.get("address", ""))
            if "." not in address:
                continue  # IPv6
            ip, _, prefix = address.partition("/")
            self.ip_address, self.prefix_length = ip, int(prefix or 32)
            self.gateway = str(entry.get("gateway", ""))
            index = entry.get("interface")
            if isinstance(index, int) and 0 <= index < len(interfaces):
                self.mac_address = str(interfaces[index].get("mac", ""))
            break

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "container_id": self.container_id,
            "netns": self.netns,
            "netns_path": self.netns_path,
            "bridge": self.bridge,
            "ifname": self.ifname,
            "conflist": self.conflist,
            "ports": [p.to_dict() for p in self.ports],
            "state": self.state,
            "result": self.result,
            "ip_address": self.ip_address,
            "prefix_length": self.prefix_length,
            "gateway": self.gateway,
            "mac_address": self.mac_address,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attachment:
        """Inverse of :meth:`to_dict`."""
        return cls(
            container_id=str(data["container_id"]),
            netns=str(data["netns"]),
            netns_path=str(data["netns_path"]),
            bridge=str(data.get("bridge", "")),
            conflist=dict(data["conflist"]),
            ifname=str(data.get("ifname", "eth0")),
            ports=[PortMapping.from_dict(p) for p in data.get("ports") or []],
            state=str(data.get("state", ATTACHING)),
            result=data.get("result"),
            ip_address=str(data.get("ip_address", "")),
            prefix_length=int(data.get("prefix_length", 0)),
            gateway=str(data.get("gateway", "")),
            mac_address=str(data.get("mac_address", "")),
        )


class AttachmentStore:
    """The records, one JSON file each, replaced atomically. Methods block."""

    def __init__(self, root: Path) -> None:
        self.root = root / "containers"

    def _path(self, container_id: str) -> Path:
        return self.root / f"{container_id}.json"

    def save(self, attachment: Attachment) -> None:
        """Write one record (a temp file, then a rename)."""
        # Not synced (one per container start): a record a power cut lost is not loaded,
        # and `recover` gives its container a new attachment.
        data = json.dumps(attachment.to_dict()).encode()
        write_atomic(self._path(attachment.container_id), data, durable=False)

    def delete(self, container_id: str) -> None:
        """Forget one record."""
        self._path(container_id).unlink(missing_ok=True)

    def load_all(self) -> dict[str, Attachment]:
        """Every readable record; unreadable files are left for a human to look at."""
        found: dict[str, Attachment] = {}
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                attachment = Attachment.from_dict(json.loads(path.read_text()))
                found[attachment.container_id] = attachment
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return found
