"""The container and image commands against a real runc agent and a real registry."""

from __future__ import annotations

import json
import re
import tarfile
import time
from pathlib import Path

import pytest

from tests.cli.conftest import AgentUnderTest

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def wait_for_output(agent: AgentUnderTest, args: tuple[str, ...], text: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        out = agent.ok(*args).stdout
        if text in out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def test_pull_run_ps_logs_exec_stop_rm(agent: AgentUnderTest, busybox_ref: str) -> None:
    pulled = agent.ok("pull", busybox_ref)
    assert re.search(r"^Digest: sha256:[0-9a-f]{64}$", pulled.stdout, re.M)
    assert pulled.stdout.splitlines()[-1] == busybox_ref
    listed = agent.ok("images").stdout.splitlines()
    assert listed[0].split()[:2] == ["REPOSITORY", "TAG"]
    assert any(line.split()[:2] == [busybox_ref.rsplit(":", 1)[0], "latest"] for line in listed)

    # attached, --rm: output on the right streams, the container's exit code, then gone
    attached = agent.cli("run", "--rm", busybox_ref, "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert attached.returncode == 3, attached.stderr
    assert attached.stdout == "hi\n" and attached.stderr == "oops\n"
    assert agent.ok("ps", "-a", "-q").stdout == ""

    started = agent.ok(
        "run",
        "-d",
        "--name",
        "web",
        "-e",
        "GREETING=hello",
        "--memory",
        "64m",
        busybox_ref,
        "sh",
        "-c",
        "echo $GREETING; sleep 300",
    )
    container_id = started.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id)
    ps = agent.ok("ps").stdout.splitlines()
    assert ps[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    row = next(line for line in ps[1:] if line.endswith("web"))
    assert row.startswith(container_id[:12]) and " Up " in row
    assert wait_for_output(agent, ("logs", "web"), "hello") == "hello\n"

    execd = agent.cli("exec", "-e", "X=1", "web", "sh", "-c", "echo out $X; echo err >&2; exit 4")
    assert (execd.returncode, execd.stdout, execd.stderr) == (4, "out 1\n", "err\n")
    stats = agent.ok("container", "stats", "--no-stream", "web").stdout
    assert "web" in stats and "/ 64MiB" in stats

    assert agent.ok("container", "stop", "-t", "1", "web").stdout == "web\n"
    exited = agent.ok("ps", "-a").stdout
    assert re.search(r"Exited \(137\) .*web$", exited, re.M), exited
    assert agent.ok("container", "rm", "web").stdout == "web\n"
    assert agent.ok("ps", "-a", "-q").stdout == ""
    missing = agent.cli("logs", "web")
    assert missing.returncode == 1 and missing.stderr.startswith("dockyard: ")
    assert missing.stderr.count("\n") == 1

    removed = agent.ok("image", "rm", busybox_ref).stdout
    assert f"Untagged: {busybox_ref}" in removed
    assert busybox_ref.rsplit(":", 1)[0] not in agent.ok("images").stdout

    # --pull missing: run pulls the image back itself, progress on stderr
    again = agent.cli("run", "--rm", busybox_ref, "echo", "again")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "again\n"
    assert f"Unable to find image '{busybox_ref}' locally" in again.stderr


def test_tag_inspect_save_load_import_and_detached_rm(
    agent: AgentUnderTest, busybox_ref: str, tmp_path: Path
) -> None:
    agent.ok("image", "pull", busybox_ref)
    other = busybox_ref.replace("/cli/busybox:latest", "/cli/copy:v1")
    agent.ok("image", "tag", busybox_ref, other)
    records = json.loads(agent.ok("image", "inspect", busybox_ref, other).stdout)
    assert len(records) == 2 and records[0]["id"] == records[1]["id"]
    assert {busybox_ref, other} <= set(records[0]["references"])
    missing = agent.cli("image", "inspect", "nothing/here:1")
    assert missing.returncode == 1 and json.loads(missing.stdout) == []

    archive = tmp_path / "saved.tar"
    agent.ok("image", "save", "-o", str(archive), other)
    assert archive.stat().st_size > 0
    agent.ok("image", "rm", other)
    loaded = agent.ok("image", "load", "-i", str(archive)).stdout
    assert f"Loaded image: {other}" in loaded

    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
    imported = agent.ok("image", "import", str(rootfs), "imported/rootfs:1").stdout.strip()
    assert imported.startswith("sha256:")
    assert "imported/rootfs" in agent.ok("images").stdout

    # -d --rm: the agent removes it once it exits
    agent.ok("run", "-d", "--rm", busybox_ref, "true")
    deadline = time.monotonic() + 20
    while agent.ok("ps", "-a", "-q").stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.ok("ps", "-a", "-q").stdout == ""
    created = agent.ok("container", "create", "--name", "later", busybox_ref, "true").stdout
    assert agent.ok("container", "inspect", "later").stdout.count(created.strip()) >= 1
    assert agent.ok("container", "start", "later").stdout == "later\n"
    assert agent.ok("container", "wait", "later").stdout == "0\n"
    assert agent.ok("container", "rm", "-f", "later").stdout == "later\n"


def _status_fields(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


def test_privileged_and_unconfined_containers(agent: AgentUnderTest, busybox_ref: str) -> None:
    """--privileged: every capability the agent holds and no seccomp filter; the
    default is Docker's capability set under our profile (mode 2: filter)."""
    read = ("grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status")
    default = _status_fields(agent.ok("run", "--rm", busybox_ref, *read).stdout)
    privileged = _status_fields(agent.ok("run", "--rm", "--privileged", busybox_ref, *read).stdout)
    unconfined = _status_fields(
        agent.ok("run", "--rm", "--security-opt", "seccomp=unconfined", busybox_ref, *read).stdout
    )
    own = _status_fields(Path("/proc/self/status").read_text())
    assert default["Seccomp"] == "2" and privileged["Seccomp"] == "0"
    assert unconfined["Seccomp"] == "0" and unconfined["CapEff"] == default["CapEff"]
    assert int(default["CapEff"], 16) & ~int(own["CapEff"], 16) == 0
    assert privileged["CapEff"] == own["CapEff"] != default["CapEff"]

    bad = agent.cli("run", "--rm", "--security-opt", "apparmor=x", busybox_ref, "true")
    assert bad.returncode == 125
    assert "invalid --security-opt 'apparmor=x'" in bad.stderr


def test_tmpfs_mounts(agent: AgentUnderTest, busybox_ref: str) -> None:
    shown = agent.ok(
        "run",
        "--rm",
        "--tmpfs",
        "/cache:size=1m",
        "--read-only",
        busybox_ref,
        "sh",
        "-c",
        "grep ' /cache ' /proc/mounts; echo x > /cache/f && echo ok",
    )
    mount, written = shown.stdout.splitlines()
    assert mount.split()[2] == "tmpfs" and "size=1024k" in mount and "noexec" in mount
    assert written == "ok"  # writable although the root filesystem is read-only
    bad = agent.cli("run", "--rm", "--tmpfs", "cache", busybox_ref, "true")
    assert bad.returncode == 125 and "invalid --tmpfs 'cache'" in bad.stderr


def test_named_volumes_outlive_their_containers(agent: AgentUnderTest, busybox_ref: str) -> None:
    assert agent.ok("volume", "create", "--label", "app=db", "vol1").stdout == "vol1\n"
    agent.ok("run", "--rm", "-v", "vol1:/data", busybox_ref, "sh", "-c", "echo kept > /data/f")
    assert (
        agent.ok("run", "--rm", "-v", "vol1:/data:ro", busybox_ref, "cat", "/data/f").stdout
        == "kept\n"
    )
    # a volume named by a run that does not exist yet is made, as docker does
    agent.ok("run", "-d", "--name", "holder", "-v", "vol2:/data", busybox_ref, "sleep", "300")
    listed = agent.ok("volume", "ls").stdout.splitlines()
    assert listed[0].split() == ["VOLUME", "NAME", "MOUNTPOINT", "USED", "BY"]
    rows = {line.split()[0]: line for line in listed[1:]}
    assert set(rows) == {"vol1", "vol2"} and rows["vol1"].endswith("-")
    (inspected,) = json.loads(agent.ok("volume", "inspect", "vol1").stdout)
    assert inspected["labels"] == {"app": "db"} and inspected["mountpoint"].endswith("/_data")
    busy = agent.cli("volume", "rm", "vol2")
    assert busy.returncode == 1 and "volume vol2 is in use by container" in busy.stderr
    agent.ok("container", "rm", "-f", "holder")
    assert agent.ok("volume", "rm", "vol1", "vol2").stdout == "vol1\nvol2\n"
    missing = agent.cli("volume", "rm", "vol1")
    assert missing.returncode == 1 and "no such volume: vol1" in missing.stderr
    assert agent.cli("volume", "rm", "-f", "vol1").returncode == 0
    bad = agent.cli("volume", "create", "../x")
    assert bad.returncode == 1 and "name: invalid volume name" in bad.stderr
