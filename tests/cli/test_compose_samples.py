"""Real compose files from public projects (tests/compose_samples/, origins in its
README) load as stacks: what is honoured, what is listed as ignored, what is carried
through for the network code. docs/stacks.md has the same table in prose."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.cli.commands.compose import load_stack

SAMPLES = Path(__file__).parent.parent / "compose_samples"

TABLE = [
    (
        "voting-app/docker-stack.yml",
        {"db", "redis", "result", "visualizer", "vote", "worker"},
        ["services.vote.depends_on", "services.result.depends_on"],
        {"worker": ["frontend", "backend"], "visualizer": None},
    ),
    (
        "prometheus-grafana/docker-stack.yml",
        {"alertmanager", "cadvisor", "grafana", "node-exporter", "prometheus"},
        [
            "services.prometheus.depends_on",
            "services.prometheus.restart",
            "services.node-exporter.restart",
            "services.alertmanager.restart",
            "services.cadvisor.restart",
            "services.grafana.depends_on",
            "services.grafana.restart",
        ],
        {"grafana": ["monitor-net"]},
    ),
    (
        "wordpress-mysql/compose.yaml",
        {"db", "phpmyadmin", "wordpress"},
        [
            "services.db.restart",
            "services.db.expose",
            "services.wordpress.restart",
            "services.phpmyadmin.depends_on",
            "services.phpmyadmin.restart",
        ],
        {"db": None},
    ),
]


@pytest.mark.parametrize(("path", "services", "ignored", "networks"), TABLE)
def test_public_compose_files_load(
    path: str, services: set[str], ignored: list[str], networks: dict[str, object]
) -> None:
    stack = load_stack("demo", [str(SAMPLES / path)], {})
    assert set(stack.services) == services
    assert stack.ignored == ignored
    assert stack.warnings == []
    for name, expected in networks.items():
        assert stack.services[name].networks == expected
    for name, loaded in stack.services.items():
        assert loaded.spec.name == f"demo_{name}"


def test_what_the_samples_mean_once_loaded() -> None:
    prometheus = load_stack("mon", [str(SAMPLES / "prometheus-grafana/docker-stack.yml")], {})
    grafana = prometheus.specs["grafana"].task.container
    assert "GF_USERS_ALLOW_SIGN_UP=false" in grafana.env  # env_file, relative to the file
    mounts = {m.target: (m.type, m.source) for m in grafana.mounts}
    provisioning = SAMPLES / "prometheus-grafana/grafana/provisioning"
    assert mounts["/etc/grafana/provisioning/"] == ("bind", str(provisioning))
    assert mounts["/var/lib/grafana"] == ("volume", "grafana_data")
    exporter = prometheus.specs["node-exporter"]
    assert exporter.WhichOneof("mode") == "global"
    assert exporter.task.container.command[-1].endswith("($|/)")  # `$$` is a literal `$`
    assert list(prometheus.specs["prometheus"].task.placement.constraints) == ["node.role==manager"]

    voting = load_stack("vote", [str(SAMPLES / "voting-app/docker-stack.yml")], {})
    worker = voting.specs["worker"]
    assert worker.labels["APP"] == "VOTING"
    policy = worker.task.restart_policy
    assert (policy.max_attempts, policy.delay_seconds, policy.window_seconds) == (3, 10, 120)
    assert [(p.published_port, p.target_port) for p in voting.specs["vote"].task.ports] == [
        (5000, 80)
    ]
    assert voting.specs["visualizer"].task.container.stop_grace_seconds == 90
