"""Swarm's service templates in a task's env, hostname and mount sources.

`{{.Service.Name}}`, `{{.Service.ID}}`, `{{.Task.Name}}`, `{{.Task.ID}}`,
`{{.Task.Slot}}`, `{{.Node.ID}}` and `{{.Node.Hostname}}` are replaced, on the node
that runs the task, by the task's facts (as dockerd does when it makes the container);
any other text is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dockyard.agent.executor import container_name
from dockyard.v1.workloads_pb2 import Task

__all__ = ["TEMPLATE", "expander"]

TEMPLATE = re.compile(r"\{\{\s*\.(Service|Task|Node)\.(Name|ID|Slot|Hostname)\s*\}\}")


def expander(task: Task, node_hostname: str) -> Callable[[str], str]:
    """A function that expands the templates of one text for this task on this node
    (the task's facts are looked up at the first template: most tasks have none)."""

    def expand(text: str) -> str:
        if "{{" not in text:
            return text
        facts = _facts(task, node_hostname)
        return TEMPLATE.sub(lambda m: facts.get((m.group(1), m.group(2)), m.group(0)), text)

    return expand


def _facts(task: Task, node_hostname: str) -> dict[tuple[str, str], str]:
    return {
        ("Service", "Name"): task.service_name,
        ("Service", "ID"): task.service_id,
        ("Task", "Name"): container_name(task),
        ("Task", "ID"): task.id,
        ("Task", "Slot"): str(task.slot) if task.slot else task.node_id,
        ("Node", "ID"): task.node_id,
        ("Node", "Hostname"): node_hostname,
    }
