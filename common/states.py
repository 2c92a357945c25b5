"""The two state enums, each under one name wherever it is used: `TaskState` (a task's
observed and desired state, NEW → … → RUNNING → COMPLETE | FAILED | …) and `NodeState`
(UNKNOWN, READY, DOWN)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from dockyard.v1.types_pb2 import NodeStatus, TaskStatus

__all__ = ["NodeState", "TaskState"]

TaskState = TaskStatus.State
NodeState = NodeStatus.State


class _Enum(Protocol):
    def items(self) -> Iterable[tuple[str, int]]: ...


def _plain_values(enum: _Enum) -> None:
    """Each value of `enum` as a plain attribute of its wrapper (the same int): protobuf's
    `EnumTypeWrapper` finds `TaskState.RUNNING` through `__getattr__`, a lookup in the
    descriptor on every access (1-3 µs; a plain attribute 0.05), and the control loops
    read such values per task. `TaskStatus.State` is the same object, so it gains too."""
    for name, number in enum.items():
        setattr(enum, name, number)


_plain_values(TaskState)
_plain_values(NodeState)
