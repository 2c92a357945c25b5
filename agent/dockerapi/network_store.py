"""User-defined Docker networks of an agent: their records and who is on them.

`docker network create` and docker-compose's project network are records here, each with
a subnet and a Linux bridge of its own (`agent/network/local_bridges.py` makes them and
isolates them from each other): a container created on `myproject_default` runs on that
network's bridge, and its name and aliases are served to that network's containers by
the agent's DNS. A record from before networks had their own subnet (`subnet` empty) is
still mapped onto the node's bridge, as it was.

Records and endpoints (which container is on which network, with which aliases) live in
one JSON file under the agent's state dir, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dockyard.agent.network.local_bridges import local_bridge_name
from dockyard.agent.runtime.base import LocalBridge
from dockyard.common.atomic_file import write_atomic

__all__ = [
    "BUILTIN",
    "MAX_NETWORKS",
    "Endpoint",
    "NetworkRecord",
    "NetworkStore",
    "NetworkStoreError",
    "builtin_id",
]

BUILTIN = ("bridge", "host", "none")
"""The networks every agent has (Docker's predefined ones)."""
MAX_NETWORKS = 1000
"""User-defined networks one agent keeps (each is a record in one file)."""
MAX_ALIASES = 32
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class NetworkStoreError(ValueError):
    """A refused request: the message names what is wrong."""


def builtin_id(name: str) -> str:
    """A stable id for a predefined network (the same on every restart)."""
    return hashlib.sha256(f"dockyard-network-{name}".encode()).hexdigest()


@dataclass
class NetworkRecord:
    """A user-defined network, mapped onto the agent's bridge."""

    id: str
    name: str
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    attachable: bool = False
    subnet: str = ""
    """Its own subnet and Linux bridge (`local_bridges.py`); "" for a network recorded
    before networks had their own (mapped onto the node's bridge, as then)."""
    bridge: str = ""

    def local_bridge(self) -> LocalBridge | None:
        """The network as the agent's network step sees it (None: the node's bridge)."""
        if not self.subnet or not self.bridge:
            return None
        return LocalBridge(self.id, self.bridge, self.subnet, self.internal)


@dataclass
class Endpoint:
    """A container's membership of a network, with the names it answers to."""

    network: str
    aliases: list[str] = field(default_factory=list)


def check_network_name(name: str) -> str:
    """Docker's network name rule: 1-128 of letters, digits, `_`, `.`, `-`."""
    if not name or len(name) > 128 or not set(name) <= _NAME_CHARS or name[0] in ".-":
        raise NetworkStoreError(
            f"invalid network name {name[:80]!r}: use 1-128 letters, digits, '_', '.' or '-'"
        )
    return name


class NetworkStore:
    """The agent's user-defined networks and container endpoints (blocking file work,
    small: called on the event loop is fine, the file is a few kilobytes).

    Args:
        path: The JSON file (`<state dir>/dockerapi/networks.json`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.networks: dict[str, NetworkRecord] = {}
        self.endpoints: dict[str, list[Endpoint]] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise NetworkStoreError(f"{self.path}: not valid JSON: {exc}") from None
        for item in data.get("networks", []):
            record = NetworkRecord(**item)
            self.networks[record.id] = record
        for container_id, items in data.get("endpoints", {}).items():
            self.endpoints[container_id] = [Endpoint(**e) for e in items]

    def _save(self) -> None:
        data: dict[str, Any] = {
            "networks": [asdict(r) for r in self.networks.values()],
            "endpoints": {
                cid: [asdict(e) for e in eps] for cid, eps in self.endpoints.items() if eps
            },
        }
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)

    # ----- networks -----------------------------------------------------------------

    def find(self, ref: str) -> NetworkRecord | None:
        """A user-defined network by name, full id or unique id prefix."""
        for record in self.networks.values():
            if ref in (record.id, record.name):
                return record
        matches = [r for r in self.networks.values() if ref and r.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def check_new_name(self, name: str) -> None:
        """Raise what `create` would for `name` (before a subnet is chosen for it).

        Raises:
            NetworkStoreError: a bad or taken name, too many networks.
        """
        with self._lock:
            self._check_new_name(name)

    def _check_new_name(self, name: str) -> None:
        check_network_name(name)
        if name in BUILTIN or any(r.name == name for r in self.networks.values()):
            raise NetworkStoreError(f"network with name {name} already exists")
        if len(self.networks) >= MAX_NETWORKS:
            raise NetworkStoreError(f"this agent keeps at most {MAX_NETWORKS} networks")

    def create(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        internal: bool = False,
        attachable: bool = False,
        subnet: str = "",
    ) -> NetworkRecord:
        """Record a network (with ``subnet``: a bridge of its own, named after its id).

        Raises:
            NetworkStoreError: a bad or taken name (a predefined one included), too many.
        """
        with self._lock:
            self._check_new_name(name)
            network_id = secrets.token_hex(32)
            record = NetworkRecord(
                id=network_id,
                name=name,
                created=datetime.now(UTC).isoformat(),
                labels=dict(labels or {}),
                options=dict(options or {}),
                internal=internal,
                attachable=attachable,
                subnet=subnet,
                bridge=local_bridge_name(network_id) if subnet else "",
            )
            self.networks[record.id] = record
            self._save()
        return record

    def remove(self, record: NetworkRecord) -> None:
        """Forget a network (the caller checked no container is on it)."""
        with self._lock:
            self.networks.pop(record.id, None)
            self._save()

    # ----- endpoints ----------------------------------------------------------------

    def users(self, network_id: str) -> list[str]:
        """The containers on a user-defined network."""
        return [
            cid for cid, eps in self.endpoints.items() if any(e.network == network_id for e in eps)
        ]

    def connect(self, container_id: str, network_id: str, aliases: list[str]) -> None:
        """Put a container on a network (again: its aliases are replaced)."""
        if len(aliases) > MAX_ALIASES:
            raise NetworkStoreError(f"at most {MAX_ALIASES} aliases per endpoint")
        for alias in aliases:
            check_network_name(alias)
        with self._lock:
            endpoints = [e for e in self.endpoints.get(container_id, []) if e.network != network_id]
            endpoints.append(Endpoint(network_id, list(dict.fromkeys(aliases))))
            self.endpoints[container_id] = endpoints
            self._save()

    def disconnect(self, container_id: str, network_id: str) -> bool:
        """Take a container off a network; whether it was on it."""
        with self._lock:
            endpoints = self.endpoints.get(container_id, [])
            kept = [e for e in endpoints if e.network != network_id]
            if len(kept) == len(endpoints):
                return False
            self.endpoints[container_id] = kept
            self._save()
        return True

    def forget_container(self, container_id: str) -> None:
        """Drop a removed container's endpoints."""
        with self._lock:
            if self.endpoints.pop(container_id, None) is not None:
                self._save()

    def of(self, container_id: str) -> list[tuple[NetworkRecord, Endpoint]]:
        """The user-defined networks a container is on, with its endpoint on each."""
        return [
            (self.networks[e.network], e)
            for e in self.endpoints.get(container_id, [])
            if e.network in self.networks
        ]
