"""`dockyard events` against a real controller (TLS) with a hollow agent."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import click
import pytest

from dockyard.cli.commands.events import describe, parse_filters
from tests.conftest import BIN, Cluster


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    cluster.start_agent("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
    yield cluster


class Lines:
    """A `dockyard events` process whose stdout lines arrive on a queue."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "dockyard"), *cluster.tls_args(), "-H", cluster.address, "events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster.env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate: Callable[[str], bool], timeout: float = 20) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if predicate(line):
                return seen
        stderr = self.process.stderr.read() if self.process.poll() is not None else ""
        raise AssertionError(f"no such line; saw {seen}; stderr {stderr!r}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.reader.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def test_events_follow_services_and_their_tasks(cluster: Cluster) -> None:
    followed = Lines(cluster, "--filter", "name=web")
    as_json = Lines(cluster, "-f", "type=service", "-o", "json")
    try:
        time.sleep(1)  # both streams open
        cluster.cli(
            "service", "create", "-d", "--name", "web", "--replicas", "2", "busybox", "sleep", "300"
        )
        cluster.cli("service", "create", "-d", "--name", "other", "busybox", "true")
        lines = followed.until(lambda line: " web.2 RUNNING " in line)
        assert any(" service created " in line and " web " in line for line in lines)
        assert not any("other" in line for line in lines)
        first = json.loads(as_json.until(lambda line: '"kind":"service"' in line)[-1])
        assert first["kind"] == "service" and first["type"] == "created"
        assert first["record"]["spec"]["name"] in ("web", "other")
    finally:
        followed.stop()
        as_json.stop()


def test_events_until_a_time_stop_by_themselves(cluster: Cluster) -> None:
    """--until: the stream ends at that time (exit 0) with what happened before it."""
    from datetime import UTC, datetime

    until = datetime.fromtimestamp(time.time() + 6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    followed = Lines(cluster, "-f", "type=service", "--until", until)
    try:
        time.sleep(1.5)
        cluster.cli("service", "create", "-d", "--name", "brief", "busybox", "sleep", "300")
        lines = followed.until(lambda line: " service created " in line and " brief " in line)
        assert followed.process.wait(20) == 0  # ended by itself at --until
    finally:
        followed.stop()
    assert lines
    bad = cluster.cli("events", "--until", "soon", check=False)
    assert bad.returncode == 2 and "invalid time 'soon'" in bad.stderr


def test_events_need_the_http_side(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    cluster.start_controller(["--http-listen", ""])
    result = cluster.cli("events", check=False)
    assert result.returncode == 1 and "has no HTTP side" in result.stderr


def test_filters_and_lines() -> None:
    wanted = parse_filters(("type=task", "name=web"))
    task = {
        "kind": "task",
        "type": "updated",
        "id": "0123456789abcdef",
        "record": {
            "service_name": "web",
            "slot": 2,
            "desired_state": "RUNNING",
            "status": {"state": "RUNNING"},
            "meta": {"updated_at": "2026-11-28T01:02:03.456Z"},
        },
    }
    assert wanted.matches(task)
    assert not wanted.matches({**task, "kind": "node"})
    assert (
        describe(task) == "2026-11-28T01:02:03Z task updated 0123456789ab web.2 RUNNING "
        "(desired RUNNING)"
    )
    assert describe({"kind": "service", "type": "removed", "id": "ab"}) == "- service removed ab"
    with pytest.raises(click.BadParameter, match="unknown filter 'colour=red'"):
        parse_filters(("colour=red",))
