"""The Docker engine as a `ContainerRuntime` (`dockyard-agent run --runtime docker`)."""

from dockyard.agent.runtime.docker.runtime import DockerRuntime, engine_body

__all__ = ["DockerRuntime", "engine_body"]
