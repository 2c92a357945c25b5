"""The fan-out runner and the merged table, without daemons (they are in
tests/test_cli_fanout.py, against three real clusters)."""

from __future__ import annotations

import threading
import time

import pytest

from dockyard.cli.client import CliError, Target
from dockyard.cli.deadline import remaining
from dockyard.cli.fanout import run_each
from dockyard.cli.listing import Listing, merge_tables


def targets(n: int) -> list[Target]:
    return [Target(f"127.0.0.1:{7000 + i}", f"ctx{i}") for i in range(n)]


def test_outcomes_keep_the_order_of_the_targets_and_carry_each_failure() -> None:
    def action(target: Target) -> str:
        if target.origin == "ctx1":
            raise CliError("cannot reach controller: connection refused")
        time.sleep(0.05 if target.origin == "ctx0" else 0)
        return target.origin.upper()

    outcomes = run_each(targets(3), action, timeout=10)
    assert [o.target.origin for o in outcomes] == ["ctx0", "ctx1", "ctx2"]
    assert [o.value for o in outcomes] == ["CTX0", None, "CTX2"]
    assert outcomes[1].error == "cannot reach controller: connection refused"
    assert [o.ok for o in outcomes] == [True, False, True]


def test_a_target_that_never_answers_times_out_without_holding_back_the_others() -> None:
    release = threading.Event()

    def action(target: Target) -> str:
        if target.origin == "ctx0":
            release.wait(30)  # stuck: the runner must not wait for it
        return target.origin

    try:
        outcomes = run_each(targets(3), action, timeout=0.5)
    finally:
        release.set()
    assert outcomes[0].error is not None and "no answer within 0.5 s" in outcomes[0].error
    assert [o.value for o in outcomes[1:]] == ["ctx1", "ctx2"]


def test_no_more_than_limit_targets_are_asked_at_once() -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def action(target: Target) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    outcomes = run_each(targets(9), action, timeout=10, limit=3)
    assert all(o.ok for o in outcomes)
    assert peak == 3


def test_every_call_made_for_a_target_is_capped_by_its_deadline() -> None:
    seen: list[float | None] = []
    run_each(targets(1), lambda _: seen.append(remaining(60)), timeout=2)
    assert seen[0] is not None and 0 < seen[0] <= 2
    assert remaining(60) == 60  # outside a fan-out: unchanged


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        run_each(targets(1), lambda _: None, timeout=0)


def test_merged_tables_put_the_target_first_and_union_different_columns() -> None:
    tasks = Listing(["ID", "NAME"], [["t1", "web.1"]], [])
    containers = Listing(["CONTAINER ID", "NAME"], [["c1", "db"]], [])
    headers, rows = merge_tables([("prod", tasks), ("agent", containers)])
    assert headers == ["TARGET", "ID", "NAME", "CONTAINER ID"]
    assert rows == [["prod", "t1", "web.1", ""], ["agent", "", "db", "c1"]]


def test_events_of_several_controllers_are_merged_by_time() -> None:
    from dockyard.cli.commands.events import Merger

    def event(stamp: str, name: str) -> dict[str, object]:
        return {"kind": "node", "record": {"meta": {"updated_at": stamp}, "spec": {"name": name}}}

    merger = Merger(window=0.5)
    merger.add("b", event("2026-01-01T00:00:02Z", "late"), arrived=10.0)
    merger.add("a", event("2026-01-01T00:00:01.500000001Z", "early"), arrived=10.2)
    assert merger.ready(now=10.3) == []  # still within the window
    released = merger.ready(now=10.6)
    assert [(label, e["record"]["spec"]["name"]) for label, e in released] == [  # type: ignore[index]
        ("a", "early"),
        ("b", "late"),
    ]
    merger.add("a", event("2026-01-01T00:00:03Z", "last"), arrived=11.0)
    assert [label for label, _ in merger.ready(now=11.0, flush=True)] == ["a"]
