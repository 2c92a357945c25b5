"""What a set of tasks references: the IDs of its secrets and configs (what a node must
hold, on the controller's side when it folds assignment sets, on the agent's when a
delta set changed its tasks)."""

from __future__ import annotations

from collections.abc import Iterable

from dockyard.v1.workloads_pb2 import Task

__all__ = ["referenced"]


def referenced(tasks: Iterable[Task]) -> tuple[set[str], set[str]]:
    """The IDs of the secrets and of the configs these tasks reference."""
    secret_ids: set[str] = set()
    config_ids: set[str] = set()
    for task in tasks:
        container = task.spec.container
        secret_ids.update(ref.secret_id for ref in container.secrets)
        config_ids.update(ref.config_id for ref in container.configs)
    return secret_ids, config_ids
