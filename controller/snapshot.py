"""What the read API answers from: an immutable snapshot of the view's nodes and
services, published once per applied watch response, and the listings cut from it.

The view (controller/state.py) publishes a `ReadSnapshot` on a `SnapshotBoard`
after each watch response it applies. A snapshot is never changed once published
(its mappings are copies, its records are the view's, which the view replaces and
never changes in place), so a reader on another thread (controller/read_server.py)
holds it without a lock, and never waits for the controller's event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from dockyard.common.validation import MAX_REF_LENGTH, ValidationError
from dockyard.v1.control_pb2 import (
    ListNodesRequest,
    ListNodesResponse,
    ListServicesRequest,
    ListServicesResponse,
    ServiceSummary,
)
from dockyard.v1.types_pb2 import Node, NodeStatus
from dockyard.v1.workloads_pb2 import Service

__all__ = [
    "MAX_PAGE_SIZE",
    "MODES",
    "ReadSnapshot",
    "SnapshotBoard",
    "list_nodes",
    "list_services",
]

MODES = ("replicated", "global", "job")
MAX_PAGE_SIZE = 10_000

Record = TypeVar("Record", Node, Service)


@dataclass(frozen=True)
class ReadSnapshot:
    """The nodes and services at one revision of the view, with each service's tasks
    RUNNING and its job's successful completions."""

    revision: int
    nodes: Mapping[str, Node]
    services: Mapping[str, Service]
    running: Mapping[str, int]
    succeeded: Mapping[str, int]

    @classmethod
    def of(
        cls,
        revision: int,
        nodes: Mapping[str, Node],
        services: Mapping[str, Service],
        running: Mapping[str, int],
        succeeded: Mapping[str, int],
    ) -> ReadSnapshot:
        """A snapshot holding copies of the mappings (not of the records)."""
        return cls(
            revision,
            MappingProxyType(dict(nodes)),
            MappingProxyType(dict(services)),
            MappingProxyType(dict(running)),
            MappingProxyType(dict(succeeded)),
        )


class SnapshotBoard:
    """Where the view publishes its latest snapshot and readers on any thread take it
    (waiting, bounded, for one at least as new as a revision: their own write)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._latest: ReadSnapshot | None = None

    @property
    def latest(self) -> ReadSnapshot | None:
        """The newest snapshot; None while no view publishes (a follower)."""
        return self._latest

    def publish(self, snapshot: ReadSnapshot | None) -> None:
        """Make `snapshot` the latest (None: the view is gone) and wake the waiters."""
        with self._changed:
            self._latest = snapshot
            self._changed.notify_all()

    def wait_for(self, revision: int, timeout: float) -> ReadSnapshot | None:
        """The latest snapshot once it holds `revision`, or as it is after `timeout`
        seconds (blocking: for reader threads, never the event loop)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._latest is None or self._latest.revision >= revision, timeout
            )
            return self._latest


def list_nodes(
    snapshot: ReadSnapshot, request: ListNodesRequest, patch: Callable[[Node], Node]
) -> ListNodesResponse:
    """One page of the nodes `request` asks for, in ID order; each copied into the
    response and then passed to `patch` (the leader's live heartbeat)."""
    size, after = _page(request.page_size, request.page_token)
    matching = (node for node in _in_order(snapshot.nodes, after) if _node_matches(node, request))
    nodes, more = _take(matching, size)
    response = ListNodesResponse(nodes=nodes)
    for node in response.nodes:
        patch(node)
    if more:
        response.next_page_token = response.nodes[-1].id
    return response


def list_services(snapshot: ReadSnapshot, request: ListServicesRequest) -> ListServicesResponse:
    """One page of the services `request` asks for, in ID order, each with its count
    of tasks RUNNING (jobs: completed) and desired."""
    if request.mode not in ("", *MODES):
        raise ValidationError("mode", f"must be {', '.join(MODES)} or empty")
    size, after = _page(request.page_size, request.page_token)
    names = set(request.names)
    matching = (
        service
        for service in _in_order(snapshot.services, after)
        if (not names or service.spec.name in names)
        and (not request.mode or request.mode == service.spec.WhichOneof("mode"))
    )
    services, more = _take(matching, size)
    ready = sum(1 for n in snapshot.nodes.values() if n.status.state == NodeStatus.READY)
    response = ListServicesResponse(services=[_summary(s, snapshot, ready) for s in services])
    if more:
        response.next_page_token = services[-1].id
    return response


def _page(size: int, token: str) -> tuple[int, str]:
    if not 0 <= size <= MAX_PAGE_SIZE:
        raise ValidationError("page_size", f"must be 0 (all) to {MAX_PAGE_SIZE}")
    if len(token) > MAX_REF_LENGTH or not token.isprintable():
        raise ValidationError(
            "page_token", "must be the next_page_token of the previous page, or empty"
        )
    return size, token


def _in_order(records: Mapping[str, Record], after: str) -> Iterable[Record]:
    return (records[key] for key in sorted(records) if key > after)


def _take(records: Iterable[Record], size: int) -> tuple[list[Record], bool]:
    """Up to `size` records (0: all), and whether more follow."""
    taken: list[Record] = []
    for record in records:
        if size and len(taken) == size:
            return taken, True
        taken.append(record)
    return taken, False


def _node_matches(node: Node, request: ListNodesRequest) -> bool:
    if request.names and node.spec.name not in request.names and node.id not in request.names:
        return False
    if request.states and node.status.state not in request.states:
        return False
    for label in request.labels:
        key, has_value, value = label.partition("=")
        if key not in node.spec.labels or (has_value and node.spec.labels[key] != value):
            return False
    return True


def _summary(service: Service, snapshot: ReadSnapshot, ready_nodes: int) -> ServiceSummary:
    mode = service.spec.WhichOneof("mode")
    if mode == "job":
        return ServiceSummary(
            service=service,
            running=snapshot.succeeded.get(service.id, 0),
            desired=service.spec.job.completions,
        )
    desired = service.spec.replicated.replicas if mode == "replicated" else ready_nodes
    return ServiceSummary(
        service=service, running=snapshot.running.get(service.id, 0), desired=desired
    )
