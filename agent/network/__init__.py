"""The agent's bridge network: containers in their own network namespaces on a Linux
bridge, with published ports, set up by the standard CNI plugins (``bridge``,
``host-local``, ``portmap``, ``firewall``) as Podman, Nomad and Kubernetes use them.

See ``docs/networking.md``.
"""

from dockyard.agent.network.attachments import Attachment
from dockyard.agent.network.bridge import (
    DEFAULT_BRIDGE,
    DEFAULT_CNI_PATH,
    DEFAULT_SUBNET,
    BridgeConfig,
    BridgeNetwork,
    check_bridge_name,
    check_subnet,
)
from dockyard.agent.network.errors import CniError, NetworkError, PortInUse

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_CNI_PATH",
    "DEFAULT_SUBNET",
    "Attachment",
    "BridgeConfig",
    "BridgeNetwork",
    "CniError",
    "NetworkError",
    "PortInUse",
    "check_bridge_name",
    "check_subnet",
]
