"""`--runtime docker`: tasks run by a real Docker engine (a private dockerd, with its
own containerd and no bridge, that this module starts), with the images from the test
registry. An engine already running on the host (CI's apt install starts one) is never
used: while the module runs, DOCKER_HOST names a decoy engine that counts the requests
it gets, and it must get none."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from dockyard.agent.daemon import docker_executor
from dockyard.agent.runtime.docker import DockerRuntime
from dockyard.v1.control_pb2 import CreateServiceRequest, ListTasksRequest, RemoveServiceRequest
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec, Task
from tests.agent.conftest import ImageRegistry
from tests.bench.benchlib import Cleanup, Docker
from tests.conftest import Cluster

pytestmark = pytest.mark.registry


class DecoyEngine:
    """A unix socket that answers every request as a Docker engine would answer a ping,
    and counts them: it stands for the host's own dockerd."""

    def __init__(self, path: Path) -> None:
        self.requests: list[str] = []
        decoy = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                decoy.requests.append(f"{self.command} {self.path}")
                body = json.dumps(
                    {
                        "Version": "decoy",
                        "ApiVersion": "1.41",
                        "MinAPIVersion": "1.12",
                        "Os": "linux",
                        "Arch": "amd64",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Api-Version", "1.41")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.address = f"unix://{path}"
        self.server = Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def decoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoyEngine]:
    """DOCKER_HOST names a decoy engine while the module runs."""
    engine = DecoyEngine(tmp_path_factory.mktemp("decoy") / "docker.sock")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = engine.address
    try:
        yield engine
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved
        engine.close()


@pytest.fixture(scope="module")
def dockerd(
    tmp_path_factory: pytest.TempPathFactory, image_registry: ImageRegistry, decoy: DecoyEngine
) -> Iterator[Docker]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    cleanup = Cleanup()
    docker = Docker(
        tmp_path_factory.mktemp("dockerd") / "d", image_registry.server.host, cleanup, private=True
    )
    try:
        if not docker.start():
            pytest.skip(docker.why_not)
        yield docker
    finally:
        cleanup.run()


def engine(docker: Docker) -> str:
    """The private engine's socket (never a default one)."""
    return docker.env["DOCKER_HOST"]


def test_the_engine_is_private(dockerd: Docker, decoy: DecoyEngine) -> None:
    assert dockerd.started and engine(dockerd) == f"unix://{dockerd.root / 'docker.sock'}"
    info = json.loads(dockerd.docker("info", "--format", "{{json .}}").stdout)
    assert info["DockerRootDir"] == str(dockerd.root / "data")
    assert "bridge" not in dockerd.docker("network", "ls", "--format", "{{.Name}}").stdout
    # Its containerd is its own (dockerd would take the host's from /run/containerd).
    assert f"--containerd {dockerd.root}" in " ".join(
        Path(f"/proc/{int((dockerd.root / 'dockerd.pid').read_text())}/cmdline")
        .read_text()
        .split("\0")
    )
    assert decoy.requests == []


def task(image: str, *command: str, task_id: str = "t0000000000000000000000a") -> Task:
    result = Task(id=task_id, service_id="s1", service_name="dockertest", slot=1)
    result.spec.container.image = image
    result.spec.container.command.extend(command)
    result.spec.resources.limits.memory_bytes = 64 * 1024 * 1024
    return result


async def test_the_executor_runs_tasks_on_the_engine(
    dockerd: Docker, image_registry: ImageRegistry
) -> None:
    executor = docker_executor(DockerRuntime(engine(dockerd)))
    try:
        failing = task(image_registry.busybox, "sh", "-c", "echo hi; exit 3")
        failing.spec.container.mounts.add(type="tmpfs", target="/cache", tmpfs_size_bytes=1 << 20)
        progress: list[str] = []
        await executor.prepare(failing, progress.append)
        await executor.prepare(failing, progress.append)  # again after a restart: no-op
        assert progress == [f"pulling {image_registry.busybox}", f"pulled {image_registry.busybox}"]
        container, _ = await executor.start(failing)
        ended = await asyncio.wait_for(executor.wait(container), 30)
        assert (ended.exit_code, ended.oom_killed) == (3, False) and ended.finished_at
        assert (await executor.task_containers())[failing.id] == container
        inspected = json.loads(dockerd.docker("inspect", container).stdout)[0]
        assert inspected["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "no"
        assert inspected["HostConfig"]["Mounts"] == [
            {"Type": "tmpfs", "Target": "/cache", "TmpfsOptions": {"SizeBytes": 1 << 20}}
        ]
        assert inspected["Config"]["Labels"]["dockyard.task.id"] == failing.id
        await executor.remove(container)
        await executor.remove(container)  # gone already: fine
        assert failing.id not in await executor.task_containers()

        pinned = f"{image_registry.busybox}@{image_registry.digest}"
        sleeper = task(pinned, "sleep", "300", task_id="t0000000000000000000000b")
        await executor.prepare(sleeper, progress.append)
        container, _ = await executor.start(sleeper)
        assert (await executor.start(sleeper)).container_id == container  # not started twice
        code, output = await executor.exec(container, ["sh", "-c", "echo out; exit 4"], 10)
        assert (code, output.strip()) == (4, "out")
        started = time.monotonic()
        await executor.stop(container, 1)
        ended = await asyncio.wait_for(executor.wait(container), 30)
        assert ended.exit_code in (137, 143) and time.monotonic() - started < 15
        await executor.remove(container)
    finally:
        for container in (await executor.task_containers()).values():
            await executor.remove(container)
        await executor.close()


def test_an_agent_with_the_docker_runtime_runs_a_service(
    dockerd: Docker,
    image_registry: ImageRegistry,
    cluster_factory: Callable[..., Cluster],
    tmp_path: Path,
) -> None:
    cluster = cluster_factory(resolve_image="always")
    cluster.start_controller()
    cluster.start_agent("d1", runtime="docker", extra=["--docker-host", engine(dockerd)])
    cluster.wait_for(lambda: cluster.node_state("d1") == "READY", "d1 READY")
    node = cluster.nodes()["d1"]
    assert node["description"]["runtime"] == "docker"
    control = cluster.control()
    try:
        spec = ServiceSpec(name="ondocker")
        spec.task.container.image = image_registry.busybox
        spec.task.container.command.extend(
            ["sh", "-c", "echo out-$(hostname); echo err-$(hostname) >&2; sleep 300"]
        )
        spec.task.container.stop_grace_seconds = 0
        spec.replicated.replicas = 2

        def running() -> list[Task]:
            tasks = control.ListTasks(ListTasksRequest(services=["ondocker"])).tasks
            return [t for t in tasks if t.status.state == TaskStatus.RUNNING]

        control.CreateService(CreateServiceRequest(spec=spec))
        cluster.wait_for(lambda: len(running()) == 2, "2 tasks on the Docker engine", 90)
        listed = dockerd.docker(
            "ps", "-q", "--no-trunc", "--filter", "label=dockyard.service.name=ondocker"
        ).stdout.split()
        assert sorted(listed) == sorted(t.status.container_id for t in running())
        logs = cluster.cli("service", "logs", "ondocker")  # read through the agent's API
        assert logs.stdout.count("| out-") == 2 and logs.stderr.count("| err-") == 2, logs
        control.RemoveService(RemoveServiceRequest(service="ondocker"))
        cluster.wait_for(
            lambda: (
                not dockerd.docker(
                    "ps", "-aq", "--filter", "label=dockyard.service.name=ondocker"
                ).stdout.strip()
            ),
            "the engine's containers removed",
            60,
        )
    finally:
        control.close()


def test_the_host_engine_was_never_asked(decoy: DecoyEngine) -> None:
    """Last in the module: nothing above talked to the engine DOCKER_HOST names."""
    assert decoy.requests == []
