"""Compose files to service specs (no daemon), and `dockyard stack` on a real controller."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.cli.commands.compose import STACK_LABEL, interpolate, stack_from_documents
from dockyard.cli.commands.service_parse import SpecError
from dockyard.v1.workloads_pb2 import RestartPolicy, UpdateConfig
from tests.conftest import Cluster

COMPOSE = """
version: "3.8"
x-common: &common
  environment:
    MODE: ${MODE:-slow}
    COST: $$5
services:
  web:
    image: busybox:1.36
    command: ["httpd", "-f", "-p", "8080"]
    <<: *common
    ports: ["8080:8080", {target: 53, published: 5353, protocol: udp}]
    healthcheck:
      test: ["CMD", "true"]
      interval: 5s
      retries: 2
    stop_grace_period: 3s
    labels: {tier: front}
    depends_on: [api]
    deploy:
      replicas: 3
      labels: {team: web}
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {memory: 32M}
      restart_policy: {condition: on-failure, max_attempts: 2}
      update_config: {parallelism: 2, order: start-first, failure_action: rollback}
      placement:
        constraints: [node.labels.zone==a]
        preferences: [{spread: node.labels.rack}]
        max_replicas_per_node: 2
  agent:
    image: busybox
    command: sleep 3600
    deploy: {mode: global}
    healthcheck: {disable: true}
"""


def test_a_compose_file_becomes_specs() -> None:
    stack = stack_from_documents("shop", [("c.yml", yaml.safe_load(COMPOSE))], {"MODE": "fast"})
    web, agent = stack.specs["web"], stack.specs["agent"]
    assert (web.name, web.labels[STACK_LABEL], web.labels["team"]) == ("shop_web", "shop", "web")
    container = web.task.container
    assert list(container.command) == ["httpd", "-f", "-p", "8080"]
    assert list(container.env) == ["MODE=fast", "COST=$5"]
    assert container.labels["tier"] == "front" and container.labels[STACK_LABEL] == "shop"
    assert list(container.healthcheck.test) == ["CMD", "true"]
    assert (container.healthcheck.interval_seconds, container.healthcheck.retries) == (5, 2)
    assert container.stop_grace_seconds == 3
    assert [(p.published_port, p.target_port, p.protocol) for p in web.task.ports] == [
        (8080, 8080, "tcp"),
        (5353, 53, "udp"),
    ]
    assert web.replicated.replicas == 3
    resources = web.task.resources
    assert (resources.limits.nano_cpus, resources.limits.memory_bytes) == (5 * 10**8, 64 << 20)
    assert resources.reservations.memory_bytes == 32 << 20
    assert web.task.restart_policy.condition == RestartPolicy.ON_FAILURE
    assert web.task.restart_policy.max_attempts == 2
    assert (web.update.parallelism, web.update.order) == (2, UpdateConfig.START_FIRST)
    assert web.update.failure_action == UpdateConfig.ROLLBACK
    assert list(web.task.placement.constraints) == ["node.labels.zone==a"]
    assert web.task.placement.preferences[0].spread == "node.labels.rack"
    assert web.task.placement.max_replicas_per_node == 2
    assert agent.WhichOneof("mode") == "global"
    assert list(agent.task.container.command) == ["sleep", "3600"]
    assert list(agent.task.container.healthcheck.test) == ["NONE"]
    assert stack.ignored == ["services.web.depends_on"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"services": {"a": {"image": "b", "colour": "red"}}},
            "services.a.colour: additional property not allowed",
        ),
        ({"services": {"a": {"build": "."}}}, "services.a: an image is required"),
        ({"services": {"a": {"image": "busybox", "deploy": {"replicas": -1}}}}, "services.a: "),
        ({"services": {"a": {"image": "busybox", "ports": ["1.2.3.4:80:80"]}}}, "host IP"),
        ({"servces": {}}, "servces: additional property not allowed"),
        ({"services": {}}, "define no `services:`"),
        ({"services": {"a": {"image": "b"}}, "wat": 1}, "wat: additional property not allowed"),
        ({"services": {"a": {"image": "b", "healthcheck": {"test": ["CMD"]}}}}, "healthcheck.test"),
    ],
)
def test_bad_compose_files_name_the_key(doc: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        stack_from_documents("s", [("c.yml", doc)], {})


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-$A-${B:-x}-${EMPTY:-y}-$$", env) == "1-1-x-y-$"
    assert interpolate({"k": ["${A}"]}, env) == {"k": ["1"]}


def test_stack_deploy_update_prune_and_rm(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory()
    cluster.start_controller()
    cluster.start_agent("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
    first = tmp_path / "v1.yml"
    first.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "web": {"image": "busybox", "command": "sleep 300", "deploy": {"replicas": 2}},
                    "worker": {"image": "busybox", "command": "sleep 300"},
                }
            }
        )
    )
    deployed = cluster.cli("stack", "deploy", "-c", str(first), "--wait", "shop", timeout=60)
    assert "Creating service shop_web" in deployed.stderr
    assert "Creating network shop_default" in deployed.stderr
    assert cluster.cli("stack", "ls").stdout.split() == ["NAME", "SERVICES", "shop", "2"]
    services = cluster.cli("stack", "services", "shop").stdout
    assert "shop_web" in services and "2/2" in services and "shop_worker" in services
    tasks = cluster.cli("stack", "ps", "shop", "-o", "json").stdout
    assert len(json.loads(tasks)) == 3

    second = tmp_path / "v2.yml"
    second.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "web": {"image": "busybox", "command": "sleep 300", "deploy": {"replicas": 3}},
                }
            }
        )
    )
    redeployed = cluster.cli("stack", "deploy", "-c", str(second), "--prune", "shop")
    assert "Updating service shop_web" in redeployed.stderr
    assert "Removing service shop_worker" in redeployed.stderr
    listed = json.loads(cluster.cli("stack", "services", "shop", "-o", "json").stdout)
    assert [
        (s["service"]["spec"]["name"], s["service"]["spec"]["replicated"]["replicas"])
        for s in listed
    ] == [("shop_web", "3")]

    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  web:\n    image: busybox\n    deploy: {replicas: lots}\n")
    refused = cluster.cli("stack", "deploy", "-c", str(bad), "shop", check=False)
    assert refused.returncode == 1 and "services.web" in refused.stderr
    assert (
        json.loads(cluster.cli("stack", "services", "shop", "-o", "json").stdout)[0]["service"][
            "spec"
        ]["replicated"]["replicas"]
        == "3"
    )  # nothing written

    removed = cluster.cli("stack", "rm", "shop")
    assert "Removing service shop_web" in removed.stderr
    assert "Removing network shop_default" in removed.stderr
    assert cluster.cli("stack", "ls").stdout.split() == ["NAME", "SERVICES"]
    assert cluster.cli("network", "ls", "-q").stdout.strip() == ""
    missing = cluster.cli("stack", "rm", "shop", check=False)
    assert missing.returncode == 1 and "nothing found in stack: shop" in missing.stderr


def test_volumes_are_bind_mounts_or_tmpfs(tmp_path: Path) -> None:
    doc = {
        "services": {
            "db": {
                "image": "busybox",
                "tmpfs": "/run",
                "volumes": [
                    "/srv/db:/var/lib/db:ro",
                    {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "1m"}},
                    {"type": "bind", "source": "/srv/logs", "target": "/logs"},
                ],
            }
        }
    }
    mounts = stack_from_documents("s", [("c.yml", doc)], {}).specs["db"].task.container.mounts
    assert [(m.type, m.source, m.target, m.read_only, m.tmpfs_size_bytes) for m in mounts] == [
        ("bind", "/srv/db", "/var/lib/db", True, 0),
        ("tmpfs", "", "/cache", False, 1 << 20),
        ("bind", "/srv/logs", "/logs", False, 0),
        ("tmpfs", "", "/run", False, 0),
    ]
    named = {"services": {"db": {"image": "busybox", "volumes": ["data:/var/lib/db"]}}}
    (mount,) = stack_from_documents("s", [("c.yml", named)], {}).specs["db"].task.container.mounts
    assert (mount.type, mount.source, mount.target) == ("volume", "data", "/var/lib/db")
    relative = {"services": {"db": {"image": "busybox", "volumes": ["./data:/data:ro"]}}}
    source = tmp_path / "deploy" / "c.yml"
    stack = stack_from_documents("s", [(str(source), relative)], {})
    (mount,) = stack.specs["db"].task.container.mounts
    expected = ("bind", str(tmp_path / "deploy" / "data"), True)
    assert (mount.type, mount.source, mount.read_only) == expected
