"""A stack's networks (cli/commands/stack_networks.py): pure, from parsed compose files."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.cli.commands.compose import stack_from_documents
from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.stack_networks import plan_networks

VOTING = {
    "services": {
        "redis": {"image": "redis", "networks": ["frontend"]},
        "db": {"image": "postgres", "networks": {"backend": {"aliases": ["database"]}}},
        "vote": {"image": "vote", "networks": ["frontend", "backend"]},
        "plain": {"image": "busybox"},
        "hosted": {"image": "busybox", "network_mode": "host"},
        "outside": {"image": "busybox", "networks": ["shared"]},
    },
    "networks": {
        "frontend": {"labels": {"tier": "front"}},
        "backend": {"internal": True, "ipam": {"config": [{"subnet": "10.140.0.0/24"}]}},
        "shared": {"external": True, "name": "corp-net"},
    },
}


def attached(specs: dict[str, Any], short: str) -> list[tuple[str, list[str]]]:
    return [(a.target, list(a.aliases)) for a in specs[short].task.networks]


def test_the_voting_app_gets_swarm_s_networks() -> None:
    loaded = stack_from_documents("vote", [("app.yml", VOTING)], environ={})
    plan = plan_networks("vote", loaded)
    assert sorted(plan.create) == ["vote_backend", "vote_default", "vote_frontend"]
    assert plan.create["vote_backend"]["internal"] is True
    assert plan.create["vote_backend"]["subnet"] == "10.140.0.0/24"
    assert plan.create["vote_frontend"]["labels"] == {"tier": "front"}
    assert plan.external == {"corp-net"}
    specs = loaded.specs
    assert attached(specs, "redis") == [("vote_frontend", ["redis"])]
    assert attached(specs, "db") == [("vote_backend", ["db", "database"])]
    assert attached(specs, "vote") == [("vote_frontend", ["vote"]), ("vote_backend", ["vote"])]
    assert attached(specs, "plain") == [("vote_default", ["plain"])]
    assert attached(specs, "hosted") == []
    assert attached(specs, "outside") == [("corp-net", ["outside"])]


def test_an_undeclared_network_is_refused_naming_it() -> None:
    doc = {"services": {"web": {"image": "busybox", "networks": ["nowhere"]}}}
    loaded = stack_from_documents("s", [("app.yml", doc)], environ={})
    with pytest.raises(SpecError, match=r"web\.networks: network .nowhere. is not declared"):
        plan_networks("s", loaded)
