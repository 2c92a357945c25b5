"""The node's identity, kept in the agent's state dir so a restart is the same node."""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from dockyard.common.atomic_file import write_atomic

IDENTITY_FILE = "node.json"


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    name: str


def load_or_create(state_dir: Path, name: str) -> NodeIdentity:
    """The stored identity; a new one (with `name`) on first start.

    The node ID never changes; the requested name is updated when the agent is
    started with another --name (the controller decides whether it is taken).
    """
    path = state_dir / IDENTITY_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        identity = NodeIdentity(stored["node_id"], name or stored["name"])
    else:
        identity = NodeIdentity(secrets.token_hex(10), name or socket.gethostname())
    _write_atomically(path, {"node_id": identity.node_id, "name": identity.name})
    return identity


def save(state_dir: Path, identity: NodeIdentity) -> None:
    """Store an identity the cluster gave this node (at join: the ID in its certificate)."""
    _write_atomically(
        state_dir / IDENTITY_FILE, {"node_id": identity.node_id, "name": identity.name}
    )


def _write_atomically(path: Path, data: dict[str, str]) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
