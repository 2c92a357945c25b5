"""The agent's metrics without containers: cgroup v1 and v2 readers on fake cgroupfs trees,
`net/dev` parsing, the collector's families and bounds, and the endpoint's mutual TLS."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.agent.metrics.cgroups import CgroupV1Reader, CgroupV2Reader, detect_reader
from dockyard.agent.metrics.collector import ContainerCollector
from dockyard.agent.metrics.exposition import AgentMetrics
from dockyard.agent.metrics.http import MetricsServer, server_tls
from dockyard.agent.metrics.netdev import InterfaceCounters, parse_net_dev
from dockyard.agent.metrics.node import StoreSizeCollector, tree_bytes
from dockyard.agent.metrics.source import ContainerRef
from dockyard.common import pki
from tests.ports import free_port

CID = "c0ffee" * 10 + "abcd"


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def v2_tree(root: Path, group: str = f"dockyard/{CID}") -> None:
    write(
        root,
        {
            "cgroup.controllers": "cpu memory pids\n",
            f"{group}/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
            "nr_periods 0\n",
            f"{group}/memory.current": "52428800\n",
            f"{group}/memory.max": "134217728\n",
            f"{group}/memory.stat": "anon 41943040\nfile 10485760\ninactive_file 8388608\n"
            "active_file 2097152\n",
            f"{group}/memory.events": "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n",
            f"{group}/pids.current": "7\n",
            f"{group}/pids.max": "max\n",
        },
    )


def test_v2_reader_reads_the_unified_hierarchy(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    reader = detect_reader(tmp_path)
    assert isinstance(reader, CgroupV2Reader) and reader.version == 2
    sample = reader.read(f"/dockyard/{CID}")
    assert sample is not None
    assert sample.cpu_usage_seconds == 2.5 and sample.cpu_user_seconds == 2.0
    assert sample.cpu_system_seconds == 0.5
    assert sample.memory_usage_bytes == 50 * 2**20
    assert sample.memory_working_set_bytes == 42 * 2**20  # usage less inactive_file
    assert sample.memory_rss_bytes == 40 * 2**20 and sample.memory_cache_bytes == 10 * 2**20
    assert sample.memory_limit_bytes == 128 * 2**20
    assert sample.oom_kills == 2 and sample.threads == 7 and sample.threads_max == 0
    (tmp_path / "dockyard" / CID / "memory.max").write_text("max\n")
    assert reader.read(f"/dockyard/{CID}").memory_limit_bytes == 0  # type: ignore[union-attr]
    assert reader.read("/dockyard/gone") is None


def test_v1_reader_reads_each_controller(tmp_path: Path) -> None:
    group = f"dockyard/{CID}"
    write(
        tmp_path,
        {
            f"cpuacct/{group}/cpuacct.usage": "3000000000\n",
            f"cpuacct/{group}/cpuacct.stat": "user 250\nsystem 50\n",
            f"memory/{group}/memory.usage_in_bytes": "20971520\n",
            f"memory/{group}/memory.limit_in_bytes": "9223372036854771712\n",
            f"memory/{group}/memory.stat": "cache 1\nrss 2\ntotal_cache 4194304\n"
            "total_rss 16777216\ntotal_inactive_file 3145728\n",
            f"memory/{group}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
            f"pids/{group}/pids.current": "3\n",
            f"pids/{group}/pids.max": "100\n",
        },
    )
    reader = detect_reader(tmp_path)
    assert isinstance(reader, CgroupV1Reader)
    sample = reader.read(f"/{group}")
    assert sample is not None
    assert sample.cpu_usage_seconds == 3.0
    assert (sample.cpu_user_seconds, sample.cpu_system_seconds) == (2.5, 0.5)
    assert sample.memory_usage_bytes == 20 * 2**20
    assert sample.memory_working_set_bytes == 17 * 2**20
    assert sample.memory_limit_bytes == 0  # LONG_MAX: no limit
    assert (sample.memory_rss_bytes, sample.memory_cache_bytes) == (16 * 2**20, 4 * 2**20)
    assert sample.oom_kills == 1 and sample.threads == 3 and sample.threads_max == 100
    assert reader.read("/dockyard/gone") is None


NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    9000      60    1    2    0     0          0         0     4000      30    3    4    0     0       0          0
"""  # noqa: E501


def test_net_dev_skips_loopback() -> None:
    assert parse_net_dev(NET_DEV) == [InterfaceCounters("eth0", 9000, 60, 1, 2, 4000, 30, 3, 4)]
    assert parse_net_dev("garbage\n\nnope: 1 2\n") == []


def ref(cid: str = CID, **fields: object) -> ContainerRef:
    base: dict[str, object] = {
        "id": cid,
        "name": "web.1.abc",
        "image": "busybox",
        "cgroups_path": f"/dockyard/{cid}",
        "pid": 4242,
        "running": True,
        "started_at": 1000.0,
        "labels": {
            "dockyard.service.name": "web",
            "dockyard.task.id": "t1",
            "dockyard.slot": "1",
            "free.form": "not a metric label",
        },
    }
    base.update(fields)
    return ContainerRef(**base)  # type: ignore[arg-type]


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def render(
    collector: ContainerCollector, refs: list[ContainerRef]
) -> dict[str, list[tuple[dict[str, str], float]]]:
    async def source() -> list[ContainerRef]:
        return refs

    body, content_type = asyncio.run(AgentMetrics(source, collector).render())
    assert content_type.startswith("text/plain; version=0.0.4")
    return families(body.decode())


def test_collector_families_parse_with_the_task_labels(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    collector = ContainerCollector(
        CgroupV2Reader(tmp_path), "node-1", net_dev=lambda pid: parse_net_dev(NET_DEV)
    )
    found = render(
        collector,
        [ref(), ref("dead" * 16, running=False, pid=0, restarts=2, oom_killed=True, name="old")],
    )
    labels, value = found["container_memory_working_set_bytes"][0]
    assert value == 42 * 2**20
    assert labels == {
        "id": CID,
        "name": "web.1.abc",
        "image": "busybox",
        "service": "web",
        "task": "t1",
        "slot": "1",
        "node": "node-1",
    }
    assert found["container_cpu_usage_seconds_total"][0][1] == 2.5
    assert found["container_spec_memory_limit_bytes"][0][1] == 128 * 2**20
    assert found["container_threads"][0][1] == 7
    rx = found["container_network_receive_bytes_total"]
    assert rx == [({**labels, "interface": "eth0"}, 9000)]
    oom = {labels["name"]: value for labels, value in found["container_oom_events_total"]}
    assert oom == {"web.1.abc": 2, "old": 1}  # cgroup count; the exited one's flag
    restarts = {
        labels["name"]: value for labels, value in found["dockyard_container_restarts_total"]
    }
    assert restarts == {"web.1.abc": 0, "old": 2}
    running = {labels["name"]: value for labels, value in found["dockyard_container_running"]}
    assert running == {"web.1.abc": 1, "old": 0}
    assert len(found["container_memory_usage_bytes"]) == 1  # no cgroup for the exited one


def test_oom_count_survives_restarts(tmp_path: Path) -> None:
    collector = ContainerCollector(CgroupV2Reader(tmp_path), "n", net_dev=lambda pid: [])
    v2_tree(tmp_path)
    oom = lambda refs: render(collector, refs)["container_oom_events_total"][0][1]  # noqa: E731
    assert oom([ref()]) == 2  # two kills of child processes, seen in the cgroup
    assert oom([ref(running=False, pid=0, oom_killed=True)]) == 2  # the cgroup is gone
    (tmp_path / "dockyard" / CID / "memory.events").write_text("oom_kill 0\n")
    assert oom([ref(started_at=2000.0, restarts=1)]) == 2  # a new run: count kept
    assert oom([ref(started_at=2000.0, running=False, pid=0, oom_killed=True)]) == 3
    assert oom([ref(started_at=3000.0, restarts=2)]) == 3


def test_containers_over_the_limit_are_counted_not_reported(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    collector = ContainerCollector(
        CgroupV2Reader(tmp_path), "n", max_containers=2, net_dev=lambda pid: []
    )
    refs = [ref(f"{i:064x}", running=False, pid=0, started_at=float(i)) for i in range(5)]
    refs.append(ref())
    found = render(collector, refs)
    reported = {labels["id"] for labels, _ in found["dockyard_container_running"]}
    assert reported == {CID, f"{4:064x}"}  # the running one, then the newest
    counted = {labels["reported"]: value for labels, value in found["dockyard_metrics_containers"]}
    assert counted == {"true": 2, "false": 4}
    with pytest.raises(ValueError, match="max_containers"):
        ContainerCollector(CgroupV2Reader(tmp_path), "n", max_containers=0)


def test_store_size_is_measured_once_per_ttl(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "a").write_bytes(b"x" * 10000)
    calls: list[Path] = []

    def measure(path: Path) -> int:
        calls.append(path)
        return tree_bytes(path)

    collector = StoreSizeCollector({"blobs": tmp_path / "blobs"}, ttl=3600, measure=measure)
    first = [s.value for f in collector.collect() for s in f.samples if s.name.endswith("bytes")]
    collector.collect()
    assert first[0] >= 10000 and len(calls) == 1


# -- the endpoint: mutual TLS and roles ------------------------------------------------------


def _files(directory: Path, name: str, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert.write_bytes(pair[0])
    key.write_bytes(pair[1])
    return cert, key


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def test_endpoint_requires_a_scraping_role(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("metrics-test")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    server_cert, server_key = _files(
        tmp_path, "node", ca.issue_pair(pki.NODE, "n1", sans=["127.0.0.1"])
    )

    async def source() -> list[ContainerRef]:
        return []

    metrics = AgentMetrics(source, ContainerCollector(CgroupV2Reader(tmp_path), "n1"))
    revoked: set[str] = set()
    server = MetricsServer(
        f"127.0.0.1:{free_port()}",
        metrics,
        server_tls(server_cert, server_key, tmp_path / "ca.pem"),
        revoked.__contains__,
    )
    await server.start()
    url = f"https://{server.address}/metrics"

    def client(role: str | None, authority: pki.CertificateAuthority = ca) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        if role is not None:
            context.load_cert_chain(
                *_files(
                    tmp_path, f"c-{role}-{id(authority)}", authority.issue_pair(role, f"{role}-1")
                )
            )
        return context

    def get(context: ssl.SSLContext | None, target: str = url) -> tuple[int, str]:
        return _get(target, context)

    try:
        status, body = await asyncio.to_thread(get, client(pki.READ_ONLY))
        assert status == 200 and "dockyard_metrics_containers" in body
        assert (await asyncio.to_thread(get, client(pki.ADMIN)))[0] == 200
        status, body = await asyncio.to_thread(get, client(pki.NODE))
        assert status == 403 and "node" in body
        assert (await asyncio.to_thread(get, client(pki.NODE), url.replace("metrics", "healthz")))[
            0
        ] == 200
        for stranger in (client(None), client(pki.ADMIN, pki.CertificateAuthority.create("x"))):
            with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
                await asyncio.to_thread(get, stranger)
        viewer = client(pki.READ_ONLY)
        revoked.add(
            pki.identity_of((tmp_path / f"c-{pki.READ_ONLY}-{id(ca)}.pem").read_bytes()).serial
        )
        status, body = await asyncio.to_thread(get, viewer)
        assert status == 403 and "revoked" in body
    finally:
        await server.stop()
