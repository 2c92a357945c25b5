"""Whether this agent's own API may create a container: what is privileged in effect
(`common/privilege.py`: `--privileged`, capabilities beyond the default set, bind mounts
of protected host paths or of the agent's own state dir, the host network, no seccomp)
needs `dockyard-agent run --allow-privileged`, as a service needs the cluster's
`--allow-privileged`. Tasks the controller assigns are not checked here: the controller
held their spec to the cluster's policy."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.agent.containers.errors import PermissionDenied
from dockyard.common.privilege import privileges
from dockyard.v1.containers_pb2 import CreateContainerRequest

__all__ = ["Admission"]


@dataclass(frozen=True)
class Admission:
    """The agent's policy for containers created through its API.

    Args:
        allow_privileged: `--allow-privileged`.
        protected: host paths guarded besides the usual ones (the agent's state dir).
    """

    allow_privileged: bool = False
    protected: tuple[str, ...] = ()

    def check(self, request: CreateContainerRequest) -> None:
        """Raises PermissionDenied naming each field that makes the container privileged."""
        if self.allow_privileged:
            return
        binds = [(f"volumes[{i}].host_path", v.host_path)
                 for i, v in enumerate(request.volumes) if v.host_path]  # fmt: skip
        found = privileges(privileged=request.privileged, cap_add=list(request.cap_add),
                           binds=binds, network=request.network, seccomp=request.seccomp,
                           protected=self.protected)  # fmt: skip
        if found:
            raise PermissionDenied(
                f"{'; '.join(str(p) for p in found)}: this agent does not allow privileged "
                "containers (its admin can allow them with `dockyard-agent run "
                "--allow-privileged`)"
            )
