"""The lease keeper (a process of its own, controller/keeper_process.py) against a slow
etcd: a fake of etcd's HTTP gateway that answers each renewal late.

The fake counts the lease as etcd does: a renewal extends it from the moment etcd
handles it (at once here: the delay is all on the way back, as when the keeper is
starved before it reads the answer), and a lease not renewed within its TTL is gone for
good. The keeper must give the term up when the answers come too late, and never claim
the lease (its `expires` less the margin, what `Leadership.holds` reads) after etcd
expired it, nor again once it gave it up; it must stop renewing when the controller's
loop stops ticking, when its pipe ends, and when the controller dies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dockyard.controller.keeper_process import EXPIRY_MARGIN, KeeperSetup
from dockyard.controller.leadership import LeaseKeeper
from dockyard.controller.records import Fence
from dockyard.v1.types_pb2 import LeaderRecord

TTL = 2
SAMPLE = 0.02  # how often the test looks at what the keeper claims
# The lease is granted this much longer than TTL: time for the keeper's process to start
# on a loaded host (a term's loop renewer covers that time in the controller).
GRACE = 3.0
HANG = 3 * TTL  # how late a hung renewal is answered
FENCE = Fence("/dockyard/leader/current", 7)
LEASE = 0x1234


@dataclass
class SlowEtcd:
    """A lease in a fake etcd whose renewals are answered `delay` seconds after asked."""

    delay: float
    hang: int = -1  # this renewal (counted from 0) is answered only after HANG seconds
    ttl: float = TTL
    expires: float = field(default_factory=lambda: time.monotonic() + TTL + GRACE)
    renewals: list[float] = field(default_factory=list)  # when each one was handled
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alive(self, now: float) -> bool:
        with self.lock:
            return now < self.expires

    def handle(self, at: float) -> bool:
        """etcd handles a renewal at `at`: it extends a lease that has not expired."""
        with self.lock:
            self.renewals.append(at)
            if at >= self.expires:
                return False
            self.expires = max(self.expires, at + self.ttl)
            return True


class FakeGateway:
    """etcd's `/v3/lease/keepalive` and `/v3/kv/range` over HTTP, answering late."""

    def __init__(self, etcd: SlowEtcd) -> None:
        self.etcd = etcd
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer(fake.answer(self.path, body))

            def _answer(self, reply: dict[str, Any]) -> None:
                data = json.dumps(reply).encode() + b"\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a hung answer's asker is gone
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/v3/lease/keepalive":
            asked = time.monotonic()
            hung = len(self.etcd.renewals) == self.etcd.hang
            alive = self.etcd.handle(asked)
            delay = HANG if hung else self.etcd.delay
            time.sleep(max(0.0, asked + delay - time.monotonic()))
            ttl = str(int(self.etcd.ttl)) if alive and int(body["ID"]) == LEASE else "0"
            return {"result": {"ID": body["ID"], "TTL": ttl}}
        key = base64.b64decode(body["key"]).decode()
        kv = {"create_revision": str(FENCE.create_revision)}
        return {"kvs": [kv] if key == FENCE.key else []}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class FakeStore:
    """What `LeaseKeeper` asks of the Store: etcd's endpoints and TLS settings."""

    endpoints: list[str]

    def client_settings(self) -> tuple[dict[str, bytes | None], str | None]:
        return {"ca_cert": None}, None


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway(SlowEtcd(delay=0.0))
    try:
        yield fake
    finally:
        fake.close()


def _watch(etcd: SlowEtcd, keeper: LeaseKeeper, seconds: float) -> tuple[float, list[str]]:
    """For `seconds` (while ticking the keeper, as the controller's loop does): the time
    the keeper stopped claiming the lease (0: it never did; the term ends there), and
    every moment it claimed a lease etcd had expired or claimed it again once stopped."""
    unsafe: list[str] = []
    stopped = 0.0
    start = time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        keeper.tick()
        claimed = now < keeper.expires - EXPIRY_MARGIN
        if claimed and not etcd.alive(now):
            unsafe.append(f"claimed at +{now - start:.2f} s, etcd expired it")
        if claimed and stopped:
            unsafe.append(f"claimed again at +{now - start:.2f} s after the term ended")
        if not claimed and not stopped:
            stopped = now - start
        time.sleep(SAMPLE)
    return stopped, unsafe


def _keeper(
    gateway: FakeGateway, delay: float, stall_limit: float = 30.0, hang: int = -1
) -> LeaseKeeper:
    gateway.etcd = SlowEtcd(delay=delay, hang=hang)
    store = FakeStore([gateway.endpoint])
    keeper = LeaseKeeper(
        store,  # type: ignore[arg-type]
        LEASE,
        FENCE,
        TTL,
        gateway.etcd.expires,
        LeaderRecord(),
        stall_limit=stall_limit,
    )
    keeper.start()
    return keeper


def test_prompt_answers_keep_the_term(gateway: FakeGateway) -> None:
    """The keeper's process renews the lease and reports each renewal's expiry."""
    keeper = _keeper(gateway, delay=0.0)
    try:
        stopped, unsafe = _watch(gateway.etcd, keeper, GRACE + 2.5 * TTL)
        assert not unsafe
        assert not stopped, "the keeper let a promptly renewed lease go"
        assert keeper.renewals and keeper.lost is None
    finally:
        asyncio.run(keeper.stop())


def test_one_hung_ask_does_not_cost_the_term(gateway: FakeGateway) -> None:
    """One keep-alive among prompt ones never answered in time: the asks are timed from
    the previous ask and overlap, so the next ones renew the lease meanwhile (a keeper
    that waits for each answer before it asks again waited out the window on it and
    the term was lost)."""
    keeper = _keeper(gateway, delay=0.0, hang=4)
    try:
        stopped, unsafe = _watch(gateway.etcd, keeper, GRACE + 3 * TTL)
        assert not unsafe
        assert len(gateway.etcd.renewals) > 4, "the hung ask was not reached"
        assert not stopped, "one hung ask cost the term"
    finally:
        asyncio.run(keeper.stop())


def test_a_renewal_answered_after_the_window_counts_for_nothing(gateway: FakeGateway) -> None:
    """Keep-alives answered 1.2 s late on a 2 s lease with its 1 s margin: etcd renews
    the lease each time, but an answer cannot come within the window the renewal before
    left, so the keeper stops claiming the lease (before etcd expires it). What it
    counted, it counted from the ask (never past what etcd handled, plus the TTL)."""
    keeper = _keeper(gateway, delay=1.2)
    granted = gateway.etcd.expires
    try:
        stopped, unsafe = _watch(gateway.etcd, keeper, GRACE + 2 * TTL)
        assert not unsafe
        assert stopped, "the keeper kept a lease whose every answer came late"
        renewals = list(gateway.etcd.renewals)
        assert renewals, "the keeper asked no renewal at all"
        assert keeper.expires <= max(granted, renewals[-1] + TTL)
    finally:
        asyncio.run(keeper.stop())


def test_a_loop_that_stops_ticking_loses_the_term(gateway: FakeGateway) -> None:
    """The controller's loop ticks the keeper; once it has not for the stall limit, the
    keeper renews no more and says why, and the lease is let go."""
    keeper = _keeper(gateway, delay=0.0, stall_limit=1.0)
    try:
        _wait_for(lambda: keeper.lost is not None, "the keeper to give the term up", 4 * TTL)
        assert keeper.lost == "leadership.loop_stalled"
        renewed = len(gateway.etcd.renewals)
        etcd = gateway.etcd
        _wait_for(lambda: not etcd.alive(time.monotonic()), "the lease to expire", GRACE + TTL)
        assert len(etcd.renewals) == renewed, "renewed for a loop that hung"
    finally:
        asyncio.run(keeper.stop())


def test_the_keeper_stops_when_its_pipe_ends(gateway: FakeGateway) -> None:
    """The keeper's stdin ending (the term is over, the controller gone) ends it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dockyard.controller.keeper_process", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(_setup(gateway).to_line())
        process.stdin.flush()
        _wait_for(lambda: len(gateway.etcd.renewals) >= 2, "the keeper to renew", 4 * TTL)
        process.stdin.close()
        assert process.wait(timeout=4 * TTL) == 0
    finally:
        process.kill()
        process.wait()
        if process.stdin is not None:
            process.stdin.close()


PARENT = """
import os, subprocess, sys, time
from dockyard.controller.leadership import LeaseKeeper
from dockyard.controller.records import Fence
from dockyard.v1.types_pb2 import LeaderRecord

class Store:
    endpoints = [sys.argv[1]]
    def client_settings(self):
        return {"ca_cert": None}, None

keeper = LeaseKeeper(Store(), %d, Fence(%r, %d), %d, time.monotonic() + %f, LeaderRecord())
keeper.start()
# The keeper's pipes outlive this process (a sleeper holds them): only the kernel's
# PR_SET_PDEATHSIG ends the keeper when this process dies.
holder = subprocess.Popen(["sleep", "60"], pass_fds=(keeper._ticks, keeper._reports))
print(keeper.pid, holder.pid, flush=True)
while True:
    keeper.tick()
    time.sleep(0.05)
"""


def test_a_keeper_whose_controller_dies_stops_renewing(gateway: FakeGateway) -> None:
    """The controller SIGKILLed (its keeper's pipe kept open by another process): the
    kernel kills the keeper, and no renewal comes after."""
    script = PARENT % (LEASE, FENCE.key, FENCE.create_revision, TTL, TTL + GRACE)
    parent = subprocess.Popen(
        [sys.executable, "-c", script, gateway.endpoint], stdout=subprocess.PIPE
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2, "the controller's stand-in did not start its keeper"
        _wait_for(lambda: len(gateway.etcd.renewals) >= 2, "the keeper to renew", 4 * TTL)
        parent.kill()
        parent.wait()
        _wait_for(lambda: not _alive(pids[0]), "the keeper to die with its controller", 4 * TTL)
        renewed = len(gateway.etcd.renewals)
        time.sleep(TTL)
        assert len(gateway.etcd.renewals) == renewed, "renewed for a dead controller"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in pids:
            _kill(pid)


def _setup(gateway: FakeGateway) -> KeeperSetup:
    return KeeperSetup(
        lease=LEASE,
        fence_key=FENCE.key,
        fence_revision=FENCE.create_revision,
        ttl=TTL,
        expires=gateway.etcd.expires,
        stall_limit=30.0,
        etcd_endpoints=[gateway.endpoint],
    )


def _wait_for(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(SAMPLE)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
