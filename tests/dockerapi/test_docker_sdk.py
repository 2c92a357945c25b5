"""Docker's Python SDK (`docker` on PyPI) against an agent's Docker API: its high-level
containers API, streaming logs, archives and its error classes."""

from __future__ import annotations

import io
import tarfile
import time
import uuid

import docker
import docker.errors
import pytest

from tests.dockerapi.conftest import BUSYBOX, DockerAgent

pytestmark = pytest.mark.runc


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def client(docker_agent: DockerAgent):
    made = docker_agent.client()
    yield made
    made.close()


def test_info_version_ping(client) -> None:
    assert client.ping()
    assert client.version()["ApiVersion"] == "1.43"
    info = client.info()
    assert info["NCPU"] >= 1 and info["Driver"]


def test_run_in_the_foreground_returns_the_output(client) -> None:
    # without detach the SDK creates, starts, waits and reads the logs (no attach)
    out = client.containers.run(BUSYBOX, ["sh", "-c", "echo hi; echo err >&2"], remove=True)
    assert out == b"hi\n"
    with pytest.raises(docker.errors.ContainerError) as failed:
        client.containers.run(BUSYBOX, ["sh", "-c", "exit 3"], remove=True)
    assert failed.value.exit_status == 3


def test_detached_streaming_logs_wait_and_errors(client) -> None:
    name = unique("sdk")
    container = client.containers.run(
        BUSYBOX,
        ["sh", "-c", "for i in 1 2 3; do echo n$i; sleep 0.1; done"],
        name=name,
        detach=True,
        environment={"A": "1"},
        labels={"sdk": "yes"},
    )
    streamed = b"".join(container.logs(stream=True, follow=True))
    assert streamed == b"n1\nn2\nn3\n"
    assert container.wait()["StatusCode"] == 0
    container.reload()
    assert container.status == "exited" and container.name == name
    assert "A=1" in container.attrs["Config"]["Env"]
    listed = client.containers.list(all=True, filters={"label": "sdk=yes"})
    assert [c.name for c in listed] == [name]
    with pytest.raises(docker.errors.APIError) as conflict:
        client.containers.create(BUSYBOX, "true", name=name)
    assert conflict.value.status_code == 409
    container.remove()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("no-such-image-here:1", "true")


def test_stats_top_rename_archive_and_port(client) -> None:
    name = unique("sdk-obs")
    container = client.containers.run(
        BUSYBOX, ["sleep", "300"], name=name, detach=True, ports={"80/tcp": None}
    )
    try:
        stats = container.stats(stream=False)
        assert stats["memory_stats"]["usage"] > 0 and stats["pids_stats"]["current"] >= 1
        assert "sleep 300" in " ".join(p[-1] for p in container.top()["Processes"])
        container.reload()
        assert container.ports["80/tcp"][0]["HostPort"].isdigit()
        container.rename(f"{name}-renamed")
        container.reload()
        assert container.name == f"{name}-renamed"
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo("hello.txt")
            info.size = 6
            tar.addfile(info, io.BytesIO(b"hello\n"))
        assert container.put_archive("/tmp", data.getvalue())
        chunks, stat = container.get_archive("/tmp/hello.txt")
        assert stat["name"] == "hello.txt" and stat["size"] == 6
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.extractfile("hello.txt")
            assert member is not None and member.read() == b"hello\n"
    finally:
        container.remove(force=True)


def test_stats_count_the_container_s_own_interfaces(client) -> None:
    """`docker stats` NET I/O: the interfaces of the container's network namespace (its
    pings to the gateway of the test agent's bridge), loopback left out as docker does."""
    pinging = client.containers.run(
        BUSYBOX,
        ["sh", "-c", "ping -c 3 -W 1 $(ip route | awk '/default/ {print $3}'); sleep 300"],
        detach=True,
    )
    alone = client.containers.run(BUSYBOX, ["sleep", "300"], detach=True, network_mode="none")
    try:
        for _ in range(50):
            networks = pinging.stats(stream=False)["networks"]
            if networks.get("eth0", {}).get("rx_packets", 0) >= 3:
                break
            time.sleep(0.1)
        assert list(networks) == ["eth0"], networks
        eth0 = networks["eth0"]
        assert eth0["tx_packets"] >= 3 and eth0["rx_packets"] >= 3, eth0
        assert eth0["tx_bytes"] >= 3 * 84 and eth0["rx_bytes"] >= 3 * 84, eth0
        assert alone.stats(stream=False)["networks"] == {}
    finally:
        pinging.remove(force=True)
        alone.remove(force=True)
