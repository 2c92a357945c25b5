"""The lease keeper's process: the leader's lease renewed, and its key checked, from a
process of its own, so that no renewal waits for the controller's GIL.

`python -m dockyard.controller.keeper_process PARENT_PID` is started by the controller
ahead of a term (`KeeperProcess`, controller/leadership.py: a spare waits, so that a
term does not wait for a Python process to start on a loaded host); when a term begins
the controller writes one JSON line on its stdin (the `KeeperSetup`) and then one byte
each time its event loop runs its lease check (a tick). The keeper renews the lease
over etcd's HTTP gateway (controller/etcd_gateway.py) and writes one JSON line on its
stdout for each thing the controller must know:

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
import threading
import time
from dataclasses import asdict, dataclass, field

from dockyard.controller.etcd_gateway import GatewayClient

__all__ = ["EXPIRY_MARGIN", "TICK", "KeeperSetup", "encode", "main"]

# A lease is given up this long before etcd could expire it (controller/leadership.py).
EXPIRY_MARGIN = 1.0
# Logged when the keeper woke this much later than it meant to (the host was starved).
OVERSLEPT = 0.1
TICK = b"."
# The keeper's nice value (when the controller may lower it: root, CAP_SYS_NICE).
KEEPER_NICE = -10
# Renewals asked and not yet answered, at most (each has its own connection).
ASKS_IN_FLIGHT = 3
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class KeeperSetup:
    """What the leader's term tells its keeper (PEMs base64-encoded)."""

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
    """Renews the lease while the controller ticks, reporting each success.

    An ask every (TTL - margin)/3, timed from the previous ask (not from its answer), and
    the asks overlap: each runs on a thread of its own with its own connection (up to
    ASKS_IN_FLIGHT), and may take until its own renewal would be worth nothing (asked +
    TTL - margin), so one late answer does not leave the next ask only the rest of the
    window. An answer counts only while the window (the latest expiry less the margin)
    is still open when it comes; the expiry it gives is its ask's time plus the TTL.
    """

    def __init__(
        self, setup: KeeperSetup, clients: list[GatewayClient], ticks: int, out: int
    ) -> None:
        self._setup = setup
        self._log = _Log(lease=f"{setup.lease:x}")
        self._idle = list(clients)
        self._ticks = ticks
        self._out = out
        self._poller = select.epoll()
        self._poller.register(ticks, select.EPOLLIN)
        self._lock = threading.Lock()
        self._done = threading.Event()  # the key is not ours: no more asks
        self.expires = setup.expires
        self.ticked = time.monotonic()

    def run(self) -> None:
        """Ask at once (the term's grant was asked before this process started, which
        may have taken a while on a loaded host), then every (TTL - margin)/3."""
        period = (self._setup.ttl - EXPIRY_MARGIN) / 3
        wake = time.monotonic()
        while not self._done.is_set():
            if not self._wait(wake):
                return
            now = time.monotonic()
            if now - wake > OVERSLEPT:
                self._log.warning("leadership.keeper_overslept", seconds=round(now - wake, 3))
            if not self._ask(now):
                return
            wake = max(wake + period, now)

    def _wait(self, until: float) -> bool:
        """Read the controller's ticks until `until` (relative epoll timeouts: they
        follow the monotonic clock); False when its pipe ended or the term is over."""
        while not self._done.is_set():
            left = max(0.0, min(until - time.monotonic(), OVERSLEPT))
            if self._poller.poll(left) and not self._read_ticks():
                return False
            if time.monotonic() >= until:
                return True
        return False

    def _read_ticks(self) -> bool:
        try:
            data = os.read(self._ticks, 4096)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.ticked = time.monotonic()
        return True

    def _ask(self, asked: float) -> bool:
        """Start one renewal; False when the keeper is done (the controller's loop hung,
        or the lease's time is up)."""
        if asked - self.ticked > self._setup.stall_limit:
            self._report(lost="leadership.loop_stalled")
            return False
        with self._lock:
            left = self.expires - EXPIRY_MARGIN - asked
            client = self._idle.pop() if self._idle else None
        if left <= 0:
            self._log.warning("leadership.keeper_late", late=round(-left, 3), slept_past="window")
            return False
        if client is None:
            self._log.warning("leadership.asks_in_flight", count=ASKS_IN_FLIGHT)
            return True
        threading.Thread(target=self._renew, args=(client, asked), daemon=True).start()
        return True

    def _renew(self, client: GatewayClient, asked: float) -> None:
        """One renewal and key check, on a thread of its own, until the ask's own
        renewal would be worth nothing (asked + TTL - margin)."""
        setup = self._setup
        deadline = asked + setup.ttl - EXPIRY_MARGIN
        try:
            alive = client.keep_alive(setup.lease, deadline - time.monotonic())
            renewed = time.monotonic()
            ours = alive and self._holds(client, deadline)
        except Exception as exc:  # any failure is a missed refresh
            self._log.warning(
                "leadership.refresh_failed",
                error=f"{type(exc).__name__}: {exc}",
                took=round(time.monotonic() - asked, 3),
                window=round(self.expires - EXPIRY_MARGIN - asked, 3),
            )
            return
        finally:
            with self._lock:
                self._idle.append(client)
        self._answered(asked, renewed, alive, ours)

    def _answered(self, asked: float, renewed: float, alive: bool, ours: bool) -> None:
        """Count an answer that came while the window is open; a lease or key found
        gone in time ends the term."""
        setup = self._setup
        with self._lock:
            took = time.monotonic() - asked
            window = self.expires - EXPIRY_MARGIN
            in_time = time.monotonic() < window
            if ours and in_time:
                self.expires = max(self.expires, asked + setup.ttl)
                self._report(expires=self.expires, took=round(took, 4))
        if took > setup.ttl / 6:
            self._log.warning(
                "leadership.refresh_slow",
                took=round(took, 3),
                keep_alive=round(renewed - asked, 3),
                window=round(window - asked, 3),
                ok=ours and in_time,
            )
        if not in_time:
            self._log.warning("leadership.keeper_late", late=round(took, 3), slept_past="answer")
        elif not ours:
            self._log.warning("leadership.key_lost", lease_alive=alive)
            self._report(lost="leadership.key_lost")
            self._done.set()

    def _holds(self, client: GatewayClient, deadline: float) -> bool:
        revision = client.create_revision(self._setup.fence_key, deadline - time.monotonic())
        return revision == self._setup.fence_revision

    def _report(self, **fields: object) -> None:
        try:
            os.write(self._out, json.dumps(fields).encode() + b"\n")
        except BrokenPipeError:  # the controller stopped reading: its term is over
            self._done.set()


def main() -> None:
    """The keeper process's entry point."""
    _die_with_parent(int(sys.argv[1]))
    _raise_priority()
    # A spare keeper waits here until its controller is elected.
    setup_line, ticks = _read_setup(0)
    if setup_line is None:
        sys.exit(0)  # the controller went away before it said anything
    setup = KeeperSetup.from_line(setup_line)
    credentials = {k: _decode(v) for k, v in setup.etcd_credentials.items()}
    clients = [
        GatewayClient(setup.etcd_endpoints, credentials, setup.etcd_server_name)
        for _ in range(ASKS_IN_FLIGHT)
    ]
    os.set_blocking(0, False)
    keeper = Keeper(setup, clients, 0, 1)
    if ticks:
        keeper.ticked = time.monotonic()
    keeper.run()
    # The asks still in flight are daemon threads: they end with the process.


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


def _raise_priority() -> None:
    """Ask for a CPU before the host's other work when a renewal is due: the keeper
    needs little, but on a loaded host it woke 0.1-0.4 s late at nice 0 (a process of
    its own shares no GIL, so this priority delays no thread of the controller's)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, KEEPER_NICE)


def _decode(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value is not None else None


if __name__ == "__main__":
    main()
