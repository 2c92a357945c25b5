"""A real agent's `/metrics` over real runc containers: memory a container allocates shows
in its working set, an OOM kill increments its counter, and the text parses."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.v1 import containers_pb2 as cpb
from tests.agent.conftest import Agent, ImageRegistry, wait_until
from tests.ports import free_port

pytestmark = pytest.mark.runc

MiB = 2**20

Samples = dict[str, dict[str, float]]
"""metric name -> container name (or pull source, or store part) -> value."""


@pytest.fixture
def metrics_agent(agent_factory: Any, image_registry: ImageRegistry) -> tuple[Agent, str]:
    port = free_port()
    agent: Agent = agent_factory(extra=["--metrics-listen", f"127.0.0.1:{port}"]).start()
    assert agent.pull(image_registry.busybox)[-1].done
    return agent, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> Samples:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = labels.get("name") or labels.get("source") or labels.get("part") or ""
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def start(agent: Agent, image: str, name: str, script: str, memory: int) -> str:
    record = agent.containers.Create(
        cpb.CreateContainerRequest(
            image=image, name=name, command=["sh", "-c", script], memory_bytes=memory
        ),
        timeout=30,
    )
    agent.containers.Start(cpb.ContainerRef(container=record.id), timeout=30)
    return record.id


def exec_code(agent: Agent, container: str, *command: str) -> int:
    outputs = list(
        agent.containers.Exec(cpb.ExecRequest(container=container, command=list(command)))
    )
    return outputs[-1].exit_code


def test_allocated_memory_shows_in_the_working_set(
    metrics_agent: tuple[Agent, str], image_registry: ImageRegistry
) -> None:
    agent, url = metrics_agent
    busybox = image_registry.busybox
    # The shell keeps 48 MiB in a variable, then idles (a command after the sleep keeps it
    # from exec'ing into the sleep); its neighbour only idles.
    start(
        agent,
        busybox,
        "hog",
        "x=$(head -c 48m /dev/zero | tr '\\0' a); touch /ready; sleep 120; echo $x | head -c 1",
        256 * MiB,
    )
    start(agent, busybox, "idle", "sleep 120", 0)
    wait_until(
        lambda: exec_code(agent, "hog", "test", "-e", "/ready") == 0,
        "the hog to fill its memory",
        timeout=60,
    )
    found = scrape(url)
    working = found["container_memory_working_set_bytes"]
    assert working["hog"] >= 48 * MiB, working
    assert working["idle"] < 16 * MiB, working
    assert found["container_spec_memory_limit_bytes"] == {"hog": 256 * MiB, "idle": 0}
    assert found["container_cpu_usage_seconds_total"]["hog"] > 0
    assert found["container_threads"]["idle"] >= 1
    assert found["dockyard_container_running"] == {"hog": 1, "idle": 1}
    assert found["container_oom_events_total"] == {"hog": 0, "idle": 0}
    assert found["dockyard_conmon_processes"][""] == 2
    assert found["dockyard_conmon_resident_memory_bytes"][""] > 0
    assert found["dockyard_agent_process_resident_memory_bytes"][""] > 0
    assert found["dockyard_image_store_bytes"]["snapshots"] > 1_000_000  # busybox unpacked
    assert found["dockyard_image_store_bytes"]["blobs"] > 500_000
    # the fixture pulled busybox (config and one layer) from the registry, none from peers
    assert found["dockyard_image_pull_blobs_total"] == {"registry": 2, "peer": 0}
    assert found["dockyard_image_pull_bytes_total"]["registry"] > 500_000
    assert found["dockyard_image_pull_seconds_total"]["registry"] > 0


def test_an_oom_kill_increments_the_counter(
    metrics_agent: tuple[Agent, str], image_registry: ImageRegistry
) -> None:
    agent, url = metrics_agent
    cid = start(
        agent,
        image_registry.busybox,
        "greedy",
        "while [ ! -e /go ]; do sleep 0.1; done; x=$(head -c 64m /dev/zero | tr '\\0' a)",
        16 * MiB,
    )
    before = scrape(url)
    assert before["container_oom_events_total"]["greedy"] == 0
    assert before["dockyard_container_running"]["greedy"] == 1
    list(agent.containers.Exec(cpb.ExecRequest(container="greedy", command=["touch", "/go"])))
    exit_info = agent.containers.Wait(cpb.ContainerRef(container=cid), timeout=60)
    assert exit_info.exit_code == 137
    deadline = time.monotonic() + 30
    while (after := scrape(url))["dockyard_container_running"]["greedy"] != 0:
        assert time.monotonic() < deadline, "the exit never showed"
        time.sleep(0.2)
    assert after["container_oom_events_total"]["greedy"] == 1
    assert "greedy" not in after.get("container_memory_usage_bytes", {})  # no cgroup left


def test_a_taken_metrics_port_stops_the_start(agent_factory: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent: Agent = agent_factory(extra=["--metrics-listen", f"127.0.0.1:{port}"])
        with pytest.raises(AssertionError, match=r"cannot listen on .* \(--metrics-listen\)"):
            agent.start()
