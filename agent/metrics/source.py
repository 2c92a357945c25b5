"""What the metrics need to know of a container, and where they get the list from.

The container service (whatever owns the containers) is read through `ContainerSource`:
one async call per scrape that lists every container on the node. The agent daemon wires
it in one place, so the metrics do not depend on how containers are managed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ContainerRef", "ContainerSource"]


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """One container as the metrics see it.

    Attributes:
        id: The container ID.
        name: The container name.
        image: The image reference it was created from.
        cgroups_path: The cgroup runc was given (`/dockyard/<id>`), under each v1
            hierarchy or under the v2 root.
        pid: Its init process (host PID namespace); 0 when it is not running.
        running: Whether it runs now.
        restarts: How often it was started again after exiting.
        oom_killed: Whether its last exit was an OOM kill (its cgroup is gone by then).
        started_at: When it last started (Unix seconds); 0 when it never did.
        host_network: It shares the host's network namespace (no own interfaces).
        labels: Its labels (only the task labels become metric labels).
    """

    id: str
    name: str
    image: str
    cgroups_path: str
    pid: int = 0
    running: bool = False
    restarts: int = 0
    oom_killed: bool = False
    started_at: float = 0.0
    host_network: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


ContainerSource = Callable[[], Awaitable[Sequence[ContainerRef]]]
"""Every container on the node, running or not, in any order."""
