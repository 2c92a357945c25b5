"""The dashboard in real headless Chromium against a real TLS controller and hollow
agents: it loads with the admin identity, shows three nodes, follows a scale and a node
going down from the event stream, and shows a pending task's reason. The time from each
change (the CLI's return) to the page showing it is printed, not asserted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.dashboard.conftest import artifacts

WAIT_MS = 30_000  # generous: a slow machine must not fail a test that is about correctness


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("dashboard") / "cluster")
    made.root.mkdir(parents=True)
    try:
        made.start_controller()
        made.start_hollow_nodes(("n1", "n2", "n3"))
        made.cli(
            "service", "create", "--name", "web", "--replicas", "2", "busybox", "sleep", "3600"
        )
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def page(browser: Any, cluster: Cluster) -> Iterator[Any]:
    origin = f"https://127.0.0.1:{cluster.http_port}"
    admin = cluster.pki / "admin"
    context = browser.new_context(
        client_certificates=[
            {
                "origin": origin,
                "certPath": str(admin / "cert.pem"),
                "keyPath": str(admin / "key.pem"),
            }
        ],
        ignore_https_errors=True,  # the cluster CA is not the browser's
        viewport={"width": 1400, "height": 1000},
    )
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.goto(origin + "/", wait_until="load")
    yield opened
    context.close()
    assert not errors, errors


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts("three-nodes") / f"{name}.png"), full_page=True)


def cell(page: Any, table: str, row: str, column: int) -> str:
    return text_of(page, f'#{table} tr[data-id="{row}"] td:nth-child({column})') or ""


def text_of(page: Any, selector: str) -> str | None:
    """The element's text now; None when it is not in the page."""
    found = page.locator(selector)
    return found.first.text_content() if found.count() else None


def wait_text(page: Any, selector: str, check: Callable[[str], bool], since: float) -> float:
    """Poll (from here: the page's CSP forbids the eval that `wait_for_function` needs)
    until the element's text passes `check`; the seconds since `since`."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        text = text_of(page, selector)
        if text is not None and check(text):
            return time.monotonic() - since
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector}: {text!r} after {WAIT_MS / 1000:g} s")
        time.sleep(0.02)


def row_count(page: Any, table: str) -> int:
    count: int = page.locator(f"#{table} tr[data-id]").count()
    return count


def test_loads_with_the_admin_identity_and_shows_three_nodes(page: Any) -> None:
    wait_text(page, "#nodes-count", lambda t: t == "3", time.monotonic())
    names = page.locator("#nodes tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert names == ["n1", "n2", "n3"]
    assert {cell(page, "nodes", n, 3) for n in names} == {"READY"}
    assert text_of(page, "#live") == "live"
    wait_text(page, WEB_REPLICAS, lambda t: t == "2/2", time.monotonic())
    assert text_of(page, '#chart [data-state="RUNNING"] .bar-count') == "2"
    shot(page, "1-loaded")


WEB_REPLICAS = '#services tr[data-id="web"] td:nth-child(4)'


def test_a_scale_shows_up_from_the_event_stream(page: Any, cluster: Cluster) -> None:
    wait_text(page, WEB_REPLICAS, lambda t: t == "2/2", time.monotonic())
    renders = page.evaluate("() => window.dockyardStats.renders")
    cluster.cli("service", "scale", "--detach", "web=5")
    seconds = wait_text(page, WEB_REPLICAS, lambda t: t.endswith("/5"), time.monotonic())
    print(f"\nscale web=5 shown {seconds * 1000:.0f} ms after the CLI returned")
    wait_text(page, WEB_REPLICAS, lambda t: t == "5/5", time.monotonic())
    wait_text(
        page, '#chart [data-state="RUNNING"] .bar-count', lambda t: t == "5", time.monotonic()
    )
    assert page.evaluate("() => window.dockyardStats.renders") > renders  # events, no reload
    assert "service updated web" in (text_of(page, "#events") or "")
    shot(page, "2-scaled")


def test_a_node_going_down_shows_up(page: Any, cluster: Cluster) -> None:
    cluster.agents["n3"].stop()
    stopped = time.monotonic()
    cluster.wait_for(lambda: cluster.node_state("n3") == "DOWN", "n3 DOWN", 30)
    marked = time.monotonic()
    seconds = wait_text(
        page, '#nodes tr[data-id="n3"] td:nth-child(3)', lambda t: t == "DOWN", marked
    )
    print(
        f"\nn3 DOWN ({marked - stopped:.1f} s after its agent stopped) shown "
        f"{seconds * 1000:.0f} ms after the CLI saw it"
    )
    shot(page, "3-node-down")


def test_a_pending_task_shows_its_reason(page: Any, cluster: Cluster) -> None:
    cluster.cli(
        "service",
        "create",
        "--detach",
        "--name",
        "mars",
        "--replicas",
        "1",
        "--constraint",
        "node.labels.zone==mars",
        "busybox",
        "sleep",
        "3600",
    )
    task = json.loads(cluster.cli("service", "ps", "mars", "-o", "json").stdout)[0]
    page.fill("#task-filter", "mars")
    row = f'#tasks tr[data-id="{task["id"]}"]'
    wait_text(page, f"{row} td:nth-child(5)", lambda t: t == "PENDING", time.monotonic())
    reason = text_of(page, f"{row} td:nth-child(7)")
    wanted = json.loads(cluster.cli("service", "ps", "mars", "-o", "json").stdout)[0]
    assert reason and reason == wanted["status"]["message"] and "zone" in reason, reason
    assert row_count(page, "tasks") == 1  # the filter keeps only it
    shot(page, "4-pending-reason")
    page.fill("#task-filter", "")
