"""The agent's Containers API, driven through gRPC against a real agent process."""

from __future__ import annotations

import re
import time
from typing import Any

import grpc
import pytest

from dockyard.v1 import containers_pb2 as cpb
from tests.agent.conftest import Agent, ImageRegistry, wait_until

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    return info.value.code(), info.value.details() or ""


def test_run_exit_code_logs_and_inspect(agent: Agent, image_registry: ImageRegistry) -> None:
    record, code = agent.run(image_registry.busybox, "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert code == 3
    assert re.fullmatch(r"[0-9a-f]{64}", record.id)
    assert re.fullmatch(r"[a-z]+_[a-z]+[0-9]*", record.name)
    assert record.image_digest == image_registry.digest
    assert agent.logs(record.id) == b"hi\noops\n"
    stdout_only = agent.containers.Logs(cpb.LogsRequest(container=record.name), timeout=10)
    assert {line.stream for line in stdout_only} == {"stdout", "stderr"}
    by_prefix = agent.inspect(record.id[:10])
    assert by_prefix.id == record.id
    assert by_prefix.state.status == "exited"
    assert by_prefix.state.has_exit_code and by_prefix.state.exit_code == 3
    assert list(by_prefix.config.command) == ["sh", "-c", "echo hi; echo oops >&2; exit 3"]
    listed = agent.containers.List(cpb.ListContainersRequest(all=True), timeout=10)
    assert [c.id for c in listed.containers] == [record.id]
    assert not agent.containers.List(cpb.ListContainersRequest(), timeout=10).containers
    removed = agent.containers.Remove(cpb.RemoveContainerRequest(container=record.name))
    assert removed.id == record.id
    assert code_of(lambda: agent.inspect(record.id))[0] == grpc.StatusCode.NOT_FOUND


def test_run_true_end_to_end_timing(agent: Agent, image_registry: ImageRegistry) -> None:
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        _, code = agent.run(image_registry.busybox, "true", auto_remove=True)
        timings.append(time.perf_counter() - started)
        assert code == 0
    print(
        f"\nAPI run of `true` (create+start+wait, --rm): "
        f"{', '.join(f'{t * 1000:.0f}' for t in timings)} ms"
    )
    assert min(timings) < 5


def test_env_workdir_user(agent: Agent, image_registry: ImageRegistry) -> None:
    record, code = agent.run(
        image_registry.busybox,
        "sh",
        "-c",
        'echo "$FOO $IMAGE_PATH"; pwd; id -u; id -g',
        env=["FOO=bar", "IMAGE_PATH=x"],
        workdir="/tmp",
        user="nobody",
    )
    assert code == 0
    assert agent.logs(record.id).decode().split("\n") == ["bar x", "/tmp", "65534", "65534", ""]
    record, _ = agent.run(
        image_registry.busybox, "sh", "-c", "echo $PATH; id -u", user="1234:50", hostname="box1"
    )
    assert agent.logs(record.id).decode().split("\n")[1:] == ["1234", ""]
    assert "/bin" in agent.logs(record.id).decode()


def test_memory_limit_oom(agent: Agent, image_registry: ImageRegistry) -> None:
    script = "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived"
    record, code = agent.run(
        image_registry.busybox, "sh", "-c", script, memory_bytes=8 * 1024 * 1024
    )
    assert code == 137
    state = agent.inspect(record.id).state
    assert state.oom_killed and state.exit_code == 137
    assert b"survived" not in agent.logs(record.id)


def test_exec_stats_stop(agent: Agent, image_registry: ImageRegistry) -> None:
    record = agent.containers.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox,
            name="worker",
            command=["sleep", "60"],
            env=["FROM_CREATE=1"],
        )
    )
    started = agent.containers.Start(cpb.ContainerRef(container="worker"))
    assert started.state.status == "running" and started.state.pid > 0
    outputs = list(
        agent.containers.Exec(
            cpb.ExecRequest(
                container="worker",
                command=["sh", "-c", "echo out $FROM_CREATE $X; echo err >&2; exit 4"],
                env=["X=y"],
            )
        )
    )
    assert outputs[-1].WhichOneof("output") == "exit_code" and outputs[-1].exit_code == 4
    assert b"".join(o.stdout for o in outputs) == b"out 1 y\n"
    assert b"".join(o.stderr for o in outputs) == b"err\n"
    stats = agent.containers.Stats(cpb.ContainerRef(container="worker"))
    assert stats.memory_usage > 0 and stats.pids >= 1 and stats.cpu_usage_ns > 0
    started_at = time.monotonic()
    stopped = agent.containers.Stop(
        cpb.StopContainerRequest(container=record.id, timeout_seconds=0.5, has_timeout=True)
    )
    assert time.monotonic() - started_at < 5
    assert stopped.state.status == "exited" and stopped.state.exit_code == 137
    assert (
        code_of(lambda: agent.containers.Stats(cpb.ContainerRef(container="worker")))[0]
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_errors(agent: Agent, image_registry: ImageRegistry) -> None:
    c = agent.containers
    assert code_of(lambda: agent.inspect("nope")) == (
        grpc.StatusCode.NOT_FOUND,
        "no such container: nope",
    )
    missing = f"{image_registry.server.host}/x:latest"
    code, message = code_of(lambda: c.Create(cpb.CreateContainerRequest(image=missing)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message == f"image {missing} not found on this node: pull it first"
    bad = [
        ({"image": "ns/Upper"}, "image"),
        ({"memory_bytes": -1}, "memory_bytes"),
        ({"restart_policy": cpb.RestartPolicySpec(name="sometimes")}, "restart_policy"),
        ({"env": ["NOEQUALS"]}, "env[0]"),
        ({"name": "bad name"}, "name"),
        ({"network": "bridge0"}, "network"),
        (
            {"auto_remove": True, "restart_policy": cpb.RestartPolicySpec(name="always")},
            "auto_remove",
        ),
    ]
    for fields, field in bad:
        request = cpb.CreateContainerRequest(image=image_registry.busybox, command=["true"])
        for key, value in fields.items():
            if key == "restart_policy":
                request.restart_policy.CopyFrom(value)
            elif key == "env":
                request.env.extend(value)
            else:
                setattr(request, key, value)
        code, message = code_of(lambda r=request: c.Create(r))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (fields, message)
        assert message.startswith(f"{field}:"), message

    c.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox, name="taken", command=["sleep", "30"]
        )
    )
    code, message = code_of(
        lambda: c.Create(cpb.CreateContainerRequest(image=image_registry.busybox, name="taken"))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "taken" in message
    c.Start(cpb.ContainerRef(container="taken"))
    code, message = code_of(
        lambda: c.Kill(cpb.KillContainerRequest(container="taken", signal="SIGNOPE"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("signal:")
    code, message = code_of(lambda: c.Remove(cpb.RemoveContainerRequest(container="taken")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "running" in message
    killed = c.Kill(cpb.KillContainerRequest(container="taken", signal="9"))
    assert killed.id
    c.Remove(cpb.RemoveContainerRequest(container="taken", force=True))
    assert not c.List(cpb.ListContainersRequest(all=True)).containers


def test_auto_remove(agent: Agent, image_registry: ImageRegistry) -> None:
    record, code = agent.run(
        image_registry.busybox, "sh", "-c", "exit 2", auto_remove=True, name="ephemeral"
    )
    assert code == 2

    def gone() -> bool:
        try:
            agent.inspect(record.id)
            return False
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND

    containers_dir = agent.state_dir / "runtime" / "containers"
    wait_until(gone, "the --rm container to be removed")
    wait_until(lambda: not list(containers_dir.iterdir()), "its state dir to be deleted")
    # The agent's own record goes right after the runtime's (same Remove call).
    wait_until(lambda: not list((agent.state_dir / "containers").iterdir()), "its record to go")
    # a container that is still running when its caller waits
    record = agent.containers.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox,
            command=["sh", "-c", "sleep 0.3; exit 5"],
            auto_remove=True,
        )
    )
    agent.containers.Start(cpb.ContainerRef(container=record.id))
    assert agent.containers.Wait(cpb.ContainerRef(container=record.id)).exit_code == 5
    wait_until(gone, "the second --rm container to be removed")


def test_restart_policy_on_failure(agent: Agent, image_registry: ImageRegistry) -> None:
    record = agent.containers.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox,
            command=["sh", "-c", "echo run; exit 1"],
            restart_policy=cpb.RestartPolicySpec(name="on-failure", max_retries=2),
        )
    )
    agent.containers.Start(cpb.ContainerRef(container=record.id))

    def settled() -> bool:
        state = agent.inspect(record.id).state
        return state.restart_count == 2 and state.status == "exited"

    wait_until(settled, "two restarts")
    time.sleep(1.0)  # the third backoff would be 0.4 s: no third restart comes
    state = agent.inspect(record.id).state
    assert (state.restart_count, state.status, state.exit_code) == (2, "exited", 1)
    assert agent.logs(record.id) == b"run\nrun\nrun\n"
    # success is not restarted under on-failure
    ok, code = agent.run(
        image_registry.busybox, "true", restart_policy=cpb.RestartPolicySpec(name="on-failure:3")
    )
    assert code == 0
    time.sleep(0.5)
    assert agent.inspect(ok.id).state.restart_count == 0


def test_restart_always_until_stopped(agent: Agent, image_registry: ImageRegistry) -> None:
    record = agent.containers.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox,
            command=["sh", "-c", "sleep 0.2"],
            restart_policy=cpb.RestartPolicySpec(name="always"),
        )
    )
    agent.containers.Start(cpb.ContainerRef(container=record.id))
    wait_until(lambda: agent.inspect(record.id).state.restart_count >= 2, "restarts")
    agent.containers.Stop(cpb.StopContainerRequest(container=record.id))
    count = agent.inspect(record.id).state.restart_count
    time.sleep(1.5)
    state = agent.inspect(record.id).state
    assert state.status == "exited" and state.restart_count == count
