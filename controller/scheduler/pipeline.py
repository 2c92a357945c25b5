"""The filter pipeline: runs the filters that apply to a task over nodes, and counts
which filter turned each node away, so the pending reason comes for free
(swarmkit's `pipeline.go`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dockyard.v1.workloads_pb2 import Task

from .filters import Filter, default_filters
from .nodeinfo import NodeInfo

__all__ = ["NO_NODES", "NO_SUITABLE_NODE", "Pipeline"]

NO_SUITABLE_NODE = "no suitable node"
NO_NODES = f"{NO_SUITABLE_NODE}: the cluster has no nodes"


class Pipeline:
    """Filters for one task at a time.

    `set_task` picks the filters that apply and clears the counts; `process` checks
    one node and, when it fails, charges the first filter that refused it;
    `explain` words the counts.
    """

    def __init__(self, filters: Sequence[Filter] | None = None) -> None:
        self._filters: list[Filter] = list(filters) if filters is not None else default_filters()
        self._active: list[Filter] = []
        self._failures: list[int] = []
        self._checked = 0

    def set_task(self, task: Task) -> None:
        """Prepare for `task` (may raise ConstraintError for a malformed constraint)."""
        self._active = [f for f in self._filters if f.set_task(task)]
        self.reset_counts()

    def reset_counts(self) -> None:
        """Forget the failures counted so far (the task stays set)."""
        self._failures = [0] * len(self._active)
        self._checked = 0

    def process(self, info: NodeInfo) -> bool:
        """Whether the node passes every filter; a failure is charged to the first filter."""
        self._checked += 1
        for index, check in enumerate(self._active):
            if not check.check(info):
                self._failures[index] += 1
                return False
        return True

    def passing(self, infos: Iterable[NodeInfo]) -> list[NodeInfo]:
        """The nodes that pass, counting failures for those that do not."""
        checks = [f.check for f in self._active]
        failures = self._failures
        passed = []
        for info in infos:
            self._checked += 1
            for index, check in enumerate(checks):
                if not check(info):
                    failures[index] += 1
                    break
            else:
                passed.append(info)
        return passed

    def failures(self) -> dict[str, int]:
        """Nodes refused so far, by filter class name (for logs and metrics)."""
        return {
            type(f).__name__: count
            for f, count in zip(self._active, self._failures, strict=True)
            if count
        }

    def explain(self) -> str:
        """The pending reason, e.g. 'no suitable node: insufficient memory (needs
        2.0 GiB) on 2 nodes; 1 node fails node.labels.zone==eu'.

        Only filters that refused nodes are named, most refusals first.
        """
        if self._checked == 0:
            return NO_NODES
        counted = [(count, index) for index, count in enumerate(self._failures) if count]
        if not counted:
            return NO_SUITABLE_NODE
        counted.sort(key=lambda item: (-item[0], item[1]))
        reasons = "; ".join(self._active[index].explain(count) for count, index in counted)
        return f"{NO_SUITABLE_NODE}: {reasons}"
