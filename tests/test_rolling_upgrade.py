"""A rolling upgrade of a running local cluster from a previous commit of this repository
to this tree (docs/upgrades.md): two controllers on an etcd member, then two agents, each
stopped (SIGTERM) and started again on the new code one at a time, controllers first.

The previous commit (DOCKYARD_UPGRADE_FROM, or by default the parent of the commit that
added controller/schema.py: the last one without a schema record) is taken out with
`git archive` and installed into a virtualenv of its own under tmp; its own
deploy/local-cluster starts the cluster, this tree's upgrades it. Then: no container was
restarted on any agent (each runc container's init pid and creation time are the same),
nothing in etcd was lost (every durable key is still there), the schema record was
written once by the new leader, and the service created before can be updated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.controller import schema
from tests.test_local_cluster import LocalCluster, _get, _local_cluster, _offsets, _wait

# Building the previous commit's virtualenv and three local-cluster runs: over the
# default per-test timeout on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.runc, pytest.mark.registry, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
# Keys a restart rewrites or drops on purpose: leases (the leader, each controller's
# registration) and the agents' sessions.
EPHEMERAL = ("leader/", "controllers/", "sessions/")


def previous_commit() -> str:
    chosen = os.environ.get("DOCKYARD_UPGRADE_FROM")
    if chosen:
        return chosen
    added = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "controller/schema.py",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        pytest.skip("optional: no git history here to take the previous commit from")
    return f"{added[-1]}^"


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous commit's tree with its own .venv (where its local-cluster looks)."""
    root = tmp_path_factory.mktemp("old-release")
    commit = previous_commit()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(root / ".venv")], check=True)
    installed = subprocess.run(
        [
            str(root / ".venv/bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    (root / "COMMIT").write_text(commit)
    return root


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    yield from _local_cluster(tmp_path, _offsets(2, controllers=2, etcd_members=1), 2)


def run_script(tree: Path, lc: LocalCluster, *args: str) -> str:
    """`deploy/local-cluster` of `tree` (its .venv's binaries) on the cluster's state dir."""
    python = tree / ".venv" / "bin" / "python" if tree != REPO else Path(sys.executable)
    done = subprocess.run(
        [
            str(python),
            str(tree / "deploy" / "local-cluster"),
            *args,
            "--state-dir",
            str(lc.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (
        f"{tree} local-cluster {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def up_args(lc: LocalCluster) -> list[str]:
    return [
        "up",
        "--nodes",
        "2",
        "--controllers",
        "2",
        "--etcd-members",
        "1",
        "--port",
        str(lc.port),
        "--registry-port",
        str(lc.registry_port),
        "--sample-port",
        str(lc.sample_port),
        "--subnet-pool",
        lc.pool,
        "--bridge-prefix",
        lc.prefix,
        "--cgroup-parent",
        lc.cgroup,
        "--context",
        lc.context,
    ]


def containers(lc: LocalCluster) -> dict[str, tuple[int, str]]:
    """Every runc container of every agent: its init pid and creation time."""
    found = {}
    for state in sorted(lc.state_dir.glob("agents/node-*/runtime/runc/*/state.json")):
        data = json.loads(state.read_text())
        found[f"{state.parts[-5]}/{data['id']}"] = (
            int(data["init_process_pid"]),
            str(data["created"]),
        )
    return found


def etcdctl(lc: LocalCluster, *args: str) -> str:
    """etcdctl on the cluster's etcd member (member 1: client port P+92), mutual TLS."""
    pki = lc.state_dir / "etcd" / "pki"
    done = subprocess.run(
        [
            "etcdctl",
            "--endpoints",
            f"https://127.0.0.1:{lc.port + 92}",
            "--cacert",
            str(pki / "ca.pem"),
            "--cert",
            str(pki / "client.pem"),
            "--key",
            str(pki / "client-key.pem"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def etcd_keys(lc: LocalCluster) -> set[str]:
    listed = etcdctl(lc, "get", "/dockyard/", "--prefix", "--keys-only")
    keys = {k.removeprefix("/dockyard/") for k in listed.split()}
    return {k for k in keys if not k.startswith(EPHEMERAL)}


def restart(lc: LocalCluster, name: str) -> None:
    """SIGTERM one daemon (the agent's containers live on) and wait until it exited."""
    pid = lc.pid(name)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), f"{name} did not exit on SIGTERM"


def running(lc: LocalCluster, service: str) -> list[dict[str, object]]:
    done = lc.cli("service", "ps", service, "-o", "json")
    if done.returncode:
        return []
    return [t for t in json.loads(done.stdout) if t["status"]["state"] == "RUNNING"]


def test_a_rolling_upgrade_keeps_the_services_running(
    old_tree: Path, cluster: LocalCluster
) -> None:
    lc = cluster
    run_script(old_tree, lc, *up_args(lc))
    url = f"http://127.0.0.1:{lc.sample_port}/"
    _wait(lambda: _get(url).startswith("hello from"), "the published sample answering")
    _wait(
        lambda: len(running(lc, "web")) == 3 and len(running(lc, "hello")) >= 1,
        "the sample services running",
    )
    before = containers(lc)
    assert len(before) >= 4, before
    keys = etcd_keys(lc)
    assert any(k.startswith("services/") for k in keys), keys
    hello = json.loads(lc.cli("service", "inspect", "hello", "-o", "json").stdout)[0]

    # Controllers first, one at a time (the other leads meanwhile), then the agents.
    names = sorted(p.stem for p in (lc.state_dir / "run").glob("*.pid"))
    order = [n for n in names if n.startswith("controller")] + [
        n for n in names if n.startswith("node-")
    ]
    assert len(order) == 4, names
    for name in order:
        restart(lc, name)
        run_script(REPO, lc, *up_args(lc), "--no-sample")
        command = Path(f"/proc/{lc.pid(name)}/cmdline").read_bytes()
        assert str(REPO / ".venv").encode() in command or sys.executable.encode() in command
        assert _get(url).startswith("hello from")

    _wait(
        lambda: all(
            n["status"]["state"] == "READY"
            for n in json.loads(lc.cli("node", "ls", "-o", "json").stdout)
        ),
        "both nodes READY again",
    )
    assert containers(lc) == before, "a container was restarted by the upgrade"
    after = etcd_keys(lc)
    assert keys - after == set(), "keys lost in the upgrade"
    assert "meta/schema" in after
    assert (
        json.loads(lc.cli("service", "inspect", "hello", "-o", "json").stdout)[0]["spec"]
        == hello["spec"]
    )
    stored = json.loads(etcdctl(lc, "get", "/dockyard/meta/schema", "--print-value-only"))
    assert stored["version"] == schema.SCHEMA_VERSION

    # The service made before the upgrade is updated after it: new tasks run.
    updated = lc.cli("service", "update", "web", "--env-add", "UPGRADED=1")
    assert updated.returncode == 0, updated.stderr
    _wait(
        lambda: len([t for t in running(lc, "web") if "UPGRADED=1" in json.dumps(t)]) == 3,
        "web's three tasks running the updated spec",
        timeout=120,
    )
