"""The scheduler: decide a node for each task of a batch, without touching etcd.

The controller's scheduling loop feeds it NodeInfos and the tasks waiting for a
node, and writes the returned decisions in one batch. Tasks with the same service
and spec form a group (swarmkit's task groups): the filters run once per group
over the nodes, then each task of the group is placed by:

1. placement preferences (`spread=node.labels.zone`): the candidates are arranged
   in a tree by label value, one level per preference, and each task goes down the
   branch holding the fewest tasks of the service (swarmkit's decision tree);
2. inside a leaf, a heap of nodes keyed by (tasks of this service, for spread)
   then the weighted score of the scorers (`scorers.py`).

A node that takes a task is re-checked before it takes another (ports, replicas
and resources fill up), so a batch never over-commits; its NodeInfo is copied
first, so the caller's records are only replaced when it adopts the result.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dockyard.v1.workloads_pb2 import Task

from .constraints import ConstraintError, node_label, spread_label
from .filters import Filter
from .nodeinfo import Footprint, NodeInfo
from .pipeline import Pipeline
from .scorers import ScoreBoard, Strategy, Weighted, strategy_scorers

__all__ = ["Scheduler", "SchedulingResult", "group_tasks"]

_Entry = tuple[int, float, int, str]  # (tier, -score, candidate index, node id)


@dataclass(slots=True)
class SchedulingResult:
    """The decisions for one batch.

    `assignments` maps task id to node id; `pending` maps task id to the reason it
    could not be placed ("no suitable node: ..."); `nodes` holds every NodeInfo by
    node id, with the assigned tasks accounted (changed ones are copies).
    """

    assignments: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)


def group_tasks(tasks: Iterable[Task]) -> list[list[Task]]:
    """Tasks with the same service and spec, in order of first appearance.

    A task id seen twice is placed once.
    """
    groups: dict[tuple[str, bytes], list[Task]] = {}
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            continue
        seen.add(task.id)
        key = (task.service_id, task.spec.SerializeToString(deterministic=True))
        groups.setdefault(key, []).append(task)
    return list(groups.values())


class _Branch:
    """One node of the preference tree: a label value's tasks and what lies below."""

    __slots__ = ("children", "heap", "tasks")

    def __init__(self) -> None:
        self.tasks = 0
        self.children: dict[str, _Branch] | None = None
        self.heap: list[_Entry] = []


class Scheduler:
    """Places batches of tasks on nodes.

    Args:
        strategy: "spread" (default: balance each service over the nodes, then the
            emptiest node) or "binpack" (the fullest node that still fits).
        weights: scorer weight magnitudes by name ("reserved", "task_count",
            "image"), overriding the defaults.
        filters: makes the filter list for a batch; the default is swarmkit's set.
    """

    def __init__(
        self,
        strategy: Strategy = "spread",
        *,
        weights: Mapping[str, float] | None = None,
        filters: Callable[[], Sequence[Filter]] | None = None,
    ) -> None:
        self.strategy: Strategy = strategy
        self._scorers: list[Weighted] = strategy_scorers(strategy, weights)
        self._make_filters = filters

    def schedule(self, nodes: Iterable[NodeInfo], tasks: Sequence[Task]) -> SchedulingResult:
        """Decide a node for each task, or the reason it stays pending."""
        run = _Run(self, {info.id: info for info in nodes})
        for group in group_tasks(tasks):
            run.place_group(group)
        return run.result

    def _pipeline(self) -> Pipeline:
        return Pipeline(self._make_filters() if self._make_filters is not None else None)


class _Run:
    """The state of one `schedule` call, and of the group being placed."""

    def __init__(self, scheduler: Scheduler, infos: dict[str, NodeInfo]) -> None:
        self._spread = scheduler.strategy == "spread"
        self._scorers = scheduler._scorers
        self._pipeline = scheduler._pipeline()
        self._infos = infos
        self._copied: set[str] = set()  # NodeInfos copied in this run (ours to change)
        self.result = SchedulingResult(nodes=infos)
        # The group being placed:
        self._service = ""
        self._board: ScoreBoard | None = None
        self._used: set[str] = set()  # nodes that took a task of it: re-check them
        self._footprint: Footprint | None = None  # what each of its tasks takes

    def place_group(self, group: list[Task]) -> None:
        """Place every task of one group (same service, same spec)."""
        first = group[0]
        pipeline = self._pipeline
        try:
            pipeline.set_task(first)
            labels = [spread_label(p) for p in first.spec.placement.preferences]
        except ConstraintError as error:
            self._pend(group, f"invalid placement: {error}")
            return
        candidates = pipeline.passing(self._infos.values())
        if not candidates:
            self._pend(group, pipeline.explain())
            return
        self._service = first.service_id
        self._board = ScoreBoard(self._scorers, first, candidates)
        self._used = set()
        self._footprint = Footprint.of(first)  # one spec: the same for every task
        root = self._tree(labels, candidates)
        for index, task in enumerate(group):
            if not self._place(root, task):
                pipeline.reset_counts()
                pipeline.passing(self._infos.values())
                self._pend(group[index:], pipeline.explain())
                return

    def _tree(self, labels: list[str], candidates: list[NodeInfo]) -> _Branch:
        """Arrange the candidates by preference label values (a node without the
        label goes under ""), with the service's task counts on every branch,
        counted over all nodes as swarmkit does."""
        root = _Branch()
        assert self._board is not None
        initial, spread = self._board.initial, self._spread
        tier = functools.partial(NodeInfo.tasks_of, service_id=self._service)
        for index, info in enumerate(candidates):
            branch = root
            for label in labels:
                if branch.children is None:
                    branch.children = {}
                value = node_label(info.node, label) or ""
                branch = branch.children.setdefault(value, _Branch())
            branch.heap.append((tier(info) if spread else 0, -initial[index], index, info.id))
        for info in self._infos.values() if labels else ():
            count = info.tasks_of(self._service)
            branch = root
            for label in labels if count else ():
                found = (branch.children or {}).get(node_label(info.node, label) or "")
                if found is None:
                    break
                found.tasks += count
                branch = found
        _heapify(root)
        return root

    def _entry(self, info: NodeInfo, index: int) -> _Entry:
        assert self._board is not None
        tier = info.tasks_of(self._service) if self._spread else 0
        return (tier, -self._board.score(info), index, info.id)

    def _place(self, branch: _Branch, task: Task) -> bool:
        """Place `task` under `branch`, down the branches with the fewest tasks of the
        service; a branch whose nodes are all full is dropped for this group."""
        if branch.children is None:
            placed = self._place_in_leaf(branch.heap, task)
        else:
            placed = False
            children = branch.children
            while children and not placed:
                value = min(children, key=lambda v: (children[v].tasks, v))
                placed = self._place(children[value], task)
                if not placed:
                    del children[value]
        if placed:
            branch.tasks += 1
        return placed

    def _place_in_leaf(self, heap: list[_Entry], task: Task) -> bool:
        while heap:
            _, _, index, node_id = heapq.heappop(heap)
            if node_id in self._used and not self._pipeline.process(self._infos[node_id]):
                continue  # full for this group: its usage only grows during the batch
            info = self._writable(node_id)
            info.add_task(task, self._footprint)
            self._used.add(node_id)
            heapq.heappush(heap, self._entry(info, index))
            self.result.assignments[task.id] = node_id
            return True
        return False

    def _writable(self, node_id: str) -> NodeInfo:
        """The run's own copy of a NodeInfo, made the first time it changes."""
        if node_id not in self._copied:
            self._infos[node_id] = self._infos[node_id].copy()
            self._copied.add(node_id)
        return self._infos[node_id]

    def _pend(self, tasks: Iterable[Task], reason: str) -> None:
        for task in tasks:
            self.result.pending[task.id] = reason


def _heapify(branch: _Branch) -> None:
    if branch.children is None:
        heapq.heapify(branch.heap)
        return
    for child in branch.children.values():
        _heapify(child)
