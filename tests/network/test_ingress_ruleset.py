"""The routing mesh's nftables ruleset (agent/network/ingress.py), as JSON: no kernel."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.agent.network.ingress import TABLE, IngressPort, ingress_ruleset


def rules(ruleset: dict[str, Any], chain: str) -> list[list[dict[str, Any]]]:
    return [
        c["add"]["rule"]["expr"]
        for c in ruleset["nftables"]
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain
    ]


def test_ports_spread_over_every_task_and_answers_come_back_through_the_node() -> None:
    ruleset = ingress_ruleset(
        "10.255.0.2",
        [
            IngressPort(8080, 80, "tcp", ("10.255.0.11", "10.255.0.10", "10.255.0.11")),
            IngressPort(5353, 53, "udp", ("10.255.0.12",)),
            IngressPort(9000, 90, "tcp", ()),
        ],
    )
    commands = ruleset["nftables"]
    # one table of ours, flushed and refilled in the same transaction
    assert commands[:2] == [
        {"add": {"table": {"family": "ip", "name": TABLE}}},
        {"flush": {"table": {"family": "ip", "name": TABLE}}},
    ]
    hooks = {
        c["add"]["chain"]["name"]: c["add"]["chain"]["hook"]
        for c in commands
        if "chain" in c.get("add", {})
    }
    assert hooks == {
        "prerouting": "prerouting",
        "output": "output",
        "postrouting": "postrouting",
        "filter": "input",
    }
    tcp, udp = rules(ruleset, "prerouting")
    assert tcp[0]["match"]["right"] == "local"  # the node's own addresses only
    assert tcp[1]["match"] == {
        "op": "==",
        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
        "right": 8080,
    }
    assert tcp[2]["dnat"] == {
        "addr": {
            "map": {
                "key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                "data": {"set": [[0, "10.255.0.10"], [1, "10.255.0.11"]]},
            }
        },
        "port": 80,
    }
    assert udp[2]["dnat"] == {"addr": "10.255.0.12", "port": 53}
    # the host's own connections too, but not to loopback (a martian once DNATed)
    assert [r[0]["match"]["op"] for r in rules(ruleset, "output")] == ["!=", "!="]
    # no task: refused, not left to whatever else listens there
    local = {"fib": {"result": "type", "flags": ["daddr"]}}
    dport = {"payload": {"protocol": "tcp", "field": "dport"}}
    assert rules(ruleset, "filter") == [
        [
            {"match": {"op": "==", "left": local, "right": "local"}},
            {"match": {"op": "==", "left": dport, "right": 9000}},
            {"reject": {"type": "tcp reset"}},
        ]
    ]
    # only what this table DNATed is SNATed, per protocol, by its original port
    tcp_snat, udp_snat = rules(ruleset, "postrouting")
    assert [m["match"]["right"] for m in tcp_snat[:3]] == ["tcp", 8080, "dnat"]
    assert tcp_snat[1]["match"]["left"] == {"ct": {"key": "proto-dst", "dir": "original"}}
    assert tcp_snat[3] == {"snat": {"addr": "10.255.0.2"}}
    assert [m["match"]["right"] for m in udp_snat[:3]] == ["udp", 5353, "dnat"]


def test_no_ports_still_replaces_the_table() -> None:
    ruleset = ingress_ruleset("10.255.0.2", [])
    assert rules(ruleset, "prerouting") == [] == rules(ruleset, "postrouting")
    assert len(ruleset["nftables"]) == 6  # the table, its flush, its four chains


@pytest.mark.parametrize(
    ("node", "ports", "message"),
    [
        ("10.9.0", [], "source address '10.9.0' is not an IPv4 address"),
        ("10.255.0.2", [IngressPort(8080, 80, "sctp")], "is not tcp or udp"),
        ("10.255.0.2", [IngressPort(0, 80)], "not in 1-65535"),
        ("10.255.0.2", [IngressPort(8080, 80), IngressPort(8080, 81)], "given twice"),
        (
            "10.255.0.2",
            [IngressPort(8080, 80, "tcp", ("fe80::1",))],
            "backend 'fe80::1' is not an IPv4",
        ),
    ],
)
def test_malformed_input_is_refused(node: str, ports: list[IngressPort], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ingress_ruleset(node, ports)
