"""The controller's HTTP side end to end: a real controller process with mutual TLS,
hollow agents and a real etcd; JSON reads against the gRPC answers, Server-Sent
Events with resume, /metrics, the dashboard, and the TLS rules. The event hub's
bounds are also checked in-process against a scripted store."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.common import pki
from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.http.events import (
    WHOLE,
    EventHub,
    Position,
    Subscriber,
    parse_position,
)
from dockyard.controller.store import REVOKED_CERTS, Store, WatchEvent
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import UpdateNodeRequest
from dockyard.v1.types_pb2 import Node, RevokedCert
from tests.conftest import BIN, Cluster, LoopThread
from tests.ports import free_port

# -- HTTP helpers (stdlib only) -------------------------------------------------


def tls_context(identity: Path | None, ca: Path) -> ssl.SSLContext:
    """Trust the cluster CA; present `identity`'s certificate when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if identity is not None:
        context.load_cert_chain(str(identity / "cert.pem"), str(identity / "key.pem"))
    return context


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 20,
) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    # No proxy from the environment may stand between the tests and loopback.
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


@dataclass
class Event:
    id: str
    name: str
    data: dict[str, Any]


class EventStream:
    """A /v1/events stream read in the test's own thread.

    The socket timeout (20 s) is longer than the server's keep-alive (15 s), so a
    read only times out when the server is stuck.
    """

    def __init__(
        self, url: str, context: ssl.SSLContext | None = None, last_event_id: str | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname or "", parsed.port or 0
        self.connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, port, context=context, timeout=20)
            if parsed.scheme == "https"
            else http.client.HTTPConnection(host, port, timeout=20)
        )
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.seen: list[Event] = []

    def next_event(self) -> Event | None:
        """The next event (keep-alive comments skipped); None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if not text:
                if "event" in fields or "data" in fields:
                    event = Event(
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        json.loads(fields.get("data", "null")),
                    )
                    self.seen.append(event)
                    return event
                continue
            if text.startswith(":"):
                continue
            key, _, value = text.partition(":")
            fields[key] = value.removeprefix(" ")

    def read_until(self, done: Callable[[list[Event]], bool], timeout: float = 20) -> list[Event]:
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while time.monotonic() < deadline:
            if self.next_event() is None:
                break
            if done(self.seen[start:]):
                return self.seen[start:]
        raise AssertionError(
            f"events did not arrive in {timeout} s: {[(e.id, e.name) for e in self.seen[start:]]}"
        )

    def close(self) -> None:
        self.connection.close()


def cert_identity(cluster: Cluster, name: str, role: str) -> Path:
    out = cluster.root / name
    cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        name,
        "--role",
        role,
        "--state-dir",
        str(cluster.root / "controller"),
        "--context",
        name,
        "--out",
        str(out),
    )
    return out


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def without(record: Any, *paths: str) -> Any:
    """A copy of a JSON record without the dotted paths (values that change by the second)."""
    copy = json.loads(json.dumps(record))
    for path in paths:
        *parents, leaf = path.split(".")
        node = copy
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return copy


# -- the shared TLS cluster ----------------------------------------------------------


@dataclass
class Http:
    cluster: Cluster
    url: str
    admin: ssl.SSLContext
    ca: Path

    def get(self, path: str, context: ssl.SSLContext | None = None, **kwargs: Any) -> Reply:
        return fetch(self.url + path, context or self.admin, **kwargs)

    def json(self, path: str) -> Any:
        reply = self.get(path)
        assert reply.status == 200, (path, reply.status, reply.body[:500])
        assert reply.headers["Content-Type"].startswith("application/json")
        return reply.json()

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cluster.cli(*args, "-o", "json").stdout)

    def stream(
        self,
        path: str = "/v1/events",
        context: ssl.SSLContext | None = None,
        last_event_id: str | None = None,
    ) -> EventStream:
        return EventStream(self.url + path, context or self.admin, last_event_id)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    cluster = Cluster(tmp_path_factory.mktemp("http") / "cluster")
    cluster.root.mkdir(parents=True)
    port = free_port()
    try:
        cluster.start_controller(["--http-listen", f"127.0.0.1:{port}", "--http-max-streams", "6"])
        cluster.start_hollow_nodes(("n1", "n2"))
        cluster.cli(
            "service", "create", "--name", "web", "--replicas", "3", "busybox", "sleep", "3600"
        )
        cluster.wait_for(
            lambda: (
                [t["status"]["state"] for t in json.loads(cluster.cli("ps", "-o", "json").stdout)]
                == ["RUNNING"] * 3
            ),
            "web 3/3 RUNNING",
        )
        ca = cluster.pki / "admin" / "ca.pem"
        yield Http(cluster, f"https://127.0.0.1:{port}", tls_context(cluster.pki / "admin", ca), ca)
    finally:
        cluster.stop()


# -- JSON reads ------------------------------------------------------------------------

# Heartbeats are written coarsely and reported live: they move between two reads.
VOLATILE_NODE = ("status.last_heartbeat", "meta.version", "meta.updated_at")


def test_json_reads_match_the_grpc_answers(api: Http) -> None:
    nodes = api.json("/v1/nodes")
    assert [without(n, *VOLATILE_NODE) for n in nodes] == [
        without(n, *VOLATILE_NODE) for n in api.cli_json("node", "ls")
    ]
    assert [n["spec"]["name"] for n in nodes] == ["n1", "n2"]
    assert api.json("/v1/services") == api.cli_json("service", "ls")
    assert api.json("/v1/tasks") == api.cli_json("ps")
    assert api.json("/v1/tasks?history=1") == api.cli_json("ps", "--all")
    assert api.json("/v1/services/web") == api.cli_json("service", "inspect", "web")[0]

    info, cli_info = api.json("/v1/info"), api.cli_json("info")
    for key in (
        "cluster_id",
        "controller_id",
        "is_leader",
        "leader_address",
        "nodes_total",
        "nodes_ready",
        "tasks_total",
        "tasks_running",
        "etcd_endpoints",
        "version",
    ):
        assert info[key] == cli_info[key], key
    assert info["nodes_ready"] == 2 and info["tasks_running"] == "3"


def test_info_lists_the_controllers_and_the_etcd_members(api: Http) -> None:
    info, cli_info = api.json("/v1/info"), api.cli_json("info")
    stable = (
        "controller_id",
        "api_address",
        "http_address",
        "version",
        "started_at",
        "is_leader",
        "leader_since",
        "reachable",
        "error",
        "is_self",
    )
    assert [{k: c.get(k) for k in stable} for c in info["controllers"]] == [
        {k: c.get(k) for k in stable} for c in cli_info["controllers"]
    ]
    [controller] = info["controllers"]
    assert controller["controller_id"] == info["controller_id"]
    assert controller["is_leader"] and controller["is_self"] and controller["reachable"]
    assert controller["api_address"] == api.cluster.address
    assert controller["http_address"] == api.url.removeprefix("https://")
    member_keys = ("id", "name", "client_urls", "is_leader", "reachable", "version")
    assert [{k: m[k] for k in member_keys} for m in info["etcd_members"]] == [
        {k: m[k] for k in member_keys} for m in cli_info["etcd_members"]
    ]
    [member] = info["etcd_members"]  # the embedded etcd, over TLS
    assert member["reachable"] and member["is_leader"] and member["error"] == ""
    assert member["client_urls"] == ["https://" + info["etcd_endpoints"][0]]
    assert int(member["raft_index"]) > 0 and int(member["db_size"]) > 0


def test_lookups_by_name_and_id_prefix(api: Http) -> None:
    n1 = api.json("/v1/nodes/n1")
    assert n1["spec"]["name"] == "n1"
    assert api.json(f"/v1/nodes/{n1['id'][:6]}")["id"] == n1["id"]
    web = api.json("/v1/services/web")
    assert api.json(f"/v1/services/{web['id'][:5]}")["id"] == web["id"]
    tasks = api.json("/v1/tasks?service=web")
    assert len(tasks) == 3 and {t["service_id"] for t in tasks} == {web["id"]}
    on_n1 = api.json(f"/v1/tasks?node={n1['id'][:8]}")
    assert on_n1 and {t["node_id"] for t in on_n1} == {n1["id"]}
    assert on_n1 == api.json("/v1/tasks?node=n1")
    assert api.json(f"/v1/tasks/{tasks[0]['id'][:10]}") == tasks[0]


@pytest.mark.parametrize(
    ("path", "status", "code", "message"),
    [
        ("/v1/nodes/nope", 404, "NOT_FOUND", "node 'nope' not found"),
        ("/v1/services/nope", 404, "NOT_FOUND", "service 'nope' not found"),
        ("/v1/tasks/ffffffff", 404, "NOT_FOUND", "task 'ffffffff' not found"),
        ("/v1/tasks?service=nope", 404, "NOT_FOUND", "service 'nope' not found"),
        ("/v1/tasks?node=nope", 404, "NOT_FOUND", "node 'nope' not found"),
        ("/v1/nodes?state=sideways", 400, "INVALID_ARGUMENT", "state"),
        ("/v1/services?mode=sideways", 400, "INVALID_ARGUMENT", "mode"),
        ("/v1/events?since=yesterday", 400, "INVALID_ARGUMENT", "not an event id"),
        ("/v1/nothing", 404, "NOT_FOUND", "no route"),
    ],
)
def test_errors_are_json_naming_what_failed(
    api: Http, path: str, status: int, code: str, message: str
) -> None:
    reply = api.get(path)
    assert reply.status == status, reply.body
    assert reply.json()["code"] == code
    assert message in reply.json()["error"]


def test_nothing_writes(api: Http) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        reply = api.get("/v1/services/web", method=method)
        assert (reply.status, reply.json()["code"]) == (405, "METHOD_NOT_ALLOWED"), method
    assert api.json("/v1/services/web")["spec"]["replicated"]["replicas"] == "3"


# -- events -----------------------------------------------------------------------------


def named(name: str, count: int = 1, **data: Any) -> Callable[[list[Event]], bool]:
    def done(events: list[Event]) -> bool:
        return (
            sum(
                1
                for e in events
                if e.name == name and all(e.data.get(k) == v for k, v in data.items())
            )
            >= count
        )

    return done


def test_events_stream_changes_and_resume_from_last_event_id(api: Http) -> None:
    stream = api.stream()
    try:
        assert stream.status == 200
        assert stream.response.headers["Content-Type"] == "text/event-stream"
        ready = stream.next_event()
        assert ready is not None and ready.name == "ready" and ready.data["resumed"] is False
        api.cluster.cli(
            "service", "create", "--name", "api", "--replicas", "2", "busybox", "sleep", "3600"
        )
        events = stream.read_until(
            lambda es: (
                named("service.created")(es)
                and sum(
                    1
                    for e in es
                    if e.name == "task.updated"
                    and e.data["record"]["service_name"] == "api"
                    and e.data["record"]["status"]["state"] == "RUNNING"
                )
                == 2
            )
        )
    finally:
        stream.close()
    created = next(e for e in events if e.name == "service.created")
    assert created.data["record"]["spec"]["name"] == "api"
    assert created.data["kind"] == "service" and created.data["id"] == created.data["record"]["id"]
    new_tasks = [e for e in events if e.name == "task.created"]
    assert len(new_tasks) == 2
    assert {e.data["record"]["service_id"] for e in new_tasks} == {created.data["id"]}
    # Ids follow etcd's history: revision, then the index within the revision.
    positions = [parse_position(e.id) for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(e.data["revision"] == parse_position(e.id).revision for e in events)

    # Resume just after the service was created: the same events follow, none lost.
    after = events.index(created)
    resumed = api.stream(last_event_id=created.id)
    try:
        ready = resumed.next_event()
        assert ready is not None and ready.data == {"position": created.id, "resumed": True}
        again = resumed.read_until(lambda es: len(es) >= len(events) - after - 1)
    finally:
        resumed.close()
    expected = [(e.id, e.name) for e in events[after + 1 :]]
    assert [(e.id, e.name) for e in again[: len(expected)]] == expected

    # From before the hub's history (revision 1): the controller reads etcd's own
    # history for this stream, starting with the nodes joining.
    old = api.stream("/v1/events?since=1")
    try:
        replay = old.read_until(named("node.created", 2))
    finally:
        old.close()
    assert [e.data["record"]["spec"]["name"] for e in replay if e.name == "node.created"] == [
        "n1",
        "n2",
    ]
    api.cluster.cli("service", "rm", "api")


def open_streams(api: Http) -> float:
    found = samples(api.get("/metrics").body.decode())
    return found[("dockyard_event_streams", ())]


def test_event_streams_are_bounded(api: Http) -> None:
    wait_until(lambda: open_streams(api) == 0, "earlier streams to close")
    streams = [api.stream() for _ in range(6)]  # --http-max-streams 6
    try:
        assert [s.status for s in streams] == [200] * 6
        refused = api.get("/v1/events")
        assert refused.status == 503 and refused.json()["code"] == "RESOURCE_EXHAUSTED"
        assert refused.headers["Retry-After"]
    finally:
        for stream in streams:
            stream.close()
    # A client that goes away frees its slot at once (its handler is cancelled).
    wait_until(lambda: open_streams(api) == 0, "the slots to be freed", 10)


# -- metrics ---------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_match_the_cluster(api: Http) -> None:
    api.cluster.cli("node", "ls")  # at least one ListNodes call
    # A call the authorization interceptor refuses is counted with its code too.
    files = cert_identity(api.cluster, "scraper", "read-only")
    credentials = grpc.ssl_channel_credentials(
        (files / "ca.pem").read_bytes(),
        (files / "key.pem").read_bytes(),
        (files / "cert.pem").read_bytes(),
    )
    with grpc.secure_channel(api.cluster.address, credentials) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            control_pb2_grpc.ControlStub(channel).UpdateNode(
                UpdateNodeRequest(node="n1"), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = api.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    found = samples(reply.body.decode())
    tasks = api.json("/v1/tasks?history=1")
    running = sum(1 for t in tasks if t["status"]["state"] == "RUNNING")
    assert found[("dockyard_nodes", (("state", "READY"),))] == 2
    assert found[("dockyard_nodes", (("state", "DOWN"),))] == 0
    assert found[("dockyard_tasks", (("state", "RUNNING"),))] == running
    assert sum(v for (name, _), v in found.items() if name == "dockyard_tasks") == len(tasks)
    assert found[("dockyard_tasks_desired", ())] == sum(
        1 for t in tasks if t["desired_state"] == "RUNNING"
    )
    assert found[("dockyard_services", ())] == len(api.json("/v1/services"))
    assert found[("dockyard_is_leader", ())] == 1
    assert found[("dockyard_etcd_up", ())] == 1
    assert found[("dockyard_agent_sessions", ())] == 2
    list_nodes = (("code", "OK"), ("method", "dockyard.v1.Control/ListNodes"))
    assert found[("dockyard_grpc_requests_total", list_nodes)] >= 1
    assert (
        found[
            (
                "dockyard_grpc_request_duration_seconds_count",
                (("method", "dockyard.v1.Control/ListNodes"),),
            )
        ]
        >= 1
    )
    update_node = (("code", "PERMISSION_DENIED"), ("method", "dockyard.v1.Control/UpdateNode"))
    assert found[("dockyard_grpc_requests_total", update_node)] == 1
    assert found[("process_resident_memory_bytes", ())] > 0
    services = {s["service"]["id"]: s["service"]["spec"]["name"] for s in api.json("/v1/services")}
    for service_id, name in services.items():
        wanted = [
            t for t in tasks if t["service_id"] == service_id and t["desired_state"] == "RUNNING"
        ]
        up = [t for t in wanted if t["status"]["state"] == "RUNNING"]
        assert found[("dockyard_service_tasks", (("kind", "desired"), ("service", name)))] == len(
            wanted
        )
        assert found[("dockyard_service_tasks", (("kind", "running"), ("service", name)))] == len(
            up
        )
    assert found[("dockyard_task_transitions_total", (("state", "RUNNING"),))] >= running > 0
    # each RUNNING came in a report (several steps may fold into one)
    assert found[("dockyard_task_status_reports_total", ())] >= running
    # Every task ever assigned went through the scheduler of this (the only) leader.
    assigned = found[("dockyard_scheduler_assigned_tasks_total", ())]
    assert assigned >= sum(1 for t in tasks if t["node_id"]) > 0
    api.cluster.cli(
        "service", "create", "--name", "metered", "--replicas", "3", "busybox", "sleep", "3600"
    )
    wait_until(
        lambda: (
            samples(api.get("/metrics").body.decode())[
                ("dockyard_scheduler_assigned_tasks_total", ())
            ]
            == assigned + 3
        ),
        "3 more assigned",
        10,
    )
    assert found[("dockyard_scheduler_round_duration_seconds_count", ())] >= 1
    assert found[("dockyard_leadership_changes_total", (("to", "leader"),))] == 1
    for op in ("get", "range", "txn", "lease"):
        assert found[("dockyard_etcd_request_duration_seconds_count", (("op", op),))] >= 1, op
    api.get("/v1/nodes")
    after = samples(api.get("/metrics").body.decode())
    assert after[("dockyard_http_request_duration_seconds_count", (("route", "nodes"),))] >= 1


# -- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_is_served_with_local_assets_only(api: Http) -> None:
    page = api.get("/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    html = page.body.decode()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(
        (r.startswith("/") and not r.startswith("//")) or r == "data:," for r in refs
    ), refs
    for ref in refs:
        if ref.startswith("/"):
            asset = api.get(ref)
            assert asset.status == 200, ref
            text = asset.body.decode()
            assert not re.search(r"https?://|//[a-z]", text.replace("://127.0.0.1", "")), ref
    assert api.get("/static/../pyproject.toml").status == 404
    # What the page reads exists.
    script = api.get("/static/app.js").body.decode()
    paths = set(re.findall(r'"(/v1/[a-z]+)"', script))
    assert "/v1/events" in paths and "/v1/nodes" in paths
    for path in paths - {"/v1/events"}:
        assert api.get(path).status == 200, path


# -- TLS and roles -----------------------------------------------------------------------------


def refused(url: str, context: ssl.SSLContext) -> bool:
    """True when TLS refuses the connection before any HTTP answer."""
    try:
        fetch(url, context, timeout=10)
    except (ssl.SSLError, ConnectionError, urllib.error.URLError, http.client.HTTPException):
        return True
    return False


def test_tls_requires_a_cluster_certificate_with_a_reading_role(api: Http) -> None:
    cluster, url = api.cluster, api.url + "/v1/nodes"
    assert refused(url, tls_context(None, api.ca))  # no client certificate
    other = pki.CertificateAuthority.create("other")
    cert, key = other.issue_pair(pki.ADMIN, "intruder")
    stranger = cluster.root / "stranger"
    stranger.mkdir(exist_ok=True)
    (stranger / "cert.pem").write_bytes(cert)
    (stranger / "key.pem").write_bytes(key)
    assert refused(url, tls_context(stranger, api.ca))  # another CA's admin
    assert refused(url.replace("https", "http"), ssl.create_default_context())  # plaintext

    node_files = cluster.root / "agent-n1" / "pki"
    node = ssl.create_default_context(cafile=str(api.ca))
    node.load_cert_chain(str(node_files / "node.pem"), str(node_files / "node-key.pem"))
    denied = fetch(url, node)
    assert denied.status == 403 and denied.json()["code"] == "PERMISSION_DENIED"
    assert "node" in denied.json()["error"]
    assert fetch(api.url + "/metrics", node).status == 403
    assert fetch(api.url + "/healthz", node).status == 200  # liveness: any cluster certificate

    viewer = tls_context(cert_identity(cluster, "viewer", "read-only"), api.ca)
    assert fetch(url, viewer).status == 200
    assert fetch(api.url + "/metrics", viewer).status == 200


def test_a_revoked_certificate_gets_403_and_loses_its_stream(api: Http) -> None:
    cluster = api.cluster
    files = cert_identity(cluster, "leaver", "read-only")
    leaver = tls_context(files, api.ca)
    assert fetch(api.url + "/v1/info", leaver).status == 200
    stream = api.stream(context=leaver)
    try:
        assert stream.next_event() is not None  # ready
        # Revoke it as `node rm` does: a record on the revocation list every controller watches.
        serial = pki.identity_of((files / "cert.pem").read_bytes()).serial
        endpoint = api.json("/v1/info")["etcd_endpoints"][0]

        async def revoke() -> None:
            tls = cluster.etcd_tls
            store = Store([endpoint], **(tls.store_credentials() if tls else {}))
            await store.connect(5)
            try:
                await store.put(
                    REVOKED_CERTS,
                    serial,
                    RevokedCert(serial=serial, subject_id="leaver", reason="test"),
                )
            finally:
                await store.close()

        asyncio.run(revoke())
        wait_until(lambda: fetch(api.url + "/v1/info", leaver).status == 403, "revocation")
        denied = fetch(api.url + "/v1/info", leaver)
        assert denied.json()["code"] == "PERMISSION_DENIED" and "revoked" in denied.json()["error"]
        cluster.cli("node", "update", "--label-add", "wake=1", "n1")  # an event wakes the stream
        deadline = time.monotonic() + 20
        while stream.next_event() is not None:  # it ends instead of delivering more
            assert time.monotonic() < deadline, "the revoked stream went on"
    finally:
        stream.close()


# -- insecure mode, etcd outages, a taken port ------------------------------------------------


def test_insecure_is_plain_http_and_says_so(tmp_path: Path, loop_thread: LoopThread) -> None:
    etcd = EtcdServer(tmp_path / "etcd" / "data", log_path=tmp_path / "etcd.log")
    loop_thread.run(etcd.start())
    cluster = Cluster(tmp_path / "plain", insecure=True, etcd_endpoints=[etcd.endpoint])
    cluster.root.mkdir()
    port = free_port()
    try:
        cluster.start_controller(["--http-listen", f"127.0.0.1:{port}"])
        url = f"http://127.0.0.1:{port}"
        assert fetch(url + "/v1/nodes").json() == []
        # readiness follows once the new leader's view is loaded ("view": "loading" before)
        wait_until(lambda: fetch(url + "/readyz").json()["ready"] is True, "readyz ready", 10)
        assert cluster.controller is not None
        warnings = [
            json.loads(line)
            for line in cluster.controller.log().splitlines()
            if "controller.INSECURE" in line
        ]
        assert any("HTTP API" in w["message"] and w["level"] == "warning" for w in warnings)

        loop_thread.run(etcd.stop())  # etcd goes away: reads say so, liveness holds
        down = fetch(url + "/v1/nodes")
        assert down.status == 503 and down.json()["code"] == "UNAVAILABLE", down.body
        assert fetch(url + "/readyz").status == 503
        assert fetch(url + "/healthz").status == 200
        metrics = samples(fetch(url + "/metrics").body.decode())
        assert metrics[("dockyard_etcd_up", ())] == 0
    finally:
        cluster.stop()
        loop_thread.run(etcd.stop())


def test_an_explicit_http_address_in_use_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "dockyard-controller"),
                "run",
                "--insecure",
                "--state-dir",
                str(tmp_path / "c"),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--http-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (--http-listen)" in result.stderr


# -- the hub's bounds, in process ----------------------------------------------------------------


class ScriptedStore:
    """A Store stand-in: a revision and a watch fed from a queue."""

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.events: asyncio.Queue[WatchEvent[Any]] = asyncio.Queue()
        self.watches: list[int] = []

    async def list_all(self, kind: Any, at_revision: int = 0) -> tuple[list[Any], int]:
        return [], self.revision

    async def watch_kinds(self, kinds: Any, start_revision: int) -> Any:
        self.watches.append(start_revision)
        while True:
            yield await self.events.get()
            self.events.task_done()  # the hub has handled it: it asks for the next

    async def delivered(self) -> None:
        await asyncio.wait_for(self.events.join(), 5)

    def node(self, revision: int, name: str) -> None:
        record = Node(id=name)
        record.spec.name = name
        self.events.put_nowait(WatchEvent("nodes", name, False, record, revision))


async def test_the_hub_replays_its_history_and_drops_a_slow_subscriber() -> None:
    store = ScriptedStore(revision=10)
    drops: list[int] = []
    hub = EventHub(store, history=4, queue_limit=8, on_drop=lambda: drops.append(1))  # type: ignore
    try:
        subscription = await hub.subscribe(None)
        assert subscription is not None
        live, start = subscription
        assert start == Position(10, WHOLE)
        for revision, name in [(11, "a"), (11, "b"), (12, "c"), (13, "d"), (14, "e")]:
            store.node(revision, name)
        await store.delivered()
        frames = await live.take(1)
        assert [f.split(b"\n")[0] for f in frames] == [
            b"id: 11-0",
            b"id: 11-1",
            b"id: 12-0",
            b"id: 13-0",
            b"id: 14-0",
        ]
        # History keeps the last 4: a resume after 11-0 is served from it ...
        resumed = await hub.subscribe(parse_position("11-0"))
        assert resumed is not None
        assert [f.split(b"\n")[0] for f in await resumed[0].take(1)] == [
            b"id: 11-1",
            b"id: 12-0",
            b"id: 13-0",
            b"id: 14-0",
        ]
        # ... one from before it is not (the caller reads etcd).
        assert await hub.subscribe(parse_position("10")) is None
        # A subscriber that does not read is dropped when its queue is full; the
        # others go on, and the watch never waits for anyone.
        for i in range(9):
            store.node(20 + i, f"n{i}")
        await store.delivered()
        assert live.overflowed and drops == [1, 1]  # `live` and `resumed`, both unread
        assert len(await live.take(0)) == 8 and live.finished
        assert hub.subscribers == 0
        assert store.watches == [10]  # one watch for everyone
    finally:
        await hub.close()


async def test_a_private_stream_waits_for_its_reader_instead_of_growing() -> None:
    subscriber = Subscriber(limit=2)
    subscriber.push(b"1")
    subscriber.push(b"2")
    blocked = asyncio.ensure_future(subscriber.put(b"3"))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # backpressure, not a third frame in memory
    assert await subscriber.take(1) == [b"1", b"2"]
    await asyncio.wait_for(blocked, 1)
    subscriber.close(b"end")
    assert await subscriber.take(1) == [b"3", b"end"] and subscriber.finished
