"""deploy/grafana/dockyard.json against a real controller's and a real agent's /metrics.

Every metric name a PromQL expression of the dashboard uses (panels, rows' nested
panels, template variables) must be a series that a live controller or agent exports: a
controller with one hollow agent and a small service, and a runc agent with
`--metrics-listen` (the node and container rows), scraped over plain HTTP
(`--insecure`). The dashboard's shape is checked too: uid and title, every panel and
query on the templated `datasource` variable, refIds, unique panel ids.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Cluster
from tests.ports import free_port

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dockyard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# -- PromQL: the metric names an expression uses -------------------------------------------

IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
NUMBER = re.compile(r"[0-9.][0-9a-zA-Z_.]*")  # 0.99, 1e3, 0x1f, durations (5m)
# Aggregations may take their `by (...)` clause before the parenthesis.
AGGREGATIONS = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    }
)
# Followed by a label list in parentheses, which holds no metric names.
CLAUSES = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
RATES = frozenset({"rate", "irate", "increase"})


def metric_uses(expr: str) -> list[tuple[str, str | None]]:
    """Each metric name in `expr`, with the function or aggregation whose parentheses
    directly enclose it (None at the top level or in bare grouping parentheses).

    Strings, `$variables`, numbers, label matchers `{...}`, ranges `[...]` and the
    label lists of `by`/`without`/`on`/`ignoring`/`group_*` are skipped; an identifier
    before `(` (or an aggregation before `by`/`without`) is a function, not a metric.
    """
    text = STRING.sub('""', expr)
    uses: list[tuple[str, str | None]] = []
    enclosing: list[str | None] = []  # one entry per open parenthesis
    function: str | None = None  # the identifier the next "(" belongs to
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{[":
            end = text.find("}" if char == "{" else "]", i)
            assert end != -1, f"unbalanced {char!r} in {expr!r}"
            i = end + 1
        elif char == "$":
            match = VARIABLE.match(text, i)
            i = match.end() if match else i + 1
        elif char.isdigit() or (char == "." and text[i + 1 : i + 2].isdigit()):
            match = NUMBER.match(text, i)
            assert match is not None
            i = match.end()
        elif char == "(":
            enclosing.append(function)
            function = None
            i += 1
        elif char == ")":
            assert enclosing, f"unbalanced ')' in {expr!r}"
            enclosing.pop()
            i += 1
        elif match := IDENTIFIER.match(text, i):
            word, i = match.group(), match.end()
            rest = text[i:].lstrip()
            if word in CLAUSES:
                if rest.startswith("("):  # skip the label list
                    i = text.index(")", len(text) - len(rest)) + 1
                continue
            following = IDENTIFIER.match(rest)
            if rest.startswith("(") or (
                word in AGGREGATIONS and following and following.group() in {"by", "without"}
            ):
                function = word
            elif word not in KEYWORDS:
                uses.append((word, enclosing[-1] if enclosing else None))
        else:  # operators, commas, white space
            i += 1
    assert not enclosing, f"unbalanced '(' in {expr!r}"
    return uses


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in metric_uses(expr)}


LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.*),)?\s*(?P<label>\w+)\s*\)\s*$")


def variable_selector(query: str) -> str:
    """The series selector of a Prometheus template query (`label_values(sel, label)`
    names a label after the comma: it is not an expression)."""
    match = LABEL_VALUES.match(query)
    if match is None:
        return query.removeprefix("query_result(").removesuffix(")")
    return match.group("selector") or ""


# -- the dashboard -----------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels (collapsed rows keep theirs) included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query and every query template variable."""
    found = [
        (f"panel {panel['id']} {panel.get('title', '')!r} {target.get('refId')}", target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']!r}", variable_selector(text)))
    return found


# -- the scrape --------------------------------------------------------------------------------


def fetch(url: str) -> str:
    # No proxy from the environment may stand between the test and loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=20) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a controller with one hollow agent and a service of 2 replicas."""
    cluster = Cluster(tmp_path_factory.mktemp("grafana") / "cluster", insecure=True)
    cluster.root.mkdir(parents=True)
    try:
        cluster.start_controller()
        cluster.start_agent("n1")
        cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
        cluster.cli(
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "busybox",
            "sleep",
            "3600",
        )
        cluster.wait_for(
            lambda: (
                [t["status"]["state"] for t in json.loads(cluster.cli("ps", "-o", "json").stdout)]
                == ["RUNNING"] * 2
            ),
            "web 2/2 RUNNING",
        )
        url = f"http://127.0.0.1:{cluster.http_port}"
        fetch(url + "/v1/nodes")  # an HTTP request, so that its counter has a series
        yield fetch(url + "/metrics")
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def agent_exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a runc agent (no containers: its families are declared, empty)."""
    import uuid

    from tests.agent.conftest import Agent
    from tests.runtime.conftest import _have_runc, cleanup_everything

    if not _have_runc():
        pytest.skip("the agent's metrics need a runc agent: root, runc and conmon")
    root = tmp_path_factory.mktemp("grafana-agent")
    port = free_port()
    agent = Agent(
        root / "state",
        free_port(),
        f"dockyard-test-{uuid.uuid4().hex[:8]}",
        root / "agent.log",
        ["--metrics-listen", f"127.0.0.1:{port}"],
    )
    try:
        agent.start()
        yield fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        agent.kill_all()
        cleanup_everything(agent.state_dir / "runtime", agent.cgroup_parent)


# Which series names a family of each type has in Prometheus (a counter `x` is
# stored as `x_total`; a histogram as `x_bucket`, `x_sum`, `x_count`).
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
CUMULATIVE = frozenset({"counter", "histogram", "summary"})


def exported_series(text: str) -> dict[str, tuple[str, str]]:
    """Series name -> (family, type): every sample's name, and the suffixed names of
    every family declared (a labelled family may have no sample yet)."""
    series: dict[str, tuple[str, str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = (family.name, family.type)
        for sample in family.samples:
            series[sample.name] = (family.name, family.type)
    return series


# -- tests -------------------------------------------------------------------------------------


def test_the_promql_tokenizer_finds_metric_names_only() -> None:
    assert metric_uses(
        "histogram_quantile(0.99, sum by (le, method) (rate("
        'dockyard_grpc_request_duration_seconds_bucket{job=~"$job", code!="OK"}'
        "[$__rate_interval])))"
    ) == [("dockyard_grpc_request_duration_seconds_bucket", "rate")]
    assert metric_uses(
        'sum(rate(a_total{x="rate(b)"}[5m] offset 1h)) by (instance) / on (instance) '
        "group_left(version) max without (le) (c) > bool 0.5e3 and time() - d"
    ) == [("a_total", "rate"), ("c", "max"), ("d", None)]
    assert metric_names('process_open_fds{job=~"$job"} / process_max_fds') == {
        "process_open_fds",
        "process_max_fds",
    }
    assert metric_names("count(dockyard_bogus_metric)") == {"dockyard_bogus_metric"}
    assert variable_selector('label_values(dockyard_build_info{job=~"$job"}, instance)') == (
        'dockyard_build_info{job=~"$job"}'
    )
    assert variable_selector("label_values(job)") == ""


def test_the_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "dockyard-cluster"
    assert dashboard["title"] == "Dockyard cluster"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    # `${DS_...}` import inputs are not resolved by file provisioning: use the variable.
    assert "${DS_" not in DASHBOARD.read_text()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]

    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert any(p["type"] == "row" and p["collapsed"] and p["panels"] for p in panels)
    queries = 0
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel.get("datasource") == DATASOURCE, where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, where
        if panel["type"] == "row":
            assert "targets" not in panel, where
            continue
        assert panel["type"] in {"stat", "timeseries"}, where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        targets = panel.get("targets", [])
        assert targets, f"{where}: no query"
        ref_ids = [target.get("refId") for target in targets]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), (where, ref_ids)
        for target in targets:
            assert target.get("datasource") == DATASOURCE, (where, target.get("refId"))
            assert target.get("expr", "").strip(), (where, target.get("refId"))
            queries += 1
    assert queries >= 20


def test_every_metric_the_dashboard_queries_is_exported(
    exposition: str, agent_exposition: str
) -> None:
    series = {**exported_series(agent_exposition), **exported_series(exposition)}
    uses = [
        (where, expr, name, function)
        for where, expr in expressions(load_dashboard())
        for name, function in metric_uses(expr)
    ]
    used = {name for _, _, name, _ in uses}
    assert len(used) >= 15, sorted(used)  # the tokenizer did find the names

    missing = sorted({(name, where) for where, _, name, _ in uses if name not in series})
    assert not missing, "not exported by the controller or the agent: " + "; ".join(
        f"{name} ({where})" for name, where in missing
    )

    # Counters and histogram series only mean something as rates.
    not_rated = sorted(
        {
            (name, where)
            for where, _, name, function in uses
            if series[name][1] in CUMULATIVE and function not in RATES
        }
    )
    assert not not_rated, f"counter series outside rate()/increase(): {not_rated}"

    # The families an operator needs are all on the dashboard.
    families = {series[name][0] for name in used}
    for family in (
        "dockyard_nodes",
        "dockyard_services",
        "dockyard_tasks",
        "dockyard_tasks_desired",
        "dockyard_is_leader",
        "dockyard_grpc_requests",
        "dockyard_grpc_request_duration_seconds",
        "dockyard_event_streams",
        "dockyard_event_streams_dropped",
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        # the agents' node and container rows
        "dockyard_agent_process_cpu_seconds",
        "dockyard_conmon_resident_memory_bytes",
        "dockyard_image_pull_bytes",
        "dockyard_image_store_bytes",
        "dockyard_dns_queries",
        "container_cpu_usage_seconds",
        "container_memory_working_set_bytes",
        "container_spec_memory_limit_bytes",
        "container_oom_events",
        "container_network_receive_bytes",
        "dockyard_container_restarts",
    ):
        assert family in families, family
