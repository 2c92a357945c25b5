"""Whether this agent's own API may create a container: what is privileged in effect
(`common/privilege.py`: `--privileged`, capabilities beyond the default set, bind mounts
of protected host paths or of the agent's own state dir, the host network, no seccomp)
needs `dockyard-agent run --allow-privileged`, as a service needs the cluster's
`--allow-privileged`. Tasks the controller assigns are not checked here: the controller
held their spec to the cluster's policy.

Only this node can resolve its paths: `resolve_binds` (for every container, tasks too)
refuses a bind source that reaches a protected path through a symlink (a container
that can write to a bind-mounted directory can plant one there) and hands the runtime
the resolved path."""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dockyard.agent.containers.errors import InvalidArgument, PermissionDenied
from dockyard.agent.runtime.base import VolumeMount
from dockyard.common.privilege import bind_privilege, privileges
from dockyard.v1.containers_pb2 import CreateContainerRequest

__all__ = ["Admission", "resolve_binds"]


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
        binds = [
            (f"volumes[{i}].host_path", v.host_path)
            for i, v in enumerate(request.volumes)
            if v.host_path
        ]
        found = privileges(
            privileged=request.privileged,
            cap_add=list(request.cap_add),
            binds=binds,
            network=request.network,
            seccomp=request.seccomp,
            protected=self.protected,
        )
        if found:
            raise PermissionDenied(
                f"{'; '.join(str(p) for p in found)}: this agent does not allow privileged "
                "containers (its admin can allow them with `dockyard-agent run "
                "--allow-privileged`)"
            )


def resolve_binds(
    volumes: Sequence[VolumeMount], protected: Sequence[str] = ()
) -> list[VolumeMount]:
    """`volumes` with each host path resolved on this node (blocking: run in a thread).

    Raises:
        InvalidArgument: a path that is not protected as written leads to one through a
            symlink (`volumes[i].host_path`, in the order of the request's volumes).
    """
    resolved = []
    for index, mount in enumerate(volumes):
        written = posixpath.normpath(str(mount.host))
        real = os.path.realpath(written)
        if real != written:
            why = bind_privilege(real, protected)
            if why is not None and bind_privilege(written, protected) is None:
                raise InvalidArgument(
                    f"volumes[{index}].host_path",
                    f"{written} leads through a symlink to {real} ({why}): name that path "
                    "itself (it needs the privileged policy)",
                )
        resolved.append(dataclasses.replace(mount, host=Path(real)))
    return resolved
