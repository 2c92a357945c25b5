"""Host-wide claims on the subnets of user-defined networks, for agents sharing a host.

An agent chooses a new network's subnet from what it can see: its own networks and the
host's routes. A network's bridge gets its address (and so its route) only when its
first container is attached, and two agents on one host (`deploy/local-cluster`) could
both choose the same block meanwhile. So each chosen subnet is claimed by a file under
``/run/dockyard/local-subnets`` naming the owning agent's network records, and an agent
chooses and claims while it holds the host-wide lock of that folder (``flock``: released
by the kernel if the agent dies). A claim whose owner's records are gone (the agent's
state was purged) is stale: it is ignored and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from dockyard.common.atomic_file import write_atomic

__all__ = ["CLAIMS_DIR", "ClaimsBusyError", "SubnetClaims", "drop_claims_under"]

CLAIMS_DIR = Path("/run/dockyard/local-subnets")
LOCK_WAIT = 10.0
"""Seconds to wait for another agent's choice (a few netlink reads and a file write)."""


class ClaimsBusyError(TimeoutError):
    """Another agent on this host held the claims' lock for too long."""


@dataclass(frozen=True)
class SubnetClaims:
    """The claims of one agent (blocking file work: call it in a thread).

    Args:
        owner: The agent's network records file (its existence keeps its claims alive).
        root: Where the claims of every agent on this host are.
    """

    owner: Path
    root: Path = CLAIMS_DIR

    def others(self) -> list[tuple[str, str]]:
        """``(subnet, what it is)`` for each live claim of another agent; stale claims
        are removed on the way."""
        found: list[tuple[str, str]] = []
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            claim = _read(path)
            if claim is None:
                continue
            owner = Path(claim["owner"])
            if owner == self.owner:
                continue
            if not owner.exists():
                path.unlink(missing_ok=True)
                continue
            found.append((claim["subnet"], f"network {claim['network']} of another agent"))
        return found

    @contextlib.asynccontextmanager
    async def held(self, wait: float = LOCK_WAIT) -> AsyncIterator[None]:
        """Hold the host-wide lock: choose among ``others()``, then ``claim``.

        Raises:
            ClaimsBusyError: not had within ``wait`` seconds.
        """
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise ClaimsBusyError(
                        f"another agent on this host held {self.root}/.lock for {wait:.0f} s"
                    )
                await asyncio.sleep(0.02)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def claim(self, subnet: str, network: str) -> bool:
        """Claim ``subnet`` for ``network`` (call it within ``held()``); False if another
        agent holds it."""
        path = self._path(subnet)
        held = _read(path)
        if held is not None and held["owner"] != str(self.owner) and Path(held["owner"]).exists():
            return False
        body = json.dumps({"subnet": subnet, "network": network, "owner": str(self.owner)})
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        _replace(path, body)
        return True

    def release(self, subnet: str) -> None:
        """Drop this agent's claim on ``subnet`` (nothing if it holds none)."""
        path = self._path(subnet)
        held = _read(path)
        if held is not None and held["owner"] == str(self.owner):
            path.unlink(missing_ok=True)

    def _path(self, subnet: str) -> Path:
        return self.root / f"{subnet.replace('/', '_')}.json"


def drop_claims_under(directory: Path, root: Path = CLAIMS_DIR) -> list[str]:
    """Remove the claims of the agents whose state is under ``directory`` (their
    networks are being removed with them); the subnets they held."""
    dropped = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        claim = _read(path)
        if claim is not None and Path(claim["owner"]).is_relative_to(directory):
            path.unlink(missing_ok=True)
            dropped.append(claim["subnet"])
    return dropped


def _read(path: Path) -> dict[str, str] | None:
    with contextlib.suppress(OSError, ValueError):
        claim = json.loads(path.read_text())
        if isinstance(claim, dict) and all(
            isinstance(claim.get(k), str) for k in ("subnet", "network", "owner")
        ):
            return claim
    return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _replace(path: Path, body: str) -> None:
    write_atomic(path, body.encode())
