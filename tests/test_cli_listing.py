"""--filter, --format, -q and --no-trunc of the list commands against real records: a
TLS controller, hollow agents, a service updated once (so it has task history)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("listing") / "cluster")
    cluster.root.mkdir(parents=True)
    try:
        cluster.start_controller()
        cluster.start_hollow_nodes(("n1", "n2"))
        cluster.cli("node", "update", "--label-add", "zone=eu", "n1")
        cluster.cli(
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--label",
            "tier=front",
            "busybox",
            "sleep",
            "3600",
        )
        cluster.cli(
            "service", "create", "--name", "db", "--replicas", "1", "busybox", "sleep", "3600"
        )
        cluster.cli("service", "update", "--env-add", "V=2", "web")  # replaces web's tasks
        yield cluster
    finally:
        cluster.stop()


def lines(cluster: Cluster, *args: str) -> list[str]:
    return cluster.cli(*args).stdout.splitlines()


def test_node_ls_filter_format_quiet(cluster: Cluster) -> None:
    assert lines(cluster, "node", "ls", "--format", "{{.Hostname}}") == ["n1", "n2"]
    assert lines(
        cluster,
        "node",
        "ls",
        "-f",
        "node.label=zone=eu",
        "--format",
        "{{.Hostname}} {{.Status}} {{.Labels}}",
    ) == ["n1 READY zone=eu"]
    ids = lines(cluster, "node", "ls", "-q")
    assert len(ids) == 2 and all(len(i) > 12 for i in ids)
    prefix = ids[0][:6]
    assert lines(cluster, "node", "ls", "-q", "--filter", f"id={prefix}") == [ids[0]]
    full = lines(cluster, "node", "ls", "--no-trunc", "--format", "{{.ID}}")
    assert sorted(full) == sorted(ids)
    table = lines(
        cluster, "node", "ls", "--format", "table {{.Hostname}}\\t{{upper .Availability}}"
    )
    assert table == ["HOSTNAME   AVAILABILITY", "n1         ACTIVE", "n2         ACTIVE"]
    records = [json.loads(line) for line in lines(cluster, "node", "ls", "--format", "json")]
    assert [r["Hostname"] for r in records] == ["n1", "n2"]
    bad = cluster.cli("node", "ls", "--format", "{{.Nope}}", check=False)
    assert bad.returncode == 2 and "no field .Nope" in bad.stderr
    bad = cluster.cli("node", "ls", "-f", "colour=red", check=False)
    assert bad.returncode == 2 and "unknown filter 'colour'" in bad.stderr


def test_service_ls_filters(cluster: Cluster) -> None:
    fmt = ("--format", "{{.Name}}")
    assert lines(cluster, "service", "ls", *fmt) == ["db", "web"]
    assert lines(cluster, "service", "ls", "-f", "label=tier=front", *fmt) == ["web"]
    assert lines(cluster, "service", "ls", "-f", "name=d", *fmt) == ["db"]
    assert lines(cluster, "service", "ls", "-f", "mode=global", *fmt) == []
    assert lines(cluster, "service", "ls", "-f", "mode=replicated", *fmt) == ["db", "web"]
    cluster.cli("job", "run", "-d", "--name", "once", "--label", "batch=1", "busybox", "true")
    cluster.cli("job", "run", "-d", "--name", "twice", "busybox", "true")
    assert lines(cluster, "job", "ls", *fmt) == ["once", "twice"]
    assert lines(cluster, "job", "ls", "-f", "label=batch", *fmt) == ["once"]
    assert lines(cluster, "service", "ls", "-f", "mode=replicated-job", *fmt) == ["once", "twice"]


def test_service_ps_shows_history_and_filters_narrow_it(cluster: Cluster) -> None:
    def states() -> list[str]:
        return lines(cluster, "service", "ps", "web", "--format", "{{.DesiredState}}")

    cluster.wait_for(
        lambda: sorted(states()) == ["Running"] * 2 + ["Shutdown"] * 2,
        "web: 2 running tasks and the 2 it replaced",
    )
    running = lines(
        cluster,
        "service",
        "ps",
        "web",
        "-f",
        "desired-state=running",
        "--format",
        "{{.Name}} {{.DesiredState}}",
    )
    assert sorted(running) == ["web.1 Running", "web.2 Running"]
    table = lines(cluster, "service", "ps", "web")
    assert sum(" \\_ web." in line for line in table) == 2  # docker's history marker
    on_n1 = lines(
        cluster, "node", "ps", "n1", "-f", "desired-state=running", "--format", "{{.Node}}"
    )
    assert on_n1 and set(on_n1) == {"n1"}
    assert lines(
        cluster, "service", "ps", "web", "db", "-f", "name=db.1", "--format", "{{.Name}}"
    ) == ["db.1"]
    bad = cluster.cli("service", "ps", "web", "-f", "desired-state=sleeping", check=False)
    assert bad.returncode == 2 and "desired-state=sleeping" in bad.stderr


def test_secret_ls_filters(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("secret") / "value"
    data.write_text("s3cret")
    cluster.cli("secret", "create", "--label", "app=web", "api-key", str(data))
    cluster.cli("secret", "create", "other", str(data))
    assert lines(cluster, "secret", "ls", "-f", "label=app", "--format", "{{.Name}}") == ["api-key"]
    assert sorted(lines(cluster, "secret", "ls", "--format", "{{.Name}}")) == ["api-key", "other"]


def test_formats_with_fan_out_carry_the_target(
    cluster: Cluster, cluster_factory: Callable[..., Cluster]
) -> None:
    """`-H` twice at one controller: the Target field and column come with --format."""
    got = cluster.cli(
        "-H", cluster.address, "node", "ls", "--format", "{{.Target}} {{.Hostname}}"
    ).stdout.splitlines()
    assert sorted(got) == sorted(f"{cluster.address} {n}" for n in ("n1", "n1", "n2", "n2"))
    table = cluster.cli(
        "-H", cluster.address, "node", "ls", "--format", "table {{.Hostname}}"
    ).stdout.splitlines()
    assert table[0].split() == ["TARGET", "HOSTNAME"]
