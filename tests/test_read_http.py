"""The reader process's HTTP port (controller/read_http.py) in-process, with a scripted
snapshot source: its bound on reads in progress, and its answer before a view exists.
(End to end, against the controller's HTTP API: tests/test_reader_process.py; TLS and
roles: tests/security/test_read_port_roles.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dockyard.controller.read_http import ReadHttpServer
from dockyard.controller.read_server import MAX_CONCURRENT_CALLS, ReadUnavailable
from dockyard.controller.snapshot import ReadSnapshot
from tests.test_http_api import Reply, fetch


class Scripted:
    """A ReadServer stand-in: `current` blocks until `release`, or raises `failure`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.failure: Exception | None = None

    def current(self) -> tuple[ReadSnapshot, bool]:
        if self.failure is not None:
            raise self.failure
        self.release.wait(30)
        return ReadSnapshot.of(1, {}, {}, {}, {}), False


@pytest.fixture
def served() -> Iterator[tuple[Scripted, str, ReadHttpServer]]:
    source = Scripted()
    server = ReadHttpServer(source, lambda serial: False, None)  # type: ignore[arg-type]
    port = server.start("127.0.0.1:0")
    assert port
    try:
        yield source, f"http://127.0.0.1:{port}", server
    finally:
        source.release.set()
        server.stop(1.0)


def test_reads_beyond_the_bound_are_refused_at_once(
    served: tuple[Scripted, str, ReadHttpServer],
) -> None:
    source, url, server = served
    with ThreadPoolExecutor(MAX_CONCURRENT_CALLS) as pool:
        waiting = [
            pool.submit(fetch, url + "/v1/services", None, "GET", None, 60)
            for _ in range(MAX_CONCURRENT_CALLS)
        ]
        deadline = time.monotonic() + 30
        while server._calls < MAX_CONCURRENT_CALLS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server._calls == MAX_CONCURRENT_CALLS
        refused = fetch(url + "/v1/services", timeout=5)
        assert refused.status == 503 and refused.json()["code"] == "RESOURCE_EXHAUSTED"
        assert refused.headers["Retry-After"] == "1"
        source.release.set()
        answers: list[Reply] = [future.result(30) for future in waiting]
    assert {(a.status, a.body) for a in answers} == {(200, b"[]")}
    assert fetch(url + "/v1/nodes", timeout=5).status == 200  # the slots were freed


def test_before_the_first_list_a_read_is_unavailable(
    served: tuple[Scripted, str, Any],
) -> None:
    source, url, _ = served
    source.failure = ReadUnavailable("this controller's read view is not loaded yet")
    reply = fetch(url + "/v1/nodes", timeout=5)
    assert reply.status == 503 and reply.json()["code"] == "UNAVAILABLE"
    assert "not loaded" in reply.json()["error"]
