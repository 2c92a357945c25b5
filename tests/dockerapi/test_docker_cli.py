"""Debian's docker CLI against an agent's Docker API (unix socket): system, the container
lifecycle, logs, inspect, ps, stats, top, port, errors."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.dockerapi.conftest import BUSYBOX, DockerAgent

pytestmark = pytest.mark.runc


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_version_info_and_negotiation(docker_agent: DockerAgent) -> None:
    version = json.loads(docker_agent.ok("version", "--format", "{{json .}}"))
    assert version["Server"]["ApiVersion"] == "1.43"
    assert "1.43" in docker_agent.ok("version")  # the client negotiated down to it
    info = json.loads(docker_agent.ok("info", "--format", "{{json .}}"))
    assert info["NCPU"] >= 1 and info["MemTotal"] > 0
    assert info["Images"] >= 1
    assert info["OSType"] == "linux"
    assert info["Swarm"]["NodeID"]


def test_ping_and_unsupported_endpoint(docker_agent: DockerAgent) -> None:

    client = docker_agent.client()
    assert client.ping() is True
    response = client.api._post(client.api._url("/containers/{0}/pause", "x"))
    # an endpoint no module serves: 501 naming it, with Docker's JSON body
    assert response.status_code == 501
    assert "is not supported by dockyard" in response.json()["message"]
    too_new = client.api._get("http+docker://localhost/v9.99/version")
    assert too_new.status_code == 400
    assert "too new" in too_new.json()["message"]


def test_run_detached_env_workdir_user_logs(docker_agent: DockerAgent) -> None:
    name = unique("run")
    container_id = docker_agent.ok(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        BUSYBOX,
        "sh",
        "-c",
        "echo $GREETING from $(pwd) as $(id -u); echo oops >&2",
    ).strip()
    assert len(container_id) == 64
    assert docker_agent.ok("wait", name).strip() == "0"
    done = docker_agent.docker("logs", name)
    assert done.stdout == "hello from /tmp as 1000\n"
    assert done.stderr == "oops\n"  # the multiplexed frames kept the streams apart
    stamped = docker_agent.ok("logs", "--timestamps", "--tail", "2", name)
    assert stamped.endswith(" hello from /tmp as 1000\n") and stamped[:4].isdigit()
    inspected = json.loads(docker_agent.ok("inspect", name))[0]
    assert inspected["Id"] == container_id and inspected["Name"] == f"/{name}"
    assert inspected["State"]["Status"] == "exited" and inspected["State"]["ExitCode"] == 0
    assert "GREETING=hello" in inspected["Config"]["Env"]
    assert inspected["Config"]["WorkingDir"] == "/tmp"
    docker_agent.ok("rm", name)


def test_entrypoint_restart_and_limits(docker_agent: DockerAgent) -> None:
    name = unique("limits")
    docker_agent.ok(
        "run",
        "-d",
        "--name",
        name,
        "--entrypoint",
        "sleep",
        "--restart",
        "on-failure:2",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "50",
        BUSYBOX,
        "300",
    )
    host = json.loads(docker_agent.ok("inspect", name))[0]["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 50
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    config = json.loads(docker_agent.ok("inspect", name))[0]["Config"]
    assert config["Entrypoint"] == ["sleep"] and config["Cmd"] == ["300"]
    docker_agent.ok("rm", "-f", name)


def test_lifecycle_create_start_stop_restart_kill_rm(docker_agent: DockerAgent) -> None:
    name = unique("life")
    docker_agent.ok("create", "--name", name, BUSYBOX, "sleep", "300")
    assert docker_agent.ok("ps", "-a", "--filter", f"name={name}", "--format", "{{.Status}}") == (
        "Created\n"
    )
    docker_agent.ok("start", name)
    status = docker_agent.ok("ps", "--filter", f"name={name}", "--format", "{{.Status}}")
    assert status.startswith("Up")
    docker_agent.ok("stop", "-t", "1", name)
    state = json.loads(docker_agent.ok("inspect", name))[0]["State"]
    assert state["Status"] == "exited"
    docker_agent.ok("restart", "-t", "1", name)
    assert json.loads(docker_agent.ok("inspect", name))[0]["State"]["Running"] is True
    docker_agent.ok("kill", "--signal", "KILL", name)
    assert docker_agent.ok("wait", name).strip() == "137"
    docker_agent.ok("rm", name)
    assert name not in docker_agent.ok("ps", "-a", "--format", "{{.Names}}")


def test_errors_are_dockers(docker_agent: DockerAgent) -> None:
    missing = docker_agent.docker("container", "inspect", "no-such-container-here")
    assert missing.returncode == 1
    assert "No such container: no-such-container-here" in missing.stderr
    gone = docker_agent.docker("rm", "no-such-container-here")
    assert "No such container: no-such-container-here" in gone.stderr
    name = unique("busy")
    docker_agent.ok("run", "-d", "--name", name, BUSYBOX, "sleep", "300")
    taken = docker_agent.docker("create", "--name", name, BUSYBOX, "true")
    assert taken.returncode != 0 and "Conflict" in taken.stderr and name in taken.stderr
    running = docker_agent.docker("rm", name)
    assert running.returncode == 1
    assert "You cannot remove a running container" in running.stderr
    docker_agent.ok("rm", "-f", name)
    bad = docker_agent.docker("run", "-d", "--network", "container:x", BUSYBOX, "true")
    assert bad.returncode != 0 and "not supported by dockyard" in bad.stderr
    no_net = docker_agent.docker("run", "-d", "--network", "no-such-net", BUSYBOX, "true")
    assert no_net.returncode != 0 and "network no-such-net not found" in no_net.stderr
    assert "Unable to find image" not in no_net.stderr  # a 404 would send the CLI pulling
    policy = docker_agent.docker("run", "-d", "--privileged", BUSYBOX, "true")
    assert policy.returncode != 0 and "does not allow privileged containers" in policy.stderr


def test_publish_port_and_docker_port(docker_agent: DockerAgent) -> None:
    name = unique("web")
    docker_agent.ok("run", "-d", "--name", name, "-p", "8080", BUSYBOX, "sleep", "300")
    mapping = docker_agent.ok("port", name, "8080/tcp").splitlines()[0]
    host_port = int(mapping.rsplit(":", 1)[1])
    assert host_port > 0
    row = docker_agent.ok("ps", "--filter", f"name={name}", "--format", "{{.Ports}}")
    assert f":{host_port}->8080/tcp" in row
    docker_agent.ok("rm", "-f", name)


def test_volumes_bind_and_named(docker_agent: DockerAgent, tmp_path) -> None:
    (tmp_path / "in.txt").write_text("from the host\n")
    volume = unique("vol")
    out = docker_agent.ok(
        "run",
        "--rm",
        "-d",
        "-v",
        f"{tmp_path}:/data:ro",
        "-v",
        f"{volume}:/named",
        BUSYBOX,
        "sh",
        "-c",
        "cat /data/in.txt > /named/copy; sleep 300",
    ).strip()
    wait_for(lambda: "true" in docker_agent.ok("inspect", "-f", "{{.State.Running}}", out), "run")
    mounts = json.loads(docker_agent.ok("inspect", out))[0]["Mounts"]
    kinds = {m["Destination"]: m["Type"] for m in mounts}
    assert kinds == {"/data": "bind", "/named": "volume"}
    docker_agent.ok("rm", "-f", out)


def test_run_rm_removes_after_exit(docker_agent: DockerAgent) -> None:
    name = unique("rm")
    docker_agent.ok("run", "-d", "--rm", "--name", name, BUSYBOX, "true")
    wait_for(lambda: name not in docker_agent.ok("ps", "-a", "--format", "{{.Names}}"), "--rm")


def test_stats_top_rename_listing(docker_agent: DockerAgent) -> None:
    name = unique("obs")
    docker_agent.ok("run", "-d", "--name", name, "--label", "team=dock", BUSYBOX, "sleep", "300")
    stats = json.loads(docker_agent.ok("stats", "--no-stream", "--format", "{{json .}}", name))
    assert stats["Name"] == name and stats["MemUsage"]
    top = docker_agent.ok("top", name)
    assert "sleep 300" in top and "PID" in top
    labelled = docker_agent.ok("ps", "--filter", "label=team=dock", "--format", "{{.Names}}")
    assert name in labelled.split()
    assert docker_agent.ok("ps", "-q", "--filter", f"name={name}").strip()
    docker_agent.ok("rm", "-f", name)


def test_follow_logs_until_exit(docker_agent: DockerAgent) -> None:
    name = unique("follow")
    docker_agent.ok(
        "run",
        "-d",
        "--name",
        name,
        BUSYBOX,
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.2; done",
    )
    followed = docker_agent.ok("logs", "-f", name)
    assert followed == "line1\nline2\nline3\n"
    docker_agent.ok("rm", name)


def test_container_prune(docker_agent: DockerAgent) -> None:
    name = unique("prune")
    docker_agent.ok("run", "-d", "--name", name, "--label", "prune=me", BUSYBOX, "true")
    docker_agent.ok("wait", name)
    out = docker_agent.ok("container", "prune", "-f", "--filter", "label=prune=me")
    assert "Deleted Containers" in out
    assert name not in docker_agent.ok("ps", "-a", "--format", "{{.Names}}")


def test_rename(docker_agent: DockerAgent) -> None:
    old, new, other = unique("old"), unique("new"), unique("other")
    docker_agent.ok("create", "--name", old, BUSYBOX, "true")
    docker_agent.ok("create", "--name", other, BUSYBOX, "true")
    docker_agent.ok("rename", old, new)
    names = docker_agent.ok("ps", "-a", "--format", "{{.Names}}").split()
    assert new in names and old not in names
    taken = docker_agent.docker("rename", new, other)
    assert taken.returncode != 0 and "Conflict" in taken.stderr
    docker_agent.ok("rm", new, other)


def test_cp_both_ways(docker_agent: DockerAgent, tmp_path) -> None:
    name = unique("cp")
    script = "echo inside > /made; ln -s / /tmp/root; ln -s /etc/hostname /tmp/link; sleep 300"
    docker_agent.ok("run", "-d", "--name", name, BUSYBOX, "sh", "-c", script)
    wait_for(
        lambda: docker_agent.docker("cp", f"{name}:/made", str(tmp_path / "out")).returncode == 0,
        "the file to copy out",
    )
    assert (tmp_path / "out").read_text() == "inside\n"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("copied in\n")
    docker_agent.ok("cp", str(tmp_path / "dir"), f"{name}:/tmp/")
    docker_agent.ok("cp", f"{name}:/tmp/dir/a.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "copied in\n"
    missing = docker_agent.docker("cp", f"{name}:/no/such/file", str(tmp_path / "x"))
    assert missing.returncode != 0 and "No such container:path" in missing.stderr  # a 404
    # /tmp/root -> / inside the container: followed on the host it would be the host's
    # root; it is refused instead
    escape = docker_agent.docker("cp", f"{name}:/tmp/root/etc/hostname", str(tmp_path / "y"))
    assert escape.returncode != 0 and "symlink" in escape.stderr
    assert not (tmp_path / "y").exists()
    docker_agent.ok("cp", f"{name}:/tmp/link", str(tmp_path / "link"))  # the link itself
    assert (tmp_path / "link").is_symlink()
    docker_agent.ok("rm", "-f", name)


def test_service_task_containers_are_read_only(docker_agent: DockerAgent) -> None:
    from dockyard.v1 import containers_pb2 as cpb

    # a task's container as the agent's executor makes it (the controller assigns tasks;
    # here the agent's own API stands in for it)
    task = docker_agent.agent.containers.Create(
        cpb.CreateContainerRequest(
            image=BUSYBOX,
            name=unique("web.1"),
            command=["sh", "-c", "echo serving; sleep 300"],
            labels={"dockyard.task.id": "t-" + uuid.uuid4().hex[:8]},
        ),
        timeout=30,
    )
    docker_agent.agent.containers.Start(cpb.ContainerRef(container=task.id), timeout=30)
    try:
        assert task.id in docker_agent.ok("ps", "-q", "--no-trunc").split()
        wait_for(lambda: docker_agent.ok("logs", task.id) == "serving\n", "its log")
        for args in (("stop", task.id), ("rm", "-f", task.id), ("rename", task.id, "x")):
            refused = docker_agent.docker(*args)
            assert refused.returncode != 0, args
            assert "it runs a task of a dockyard service" in refused.stderr
        forged = docker_agent.docker(
            "create", "--label", "dockyard.task.id=forged", BUSYBOX, "true"
        )
        assert forged.returncode != 0 and "reserved" in forged.stderr
    finally:
        docker_agent.agent.containers.Remove(
            cpb.RemoveContainerRequest(container=task.id, force=True), timeout=30
        )


def test_cp_out_of_an_exited_container(docker_agent: DockerAgent, tmp_path) -> None:
    name = unique("cpexit")
    docker_agent.ok("run", "-d", "--name", name, BUSYBOX, "sh", "-c", "echo result > /out")
    assert docker_agent.ok("wait", name).strip() == "0"
    docker_agent.ok("cp", f"{name}:/out", str(tmp_path / "result"))
    assert (tmp_path / "result").read_text() == "result\n"
    container_id = docker_agent.ok("inspect", "-f", "{{.Id}}", name).strip()
    rootfs = docker_agent.agent.state_dir / "runtime" / "containers" / container_id / "rootfs"
    try:
        wait_for(  # mounted for the copy only: unmounted after its response has gone out
            lambda: not os.path.ismount(rootfs), "the rootfs unmounted"
        )
    except AssertionError:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        raise AssertionError(
            f"{rootfs} still mounted: {[m for m in mounts if container_id in m]}"
        ) from None
    docker_agent.ok("rm", name)
