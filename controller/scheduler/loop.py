"""The scheduling loop: PENDING tasks get a node, in batches, or say why not.

The loop keeps one NodeInfo per node, fed by the cluster view's changes, so a
round costs what changed plus the batch, not the whole cluster. Decisions are
written in as few etcd transactions as possible; a task that cannot be placed
keeps PENDING with the pipeline's explanation as its message.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import structlog

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.tasks import set_status
from dockyard.controller.scheduler.holders import Holders, patch_infos
from dockyard.controller.scheduler.nodeinfo import NodeInfo
from dockyard.controller.scheduler.scheduler import Scheduler
from dockyard.controller.scheduler.scorers import Strategy
from dockyard.controller.state import ChangeTracker, ClusterState
from dockyard.controller.store import TASKS, Op, Store, StoreError
from dockyard.v1.workloads_pb2 import Task

log = structlog.get_logger(__name__)

DEBOUNCE = 0.02
# Tasks decided in one round: a bigger backlog is placed over several rounds, each
# written before the next is decided, so no round holds the event loop for long.
MAX_ROUND_TASKS = 2048


RoundObserver = Callable[[float, int], None]
"""Called after each round that had pending tasks: its seconds, the tasks assigned."""


class SchedulingLoop:
    def __init__(
        self,
        store: Store,
        state: ClusterState,
        strategy: Strategy = "spread",
        on_round: RoundObserver = lambda seconds, assigned: None,
    ) -> None:
        self._store = store
        self._state = state
        self._scheduler = Scheduler(strategy)
        self._infos: dict[str, NodeInfo] = {}
        self._holders = Holders(state.tasks)
        self._unwritten: set[str] = set()  # nodes of placements whose write failed
        self._on_round = on_round
        self.placed = 0

    async def run(self) -> None:
        """Schedule until cancelled. A store error is retried here; LeadershipLost
        and anything else end the run (its supervisor restarts it or ends the term)."""
        with self._state.following(task_ids=True) as (changed, tracker):
            await self._run(changed, tracker)

    async def _run(self, changed: asyncio.Event, tracker: ChangeTracker) -> None:
        self._holders.reset()
        self._unwritten.clear()
        self._infos = {node_id: self._build(node_id) for node_id in self._state.nodes}
        while True:
            more = False
            try:
                more = await self._round()
            except StoreError as exc:
                log.warning("scheduler.store_error", error=str(exc))
                await asyncio.sleep(0.5)
            if not more:
                await changed.wait()
                await asyncio.sleep(DEBOUNCE)
            changed.clear()
            self._refresh(tracker.take())

    def _refresh(self, changes: ChangeTracker) -> None:
        """Patch the infos by the tasks that came to hold or let go of their node's
        resources (a task's status moving on between ASSIGNED and RUNNING does
        neither), take a changed node record into its info, and rebuild the infos of
        the nodes whose placements were not written (the infos had adopted them)."""
        patch_infos(self._infos, self._holders.moves(changes.task_ids or ()), self._state.tasks)
        stale, self._unwritten = self._unwritten, set()
        for node_id in changes.nodes | stale:
            node = self._state.nodes.get(node_id)
            info = self._infos.get(node_id)
            if node is None:
                self._infos.pop(node_id, None)
            elif info is None or node_id in stale:
                self._infos[node_id] = self._build(node_id)
            else:  # only the record changed (a heartbeat, a status): the sums stay
                self._infos[node_id] = info.with_node(node)

    def _build(self, node_id: str) -> NodeInfo:
        return NodeInfo.from_node(self._state.nodes[node_id], self._state.tasks_of_node(node_id))

    async def _round(self) -> bool:
        """Decide and write the pending tasks MAX_ROUND_TASKS at a time, until a batch
        writes something; True when tasks are left for the next round."""
        tasks = self._state.tasks
        pending = [
            tasks[task_id]
            for task_id in self._state.pending_task_ids
            if tasks[task_id].desired_state <= TaskState.RUNNING
        ]
        for start in range(0, len(pending), MAX_ROUND_TASKS):
            if start:
                await asyncio.sleep(0)
            if await self._place(pending[start : start + MAX_ROUND_TASKS]):
                return start + MAX_ROUND_TASKS < len(pending)
        return False

    async def _place(self, pending: list[Task]) -> bool:
        """Decide and write one batch; whether it wrote anything."""
        started = time.perf_counter()
        ops, assigning = self._decide(pending)
        assigned = 0
        if ops:
            results = await self._store.commit_each(ops)
            self.placed += sum(results)
            written = zip(results, assigning, strict=True)
            assigned = sum(ok and bool(node_id) for ok, node_id in written)
            for ok, node_id in zip(results, assigning, strict=True):
                if not ok and node_id:
                    self._unwritten.add(node_id)
        self._on_round(time.perf_counter() - started, assigned)
        if ops:
            await self._state.wait_for_revision(self._store.last_revision)
        return bool(ops)

    def _decide(self, pending: list[Task]) -> tuple[list[Op], list[str]]:
        """The writes for ``pending``, and for each the node it assigns ("": none)."""
        free = [t for t in pending if not t.node_id]
        pinned: dict[str, list[Task]] = defaultdict(list)  # global tasks name their node
        for task in pending:
            if task.node_id:
                pinned[task.node_id].append(task)
        decisions: dict[str, str] = {}
        reasons: dict[str, str] = {}
        result = self._scheduler.schedule(list(self._infos.values()), free)
        decisions.update(result.assignments)
        reasons.update(result.pending)
        self._infos.update(result.nodes)
        for node_id, tasks in pinned.items():
            info = self._infos.get(node_id)
            if info is None:
                reasons.update({t.id: "its node is gone" for t in tasks})
                continue
            one = self._scheduler.schedule([info], tasks)
            decisions.update(one.assignments)
            reasons.update(one.pending)
            self._infos.update(one.nodes)
        return self._ops(pending, decisions, reasons)

    def _ops(
        self, pending: list[Task], decisions: dict[str, str], reasons: dict[str, str]
    ) -> tuple[list[Op], list[str]]:
        ops: list[Op] = []
        assigning: list[str] = []
        for task in pending:
            updated = Task()
            updated.CopyFrom(task)
            if task.id in decisions:
                updated.node_id = decisions[task.id]
                set_status(updated, TaskState.ASSIGNED, "scheduled")
            elif reasons.get(task.id, task.status.message) != task.status.message:
                updated.status.message = reasons[task.id]
            else:
                continue
            ops.append(self._store.put_op(TASKS, task.id, updated, expect=task.meta.version))
            assigning.append(decisions.get(task.id, ""))
        return ops, assigning
