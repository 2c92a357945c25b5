"""The bridge network on a real agent: addresses, published ports, validation, release."""

from __future__ import annotations

import functools
import ipaddress
import socket
import subprocess
import time
from collections.abc import Callable

import grpc
import pytest

from dockyard.v1 import containers_pb2 as cpb
from tests.agent.conftest import ImageRegistry
from tests.network.conftest import BridgeAgent, http_get, udp_echo, wait_http, web_command
from tests.ports import free_port
from tests.runtime.conftest import bridge_links

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def wait_exec_output(
    agent: BridgeAgent, ref: str, command: list[str], expected: str, timeout: float = 15
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = agent.cli("exec", ref, *command)
        if result.returncode == 0 and result.stdout == expected:
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{command} in {ref}: {result.returncode} {result.stdout!r} {result.stderr!r}"
            )
        time.sleep(0.2)


def records(agent: BridgeAgent) -> list[str]:
    """Every file the agent keeps per container (runtime, manager, network)."""
    state = agent.agent.state_dir
    return sorted(
        str(p.relative_to(state))
        for pattern in ("runtime/containers/*", "containers/*.json", "network/containers/*.json")
        for p in state.glob(pattern)
    )


def test_bridge_containers_get_an_address_and_reach_each_other(
    bridge_agent: BridgeAgent, image_registry: ImageRegistry
) -> None:
    a, busybox = bridge_agent, image_registry.busybox
    web = a.ok(
        "run", "-d", "--name", "net-web", "--network", "bridge", busybox, *web_command("hello-web")
    ).strip()
    client = a.ok(
        "run", "-d", "--name", "net-client", "--network", "bridge", busybox, "sleep", "300"
    ).strip()
    network = a.agent.inspect(web).network
    subnet = ipaddress.IPv4Network(a.subnet)
    assert network.mode == "bridge" and network.bridge == a.bridge
    assert ipaddress.IPv4Address(network.ip_address) in subnet
    assert (network.prefix_length, network.gateway) == (24, str(next(subnet.hosts())))
    other = a.agent.inspect(client).network.ip_address
    assert other != network.ip_address and ipaddress.IPv4Address(other) in subnet
    assert a.agent.inspect(client).config.network == "bridge"

    # one container reaches the other by address, across the bridge
    wait_exec_output(
        a, "net-client", ["wget", "-q", "-O", "-", f"http://{network.ip_address}/"], "hello-web\n"
    )
    # its /etc/hosts names it; no loopback nameserver (unreachable from a namespace)
    hosts = a.ok("exec", "net-web", "cat", "/etc/hosts")
    assert f"{network.ip_address}\t{web[:12]} net-web\n" in hosts
    assert "nameserver 127." not in a.ok("exec", "net-web", "cat", "/etc/resolv.conf")
    # the host reaches it through the bridge, its gateway
    assert http_get(f"http://{network.ip_address}/") == "hello-web\n"
    # docker inspect shows it
    assert f'"ip_address": "{network.ip_address}"' in a.ok("container", "inspect", "net-web")

    veths = a.veth_of(web), a.veth_of(client)
    assert set(bridge_links(a.bridge)) == set(veths)
    assert a.ok("container", "rm", "-f", "net-web", "net-client") == "net-web\nnet-client\n"
    assert a.leftovers(web, network.ip_address, veths[0]) == []
    assert a.leftovers(client, other, veths[1]) == []


def test_published_ports_tcp_udp_picked_and_taken(
    bridge_agent: BridgeAgent, image_registry: ImageRegistry
) -> None:
    a, busybox = bridge_agent, image_registry.busybox
    host_port = free_port()
    # no --network: publishing implies the bridge
    web = a.ok(
        "run",
        "-d",
        "--name",
        "net-pub",
        "-p",
        f"127.0.0.1:{host_port}:80",
        "-p",
        "127.0.0.1::80",
        "-p",
        "127.0.0.1::5353/udp",
        busybox,
        *web_command("published"),
    ).strip()
    record = a.agent.inspect(web)
    ports = {
        (p.container_port, p.protocol, p.host_port == host_port): p for p in record.network.ports
    }
    picked, udp = ports[(80, "tcp", False)], ports[(5353, "udp", False)]
    assert picked.host_port > 0 and udp.host_port > 0 and picked.host_ip == "127.0.0.1"
    assert wait_http(f"http://127.0.0.1:{host_port}/") == "published\n"
    assert wait_http(f"http://127.0.0.1:{picked.host_port}/") == "published\n"
    a.serve_udp_echo(web, 5353)
    assert udp_echo("127.0.0.1", udp.host_port, b"ping") == b"echo:ping"

    listed = a.ok("ps")
    assert listed.splitlines()[0].split()[-2:] == ["PORTS", "NAMES"]
    assert f"127.0.0.1:{host_port}->80/tcp" in listed
    assert f"127.0.0.1:{udp.host_port}->5353/udp" in listed
    assert a.ok("container", "port", "net-pub", "5353/udp") == f"127.0.0.1:{udp.host_port}\n"
    assert f"80/tcp -> 127.0.0.1:{host_port}\n" in a.ok("container", "port", "net-pub")

    # a host port this agent gave another container: refused by name, nothing written
    before = records(a)
    taken = a.cli("run", "-d", "--name", "net-taken", "-p", f"{host_port}:8080", busybox, "true")
    assert taken.returncode == 125
    assert (
        f"ports[0].host_port: host port {host_port}/tcp is already allocated to "
        f"container net-pub ({web[:12]})" in taken.stderr
    )
    # a port another process of the host holds
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        busy = holder.getsockname()[1]
        refused = a.cli("container", "create", "-p", f"127.0.0.1:{busy}:80", busybox, "true")
        assert refused.returncode == 125
        assert f"host port 127.0.0.1:{busy}/tcp is already in use on this host" in refused.stderr
    assert records(a) == before

    veth = a.veth_of(web)
    a.ok("container", "rm", "-f", web)
    a.stop_servers()
    assert a.leftovers(web, record.network.ip_address, veth) == []
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{host_port}/", timeout=2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("70000:80", "host port 70000 is not in 1-65535"),
        ("80/sctp", "unknown protocol 'sctp'"),
        ("[::1]:8080:80", "IPv6 host addresses are not supported"),
        ("1.2.3:80:80", "'1.2.3' is not an IP address"),
        ("8000-8002:80-81", "ranges differ in size"),
    ],
)
def test_bad_publish_flags_exit_125(bridge_agent: BridgeAgent, spec: str, message: str) -> None:
    result = bridge_agent.cli("run", "-p", spec, "busybox", "true")
    assert result.returncode == 125
    assert result.stderr == f"dockyard: invalid -p {spec!r}: {message}\n" or (
        message in result.stderr
    ), result.stderr


def test_bad_ports_refused_by_the_api_with_nothing_written(
    bridge_agent: BridgeAgent, image_registry: ImageRegistry
) -> None:
    a = bridge_agent
    host_net = a.cli("run", "--network", "host", "-p", "80", image_registry.busybox, "true")
    assert host_net.returncode == 125 and "conflicting options" in host_net.stderr

    def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        return caught.value.code(), caught.value.details() or ""

    port = cpb.PortMapping
    bad: list[tuple[list[cpb.PortMapping], str, str]] = [
        ([port(container_port=0)], "", "ports[0].container_port"),
        ([port(container_port=80, host_port=70000)], "", "ports[0].host_port"),
        ([port(container_port=80, host_port=-1)], "", "ports[0].host_port"),
        ([port(container_port=80, protocol="sctp")], "", "ports[0].protocol"),
        ([port(container_port=80, host_ip="::1")], "", "ports[0].host_ip"),
        ([port(container_port=80, host_ip="not-an-ip")], "", "ports[0].host_ip"),
        (
            [
                port(container_port=80, host_port=9000),
                port(container_port=81, host_port=9000, host_ip="127.0.0.1"),
            ],
            "",
            "ports[1].host_port",
        ),
        ([port(container_port=80)], "host", "ports"),
    ]
    before = records(a)
    listed = len(a.agent.containers.List(cpb.ListContainersRequest(all=True)).containers)
    for ports, network, field in bad:
        request = cpb.CreateContainerRequest(
            image=image_registry.busybox, command=["true"], ports=ports, network=network
        )
        code, message = code_of(functools.partial(a.agent.containers.Create, request, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message.startswith(f"{field}: "), message
    assert records(a) == before
    assert len(a.agent.containers.List(cpb.ListContainersRequest(all=True)).containers) == listed


def test_killed_agent_restarts_and_releases_everything(
    bridge_agent_factory: Callable[..., BridgeAgent], image_registry: ImageRegistry
) -> None:
    a = bridge_agent_factory()
    busybox = image_registry.busybox
    host_port = free_port()
    web = a.ok(
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        f"127.0.0.1:{host_port}:80",
        busybox,
        *web_command("survivor"),
    ).strip()
    ip = a.agent.inspect(web).network.ip_address
    assert wait_http(f"http://127.0.0.1:{host_port}/") == "survivor\n"
    # stopped and started again: the same namespace, address and port
    a.ok("container", "stop", "-t", "1", "web")
    assert a.agent.inspect(web).network.ip_address == ip
    a.ok("container", "start", "web")
    assert wait_http(f"http://127.0.0.1:{host_port}/") == "survivor\n"
    # --rm: it exits while the agent is down
    brief = a.ok("run", "-d", "--rm", "-p", "127.0.0.1::80", busybox, "sleep", "1").strip()
    brief_ip, brief_veth = a.agent.inspect(brief).network.ip_address, a.veth_of(brief)
    a.agent.crash()
    assert http_get(f"http://127.0.0.1:{host_port}/") == "survivor\n"  # conmon keeps it
    time.sleep(1.5)
    a.agent.start()
    assert a.leftovers(brief, brief_ip, brief_veth) == []  # removed at recovery: released
    record = a.agent.inspect(web)
    assert record.state.status == "running" and record.network.ip_address == ip
    assert [(p.host_port, p.container_port) for p in record.network.ports] == [(host_port, 80)]
    taken = a.cli("container", "create", "-p", f"{host_port}:80", busybox, "true")
    assert taken.returncode == 125 and "already allocated to container web" in taken.stderr

    # as after a reboot: the container stopped and its namespace gone; recovery sets the
    # namespace up again with the old address, and the container starts in it
    a.ok("container", "stop", "-t", "1", "web")
    a.agent.crash()
    subprocess.run(["ip", "netns", "delete", a.netns_of(web)], check=True)
    a.agent.start()
    assert a.agent.inspect(web).network.ip_address == ip
    a.ok("container", "start", "web")
    assert wait_http(f"http://127.0.0.1:{host_port}/") == "survivor\n"
    assert wait_http(f"http://{ip}/") == "survivor\n"

    veth = a.veth_of(web)
    a.ok("container", "rm", "-f", "web")
    assert a.leftovers(web, ip, veth) == []
    assert bridge_links(a.bridge) == []
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{host_port}/", timeout=2)


def test_a_second_agent_on_the_same_bridge_is_refused(
    bridge_agent: BridgeAgent,
    bridge_agent_factory: Callable[..., BridgeAgent],
    image_registry: ImageRegistry,
) -> None:
    first = bridge_agent
    holder = first.ok(
        "run", "-d", "--network", "bridge", image_registry.busybox, "sleep", "60"
    ).strip()
    second = bridge_agent_factory(bridge=first.bridge, subnet=first.subnet)
    refused = second.cli("run", "--network", "bridge", image_registry.busybox, "true")
    assert refused.returncode == 125
    assert f"bridge {first.bridge} is in use by another agent (pid " in refused.stderr
    assert second.ok("run", "--rm", image_registry.busybox, "echo", "none works") == "none works\n"
    first.ok("container", "rm", "-f", holder)
