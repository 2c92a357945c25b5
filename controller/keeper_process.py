"""The lease keeper's process: the leader's lease renewed, and its key checked, from a
process of its own, so that no renewal waits for the controller's GIL.

`python -m dockyard.controller.keeper_process` is started by the leader's term
(`LeaseKeeper`, controller/leadership.py), which writes one JSON line on its stdin (the
`KeeperSetup`) and then one byte each time its event loop runs its lease check (a
tick). The keeper renews the lease over etcd's HTTP gateway (controller/etcd_gateway.py)
and writes one JSON line on its stdout for each thing the controller must know:

- `{"expires": T, "took": S}`: a renewal was asked at T - TTL (the controller's
  monotonic clock: CLOCK_MONOTONIC is the host's, shared by both processes) and the key
  is still the term's; the lease may be relied on until T less the margin;
- `{"lost": EVENT}`: the keeper gave the term up (the key is not ours, or the loop has
  not ticked for the stall limit) and exits.

It exits without renewing again when its stdin ends (the term is over, or the
controller died) and, should the pipe outlive the controller, the kernel kills it
(PR_SET_PDEATHSIG). It never counts an answer that came after the window (the expiry
less the margin): from then on the controller has stopped claiming the lease.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from dockyard.controller.etcd_gateway import GatewayClient

__all__ = ["EXPIRY_MARGIN", "TICK", "KeeperSetup", "encode", "main"]

# A lease is given up this long before etcd could expire it (controller/leadership.py).
EXPIRY_MARGIN = 1.0
# Logged when the keeper woke this much later than it meant to (the host was starved).
OVERSLEPT = 0.1
TICK = b"."
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class KeeperSetup:
    """What the leader's term tells its keeper (PEMs base64-encoded)."""

    parent: int
    lease: int
    fence_key: str
    fence_revision: int
    ttl: float
    expires: float  # monotonic time by which the lease may have expired
    stall_limit: float
    etcd_endpoints: list[str]
    etcd_credentials: dict[str, str | None] = field(default_factory=dict)
    etcd_server_name: str | None = None

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> KeeperSetup:
        return cls(**json.loads(line))


def encode(pem: bytes | None) -> str | None:
    return base64.b64encode(pem).decode() if pem is not None else None


class Keeper:
    """Renews the lease while the controller ticks, reporting each success."""

    def __init__(self, setup: KeeperSetup, client: GatewayClient, ticks: int, out: int) -> None:
        self._setup = setup
        self._log = _Log(lease=f"{setup.lease:x}")
        self._client = client
        self._ticks = ticks
        self._out = out
        self._poller = select.epoll()
        self._poller.register(ticks, select.EPOLLIN)
        self.expires = setup.expires
        self.ticked = time.monotonic()

    def run(self) -> None:
        """Renew at once (the term's grant was asked before this process started, which
        may have taken a while on a loaded host), then TTL/3 after each answer."""
        ttl = self._setup.ttl
        pause = 0.0
        while True:
            left = self.expires - EXPIRY_MARGIN - time.monotonic()
            wake = time.monotonic() + max(0.0, min(pause, left))
            pause = ttl / 3
            if not self._wait(wake):
                return
            if (overslept := time.monotonic() - wake) > OVERSLEPT:
                self._log.warning("leadership.keeper_overslept", seconds=round(overslept, 3))
            if not self._refresh():
                return

    def _wait(self, until: float) -> bool:
        """Read the controller's ticks until `until` (relative epoll timeouts: they
        follow the monotonic clock); False when its pipe ended."""
        while True:
            left = max(0.0, until - time.monotonic())
            if self._poller.poll(left) and not self._read_ticks():
                return False
            if time.monotonic() >= until:
                return True

    def _read_ticks(self) -> bool:
        try:
            data = os.read(self._ticks, 4096)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.ticked = time.monotonic()
        return True

    def _refresh(self) -> bool:
        """One renewal; False when the keeper is done (the key is not ours, the
        controller's loop hung, or the lease's time is up)."""
        asked = time.monotonic()
        if asked - self.ticked > self._setup.stall_limit:
            self._report(lost="leadership.loop_stalled")
            return False
        left = self.expires - EXPIRY_MARGIN - asked
        if left <= 0:
            self._log.warning("leadership.keeper_late", late=round(-left, 3), slept_past="window")
            return False
        setup = self._setup
        try:
            alive = self._client.keep_alive(setup.lease, left)
            renewed = time.monotonic()
            left = self.expires - EXPIRY_MARGIN - renewed
            ours = alive and left > 0 and self._holds(left)
        except Exception as exc:  # any failure is a missed refresh
            self._log.warning(
                "leadership.refresh_failed",
                error=f"{type(exc).__name__}: {exc}",
                took=round(time.monotonic() - asked, 3),
                window=round(self.expires - EXPIRY_MARGIN - asked, 3),
            )
            return True
        took = time.monotonic() - asked
        if took > setup.ttl / 6:
            self._log.warning(
                "leadership.refresh_slow",
                took=round(took, 3),
                keep_alive=round(renewed - asked, 3),
                window=round(self.expires - EXPIRY_MARGIN - asked, 3),
                ok=ours,
            )
        if not ours:
            if time.monotonic() >= self.expires - EXPIRY_MARGIN:
                self._log.warning(
                    "leadership.keeper_late", late=round(took, 3), slept_past="answer"
                )
                return False
            self._log.warning("leadership.key_lost", lease_alive=alive)
            self._report(lost="leadership.key_lost")
            return False
        self.expires = asked + setup.ttl
        self._report(expires=self.expires, took=round(took, 4))
        return True

    def _holds(self, timeout: float) -> bool:
        revision = self._client.create_revision(self._setup.fence_key, timeout)
        return revision == self._setup.fence_revision

    def _report(self, **fields: object) -> None:
        os.write(self._out, json.dumps(fields).encode() + b"\n")


def main() -> None:
    """The keeper process's entry point."""
    setup_line, ticks = _read_setup(0)
    if setup_line is None:
        sys.exit(0)  # the controller went away before it said anything
    setup = KeeperSetup.from_line(setup_line)
    _die_with_parent(setup.parent)
    credentials = {k: _decode(v) for k, v in setup.etcd_credentials.items()}
    client = GatewayClient(setup.etcd_endpoints, credentials, setup.etcd_server_name)
    os.set_blocking(0, False)
    keeper = Keeper(setup, client, 0, 1)
    if ticks:
        keeper.ticked = time.monotonic()
    try:
        keeper.run()
    except BrokenPipeError:
        pass  # the controller stopped reading: its term is over
    finally:
        client.close()


class _Log:
    """The controller's JSON log lines on stderr (structlog's shape), without structlog:
    its import (asyncio, greenlet) would double the keeper's start-up."""

    def __init__(self, **context: object) -> None:
        self._context = {"process": "lease_keeper", **context}

    def warning(self, event: str, **fields: object) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        line = {"event": event, **fields, **self._context, "level": "warning", "timestamp": stamp}
        with contextlib.suppress(OSError):
            os.write(2, json.dumps(line).encode() + b"\n")


def _read_setup(fd: int) -> tuple[bytes | None, bytes]:
    """The setup line from `fd` without reading past what the pipe holds (the ticks
    that follow it are the rest)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None, b""
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the controller dies, however it dies (its pipe covers the rest)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


def _decode(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value is not None else None


if __name__ == "__main__":
    main()
