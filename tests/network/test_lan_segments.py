"""`deploy/local-cluster up --hosts 3 --segments 2`'s network, without a cluster
(deploy/local_cluster_hosts.py): hosts 1 and 3 share an L2 segment, host 2 is on
another behind the router namespace, this machine reaches all three; `remove_hosts`
deletes every namespace, bridge and veth it made."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.network.conftest import free_subnet

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def hosts() -> Iterator[tuple[ModuleType, str]]:
    sys.path.insert(0, str(DEPLOY))
    try:
        import local_cluster_hosts  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(DEPLOY))
    reason = local_cluster_hosts.unavailable() or (
        "" if shutil.which("busybox") else "busybox is not installed"
    )
    if reason:
        pytest.skip(reason)
    prefix = f"dys{uuid.uuid4().hex[:4]}-"
    try:
        yield local_cluster_hosts, prefix
    finally:
        local_cluster_hosts.remove_hosts(prefix)


def ping(netns: str, address: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "1", address],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def neighbours(netns: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, "-4", "neigh", "show"], capture_output=True, text=True, check=False
    ).stdout


def test_three_hosts_on_two_segments(hosts: tuple[ModuleType, str]) -> None:
    module, prefix = hosts
    lan = ipaddress.IPv4Network(free_subnet())
    seg1, seg2 = list(lan.subnets(prefixlen_diff=1))
    machine = str(seg1.network_address + 1)
    addresses = [(str(seg1.network_address + 11), 1), (str(seg2.network_address + 12), 2),
                 (str(seg1.network_address + 13), 1)]  # fmt: skip
    module.make_hosts(prefix, machine, [seg1, seg2], addresses)
    one, two, three = (f"{prefix}host-{n}" for n in (1, 2, 3))
    router = str(seg1.broadcast_address - 1)

    assert ping(one, addresses[2][0])  # same segment
    assert addresses[2][0] in neighbours(one)  # ... on L2: the peer itself is a neighbour
    assert ping(one, addresses[1][0]) and ping(two, addresses[2][0])  # across the router
    assert addresses[1][0] not in neighbours(one)  # ... never a neighbour: routed
    route = subprocess.run(["ip", "-n", one, "route", "get", addresses[1][0]],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"via {router}" in route
    for netns in (one, two, three):  # this machine (controller, registry) from each host
        assert ping(netns, machine)

    module.remove_hosts(prefix)
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in netns and prefix not in links
    assert str(seg2) not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
