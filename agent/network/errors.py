"""Errors of the bridge network; all are runtime errors (the API's FAILED_PRECONDITION)."""

from __future__ import annotations

from dockyard.agent.runtime.base import ContainerRuntimeError, PortMapping

__all__ = ["CniError", "NetworkError", "PortInUse", "describe_port"]


class NetworkError(ContainerRuntimeError):
    """The container's network could not be set up or torn down; the message says why."""


class CniError(NetworkError):
    """A CNI plugin failed: the message names the plugin, the command and its error."""

    def __init__(self, plugin: str, command: str, message: str) -> None:
        super().__init__(f"CNI plugin {plugin} {command} failed: {message}")
        self.plugin = plugin
        self.command = command


def describe_port(mapping: PortMapping) -> str:
    """``127.0.0.1:8080/tcp`` or ``8080/tcp``."""
    prefix = f"{mapping.host_ip}:" if mapping.host_ip else ""
    return f"{prefix}{mapping.host_port}/{mapping.protocol}"


class PortInUse(NetworkError):
    """A host port is held by another container of this agent, or by another process.

    Attributes:
        index: Which of the requested mappings (``ports[index]``).
        holder_id: The container that holds it; ``""`` when something else on the host does.
    """

    def __init__(
        self, index: int, mapping: PortMapping, holder_id: str = "", holder: str = ""
    ) -> None:
        self.index = index
        self.mapping = mapping
        self.holder_id = holder_id
        port = describe_port(mapping)
        if holder_id:
            who = holder or holder_id[:12]
            message = f"host port {port} is already allocated to container {who}"
        else:
            message = f"host port {port} is already in use on this host"
        super().__init__(f"ports[{index}].host_port: {message}")
