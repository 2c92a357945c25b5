"""`DockerApiContext`: what the Docker API's handlers reach of the agent.

The agent daemon builds one and hands it to ``server.build_app``; every route module
reads the node's services from it (never from globals), so a test can build an app over
any service it likes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from dockyard.agent.containers.admission import Admission
from dockyard.agent.dockerapi.errors import DockerApiError
from dockyard.agent.dockerapi.network_store import NetworkStore
from dockyard.common.taskscope import TaskScope

if TYPE_CHECKING:
    from dockyard.agent.containers.service import ContainerService
    from dockyard.agent.images.service import ImageService
    from dockyard.agent.network.attacher import NetworkAttacher
    from dockyard.agent.network.cluster import ClusterNetwork
    from dockyard.agent.network.detach_queue import DetachQueue
    from dockyard.agent.session import SessionStatus
    from dockyard.v1.types_pb2 import NodeDescription

__all__ = ["DockerApiContext", "with_context"]


@dataclass
class DockerApiContext:
    """The node's services as the Docker API sees them.

    Attributes:
        node_id: This node's id in the cluster.
        node_name: Its name (Docker's ``Name`` in ``/info``).
        runtime: The agent's runtime (``runc``, ``docker``, ``hollow``).
        state_dir: The agent's state directory (Docker's ``DockerRootDir``).
        describe: The node's description (resources, kernel, versions).
        containers: The node's container service (None: this runtime has none to offer).
        images: The node's image service (runc only).
        admission: The privilege policy of containers created through the agent's API.
        session: The controller session's status (the ``Swarm`` section of ``/info``).
        controllers: The controllers this agent talks to.
        started_at: When the API started (``SystemTime`` is the current time).
        cluster_network: The node's bridge and DNS (None: a runtime without a bridge).
        start_waiters: Per container id, an event the next start through this API sets
            (``wait?condition=next-exit`` on an exited container waits for it).
        attacher: Attaches containers to cluster networks through the leader (None:
            no controller session, or no overlays on this runtime).
        detaches: Releases of their attachments, made durably (asked again until made).
        attached: The containers on cluster networks (released when destroyed).
    """

    node_id: str
    node_name: str
    runtime: str
    state_dir: Path
    describe: Callable[[], NodeDescription]
    containers: ContainerService | None = None
    images: ImageService | None = None
    admission: Admission = field(default_factory=Admission)
    session: SessionStatus | None = None
    controllers: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    cluster_network: ClusterNetwork | None = None
    start_waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    attacher: NetworkAttacher | None = None
    detaches: DetachQueue | None = None
    connected: asyncio.Event | None = None
    """Set once the controller session is up (the attacher's calls need it)."""
    attached: set[str] = field(default_factory=set)
    networks_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while a user-defined network is created or removed."""
    background: TaskScope = field(default_factory=lambda: TaskScope("dockerapi"))
    """Work that outlives its request (a detached exec's drain); closed with the app."""
    _networks: NetworkStore | None = field(default=None, repr=False)

    def network_store(self) -> NetworkStore:
        """The Docker API's user-defined networks (`network_store.py`), read on first use."""
        if self._networks is None:
            self._networks = NetworkStore(self.state_dir / "dockerapi" / "networks.json")
        return self._networks

    def next_start(self, container_id: str) -> asyncio.Event:
        """The event the container's next start sets."""
        return self.start_waiters.setdefault(container_id, asyncio.Event())

    def started(self, container_id: str) -> None:
        """The container was started: wake who waits for its next run."""
        event = self.start_waiters.pop(container_id, None)
        if event is not None:
            event.set()

    def require_containers(self) -> ContainerService:
        """The container service, or 501 on a runtime without one."""
        if self.containers is None:
            raise DockerApiError(
                501, f"this agent's runtime ({self.runtime}) does not serve containers here"
            )
        return self.containers

    def require_images(self) -> ImageService:
        """The image service, or 501 on a runtime without one."""
        if self.images is None:
            raise DockerApiError(
                501, f"this agent's runtime ({self.runtime}) does not serve images here"
            )
        return self.images


ContextHandler = Callable[[web.Request, DockerApiContext], Awaitable[web.StreamResponse]]


def with_context(
    ctx: DockerApiContext, handler: ContextHandler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``handler`` as an aiohttp handler, given ``ctx`` with each request."""

    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, ctx)

    return bound
