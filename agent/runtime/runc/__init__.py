"""The runc backend: OCI bundles on overlayfs, monitored by conmon."""

from dockyard.agent.runtime.runc.runtime import RuncRuntime

__all__ = ["RuncRuntime"]
