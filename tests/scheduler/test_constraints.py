"""Parsing, validating and matching placement constraints and preferences."""

from __future__ import annotations

import pytest

from dockyard.controller.scheduler import (
    ConstraintError,
    check_placement,
    parse_constraint,
    spread_label,
)
from dockyard.v1.workloads_pb2 import Placement, PlacementPreference

from .helpers import make_node


@pytest.mark.parametrize(
    ("text", "key", "equal", "value"),
    [
        ("node.id==abc", "node.id", True, "abc"),
        ("node.hostname != n3", "node.hostname", False, "n3"),
        ("node.name==web-1", "node.name", True, "web-1"),
        ("node.labels.zone==eu", "node.labels.zone", True, "eu"),
        ("node.labels.disk!=hdd", "node.labels.disk", False, "hdd"),
        ("node.platform.os==linux", "node.platform.os", True, "linux"),
        ("node.platform.arch==amd64", "node.platform.arch", True, "amd64"),
        ("node.role==worker", "node.role", True, "worker"),
        ("Node.Hostname==n1", "node.hostname", True, "n1"),
    ],
)
def test_parses_valid_constraints(text: str, key: str, equal: bool, value: str) -> None:
    constraint = parse_constraint(text)
    assert (constraint.key, constraint.equal, constraint.value) == (key, equal, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "node.lables.zone==a",
            "unknown constraint key 'node.lables.zone' in 'node.lables.zone==a'",
        ),
        ("node.labels.zone=a", "constraint 'node.labels.zone=a' needs == or !="),
        ("node.labels.zone", "constraint 'node.labels.zone' needs == or !="),
        ("==a", "constraint '==a' needs a key before =="),
        ("node.labels.zone==", "constraint 'node.labels.zone==' needs a value after =="),
        ("node.labels.==a", "needs a label name after 'node.labels.'"),
        ("node.labels.a==b==c", "invalid value 'b==c' in constraint 'node.labels.a==b==c'"),
        ("node.labels.a b==c", "invalid label key 'a b'"),
        ("engine.labels.x==y", "unknown constraint key 'engine.labels.x'"),
    ],
)
def test_malformed_constraints_name_the_constraint_and_the_fault(text: str, message: str) -> None:
    with pytest.raises(ConstraintError) as caught:
        parse_constraint(text)
    assert message in str(caught.value)


def test_matching_node_fields() -> None:
    node = make_node("n1", hostname="h1", name="web", labels={"zone": "eu"}, arch="x86_64")
    assert parse_constraint("node.id==n1").matches(node)
    assert not parse_constraint("node.id!=n1").matches(node)
    assert parse_constraint("node.hostname==h1").matches(node)
    assert parse_constraint("node.name==WEB").matches(node)  # case-insensitive, as swarmkit
    assert parse_constraint("node.labels.zone==eu").matches(node)
    assert parse_constraint("node.labels.zone!=us").matches(node)
    assert parse_constraint("node.platform.os==linux").matches(node)
    assert parse_constraint("node.platform.arch==amd64").matches(node)  # x86_64 is amd64
    assert parse_constraint("node.role==worker").matches(node)
    assert not parse_constraint("node.role==manager").matches(node)


def test_a_missing_label_fails_equal_and_passes_not_equal() -> None:
    node = make_node("n1")
    assert not parse_constraint("node.labels.zone==eu").matches(node)
    assert parse_constraint("node.labels.zone!=eu").matches(node)


def test_spread_label() -> None:
    assert spread_label(PlacementPreference(spread="node.labels.zone")) == "zone"
    with pytest.raises(ConstraintError, match=r"must be node\.labels\.<key>"):
        spread_label(PlacementPreference(spread="node.hostname"))
    with pytest.raises(ConstraintError, match=r"needs spread=node\.labels"):
        spread_label(PlacementPreference(spread=""))


def test_check_placement() -> None:
    good = Placement(constraints=["node.labels.zone==eu"], max_replicas_per_node=2)
    good.preferences.add(spread="node.labels.rack")
    check_placement(good)
    with pytest.raises(ConstraintError, match="needs == or !="):
        check_placement(Placement(constraints=["node.labels.zone==eu", "zone"]))
    bad_pref = Placement()
    bad_pref.preferences.add(spread="zone")
    with pytest.raises(ConstraintError, match="spread='zone'"):
        check_placement(bad_pref)
    with pytest.raises(ConstraintError, match="must not be negative"):
        check_placement(Placement(max_replicas_per_node=-1))
