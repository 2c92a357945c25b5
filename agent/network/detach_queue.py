"""``DetachQueue``: releases of cluster-network attachments that must not be lost.

A standalone container removed while the leader cannot be reached would keep its
address on the overlay network (and the network undeletable) until the agent's next
restart prunes it. So a release is recorded first, in
``<state_dir>/dockerapi/pending-detaches.json`` (replaced atomically), then asked of the
leader (``Dispatcher.DetachNetwork``); what fails stays recorded and ``run`` (a loop of
the agent's task group) asks again with a backoff, at once when the session connects
again (to the same leader or a new one), and after an agent restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc
import structlog

from dockyard.agent.network.attacher import AttachError
from dockyard.common.backoff import Backoff
from dockyard.common.statedir import write_private

__all__ = ["DetachQueue", "Detacher"]

log = structlog.get_logger(__name__)

MAX_PENDING = 10_000
"""Releases kept at most (the oldest go first past it: the next restart prunes them)."""

_CONTAINER_ID = re.compile(r"[0-9a-f]{1,64}")

_GIVE_UP = (grpc.StatusCode.INVALID_ARGUMENT,)
"""Refusals that asking again cannot change: the release is dropped, logged."""


class Detacher(Protocol):
    async def detach(self, container_id: str) -> int: ...


class DetachQueue:
    """Args:
    detacher: Asks the leader (``NetworkAttacher``).
    path: The record of the releases not yet made.
    connected: Set while the controller session is up.
    session_id: The current session's ID (a new one: connected again, ask at once).
    backoff: Delays between failed rounds.
    """

    def __init__(
        self,
        detacher: Detacher,
        path: Path,
        connected: asyncio.Event,
        session_id: Callable[[], str] = lambda: "",
        backoff: Backoff | None = None,
    ) -> None:
        self._detacher = detacher
        self._path = path
        self._connected = connected
        self._session_id = session_id
        self._backoff = backoff or Backoff(initial=0.5, maximum=15.0)
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Take up the releases recorded before a restart (``run`` makes them)."""
        found = await asyncio.to_thread(_load, self._path)
        self._pending.update(dict.fromkeys(found))
        if self._pending:
            log.info("network.detach_pending", containers=len(self._pending))
            self._wake.set()

    def pending(self) -> list[str]:
        """The containers whose release is not made yet, oldest first."""
        return list(self._pending)

    async def release(self, container_id: str) -> bool:
        """Record the release, then ask for it once; True when made (False: ``run``
        asks again)."""
        if not _CONTAINER_ID.fullmatch(container_id):
            raise ValueError(f"container_id: not a container ID: {container_id!r}")
        async with self._lock:
            self._pending[container_id] = None
            while len(self._pending) > MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            await self._save()
        if self._connected.is_set() and await self._try(container_id):
            return True
        self._wake.set()
        return False

    async def run(self) -> None:
        """Ask again for what failed until cancelled: after a backoff, or at once when
        the session connects again."""
        while True:
            await self._wake.wait()
            await self._connected.wait()
            session = self._session_id()
            if await self._flush():
                self._backoff.reset()
                if not self._pending:
                    self._wake.clear()
                continue
            await self._pause(self._backoff.next_delay(), session)

    async def _pause(self, delay: float, session: str) -> None:
        """``delay`` seconds, cut short by a new session."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(left, 0.25))
            if self._session_id() != session and self._connected.is_set():
                self._backoff.reset()
                return

    async def _flush(self) -> bool:
        """Ask for every pending release; False at the first that cannot be made."""
        for container_id in self.pending():
            if not await self._try(container_id):
                return False
        return True

    async def _try(self, container_id: str) -> bool:
        try:
            count = await self._detacher.detach(container_id)
        except AttachError as exc:
            if exc.code not in _GIVE_UP:
                log.warning(
                    "network.detach_deferred", container_id=container_id[:12], error=str(exc)
                )
                return False
            log.error("network.detach_refused", container_id=container_id[:12], error=str(exc))
            count = 0
        async with self._lock:
            self._pending.pop(container_id, None)
            await self._save()
        log.info("network.detach_made", container_id=container_id[:12], networks=count)
        return True

    async def _save(self) -> None:
        data = json.dumps({"containers": list(self._pending)}).encode()
        await asyncio.to_thread(write_private, self._path, data)


def _load(path: Path) -> list[str]:
    """The recorded releases (none when the file is missing or unreadable)."""
    with contextlib.suppress(FileNotFoundError):
        try:
            found = json.loads(path.read_text())["containers"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("network.detach_record_unreadable", path=str(path), error=str(exc))
            return []
        return [c for c in found if isinstance(c, str) and _CONTAINER_ID.fullmatch(c)]
    return []
