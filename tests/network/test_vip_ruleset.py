"""The nftables ruleset builder for virtual IPs (agent/network/vip.py): pure."""

from __future__ import annotations

import pytest

from dockyard.agent.network.vip import TABLE, VirtualIP, vip_ruleset


def rules(vips: list[VirtualIP]) -> list[dict[str, object]]:
    return [c["add"]["rule"] for c in vip_ruleset(vips)["nftables"] if "rule" in c.get("add", {})]


def test_the_table_is_flushed_in_the_same_transaction() -> None:
    commands = vip_ruleset([])["nftables"]
    table = {"family": "ip", "name": TABLE}
    assert commands[:2] == [{"add": {"table": table}}, {"flush": {"table": table}}]
    chains = [c["add"]["chain"] for c in commands if "chain" in c.get("add", {})]
    assert [(c["name"], c["type"], c["hook"]) for c in chains] == [
        ("nat", "nat", "output"),
        ("filter", "filter", "output"),
    ]


def test_backends_are_spread_by_a_random_numgen_map_sorted_and_unique() -> None:
    (rule,) = rules([VirtualIP("10.0.0.2", ("10.0.0.7", "10.0.0.5", "10.0.0.7"))])
    assert rule["chain"] == "nat"
    match, dnat = rule["expr"]  # type: ignore[misc]
    assert match["match"]["right"] == "10.0.0.2"
    spread = dnat["dnat"]["addr"]["map"]
    assert spread["key"] == {"numgen": {"mode": "random", "mod": 2, "offset": 0}}
    assert spread["data"] == {"set": [[0, "10.0.0.5"], [1, "10.0.0.7"]]}


def test_one_backend_is_a_plain_dnat_and_none_is_a_reject() -> None:
    one, none = rules([VirtualIP("10.0.0.2", ("10.0.0.5",)), VirtualIP("10.0.0.3", ())])
    assert one["expr"][1] == {"dnat": {"addr": "10.0.0.5"}}  # type: ignore[index]
    assert none["chain"] == "filter"
    assert none["expr"][1] == {"reject": {"type": "icmp", "expr": "port-unreachable"}}  # type: ignore[index]


def test_a_bad_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.999"):
        vip_ruleset([VirtualIP("10.0.0.2", ("10.0.0.999",))])
