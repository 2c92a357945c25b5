"""`container|image|volume prune`, `system prune` and `system df` on a real runc agent."""

from __future__ import annotations

import pytest

from tests.cli.conftest import AgentUnderTest

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def names(agent: AgentUnderTest, *args: str) -> set[str]:
    return set(agent.ok(*args).stdout.split())


def test_prune_asks_filters_and_keeps_what_is_in_use(
    agent: AgentUnderTest, busybox_ref: str
) -> None:
    agent.ok("pull", busybox_ref)
    extra = busybox_ref.rsplit(":", 1)[0] + ":extra"
    agent.ok("image", "tag", busybox_ref, extra)
    agent.ok("run", "-d", "--name", "sleeper", busybox_ref, "sleep", "300")
    agent.ok("run", "--name", "done", busybox_ref, "true")
    agent.ok("run", "--name", "other", busybox_ref, "true")
    listed = "--format", "{{.Names}}"
    assert names(agent, "ps", "-a", *listed) == {"sleeper", "done", "other"}

    df = agent.ok("system", "df").stdout.splitlines()
    assert df[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert df[2].split()[:3] == ["Containers", "3", "1"]

    asked = agent.cli("container", "prune")  # no terminal, no answer: nothing removed
    assert asked.returncode == 1 and "Are you sure you want to continue?" in asked.stdout
    assert names(agent, "ps", "-a", *listed) == {"sleeper", "done", "other"}
    unlabelled = agent.ok("container", "prune", "-f", "--filter", "label=keep").stdout
    assert unlabelled == ""  # none has the label
    recent = agent.ok("container", "prune", "-f", "--filter", "until=1h").stdout
    assert recent == ""  # created less than an hour ago: kept
    bad = agent.cli("container", "prune", "-f", "--filter", "until=someday")
    assert bad.returncode == 2 and "invalid time 'someday'" in bad.stderr
    pruned = agent.ok("container", "prune", "-f").stdout.splitlines()
    assert pruned[0] == "Deleted Containers:" and len(pruned) == 4  # 2 IDs and a blank line
    assert names(agent, "ps", "-a", *listed) == {"sleeper"}

    agent.ok("volume", "create", "plain")
    agent.ok("volume", "create", "--label", "tmp=1", "marked")
    agent.ok("volume", "prune", "-f", "--filter", "label=tmp")
    assert names(agent, "volume", "ls", "-q") == {"plain"}
    confirmed = agent.cli("volume", "prune", input_text="y\n")
    assert confirmed.returncode == 0 and "plain" in confirmed.stdout
    assert names(agent, "volume", "ls", "-q") == set()

    # every image is in use by `sleeper`: -a removes nothing
    agent.ok("image", "prune", "-a", "-f")
    assert {busybox_ref, extra} <= names(agent, "images", "--format", "{{.Repository}}:{{.Tag}}")
    agent.ok("container", "rm", "-f", "sleeper")
    pruned = agent.ok("system", "prune", "-a", "-f").stdout
    assert "Deleted Images:" in pruned and "Total reclaimed space:" in pruned
    assert agent.ok("images", "-q").stdout == ""
