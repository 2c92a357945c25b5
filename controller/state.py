"""The leader's in-memory view of the cluster, fed by etcd watches.

Each control loop reads this view instead of etcd: one list per kind at start,
then one watch per kind from the listed revision (relisting when etcd has
compacted the history). After writing, a loop waits until the view has caught
up with its own write (`wait_for_revision`) before it decides again, so it never
acts twice on a state it has already changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from dockyard.controller.snapshot import ReadSnapshot, SnapshotBoard
from dockyard.controller.store import (
    CONFIGS,
    NETWORK_ATTACHMENTS,
    NETWORKS,
    NODES,
    SECRETS,
    SERVICES,
    TASKS,
    Compacted,
    Kind,
    Store,
    StoreError,
)
from dockyard.v1.networks_pb2 import Network, NetworkAttachmentRecord
from dockyard.v1.types_pb2 import Node, TaskStatus
from dockyard.v1.workloads_pb2 import Config, Secret, Service, Task, UpdateStatus

log = structlog.get_logger(__name__)

# Seconds an API read waits for the view to reach etcd's current revision.
READ_WAIT = 0.05

# A service in these update states watches its tasks' every step (a rolling update).
_UPDATING = (UpdateStatus.UPDATING, UpdateStatus.ROLLBACK_STARTED)
# The kinds whose records mark no service or node for the loops (by name: a Kind is a
# dataclass, and comparing one with a tuple of them costs one __eq__ call each).
_UNMARKED = frozenset(kind.name for kind in (SECRETS, CONFIGS, NETWORKS, NETWORK_ATTACHMENTS))


@dataclass
class ChangeTracker:
    """What changed since a loop last looked: services whose record or tasks
    changed, nodes whose record changed, nodes whose tasks changed."""

    services: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    task_nodes: set[str] = field(default_factory=set)
    status_changes: bool = True
    """False: a task's status moving on between two live states (ASSIGNED to RUNNING,
    say) does not mark its service, unless the service is being updated (the
    orchestrator: nothing it plans depends on those steps but a rolling update's)."""
    task_ids: set[str] | None = None
    """The IDs of the tasks whose change (put or removal) marked their service, for a
    loop that keeps its own per-task structures up to date; None: not collected."""

    def take(self) -> ChangeTracker:
        taken = ChangeTracker(
            self.services, self.nodes, self.task_nodes, self.status_changes, self.task_ids
        )
        self.services, self.nodes, self.task_nodes = set(), set(), set()
        if self.task_ids is not None:
            self.task_ids = set()
        return taken


class ClusterState:
    def __init__(self, store: Store, board: SnapshotBoard | None = None) -> None:
        """`board`: where a snapshot for the read API is published per applied watch
        response (controller/snapshot.py)."""
        self._store = store
        self.board = board or SnapshotBoard()
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, Task] = {}
        self.secrets: dict[str, Secret] = {}  # records only: the data is never listed
        self.networks: dict[str, Network] = {}
        self.configs: dict[str, Config] = {}  # records only, as secrets
        self.attachments: dict[str, NetworkAttachmentRecord] = {}  # standalone containers
        self.tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self.tasks_by_node: dict[str, set[str]] = defaultdict(set)
        self.pending_task_ids: set[str] = set()  # status PENDING: the scheduler's input
        # Kept as records come and go, so the API's summaries cost no scan of every task:
        # tasks meant to run (desired RUNNING) in all, RUNNING, PENDING; and by service,
        # those RUNNING and the jobs' successful completions.
        self.task_counts: Counter[str] = Counter()
        self.running_by_service: Counter[str] = Counter()
        self.succeeded_by_service: Counter[str] = Counter()
        self.revision = 0
        self._trackers: list[ChangeTracker] = []
        self._watch_from = 0
        self._subscribers: list[asyncio.Event] = []
        self._caught_up = asyncio.Condition()

    async def load(self) -> None:
        """List every kind once (the view's starting point); `watch` carries it on
        (the leader runs it among its supervised loops)."""
        await self._relist()

    async def follow(self) -> None:
        """List (once), then watch until cancelled: a controller's view kept across
        terms (a new term carries on from it instead of listing every kind again). A
        failed first list is retried; a restarted `follow` resumes its watch."""
        while not self._watch_from:
            try:
                await self.load()
            except StoreError as exc:
                log.warning("state.load_failed", error=str(exc))
                await asyncio.sleep(0.5)
            else:
                await self._advance(self.revision)  # wakes a term waiting for the list
        await self.watch()

    def subscribe(self) -> asyncio.Event:
        """An event set on every change; the subscriber clears it."""
        event = asyncio.Event()
        self._subscribers.append(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        """Stop setting `event` (a loop that ends, or restarts, lets go of its own)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(event)

    async def wait_for_revision(self, revision: int, timeout: float = 10.0) -> None:
        """Wait until every watched kind has seen `revision` (our own write).

        Raises TimeoutError after `timeout` seconds: the loop that waits crashes
        and its supervisor restarts it (controller/supervision.py).
        """
        try:
            async with asyncio.timeout(timeout), self._caught_up:
                await self._caught_up.wait_for(lambda: self.revision >= revision)
        except TimeoutError:
            raise TimeoutError(
                f"the cluster view did not reach revision {revision} in {timeout:g} s "
                f"(it is at {self.revision})"
            ) from None

    async def settle_for_read(self, current: int, own_write: int) -> None:
        """Before an API read from the view: wait briefly (READ_WAIT) for the view to
        reach etcd's `current` revision, and at most 5 s for it to reach this
        controller's own last write (read-your-writes). A view behind by more than the
        brief wait answers as it is: under load it lags by the loop's backlog, and a
        read that waited for it would be as slow as that backlog."""
        if not await self.caught_up(current, READ_WAIT):
            await self.caught_up(own_write)

    async def caught_up(self, revision: int, timeout: float = 5.0) -> bool:
        """Whether the view reaches `revision` within `timeout` seconds (an API read
        served from the view first waits for the API's own last write)."""
        if self.revision >= revision:
            return True
        try:
            await self.wait_for_revision(revision, timeout)
        except TimeoutError:
            return False
        return True

    def tasks_of_service(self, service_id: str) -> list[Task]:
        return [self.tasks[t] for t in self.tasks_by_service.get(service_id, ()) if t in self.tasks]

    def tasks_of_node(self, node_id: str) -> list[Task]:
        return [self.tasks[t] for t in self.tasks_by_node.get(node_id, ()) if t in self.tasks]

    # -- internals --------------------------------------------------------------

    def _kinds(self) -> list[tuple[Kind[Any], dict[str, Any]]]:
        return [
            (NODES, self.nodes),
            (SERVICES, self.services),
            (TASKS, self.tasks),
            (SECRETS, self.secrets),
            (NETWORKS, self.networks),
            (CONFIGS, self.configs),
            (NETWORK_ATTACHMENTS, self.attachments),
        ]

    async def _relist(self) -> None:
        """Read every kind at one revision, replacing what the view held."""
        revision = 0
        for kind, table in self._kinds():
            records, revision = await self._store.list_all(kind, at_revision=revision)
            for record_id in list(table):
                self._remove(kind, table, record_id)
            for record in records:
                self._put(kind, table, record.id, record)
        self.revision = self._watch_from = revision
        self._publish()

    async def watch(self) -> None:
        """Apply etcd's changes to the view until cancelled, from where it last was
        (so a restarted watch resumes), relisting when etcd compacted that away."""
        kinds = self._kinds()
        by_name = {kind.name: (kind, table) for kind, table in kinds}
        while True:
            try:
                watch = self._store.watch_batches([kind for kind, _ in kinds], self._watch_from)
                async for events, revision in watch:
                    for event in events:
                        kind, table = by_name[event.kind]
                        if event.deleted:
                            self._remove(kind, table, event.id)
                        else:
                            self._put(kind, table, event.id, event.value)
                    # A response holds whole revisions: resume after its last one. The
                    # waiters are woken once per response, not once per record.
                    self._watch_from = revision
                    await self._advance(revision, changed=bool(events))
            except Compacted:
                log.warning("state.relist")
                await self._relist()
                await self._advance(self.revision)
            except StoreError as exc:
                log.warning("state.watch_error", error=str(exc))
                await asyncio.sleep(0.5)

    async def _advance(self, revision: int, changed: bool = True) -> None:
        self.revision = max(self.revision, revision)
        self._publish()
        for event in self._subscribers if changed else ():
            event.set()
        async with self._caught_up:
            self._caught_up.notify_all()

    def _publish(self) -> None:
        self.board.publish(
            ReadSnapshot.of(
                self.revision,
                self.nodes,
                self.services,
                self.running_by_service,
                self.succeeded_by_service,
            )
        )

    def track(self, status_changes: bool = True, task_ids: bool = False) -> ChangeTracker:
        """A tracker of what changes from now on, for one loop (`task_ids`: also the
        IDs of the tasks that changed)."""
        tracker = ChangeTracker(status_changes=status_changes, task_ids=set() if task_ids else None)
        self._trackers.append(tracker)
        return tracker

    def untrack(self, tracker: ChangeTracker) -> None:
        with contextlib.suppress(ValueError):
            self._trackers.remove(tracker)

    @contextlib.contextmanager
    def following(
        self, status_changes: bool = True, task_ids: bool = False
    ) -> Iterator[tuple[asyncio.Event, ChangeTracker]]:
        """A loop's change event and tracker, let go of when the loop ends (or restarts)."""
        changed, tracker = self.subscribe(), self.track(status_changes, task_ids)
        try:
            yield changed, tracker
        finally:
            self.unsubscribe(changed)
            self.untrack(tracker)

    def _mark(self, kind: Kind[Any], record_id: str, value: Any, status_only: bool = False) -> None:
        if kind.name in _UNMARKED:  # no service's or node's
            return
        if kind is TASKS:
            self._mark_task(record_id, value.service_id, value.node_id, status_only)
            return
        for tracker in self._trackers:
            if kind is SERVICES:
                tracker.services.add(record_id)
            else:
                tracker.nodes.add(record_id)

    def _mark_task(self, task_id: str, service_id: str, node_id: str, status_only: bool) -> None:
        for tracker in self._trackers:
            if not status_only or tracker.status_changes:
                tracker.services.add(service_id)
                if tracker.task_ids is not None:
                    tracker.task_ids.add(task_id)
            if node_id:
                tracker.task_nodes.add(node_id)

    def _put(self, kind: Kind[Any], table: dict[str, Any], record_id: str, value: Any) -> None:
        if kind is TASKS:
            self._put_task(record_id, value)
            return
        self._mark(kind, record_id, value)
        table[record_id] = value

    def _put_task(self, task_id: str, task: Task) -> None:
        """A task put: the trackers marked, the indexes and counts moved from the task's
        old record to this one (a status report changes neither its service nor, most
        often, its node: those sets are left as they are)."""
        old = self.tasks.get(task_id)
        service_id, node_id = task.service_id, task.node_id
        self._mark_task(task_id, service_id, node_id, self._status_only(old, task))
        if old is None:
            self.tasks_by_service[service_id].add(task_id)
            if node_id:
                self.tasks_by_node[node_id].add(task_id)
        else:
            self._count(old, -1)
            if old.service_id != service_id:
                self.tasks_by_service[old.service_id].discard(task_id)
                self.tasks_by_service[service_id].add(task_id)
            if old.node_id != node_id:
                if old.node_id:
                    self.tasks_by_node[old.node_id].discard(task_id)
                if node_id:
                    self.tasks_by_node[node_id].add(task_id)
        state = task.status.state
        if state == TaskStatus.PENDING:
            self.pending_task_ids.add(task_id)
        else:
            self.pending_task_ids.discard(task_id)
        self._count(task, 1, state)
        self.tasks[task_id] = task

    def _status_only(self, old: Task | None, new: Task) -> bool:
        """Whether a task's change only moves its status on between two live states,
        its service not being updated."""
        if old is None:
            return False
        if (
            old.desired_state != new.desired_state
            or (old.node_id != new.node_id and old.node_id)  # placed: not a move
            or old.spec_version != new.spec_version
            or old.HasField("observed_at") != new.HasField("observed_at")
            or old.status.state >= TaskStatus.COMPLETE
            or new.status.state >= TaskStatus.COMPLETE
        ):
            return False
        service = self.services.get(new.service_id)
        return service is not None and service.update_status.state not in _UPDATING

    def _remove(self, kind: Kind[Any], table: dict[str, Any], record_id: str) -> None:
        old = table.get(record_id)
        if old is not None:
            self._mark(kind, record_id, old)
        if kind is TASKS:
            self._unindex(record_id)
        table.pop(record_id, None)

    def _count(self, task: Task, sign: int, state: int | None = None) -> None:
        """Count the task in (`sign` 1) or out (-1); `state`: its status's, when read."""
        if state is None:
            state = task.status.state
        if task.desired_state == TaskStatus.RUNNING:
            self.task_counts["wanted"] += sign
            if state == TaskStatus.RUNNING:
                self.task_counts["running"] += sign
                self.running_by_service[task.service_id] += sign
            elif state == TaskStatus.PENDING:
                self.task_counts["pending"] += sign
        if state == TaskStatus.COMPLETE and task.status.exit_code == 0:
            self.succeeded_by_service[task.service_id] += sign

    def _unindex(self, task_id: str) -> None:
        old = self.tasks.get(task_id)
        if old is None:
            return
        self._count(old, -1)
        self.tasks_by_service[old.service_id].discard(task_id)
        self.pending_task_ids.discard(task_id)
        if old.node_id:
            self.tasks_by_node[old.node_id].discard(task_id)
