"""The pure parts of user-defined networks: subnet choice and the isolation table."""

from __future__ import annotations

import pytest

from dockyard.agent.network.local_bridges import isolation_ruleset, local_bridge_name
from dockyard.agent.network.local_subnets import SubnetError, choose_subnet
from dockyard.agent.runtime.base import LocalBridge


def test_choose_subnet_skips_what_is_taken() -> None:
    taken = [
        ("10.77.0.0/24", "network red"),
        ("10.77.1.0/24", "network blue"),
        ("10.77.2.0/23", "the host's route"),
    ]
    assert choose_subnet("", taken) == "10.77.4.0/24"
    assert choose_subnet("10.99.0.0/24", taken) == "10.99.0.0/24"


def test_choose_subnet_refuses_naming_the_overlap() -> None:
    with pytest.raises(SubnetError, match=r"10\.77\.0\.0/25 overlaps network red"):
        choose_subnet("10.77.0.0/25", [("10.77.0.0/24", "network red")])
    with pytest.raises(SubnetError, match="Subnet 'nope'"):
        choose_subnet("nope", [])
    with pytest.raises(SubnetError, match="no free /24 left"):
        choose_subnet("", [("10.77.0.0/16", "everything")])


def test_isolation_drops_between_bridges_both_ways() -> None:
    red = LocalBridge("a" * 64, local_bridge_name("a" * 64), "10.77.0.0/24")
    shut = LocalBridge("b" * 64, local_bridge_name("b" * 64), "10.77.1.0/24", internal=True)
    rules = [
        c["add"]["rule"]["expr"]
        for c in isolation_ruleset("dy0", [red, shut])["nftables"]
        if "rule" in c.get("add", {})
    ]
    pairs = [(r[0]["match"]["op"], r[0]["match"]["right"], r[1]["match"]["right"]) for r in rules]
    assert ("==", "dyn-aaaaaaaaaa", {"set": ["dy0", "dyn-bbbbbbbbbb"]}) in pairs
    assert ("==", {"set": ["dy0", "dyn-bbbbbbbbbb"]}, "dyn-aaaaaaaaaa") in pairs
    assert ("==", "dyn-bbbbbbbbbb", "dyn-bbbbbbbbbb") in pairs  # internal: iif B, oif != B
    assert ("!=", "dyn-bbbbbbbbbb", "dyn-bbbbbbbbbb") in pairs
    assert all(r[-1] == {"drop": None} for r in rules)


def test_no_network_deletes_the_table() -> None:
    commands = isolation_ruleset("dy0", [])["nftables"]
    assert commands[-1] == {"delete": {"table": {"family": "ip", "name": "dy-iso-dy0"}}}
