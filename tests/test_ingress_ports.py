"""Cluster-wide uniqueness of ingress (routing mesh) ports, and their spec checks."""

from __future__ import annotations

import pytest

from dockyard.common.validation import ValidationError
from dockyard.controller.ingress_ports import ingress_conflict
from dockyard.controller.specs import check_service_spec
from dockyard.v1.workloads_pb2 import PortConfig, Service, ServiceSpec


def spec(name: str, *ports: tuple[int, str, str]) -> ServiceSpec:
    out = ServiceSpec(name=name)
    out.task.container.image = "busybox"
    out.replicated.replicas = 1
    for published, protocol, mode in ports:
        out.task.ports.append(
            PortConfig(
                published_port=published, target_port=80, protocol=protocol, publish_mode=mode
            )
        )
    return out


def service(service_id: str, name: str, *ports: tuple[int, str, str]) -> Service:
    return Service(id=service_id, spec=spec(name, *ports))


EXISTING = [
    service("a", "web", (8080, "tcp", "ingress")),
    service("b", "dns", (53, "udp", "host")),
]


@pytest.mark.parametrize(
    ("new", "clash"),
    [
        (spec("x", (8080, "tcp", "ingress")), "port 8080/tcp is already published by service web"),
        (spec("x", (8080, "tcp", "host")), "service web (ingress mode)"),
        (spec("x", (53, "udp", "ingress")), "service dns (host mode)"),
        (spec("x", (53, "udp", "")), None),  # host next to host: the scheduler spreads them
        (spec("x", (8080, "udp", "ingress")), None),  # another protocol
        (spec("x", (53, "tcp", "ingress")), None),
    ],
)
def test_conflicts(new: ServiceSpec, clash: str | None) -> None:
    why = ingress_conflict(new, "", EXISTING)
    if clash is None:
        assert why is None
    else:
        assert why is not None and clash in why


def test_a_service_keeps_its_own_port_on_update() -> None:
    assert ingress_conflict(spec("web", (8080, "tcp", "ingress")), "a", EXISTING) is None


@pytest.mark.parametrize(
    ("mode", "published", "message"),
    [("mesh", 8080, "must be ingress or host"), ("ingress", 0, "needs a published port")],
)
def test_spec_checks(mode: str, published: int, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_service_spec(spec("x", (published, "tcp", mode)))


def test_the_map_lists_ingress_ports_with_their_running_tasks() -> None:
    from dockyard.common.states import TaskState
    from dockyard.controller.network_map import ingress_ports
    from dockyard.v1.workloads_pb2 import Task

    def task(service_id: str, address: str, state: int, desired: int = TaskState.RUNNING) -> Task:
        found = Task(id=address, service_id=service_id, desired_state=desired)  # type: ignore[arg-type]
        found.status.state = state  # type: ignore[assignment]
        found.status.address = address
        # its address on the ingress network: the same host part, in 10.255.0.0/24
        found.networks.add(network_id="ing", address="10.255.0." + address.rsplit(".", 1)[1])
        return found

    services = [
        service("a", "web", (8080, "tcp", "ingress"), (8081, "", "host")),
        service("b", "dns", (53, "UDP", "ingress")),
        service("c", "plain", (9000, "tcp", "")),
    ]
    tasks = {
        "a": [
            task("a", "10.87.2.5", TaskState.RUNNING),
            task("a", "10.87.1.4", TaskState.RUNNING),
            task("a", "10.87.1.9", TaskState.STARTING),
            task("a", "10.87.1.7", TaskState.RUNNING, desired=TaskState.SHUTDOWN),
        ],
        "c": [task("c", "10.87.1.8", TaskState.RUNNING)],
    }
    assert ingress_ports(services, lambda sid: tasks.get(sid, []), "ing") == (
        (53, 80, "udp", (), ()),  # no task yet: the nodes refuse it
        (8080, 80, "tcp", ("10.87.1.4", "10.87.2.5"), ("10.255.0.4", "10.255.0.5")),
    )
