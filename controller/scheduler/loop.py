"""The scheduling loop: PENDING tasks get a node, in batches, or say why not.

The loop keeps one NodeInfo per node, fed by the cluster view's changes, so a
round costs what changed plus the batch, not the whole cluster. Decisions are
written in as few etcd transactions as possible; a task that cannot be placed
keeps PENDING with the pipeline's explanation as its message.

Batches are pipelined: the next batch is decided while up to PIPELINE_DEPTH earlier
ones are still being written and watched back (their placements are in the
NodeInfos already, and their tasks are left out of the next batches until the view
shows them placed), so etcd's round trips overlap instead of adding up.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import structlog

from dockyard.common.quiet_edge import QuietEdge
from dockyard.common.states import TaskState
from dockyard.common.timestamps import now_timestamp
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
# Tasks decided in one batch: a bigger backlog is placed over several batches, so no
# decision holds the event loop for long.
MAX_ROUND_TASKS = 2048
# Batches being written (committed, then watched back) while the next is decided.
PIPELINE_DEPTH = 3


def by_service(tasks: Iterable[Task]) -> list[Task]:
    """The tasks with those of one service side by side, the services in the order they
    first appear. A batch then holds the groups of a few services rather than a share of
    every one: the scheduler's work per group is over every node (filters, scores, the
    preference tree), so a backlog of many services cut into batches in the view's set
    order paid it once per service in every batch."""
    services: dict[str, list[Task]] = {}
    for task in tasks:
        group = services.get(task.service_id)
        if group is None:
            services[task.service_id] = [task]
        else:
            group.append(task)
    if len(services) == 1:
        return next(iter(services.values()))
    return [task for group in services.values() for task in group]


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
        self._in_flight: set[str] = set()  # IDs of tasks in a batch being written
        self._writing = 0  # batches being written
        self._writes = asyncio.Semaphore(PIPELINE_DEPTH)
        self._edge = QuietEdge(DEBOUNCE)
        self._on_round = on_round
        self.placed = 0

    async def run(self) -> None:
        """Schedule until cancelled. A store error is retried here; LeadershipLost
        and anything else end the run (its supervisor restarts it or ends the term)."""
        with self._state.following(task_ids=True) as (changed, tracker):
            try:
                async with asyncio.TaskGroup() as writers:
                    await self._run(changed, tracker, writers)
            except BaseExceptionGroup as failed:  # as a write in the loop itself would
                raise failed.exceptions[0] from None

    async def _run(
        self, changed: asyncio.Event, tracker: ChangeTracker, writers: asyncio.TaskGroup
    ) -> None:
        self._holders.reset()
        self._unwritten.clear()
        self._in_flight.clear()
        self._writing = 0
        self._writes = asyncio.Semaphore(PIPELINE_DEPTH)
        self._infos = {node_id: self._build(node_id) for node_id in self._state.nodes}
        self._edge = QuietEdge(DEBOUNCE)
        while True:
            more = await self._round(changed, tracker, writers)
            if not more:
                await self._edge.wait(changed.wait())
            changed.clear()

    async def _drain(self) -> None:
        """Wait until no batch is being written."""
        for _ in range(PIPELINE_DEPTH):
            await self._writes.acquire()
        for _ in range(PIPELINE_DEPTH):
            self._writes.release()

    def _refresh(self, changes: ChangeTracker) -> None:
        """Patch the infos by the tasks that came to hold or let go of their node's
        resources (a task's status moving on between ASSIGNED and RUNNING does
        neither), take a changed node record into its info, and rebuild the infos of
        the nodes whose placements were not written (the infos had adopted them)."""
        patch_infos(self._infos, self._holders.moves(changes.task_ids or ()), self._state.tasks)
        stale: set[str] = set()
        if not self._writing:  # a rebuild from the view must see every placement
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

    async def _round(
        self, changed: asyncio.Event, tracker: ChangeTracker, writers: asyncio.TaskGroup
    ) -> bool:
        """Take a write slot (at most PIPELINE_DEPTH batches are written at once), take
        the view's changes into the infos, then decide the pending tasks not being
        written MAX_ROUND_TASKS at a time until a batch has writes, which go on in the
        background; True when tasks are left for the next round."""
        if self._unwritten:
            await self._drain()  # their nodes are rebuilt: let every write land first
        await self._writes.acquire()
        self._refresh(tracker.take())
        tasks, in_flight = self._state.tasks, self._in_flight
        pending = by_service(
            tasks[task_id]
            for task_id in self._state.pending_task_ids
            if task_id not in in_flight and tasks[task_id].desired_state <= TaskState.RUNNING
        )
        if pending:
            self._edge.worked()
        for start in range(0, len(pending), MAX_ROUND_TASKS):
            if start:
                await asyncio.sleep(0)
            started = time.perf_counter()
            batch = pending[start : start + MAX_ROUND_TASKS]
            ops, assigning = self._decide(batch)
            if not ops:
                continue
            ids = [task.id for task in batch]
            in_flight.update(ids)
            self._writing += 1
            writers.create_task(self._write(ops, assigning, ids, started, changed))
            return start + MAX_ROUND_TASKS < len(pending)
        self._writes.release()
        return False

    async def _write(
        self,
        ops: list[Op],
        assigning: list[str],
        task_ids: list[str],
        started: float,
        changed: asyncio.Event,
    ) -> None:
        """Write one batch and wait until the view shows it; then its tasks may be
        decided again (a failed write leaves them PENDING) and the loop looks again.
        A store error is logged (its nodes' infos are rebuilt from the view); anything
        else (LeadershipLost) ends the loop."""
        assigned = 0
        try:
            results = await self._store.commit_each(ops)
            self.placed += sum(results)
            for ok, node_id in zip(results, assigning, strict=True):
                if ok and node_id:
                    assigned += 1
                elif node_id:
                    self._unwritten.add(node_id)
            self._on_round(time.perf_counter() - started, assigned)
            await self._state.wait_for_revision(self._store.last_revision)
        except StoreError as exc:
            log.warning("scheduler.store_error", error=str(exc))
            self._unwritten.update(node_id for node_id in assigning if node_id)
            await asyncio.sleep(0.5)
        finally:
            self._in_flight.difference_update(task_ids)
            self._writing -= 1
            self._writes.release()
            changed.set()

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
        """Each task's write (its copy stamped in place: one clock read for the batch)."""
        ops: list[Op] = []
        assigning: list[str] = []
        now = now_timestamp()
        put = self._store.put_op
        for task in pending:
            updated = Task()
            updated.CopyFrom(task)
            if task.id in decisions:
                updated.node_id = decisions[task.id]
                set_status(updated, TaskState.ASSIGNED, "scheduled", now=now)
            elif reasons.get(task.id, task.status.message) != task.status.message:
                updated.status.message = reasons[task.id]
            else:
                continue
            ops.append(put(TASKS, task.id, updated, expect=task.meta.version, owned=True, now=now))
            assigning.append(decisions.get(task.id, ""))
        return ops, assigning
