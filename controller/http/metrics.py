"""Prometheus metrics of one controller, in its own CollectorRegistry.

Each controller has its own registry (not prometheus_client's global one), so
several controllers can run in one process (tests). What it holds:

- the process collectors (`process_*`, `python_gc_*`, `python_info`);
- gRPC counters and a latency histogram, fed by `GrpcMetricsInterceptor`;
- HTTP request counters and the open event streams, fed by the HTTP server;
- the cluster gauges (`dockyard_nodes{state}`, `dockyard_tasks{state}`, ...),
  computed at scrape time from the leader's in-memory view, or from etcd on a
  follower (`ClusterCollector.refresh`, awaited before each scrape).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dockyard.controller.store import NODES, SERVICES, TASKS, Store, StoreError
from dockyard.v1.types_pb2 import Node, NodeStatus, TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task

__all__ = [
    "ClusterCollector",
    "ClusterSources",
    "ControllerMetrics",
    "GrpcMetricsInterceptor",
    "SessionMessages",
]

NODE_STATES = [
    name
    for name in NodeStatus.State.keys()  # noqa: SIM118 (a protobuf enum, not a dict)
    if name != "STATE_UNSPECIFIED"
]
TASK_STATES = [
    name
    for name in TaskStatus.State.keys()  # noqa: SIM118 (a protobuf enum, not a dict)
    if name != "STATE_UNSPECIFIED"
]


@dataclass
class ClusterSources:
    """Where the cluster gauges come from (callables: leadership and the view change)."""

    store: Store
    view: Callable[[], Any]  # ClusterState | None (the leader's)
    is_leader: Callable[[], bool]
    agent_sessions: Callable[[], int]


@dataclass
class ClusterSnapshot:
    is_leader: bool = False
    agent_sessions: int = 0
    etcd_up: bool = False
    nodes: Tally[str] = field(default_factory=Tally)
    tasks: Tally[str] = field(default_factory=Tally)
    tasks_desired: int = 0
    services: int = 0
    # service name -> (tasks whose desired state is RUNNING, of those RUNNING now)
    service_tasks: dict[str, tuple[int, int]] = field(default_factory=dict)
    complete: bool = False  # False: the records could not be read (etcd down, no view)


class ClusterCollector(Collector):
    """The cluster gauges, from the last `refresh` (collect() itself cannot await)."""

    def __init__(self, sources: ClusterSources) -> None:
        self._sources = sources
        self.snapshot = ClusterSnapshot()

    async def refresh(self) -> None:
        sources = self._sources
        snap = ClusterSnapshot(
            is_leader=sources.is_leader(), agent_sessions=sources.agent_sessions()
        )
        try:
            await sources.store.server_version()
            snap.etcd_up = True
        except StoreError:
            snap.etcd_up = False
        records = await self._records(snap.etcd_up)
        if records is not None:
            nodes, services, tasks = records
            snap.nodes = Tally(NodeStatus.State.Name(n.status.state) for n in nodes)
            snap.tasks = Tally(TaskStatus.State.Name(t.status.state) for t in tasks)
            snap.tasks_desired = sum(1 for t in tasks if t.desired_state == TaskStatus.RUNNING)
            snap.services = len(services)
            snap.service_tasks = _service_tasks(services, tasks)
            snap.complete = True
        self.snapshot = snap

    async def _records(self, etcd_up: bool) -> tuple[list[Node], list[Service], list[Task]] | None:
        view = self._sources.view()
        if view is not None and view.revision > 0:  # the leader: no etcd read
            return (
                list(view.nodes.values()),
                list(view.services.values()),
                list(view.tasks.values()),
            )
        if not etcd_up:
            return None
        store = self._sources.store
        try:
            # One consistent snapshot: the later lists read at the first one's revision.
            nodes, revision = await store.list_all(NODES)
            services, _ = await store.list_all(SERVICES, at_revision=revision)
            tasks, _ = await store.list_all(TASKS, at_revision=revision)
        except StoreError:
            return None
        return nodes, services, tasks

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield _gauge(
            "dockyard_is_leader",
            "1 if this controller holds the leader lease.",
            int(snap.is_leader),
        )
        yield _gauge(
            "dockyard_agent_sessions",
            "Agent sessions open on this controller.",
            snap.agent_sessions,
        )
        yield _gauge(
            "dockyard_etcd_up",
            "1 if etcd answered this scrape's status request.",
            int(snap.etcd_up),
        )
        if not snap.complete:
            return
        nodes = GaugeMetricFamily("dockyard_nodes", "Nodes by state.", labels=["state"])
        for state in NODE_STATES:
            nodes.add_metric([state], snap.nodes.get(state, 0))
        yield nodes
        yield _gauge("dockyard_services", "Services (and jobs).", snap.services)
        tasks = GaugeMetricFamily(
            "dockyard_tasks",
            "Tasks in the store by observed state (history included).",
            labels=["state"],
        )
        for state in TASK_STATES:
            tasks.add_metric([state], snap.tasks.get(state, 0))
        yield tasks
        yield _gauge(
            "dockyard_tasks_desired", "Tasks whose desired state is RUNNING.", snap.tasks_desired
        )
        per_service = GaugeMetricFamily(
            "dockyard_service_tasks",
            "Each service's tasks whose desired state is RUNNING (kind=desired), and of "
            "those the ones RUNNING now (kind=running).",
            labels=["service", "kind"],
        )
        for name, (desired, running) in sorted(snap.service_tasks.items()):
            per_service.add_metric([name, "desired"], desired)
            per_service.add_metric([name, "running"], running)
        yield per_service


def _service_tasks(services: list[Service], tasks: list[Task]) -> dict[str, tuple[int, int]]:
    names = {service.id: service.spec.name for service in services}
    desired: Tally[str] = Tally()
    running: Tally[str] = Tally()
    for task in tasks:
        name = names.get(task.service_id)
        if name is None or task.desired_state != TaskStatus.RUNNING:
            continue
        desired[name] += 1
        running[name] += task.status.state == TaskStatus.RUNNING
    return {name: (desired[name], running[name]) for name in names.values()}


class SessionMessages(Collector):
    """`dockyard_session_messages_total{direction, kind}`: messages on the agents'
    sessions, "in" from agents and "out" to them, by the message's kind."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "dockyard_session_messages",
            "Messages on the agents' sessions (on the leader), by direction (in: from "
            "agents, out: to them) and kind.",
            labels=["direction", "kind"],
        )
        for (direction, kind), count in sorted(self._counts().items()):
            family.add_metric([direction, kind], count)
        yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class ControllerMetrics:
    """One controller's registry and the instruments its parts update."""

    def __init__(self, version: str = "") -> None:
        # No `*_created` series next to every counter (a process-wide switch of the
        # library; Prometheus does not need them).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.grpc_requests = Counter(
            "dockyard_grpc_requests",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "dockyard_grpc_request_duration_seconds",
            "Time to answer a unary gRPC call, by method.",
            ["method"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "dockyard_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "code"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "dockyard_http_request_duration_seconds",
            "Time to answer an HTTP request, by route (event streams left out).",
            ["route"],
            registry=self.registry,
        )
        self.etcd_latency = Histogram(
            "dockyard_etcd_request_duration_seconds",
            "Time of this controller's etcd requests, by kind (get, range, txn, lease), "
            "failed ones included.",
            ["op"],
            registry=self.registry,
        )
        self.scheduler_rounds = Histogram(
            "dockyard_scheduler_round_duration_seconds",
            "Time of a scheduling round with pending tasks: deciding and writing the "
            "decisions (on the leader).",
            registry=self.registry,
        )
        self.scheduler_assigned = Counter(
            "dockyard_scheduler_assigned_tasks",
            "Tasks the scheduler assigned to a node, as written (on the leader).",
            registry=self.registry,
        )
        self.leadership_changes = Counter(
            "dockyard_leadership_changes",
            "Times this controller became the leader (to=leader) or stopped leading (to=follower).",
            ["to"],
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "dockyard_event_streams", "Open /v1/events streams.", registry=self.registry
        )
        self.event_streams_dropped = Counter(
            "dockyard_event_streams_dropped",
            "Event streams closed because the client read too slowly.",
            registry=self.registry,
        )
        self.task_transitions = Counter(
            "dockyard_task_transitions",
            "Task state changes written from agents' reports, by the new state (on the leader).",
            ["state"],
            registry=self.registry,
        )
        self.task_reports = Counter(
            "dockyard_task_status_reports",
            "Task status reports taken from agents (on the leader; an agent folds a task's "
            "quick steps into one).",
            registry=self.registry,
        )
        self.scrape_errors = Counter(
            "dockyard_metrics_refresh_errors",
            "Scrapes whose cluster gauges failed.",
            registry=self.registry,
        )
        Gauge(
            "dockyard_build_info",
            "The controller's version (always 1).",
            ["version"],
            registry=self.registry,
        ).labels(version).set(1)
        self.cluster: ClusterCollector | None = None
        self._messages: SessionMessages | None = None
        self._lock = asyncio.Lock()

    def count_session_messages(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Expose the dispatcher's session messages, by direction and kind (`counts`
        read at scrape time)."""
        if self._messages is None:
            self._messages = SessionMessages(counts)
            self.registry.register(self._messages)

    def watch_cluster(self, sources: ClusterSources) -> None:
        self.cluster = ClusterCollector(sources)
        self.registry.register(self.cluster)

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Refresh the cluster gauges, then render the registry: the body and its
        content type (Prometheus text 0.0.4, or OpenMetrics when `accept` asks).

        Rendering reads /proc (the process collector), so it runs in a thread;
        the lock keeps two scrapes from interleaving a refresh and a render.
        """
        encoder, content_type = choose_encoder(accept)
        async with self._lock:
            if self.cluster is not None:
                try:
                    await self.cluster.refresh()
                except Exception:
                    self.scrape_errors.inc()
                    raise
            body = await asyncio.to_thread(encoder, self.registry)
        return body, content_type

    def observe_etcd(self, op: str, seconds: float) -> None:
        self.etcd_latency.labels(op).observe(seconds)

    def observe_scheduling_round(self, seconds: float, assigned: int) -> None:
        self.scheduler_rounds.observe(seconds)
        self.scheduler_assigned.inc(assigned)

    def observe_grpc(self, method: str, code: str, seconds: float | None) -> None:
        self.grpc_requests.labels(method, code).inc()
        if seconds is not None:
            self.grpc_latency.labels(method).observe(seconds)


def _code_name(context: Any, default: str) -> str:
    """The status an aio servicer context will send (set_code or abort), by name."""
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):
        return default
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # the cython layer may give the integer value
        if status.value[0] == code:
            return status.name
    return default


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and code, and times unary calls.

    Put it first in the server's interceptor list, so it also sees the calls the
    authorization interceptor refuses. Only methods the server has are counted
    (unknown ones get UNIMPLEMENTED from grpc without a handler), so the `method`
    label stays bounded.
    """

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, handler_call_details.method.lstrip("/"), self._metrics)


def _wrap(handler: Any, method: str, metrics: ControllerMetrics) -> Any:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    async def unary(inner: Callable[[Any, Any], Awaitable[Any]], request: Any, context: Any) -> Any:
        start = time.perf_counter()
        code = ""
        try:
            return await inner(request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _code_name(context, "UNKNOWN")
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            metrics.observe_grpc(
                method, code or _code_name(context, "OK"), time.perf_counter() - start
            )

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            return await unary(inner_uu, request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            return await unary(inner_su, requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, method, metrics), **kwargs
        )
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, method, metrics), **kwargs
    )


def _streaming(inner: Callable[[Any, Any], Any], method: str, metrics: ControllerMetrics) -> Any:
    """Streams are counted when they end, not timed (a session lasts hours)."""

    async def behavior(request: Any, context: Any) -> Any:
        code = ""
        try:
            result = inner(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _code_name(context, "UNKNOWN")
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            metrics.observe_grpc(method, code or _code_name(context, "OK"), None)

    return behavior
