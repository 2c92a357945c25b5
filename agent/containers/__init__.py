"""The agent's local container and image API (the node daemon's `docker -H` surface).

`ContainerService` is the only caller of the runtime (runc, docker or hollow) and of the
image and network steps; `ContainersServicer` and `ImagesServicer` expose it over gRPC.
"""

from dockyard.agent.containers.images_servicer import ImagesServicer
from dockyard.agent.containers.service import ContainerService, ContainerView
from dockyard.agent.containers.servicer import ContainersServicer

__all__ = ["ContainerService", "ContainerView", "ContainersServicer", "ImagesServicer"]
