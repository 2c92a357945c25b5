"""The agent's local container and image API (the node daemon's `docker -H` surface).

`ContainerManager` owns the runc runtime and the image service; `ContainersServicer`
and `ImagesServicer` expose it over gRPC.
"""

from dockyard.agent.containers.images_servicer import ImagesServicer
from dockyard.agent.containers.manager import ContainerManager, ContainerView
from dockyard.agent.containers.servicer import ContainersServicer

__all__ = ["ContainerManager", "ContainerView", "ContainersServicer", "ImagesServicer"]
