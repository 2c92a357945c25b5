"""Which other nodes a node may fetch an image's layers from.

A node about to start a task often pulls an image that other nodes already run: the
task's siblings of the same service, or another service's tasks of that image. Those
nodes' agents serve their blobs (Peer.FetchBlob), so the assignment set names up to
MAX_SOURCES of them per image. Only nodes with a RUNNING task of the very same image
reference count: that task keeps every layer of the image on its node. Each fetching
node gets the holders in its own rotated order, so a fleet pulling at once spreads over
the holders instead of queueing on one.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable

from dockyard.common.addresses import AddressError, join_host_port, split_host_port
from dockyard.common.states import TaskState
from dockyard.controller.state import ClusterState
from dockyard.v1.dispatcher_pb2 import ImageSources
from dockyard.v1.types_pb2 import Node, NodeStatus
from dockyard.v1.workloads_pb2 import Task

__all__ = ["MAX_SOURCES", "image_sources", "reachable_api_address"]

MAX_SOURCES = 3
CANDIDATES = 16
"""Holders found before the search stops (the sources rotate among them): a big service
costs a node's assignment set a few tasks looked at, not all of them."""
SERVING_RUNTIMES = frozenset({"runc"})
"""Runtimes whose agents keep the image store that Peer.FetchBlob serves."""


Holders = list[tuple[str, str]]
"""(node ID, API address) of nodes running an image, sorted."""


def image_sources(
    state: ClusterState,
    node_id: str,
    tasks: Iterable[Task],
    cache: dict[str, Holders] | None = None,
) -> list[ImageSources]:
    """The sources of every image that ``node_id``'s tasks still have to start with (none
    for a node whose runtime pulls by itself or not at all: docker, hollow).

    ``cache`` keeps each image's holders across the nodes of one round (a service scaled
    up at once makes many nodes ask about the same image)."""
    node = state.nodes.get(node_id)
    if node is None or node.description.runtime not in SERVING_RUNTIMES:
        return []
    wanted: dict[str, str] = {}  # image -> a service that uses it
    for task in tasks:
        image = task.spec.container.image
        running = TaskState.RUNNING
        if image and task.status.state < running and task.desired_state <= running:
            wanted.setdefault(image, task.service_id)
    cache = {} if cache is None else cache
    found = []
    for image, service_id in sorted(wanted.items()):
        if image not in cache:
            cache[image] = _holders(state, image, service_id)
        others = [address for holder, address in cache[image] if holder != node_id]
        if others:
            found.append(ImageSources(image=image, api_addresses=_rotated(others, node_id)))
    return found


def _holders(state: ClusterState, image: str, service_id: str) -> Holders:
    """Up to CANDIDATES + 1 ready nodes running ``image`` (one may be the asking node):
    tasks of ``service_id`` and of every service whose spec names the same image."""
    services = {service_id} | {
        s.id for s in state.services.values() if s.spec.task.container.image == image
    }
    holders: dict[str, str] = {}
    for service in sorted(services):
        for task_id in state.tasks_by_service.get(service, ()):
            task = state.tasks.get(task_id)
            if (
                task is None
                or task.node_id in holders
                or task.status.state != TaskState.RUNNING
                or task.spec.container.image != image
            ):
                continue
            node = state.nodes.get(task.node_id)
            if (
                node is None
                or node.status.state != NodeStatus.State.READY
                or node.description.runtime not in SERVING_RUNTIMES
            ):
                continue
            if address := reachable_api_address(node):
                holders[node.id] = address
                if len(holders) > CANDIDATES:
                    return sorted(holders.items())
    return sorted(holders.items())


def _rotated(holders: list[str], node_id: str) -> list[str]:
    start = zlib.crc32(node_id.encode()) % len(holders)
    return (holders[start:] + holders[:start])[:MAX_SOURCES]


def reachable_api_address(node: Node) -> str:
    """The node's agent API as other hosts reach it: an unspecified listen address
    (0.0.0.0, ::) is replaced by the address its session came from. "" when unknown."""
    try:
        host, port = split_host_port(node.description.api_address, 0)
    except AddressError:
        return ""
    if port == 0:
        return ""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = False  # a host name
    if unspecified:
        host = node.network.address
        if not host:
            return ""
    return join_host_port(host, port)
