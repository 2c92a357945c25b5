"""Pure parts of the container manager: restart policy, backoff, names, validation."""

from __future__ import annotations

import pytest

from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.containers.names import NAME_RE, generate_name
from dockyard.agent.containers.policy import Backoff, should_restart
from dockyard.agent.containers.request import parse_restart_policy, parse_signal
from dockyard.agent.runtime.base import RestartPolicy, RestartPolicyName


def test_should_restart() -> None:
    on_failure = RestartPolicy(RestartPolicyName.ON_FAILURE, 2)
    assert should_restart(on_failure, 1, False, 0)
    assert should_restart(on_failure, 1, False, 1)
    assert not should_restart(on_failure, 1, False, 2)
    assert not should_restart(on_failure, 0, False, 0)
    assert should_restart(RestartPolicy(RestartPolicyName.ON_FAILURE), 1, False, 99)
    always = RestartPolicy(RestartPolicyName.ALWAYS)
    assert should_restart(always, 0, False, 5)
    assert not should_restart(always, 0, True, 0)
    assert not should_restart(RestartPolicy(), 1, False, 0)


def test_backoff_doubles_and_resets() -> None:
    backoff = Backoff()
    assert [backoff.next(0.1) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff.next(10.0) == 0.1
    for _ in range(20):
        backoff.next(0)
    assert backoff.next(0) == 60.0


def test_names() -> None:
    names = {generate_name(set()) for _ in range(50)}
    assert all(NAME_RE.match(n) and "_" in n for n in names)
    taken = set(names)
    assert generate_name(taken) not in taken


def test_parse_restart_policy_and_signal() -> None:
    assert parse_restart_policy("on-failure:3", 0) == RestartPolicy(RestartPolicyName.ON_FAILURE, 3)
    assert parse_restart_policy("", 0) == RestartPolicy()
    for bad in ("sometimes", "on-failure:x", "always:2"):
        with pytest.raises(InvalidArgument, match=r"^restart_policy"):
            parse_restart_policy(bad, 0)
    assert parse_signal("kill") == parse_signal("SIGKILL") == parse_signal("9") == 9
    assert parse_signal("TERM") == 15
    for bad in ("NOPE", "999"):
        with pytest.raises(InvalidArgument, match=r"^signal"):
            parse_signal(bad)
