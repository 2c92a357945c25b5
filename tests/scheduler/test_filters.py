"""Each filter: when it applies, which nodes pass, and how it explains failures."""

from __future__ import annotations

import pytest

from dockyard.controller.scheduler import (
    AvailabilityFilter,
    ConstraintError,
    ConstraintFilter,
    HostPortFilter,
    MaxReplicasFilter,
    ReadyFilter,
    ResourceFilter,
)
from dockyard.v1.types_pb2 import NodeSpec

from .helpers import GIB, make_info, make_task


def test_ready_filter() -> None:
    f = ReadyFilter()
    assert f.set_task(make_task("t"))
    assert f.check(make_info("n1"))
    assert not f.check(make_info("n2", ready=False))
    assert f.explain(1) == "1 node is not ready"
    assert f.explain(3) == "3 nodes are not ready"


@pytest.mark.parametrize(
    ("availability", "passes"),
    [(NodeSpec.ACTIVE, True), (NodeSpec.PAUSE, False), (NodeSpec.DRAIN, False)],
)
def test_availability_filter(availability: NodeSpec.Availability.ValueType, passes: bool) -> None:
    f = AvailabilityFilter()
    assert f.set_task(make_task("t"))
    assert f.check(make_info("n1", availability=availability)) is passes
    assert f.explain(2) == "2 nodes are not active (paused or drained)"


def test_resource_filter() -> None:
    f = ResourceFilter()
    assert not f.set_task(make_task("t"))  # no reservations: does not apply
    assert f.set_task(make_task("t", memory=2 * GIB))
    assert f.check(make_info("n1", memory=2 * GIB))
    full = make_info("n2", [make_task("x", memory=7 * GIB)], memory=8 * GIB)
    assert not f.check(full)
    assert f.explain(2) == "insufficient memory (needs 2.0 GiB) on 2 nodes"
    assert f.set_task(make_task("t", cpus=1.5))
    assert not f.check(make_info("n3", cpus=1))
    assert f.explain(1) == "insufficient CPU (needs 1.5 CPUs) on 1 node"
    assert f.set_task(make_task("t", cpus=1, memory=512 * 1024**2))
    assert f.explain(1) == "insufficient CPU or memory (needs 1 CPU, 512.0 MiB) on 1 node"


def test_constraint_filter() -> None:
    f = ConstraintFilter()
    assert not f.set_task(make_task("t"))
    assert f.set_task(make_task("t", constraints=["node.labels.zone==eu"]))
    assert f.check(make_info("n1", labels={"zone": "eu"}))
    assert not f.check(make_info("n2", labels={"zone": "us"}))
    assert not f.check(make_info("n3"))
    assert f.explain(1) == "1 node fails node.labels.zone==eu"
    assert f.explain(2) == "2 nodes fail node.labels.zone==eu"
    f.set_task(make_task("t", constraints=["node.labels.zone==eu", "node.hostname!=h1"]))
    assert f.explain(2) == "2 nodes fail the constraints node.labels.zone==eu, node.hostname!=h1"


def test_constraint_filter_refuses_a_malformed_constraint() -> None:
    with pytest.raises(ConstraintError, match="needs == or !="):
        ConstraintFilter().set_task(make_task("t", constraints=["zone=eu"]))


def test_host_port_filter() -> None:
    f = HostPortFilter()
    assert not f.set_task(make_task("t"))
    assert f.set_task(make_task("t", ports=[80]))
    assert f.check(make_info("n1"))
    assert f.check(make_info("n1", [make_task("x", ports=[81])]))
    assert not f.check(make_info("n2", [make_task("x", "other", ports=[80])]))
    assert f.explain(1) == "host port 80/tcp in use on 1 node"
    f.set_task(make_task("t", ports=[80, 443]))
    assert f.explain(4) == "host ports 80/tcp, 443/tcp in use on 4 nodes"


def test_max_replicas_filter() -> None:
    f = MaxReplicasFilter()
    assert not f.set_task(make_task("t"))
    assert f.set_task(make_task("t", "web", max_replicas=2))
    one = make_info("n1", [make_task("a", "web"), make_task("b", "db"), make_task("c", "db")])
    two = make_info("n2", [make_task("a", "web"), make_task("b", "web")])
    assert f.check(one)
    assert not f.check(two)
    assert f.explain(1) == "max replicas per node (2) reached on 1 node"
