"""The HTTP side's handlers: JSON reads, events, metrics, health and the dashboard.

Every JSON answer is made from the same protobuf records the gRPC API returns,
by the same code (NodesAPI, ServicesAPI, cluster_info), rendered as
`dockyard ... -o json` renders them: lists are JSON arrays sorted as the CLI
sorts them, single records are objects. Errors are `{"error": ..., "code": ...}`
with the gRPC status name as the code and the matching HTTP status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from dockyard.common.pki import Identity
from dockyard.controller.api.nodes import NodesAPI
from dockyard.controller.api.services import ServicesAPI
from dockyard.controller.http.events import (
    KEEPALIVE,
    EventHub,
    Subscriber,
    parse_position,
    pump_from_etcd,
)
from dockyard.controller.http.metrics import ControllerMetrics
from dockyard.controller.http.reads import (
    ApiError,
    nodes_query,
    nodes_records,
    paged,
    services_query,
    services_records,
    to_json,
    values,
)
from dockyard.controller.http.sd import agent_targets, parse_port
from dockyard.controller.http.stats import (
    LABEL_SERVICE_ID,
    AgentStats,
    service_totals,
    totals,
)
from dockyard.controller.leadership import Leadership
from dockyard.controller.state import ClusterState
from dockyard.controller.store import Store, StoreError
from dockyard.v1.control_pb2 import (
    ClusterInfo,
    ListNodesRequest,
    ListTasksRequest,
)
from dockyard.v1.types_pb2 import TaskStatus

log = structlog.get_logger(__name__)

DASHBOARD = Path(__file__).parent / "dashboard-static"  # data, not a package
STATIC = {  # URL name -> (file, content type); nothing else is served
    "app.js": "application/javascript; charset=utf-8",
    "vtable.js": "application/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The dashboard loads nothing from anywhere else; the browser enforces it.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
KEEPALIVE_SECONDS = 15.0
WRITE_TIMEOUT = 10.0  # seconds a client may take to accept one chunk of events


async def json_response(value: Any) -> web.Response:
    """Lists (copies the API made) are encoded in a thread: 30,000 tasks take a while.
    One record may be the view's own object, so it is encoded here, on the loop."""
    body = await asyncio.to_thread(to_json, value) if isinstance(value, list) else to_json(value)
    return web.Response(body=body, content_type="application/json")


@dataclass
class ReadSources:
    """What the HTTP side reads; callables because leadership and the view change."""

    store: Store
    nodes: NodesAPI
    services: ServicesAPI
    info: Callable[[], Awaitable[ClusterInfo]]
    leadership: Callable[[], Leadership | None]
    view: Callable[[], ClusterState | None]
    revoked: Callable[[str], bool]
    agent_stats: AgentStats | None = None
    """Asks the agents for container stats (None: the stats routes answer 503)."""


class Handlers:
    def __init__(
        self,
        sources: ReadSources,
        metrics: ControllerMetrics,
        *,
        max_streams: int,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._sources = sources
        self._metrics = metrics
        self._max_streams = max_streams
        self._keepalive = keepalive
        self.hub = EventHub(sources.store, on_drop=metrics.event_streams_dropped.inc)
        self._streams: set[Subscriber] = set()
        self._open = 0  # streams open or opening
        self._static: dict[str, tuple[bytes, str]] = {}

    def add_to(self, app: web.Application) -> None:
        get = app.router.add_get
        get("/", self.dashboard, name="dashboard")
        get("/static/{name}", self.static, name="static")
        get("/healthz", self.healthz, name="healthz")
        get("/readyz", self.readyz, name="readyz")
        get("/metrics", self.metrics, name="metrics")
        get("/v1/info", self.info, name="info")
        get("/v1/nodes", self.list_nodes, name="nodes")
        get("/v1/nodes/{ref}", self.get_node, name="node")
        get("/v1/nodes/{ref}/stats", self.node_stats, name="node_stats")
        get("/v1/services/{ref}/stats", self.service_stats, name="service_stats")
        get("/v1/stats", self.cluster_stats, name="stats")
        get("/v1/sd/agents", self.agents_sd, name="sd_agents")
        get("/v1/services", self.list_services, name="services")
        get("/v1/services/{ref}", self.get_service, name="service")
        get("/v1/tasks", self.list_tasks, name="tasks")
        get("/v1/tasks/{ref}", self.get_task, name="task")
        get("/v1/events", self.events, name="events", allow_head=False)
        app.on_shutdown.append(self._close_streams)

    async def load_static(self) -> None:
        """Read the dashboard's files once (off the event loop)."""

        def read() -> dict[str, tuple[bytes, str]]:
            files = {name: ((DASHBOARD / name).read_bytes(), kind) for name, kind in STATIC.items()}
            files["index.html"] = (
                (DASHBOARD / "index.html").read_bytes(),
                "text/html; charset=utf-8",
            )
            return files

        self._static = await asyncio.to_thread(read)

    # -- health ---------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process answers (it reads nothing)."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: etcd answers and, on the leader, the cluster view is loaded."""
        sources = self._sources
        checks: dict[str, Any] = {}
        try:
            checks["etcd"] = await sources.store.server_version()
        except StoreError as exc:
            checks["etcd"] = f"unreachable: {exc}"
        leadership = sources.leadership()
        leader = bool(leadership and leadership.is_leader)
        view = sources.view()
        view_loaded = not leader or (view is not None and view.revision > 0)
        checks["leader"] = leader
        checks["view"] = ("loaded" if view_loaded else "loading") if leader else "follower: etcd"
        ready = not str(checks["etcd"]).startswith("unreachable") and view_loaded
        return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)

    # -- metrics --------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = await self._metrics.exposition(request.headers.get("Accept", ""))
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    # -- reads ----------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        return await json_response(await self._sources.info())

    async def list_nodes(self, request: web.Request) -> web.Response:
        query = nodes_query(request)
        listed = await self._sources.nodes.list(query)
        records = list(nodes_records(query, listed))
        return paged(await json_response(records), listed.next_page_token)

    async def get_node(self, request: web.Request) -> web.Response:
        return await json_response(await self._sources.nodes.get(request.match_info["ref"]))

    async def list_services(self, request: web.Request) -> web.Response:
        query = services_query(request)
        listed = await self._sources.services.list(query)
        records = list(services_records(query, listed))
        return paged(await json_response(records), listed.next_page_token)

    async def get_service(self, request: web.Request) -> web.Response:
        return await json_response(await self._sources.services.get(request.match_info["ref"]))

    async def list_tasks(self, request: web.Request) -> web.Response:
        history = request.query.get("history", "")
        if history not in ("", "0", "1", "true", "false"):
            raise ApiError(400, "INVALID_ARGUMENT", "history: expected 1 or 0")
        query = ListTasksRequest(
            services=values(request, "service"),
            nodes=values(request, "node"),
            include_history=history in ("1", "true"),
        )
        tasks = (await self._sources.services.list_tasks(query)).tasks
        return await json_response(list(tasks))

    async def get_task(self, request: web.Request) -> web.Response:
        return await json_response(await self._sources.services.get_task(request.match_info["ref"]))

    # -- container stats, from the agents ----------------------------------------

    def _agents(self) -> AgentStats:
        if self._sources.agent_stats is None:
            raise ApiError(503, "UNAVAILABLE", "this controller does not ask agents for stats")
        return self._sources.agent_stats

    async def node_stats(self, request: web.Request) -> web.Response:
        """One node's running containers, a sample each."""
        agents = self._agents()
        answer = await agents.node(await self._sources.nodes.get(request.match_info["ref"]))
        return web.json_response({**answer.json(), "services": service_totals(answer.containers)})

    async def service_stats(self, request: web.Request) -> web.Response:
        """A service's running containers on every node that runs one of its tasks."""
        agents = self._agents()
        service = await self._sources.services.get(request.match_info["ref"])
        tasks = (
            await self._sources.services.list_tasks(ListTasksRequest(services=[service.id]))
        ).tasks
        on = {t.node_id for t in tasks if t.node_id and t.status.state == TaskStatus.RUNNING}
        nodes = [
            n for n in (await self._sources.nodes.list(ListNodesRequest())).nodes if n.id in on
        ]
        answers = await agents.nodes(
            sorted(nodes, key=lambda n: n.spec.name),
            lambda r: r.config.labels.get(LABEL_SERVICE_ID) == service.id,
        )
        containers = [c for a in answers for c in a.containers]
        return web.json_response(
            {
                "service_id": service.id,
                "service": service.spec.name,
                "totals": totals(service.spec.name, containers),
                "containers": containers,
                "nodes": [
                    {"node_id": a.node_id, "node": a.node, "error": a.error} for a in answers
                ],
            }
        )

    async def cluster_stats(self, request: web.Request) -> web.Response:
        """Every node's running containers, and totals by service."""
        agents = self._agents()
        nodes = (await self._sources.nodes.list(ListNodesRequest())).nodes
        answers = await agents.nodes(sorted(nodes, key=lambda n: n.spec.name))
        containers = [c for a in answers for c in a.containers]
        return web.json_response(
            {
                "services": service_totals(containers),
                "containers": containers,
                "nodes": [
                    {"node_id": a.node_id, "node": a.node, "error": a.error} for a in answers
                ],
            }
        )

    async def agents_sd(self, request: web.Request) -> web.Response:
        """Prometheus HTTP service discovery of the agents' metrics endpoints."""
        try:
            port = parse_port(request.query.get("port", ""))
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", str(exc)) from exc
        nodes = (await self._sources.nodes.list(ListNodesRequest())).nodes
        return web.json_response(agent_targets(nodes, port))

    # -- the dashboard ----------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.Response:
        return self._file(request, "index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise ApiError(404, "NOT_FOUND", f"no static file {name[:64]!r}")
        return self._file(request, name)

    def _file(self, request: web.Request, name: str) -> web.Response:
        body, content_type = self._static[name]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": DASHBOARD_CSP,
            "Content-Type": content_type,
        }
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    # -- events -----------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        text = request.headers.get("Last-Event-ID") or request.query.get("since", "")
        try:
            after = parse_position(text) if text else None
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"Last-Event-ID or since: {exc}") from exc
        if self._open >= self._max_streams:
            raise ApiError(
                503,
                "RESOURCE_EXHAUSTED",
                f"too many event streams (at most {self._max_streams}); retry later",
                headers={"Retry-After": "5"},
            )
        self._open += 1  # the slot is taken before anything awaits
        self._metrics.event_streams.inc()
        pump: Coroutine[Any, Any, None] | None = None
        subscriber: Subscriber | None = None
        try:
            subscription = await self.hub.subscribe(after)
            if subscription is None:  # older than the hub's history: our own etcd watch
                assert after is not None
                subscriber, start = Subscriber(256), after
                pump = pump_from_etcd(self._sources.store, after, subscriber)
            else:
                subscriber, start = subscription
            self._streams.add(subscriber)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            request["stream"] = response
            # `retry` paces reconnects; the id makes a reconnect resume from here.
            ready = json.dumps({"position": str(start), "resumed": after is not None})
            await response.write(
                f"retry: 3000\nid: {start}\nevent: ready\ndata: {ready}\n\n".encode()
            )
            await self._pour_beside(request, response, subscriber, pump)
            return response
        finally:
            self._open -= 1
            self._metrics.event_streams.dec()
            if subscriber is not None:
                self._streams.discard(subscriber)
                self.hub.unsubscribe(subscriber)
            if pump is not None:
                pump.close()  # not started, or done: a no-op

    async def _pour_beside(
        self,
        request: web.Request,
        response: web.StreamResponse,
        subscriber: Subscriber,
        pump: Coroutine[Any, Any, None] | None,
    ) -> None:
        """`_pour`, with the stream's own etcd watch (`pump`) beside it in one task group:
        a pump that fails ends the stream with its error instead of leaving it silent."""
        if pump is None:
            await self._pour(request, response, subscriber)
            return
        async with asyncio.TaskGroup() as group:
            feeding = group.create_task(pump)
            await self._pour(request, response, subscriber)
            feeding.cancel()

    async def _pour(
        self, request: web.Request, response: web.StreamResponse, subscriber: Subscriber
    ) -> None:
        """Write the subscriber's frames until it ends, the client goes or is revoked."""
        identity: Identity | None = request.get("identity")
        started = time.monotonic()
        while True:
            frames = await subscriber.take(self._keepalive)
            if identity is not None and self._sources.revoked(identity.serial):
                log.warning("http.events_revoked", role=identity.role, id=identity.id)
                return
            chunk = b"".join(frames) if frames else b""
            if not chunk and not subscriber.finished:
                chunk = KEEPALIVE
            try:
                if chunk:
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await response.write(chunk)
            except TimeoutError:
                log.warning(
                    "http.events_slow_client",
                    peer=request.remote,
                    seconds=round(time.monotonic() - started, 1),
                )
                if not subscriber.overflowed:  # (the hub counted that one)
                    self._metrics.event_streams_dropped.inc()
                if request.transport is not None:
                    request.transport.abort()
                return
            except (ConnectionError, RuntimeError):  # the client went away
                return
            if subscriber.finished:
                if subscriber.overflowed:
                    log.warning(
                        "http.events_dropped",
                        peer=request.remote,
                        reason="the client reads more slowly than the cluster changes",
                    )
                return

    async def _close_streams(self, app: web.Application) -> None:
        for subscriber in list(self._streams):
            subscriber.close()
        await self.hub.close()
