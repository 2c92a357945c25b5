"""The two state enums, each under one name wherever it is used: `TaskState` (a task's
observed and desired state, NEW → … → RUNNING → COMPLETE | FAILED | …) and `NodeState`
(UNKNOWN, READY, DOWN)."""

from __future__ import annotations

from dockyard.v1.types_pb2 import NodeStatus, TaskStatus

__all__ = ["NodeState", "TaskState"]

TaskState = TaskStatus.State
NodeState = NodeStatus.State
