"""Which services need no new plan after the orchestrator's own writes.

A plan that only creates tasks (a scale-up, a new service, a refilled slot) and was
written whole leaves its service in the state the plan aimed at: planning it again over
its own new tasks gives an empty plan (`tests/orchestrators/test_settled.py` checks it
over random services). Re-planning a 1,000-task service after each such write was a
quarter of the controller's CPU during a scale-up, so the orchestrator skips it while
nothing but those creates (and their status steps, which it does not watch) changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.survivors import UNDER_WAY
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task

__all__ = ["Created", "created_only", "node_key", "own_writes_only"]


@dataclass(frozen=True)
class Created:
    """A service's creates-only plan, written whole."""

    service_version: int
    tasks: dict[str, Task]  # ID -> as written


def created_only(service: Service | None, plan: Plan, written: bool) -> Created | None:
    """The plan's creates, when they are all it did and all were written."""
    if service is None or not written or not plan.creates:
        return None
    if plan.updates or plan.deletes or plan.service is not None:
        return None
    if service.update_status.state in UNDER_WAY:
        return None
    return Created(service.meta.version, {t.id: t for t in plan.creates})


def own_writes_only(
    created: Created,
    service: Service | None,
    changed: Iterable[str],
    tasks: Mapping[str, Task],
) -> bool:
    """Whether the service's changes since the plan (`changed`: the IDs of its tasks
    that marked it) are only the plan's creates, each still live as written (at most
    placed or further along, which the orchestrator does not watch)."""
    if service is None or service.meta.version != created.service_version:
        return False
    for task_id in changed:
        written = created.tasks.get(task_id)
        task = tasks.get(task_id)
        if written is None or task is None:
            return False
        if (
            task.desired_state != written.desired_state
            or task.spec_version != written.spec_version
            or task.status.state >= TaskState.COMPLETE
            or (written.node_id and task.node_id != written.node_id)
        ):
            return False
    return True


def node_key(node: Node) -> bytes:
    """What planning reads of a node: its record but for the heartbeat time, the
    session's remote address and the record's own version and stamps (persisted
    heartbeats then plan nothing again, nor does an agent's new session: at a new term
    every agent registers again, from a new port)."""
    copy = Node()
    copy.CopyFrom(node)
    copy.ClearField("meta")
    copy.status.ClearField("last_heartbeat")
    copy.status.ClearField("remote_address")
    return copy.SerializeToString(deterministic=True)
