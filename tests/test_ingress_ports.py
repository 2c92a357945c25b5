"""Cluster-wide uniqueness of ingress (routing mesh) ports, their allocation (30000-32767)
and their spec checks."""

from __future__ import annotations

import pytest

from dockyard.common.validation import ValidationError
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.ingress_ports import allocate_ingress_ports, ingress_conflict
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


def test_spec_checks() -> None:
    with pytest.raises(ValidationError, match="must be ingress or host"):
        check_service_spec(spec("x", (8080, "tcp", "mesh")))
    check_service_spec(spec("x", (0, "tcp", "ingress")))  # the controller allocates one


def published(spec: ServiceSpec) -> list[tuple[int, str]]:
    return [(p.published_port, p.protocol) for p in spec.task.ports]


def test_an_ingress_port_with_none_published_gets_the_lowest_free_one() -> None:
    others = [
        service("a", "web", (30000, "tcp", "ingress")),
        service("b", "dns", (30001, "tcp", "host")),  # any mode holds it
        service("c", "udp", (30002, "udp", "ingress")),  # another protocol does not
    ]
    new = spec("x", (0, "tcp", "ingress"), (0, "tcp", "ingress"), (0, "udp", "ingress"))
    got = allocate_ingress_ports(new, "", others)
    assert published(got) == [(30002, "tcp"), (30003, "tcp"), (30000, "udp")]
    assert published(new) == [(0, "tcp")] * 2 + [(0, "udp")]  # the input is left alone
    host = spec("y", (0, "tcp", "host"))  # a host port with none: the node picks
    assert allocate_ingress_ports(host, "", others) is host


def test_an_update_keeps_the_port_the_service_had_for_its_target() -> None:
    current = service("x", "x", (30005, "tcp", "ingress"))
    others = [service("a", "web", (30000, "tcp", "ingress")), current]
    again = allocate_ingress_ports(spec("x", (0, "tcp", "ingress")), "x", others)
    assert published(again) == [(30005, "tcp")]
    # removed (the service, or its port): the next service may have it
    assert published(allocate_ingress_ports(spec("n", (0, "tcp", "ingress")), "", others[:1])) == [
        (30001, "tcp")
    ]


def test_a_full_range_is_refused_naming_it() -> None:
    others = [service("a", "a", (40000, "tcp", "ingress")), service("b", "b", (40001, "tcp", ""))]
    one = spec("x", (0, "tcp", "ingress"))
    with pytest.raises(FailedPrecondition, match="no free port in 40000-40001 for target port 80"):
        allocate_ingress_ports(one, "", others, range(40000, 40002))
    assert published(allocate_ingress_ports(one, "", others[:1], range(40000, 40002))) == [
        (40001, "tcp")
    ]


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
