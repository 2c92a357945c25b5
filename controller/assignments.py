"""Hands each node the tasks it must act on, and takes their status back.

The assigner sends a node its whole set when its session opens: tasks meant to run
there, and tasks it must still stop, with the data of exactly the secrets those tasks
reference (and no other). When some of its tasks change, an agent that takes deltas
gets only those (controller/assignment_delta.py), any other its whole set again.
The status writer batches what agents report into few etcd transactions, and
only accepts a report for a task assigned to the reporting node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

from dockyard.common.quiet_edge import QuietEdge
from dockyard.common.states import TaskState
from dockyard.common.timestamps import now_timestamp
from dockyard.controller.assignment_keys import AssignmentKeys, TaskKey, task_key
from dockyard.controller.at_rest import SealedDataError, SecretCipher, data_record
from dockyard.controller.image_sources import Holders, image_sources
from dockyard.controller.orchestrators.tasks import is_terminal
from dockyard.controller.sessions import Post
from dockyard.controller.state import ChangeTracker, ClusterState
from dockyard.controller.store import (
    CONFIG_DATA,
    REGISTRY_AUTHS,
    SECRET_DATA,
    TASKS,
    Op,
    Store,
    StoreError,
)
from dockyard.v1.dispatcher_pb2 import AssignmentSet, DispatcherMessage, TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Config, RegistryAuth, Secret, Task

log = structlog.get_logger(__name__)

FLUSH_INTERVAL = 0.1
DEBOUNCE = 0.05
"""Seconds the assigner lets changes gather before it looks: a scheduling round is
written in many transactions, and a node touched by several is then rebuilt once."""
BACKLOG_TASKS = 1_000
BACKLOG_GATHER = 0.5
"""While at least BACKLOG_TASKS tasks wait for the scheduler (a scale-up's burst), the
assigner lets changes gather for up to BACKLOG_GATHER seconds, looking again every
DEBOUNCE: a spread batch touches every node, written in transactions that each touch
another hundred or so, and a node then gets one delta for several of them instead of
one each (a message costs the controller, gRPC and the agent about the same whatever it
holds). Once fewer wait, the gathered changes go out at the
next DEBOUNCE: the last batches of a burst are not held back."""


def assigned_to_agent(task: Task) -> bool:
    """Whether the node's agent must know about the task."""
    if task.status.state < TaskState.ASSIGNED:
        return False
    return task.desired_state <= TaskState.RUNNING or not is_terminal(task)


@dataclass
class _Sent:
    """What a node's session was last sent: the set's version, its fingerprint (full
    sets), and the key of each task in it (what a delta is computed against)."""

    version: int
    fingerprint: frozenset[tuple[str, int, int]] | None  # None: deltas were sent since
    keys: dict[str, TaskKey]


class Assigner:
    def __init__(
        self,
        state: ClusterState,
        post: Post,
        store: Store | None = None,
        takes_deltas: Callable[[str], bool] = lambda node_id: False,
        cipher: SecretCipher | None = None,
        connected: Callable[[str], bool] = lambda node_id: True,
    ) -> None:
        """`post` queues a set on a node's outbox (controller/sessions.py); `store` is
        where secrets' data is read (None: no secret is ever sent); `takes_deltas`:
        whether a node's session applies delta sets (its agent said so in its hello);
        `cipher` opens secrets' data encrypted at rest (controller/at_rest.py);
        `connected`: whether a node has a session (none is built a set: its session's
        greeting sends the whole set when it opens)."""
        self._state = state
        self._post = post
        self._store = store
        self._takes_deltas = takes_deltas
        self._connected = connected
        self._cipher = cipher or SecretCipher()
        self._sent: dict[str, _Sent] = {}
        self._versions = itertools.count(1)  # one sequence for every node: never reused
        self._secret_data: dict[str, bytes] = {}  # secrets are immutable: read once
        # service ID -> (the service record's version it was read at, its credentials)
        self._auths: dict[str, tuple[int, RegistryAuth | None]] = {}
        self.deltas_sent = 0
        self.full_sets_sent = 0

    async def _full_message(
        self, node_id: str, sources: dict[str, Holders] | None = None
    ) -> DispatcherMessage:
        """The node's whole set, built in the message that carries it (a set built apart
        would be copied into it whole, every task again). ``sources``: image holders
        found for other nodes in the same round."""
        message = DispatcherMessage()
        message.assignments.full = True
        tasks = [t for t in self._state.tasks_of_node(node_id) if assigned_to_agent(t)]
        await self._set_of(node_id, tasks, sources, message.assignments)
        return message

    async def _set_of(
        self,
        node_id: str,
        tasks: list[Task],
        sources: dict[str, Holders] | None,
        assignments: AssignmentSet,
    ) -> AssignmentSet:
        """``assignments`` (a full set, or a delta's head) with ``tasks`` and what they
        need: the secrets and configs they reference, image sources, credentials."""
        assignments.tasks.extend(tasks)
        wanted: dict[str, str] = {}  # id -> name, each secret once
        configs: dict[str, str] = {}
        for task in tasks:
            container = task.spec.container
            for ref in container.secrets:
                wanted.setdefault(ref.secret_id, ref.secret_name)
            for config_ref in container.configs:
                configs.setdefault(config_ref.config_id, config_ref.config_name)
        secrets = [s for s in [await self._secret(i, n) for i, n in wanted.items()] if s]
        assignments.secrets.extend(secrets)
        assignments.image_sources.extend(image_sources(self._state, node_id, tasks, sources))
        for config_id, name in configs.items():
            config = await self._config(config_id, name)
            if config is not None:
                assignments.configs.append(config)
        for service_id in sorted({t.service_id for t in tasks if _to_start(t)}):
            auth = await self._registry_auth(service_id)
            if auth is not None:
                assignments.registry_auths[service_id].CopyFrom(auth)
        return assignments

    async def _registry_auth(self, service_id: str) -> RegistryAuth | None:
        """The `--with-registry-auth` credentials of a service (None: it has none, or
        they cannot be read now: the node then pulls with its own)."""
        service = self._state.services.get(service_id)
        for stale in [i for i in self._auths if i not in self._state.services]:
            del self._auths[stale]
        if service is None or not service.registry_auth or self._store is None:
            return None
        cached = self._auths.get(service_id)
        if cached is not None and cached[0] == service.meta.version:
            return cached[1]
        try:
            raw = await self._store.get_raw(REGISTRY_AUTHS, service_id)
        except StoreError as exc:
            log.warning(
                "assignments.registry_auth_unreadable", service_id=service_id, error=str(exc)
            )
            return None
        auth = None
        if raw is not None:
            try:
                stored = self._cipher.open(data_record(REGISTRY_AUTHS, service_id), raw[0])
            except SealedDataError as exc:  # the node pulls with its own credentials
                log.error(
                    "assignments.registry_auth_undecryptable",
                    service_id=service_id,
                    error=str(exc),
                )
                return None
            auth = RegistryAuth.FromString(stored)
        self._auths[service_id] = (service.meta.version, auth)
        return auth

    async def _secret(self, secret_id: str, name: str) -> Secret | None:
        """The secret with its data; None (the agent rejects the task) when it is gone."""
        self._drop_stale()
        data = self._secret_data.get(secret_id)
        if data is None and self._store is not None and secret_id in self._state.secrets:
            try:
                raw = await self._store.get_raw(SECRET_DATA, secret_id)
            except StoreError as exc:
                log.warning("assignments.secret_unreadable", secret_id=secret_id, error=str(exc))
                return None
            if raw is not None:
                data = self._open_secret(secret_id, name, raw[0])
                if data is None:
                    return None
                self._secret_data[secret_id] = data
        if data is None:
            log.warning("assignments.secret_missing", secret_id=secret_id, name=name)
            return None
        secret = Secret(id=secret_id, size_bytes=len(data))
        secret.spec.name, secret.spec.data = name, data
        return secret

    def _open_secret(self, secret_id: str, name: str, stored: bytes) -> bytes | None:
        """The data of a secret as stored in etcd, opened; None (the task is rejected:
        the data is not sent) when this controller cannot decrypt it."""
        try:
            return self._cipher.open(data_record(SECRET_DATA, secret_id), stored)
        except SealedDataError as exc:
            log.error(
                "assignments.secret_undecryptable", secret_id=secret_id, name=name, error=str(exc)
            )
            return None

    def _drop_stale(self) -> None:
        state = self._state
        for stale in [i for i in self._secret_data if i not in state.secrets]:
            if stale not in state.configs:
                del self._secret_data[stale]

    async def _config(self, config_id: str, name: str) -> Config | None:
        """A config with its data, read as a secret's is (kept in the same cache: the IDs
        of both are random tokens and never meet)."""
        self._drop_stale()
        data = self._secret_data.get(config_id)
        if data is None and self._store is not None and config_id in self._state.configs:
            try:
                raw = await self._store.get_raw(CONFIG_DATA, config_id)
            except StoreError as exc:
                log.warning("assignments.config_unreadable", config_id=config_id, error=str(exc))
                return None
            if raw is not None:
                data = self._secret_data[config_id] = raw[0]
        if data is None:
            log.warning("assignments.config_missing", config_id=config_id, name=name)
            return None
        config = Config(id=config_id, size_bytes=len(data))
        config.spec.name, config.spec.data = name, data
        return config

    async def send_now(self, node_id: str) -> None:
        """Send the whole set to a node (its session just opened, or its agent asked for
        it: a delta did not follow the set it holds)."""
        message = await self._full_message(node_id)
        message.assignments.version = next(self._versions)
        if self._post(node_id, message):
            self._sent_full(node_id, message.assignments)

    def _sent_full(self, node_id: str, assignments: AssignmentSet) -> None:
        self.full_sets_sent += 1
        keys = {t.id: task_key(t, self._needs_auth) for t in assignments.tasks}
        self._sent[node_id] = _Sent(
            assignments.version,
            _fingerprint(assignments),
            {task_id: key for task_id, key in keys.items() if key is not None},
        )

    async def run(self) -> None:
        with self._state.following(task_ids=True) as (changed, tracker):
            await self._run(changed, tracker)

    def _needs_auth(self, service_id: str) -> bool:
        service = self._state.services.get(service_id)
        return service is not None and bool(service.registry_auth) and self._store is not None

    async def _run(self, changed: asyncio.Event, tracker: ChangeTracker) -> None:
        # Only nodes where what the agent acts on changed are looked at (a task's
        # progress report changes nothing); a node whose agent takes deltas gets the
        # tasks whose key changed since the last set, any other its whole set.
        keys = AssignmentKeys(self._state.tasks, self._needs_auth)
        keys.reset()
        edge = QuietEdge(DEBOUNCE)
        while True:
            await changed.wait()
            await self._gather(edge.quiet(), changed)
            changed.clear()
            if await self.round(keys, tracker.take().task_ids or ()):
                edge.worked()

    async def _gather(self, quiet: bool, changed: asyncio.Event) -> None:
        """Let changes gather: DEBOUNCE, longer while the scheduler has a backlog. A
        change that ended a quiet time goes as soon as no task is left to place, within
        DEBOUNCE (a single create's task, then its placement, goes out at once; a burst's
        first placements, others still pending, and its later changes, within DEBOUNCE
        of the last round with work, gather: common/quiet_edge.py)."""
        waited = 0.0
        if quiet:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEBOUNCE):
                    while self._state.pending_task_ids:
                        changed.clear()  # the caller's tracker keeps what changed
                        await changed.wait()
                    return
            waited = DEBOUNCE
            if len(self._state.pending_task_ids) < BACKLOG_TASKS:
                return
        while True:
            await asyncio.sleep(DEBOUNCE)
            waited += DEBOUNCE
            if waited >= BACKLOG_GATHER or len(self._state.pending_task_ids) < BACKLOG_TASKS:
                return

    async def round(self, keys: AssignmentKeys, task_ids: Iterable[str]) -> bool:
        """Send what changed to the nodes of these tasks (``keys`` kept by the caller);
        whether any node's tasks changed."""
        sources: dict[str, Holders] = {}
        nodes = keys.update(task_ids)
        for node_id in nodes:
            if not self._connected(node_id):
                # Its set is posted nowhere (at a new term, until its agent reconnects:
                # hundreds of nodes, each rebuilt in every round); its greeting sends it.
                self._sent.pop(node_id, None)
                continue
            sent = self._sent.get(node_id)
            if sent is not None and self._takes_deltas(node_id):
                await self._send_delta(node_id, sent, keys.by_node.get(node_id, {}), sources)
            else:
                await self._send_full(node_id, sent, sources)
        return bool(nodes)

    async def _send_full(
        self, node_id: str, sent: _Sent | None, sources: dict[str, Holders]
    ) -> None:
        message = await self._full_message(node_id, sources)
        assignments = message.assignments
        if sent is not None and sent.fingerprint == _fingerprint(assignments):
            return
        if self._sent.get(node_id) is not sent:
            return  # a set went meanwhile (send_now) or the session ended: it is newer
        assignments.version = next(self._versions)
        if self._post(node_id, message):
            self._sent_full(node_id, assignments)

    async def _send_delta(
        self,
        node_id: str,
        sent: _Sent,
        current: Mapping[str, TaskKey],
        sources: dict[str, Holders],
    ) -> None:
        """The tasks whose key changed since ``sent``, and those gone, as a delta on it."""
        keys = dict(sent.keys)
        removed = [task_id for task_id in sent.keys if task_id not in current]
        tasks: list[Task] = []
        for task_id, key in current.items():
            if sent.keys.get(task_id) == key:
                continue
            task = self._state.tasks.get(task_id)  # the view may be ahead of the keys
            fresh = None
            if task is not None and task.node_id == node_id:
                fresh = task_key(task, self._needs_auth)
            if fresh is not None and task is not None:
                tasks.append(task)
                keys[task_id] = fresh
            elif task_id in sent.keys:
                removed.append(task_id)
        if not tasks and not removed:
            return
        for task_id in removed:
            del keys[task_id]
        message = DispatcherMessage()  # the delta built in place: no copy of its tasks
        delta = message.assignments
        delta.full, delta.base_version = False, sent.version
        delta.removed_task_ids.extend(removed)
        await self._set_of(node_id, tasks, sources, delta)
        if self._sent.get(node_id) is not sent:
            return  # a full set went meanwhile (send_now), or the session ended
        delta.version = next(self._versions)
        if self._post(node_id, message):
            self.deltas_sent += 1
            self._sent[node_id] = _Sent(delta.version, None, keys)
        else:
            self._sent.pop(node_id, None)  # its next session starts with a full set

    def forget(self, node_id: str) -> None:
        self._sent.pop(node_id, None)


def _fingerprint(assignments: AssignmentSet) -> frozenset[tuple[str, int, int]]:
    """What the agent acts on: which tasks, what they should be, which spec.
    Status changes (the agent's own reports) do not make a new set."""
    return frozenset(
        [(t.id, t.desired_state, t.spec_version) for t in assignments.tasks]
        + [("secret:" + s.id, 0, 0) for s in assignments.secrets]
        + [("config:" + c.id, 0, 0) for c in assignments.configs]
        + [
            (
                "auth:" + service_id + ":" + hashlib.sha256(auth.SerializeToString()).hexdigest(),
                0,
                0,
            )
            for service_id, auth in assignments.registry_auths.items()
        ]
    )


def _to_start(task: Task) -> bool:
    """The task may still pull its image on its node."""
    return task.status.state < TaskState.RUNNING and task.desired_state <= TaskState.RUNNING


@dataclass
class Rejected:
    task_id: str
    reason: str


class StatusWriter:
    """Collects agents' task reports and writes them in batches.

    At most one report per task waits (the newest: a report is the task's whole status,
    as swarmkit's dispatcher keeps its taskUpdates map), so a node that reports as fast
    as it can costs one waiting report per task it runs and one etcd write per task
    per batch, however many it sends.

    ``on_transition`` is told, per batch, the new state's name and how many tasks a
    write moved to it, and ``on_taken`` how many reports the batch took (the metrics
    count them).
    """

    def __init__(
        self,
        store: Store,
        state: ClusterState,
        on_transition: Callable[[str, int], None] | None = None,
        on_taken: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self._on_transition = on_transition
        self._on_taken = on_taken
        self._counted = 0  # of `accepted`, told to on_taken
        self._pending: dict[str, TaskStatusReport] = {}
        self._wakeup = asyncio.Event()
        self.accepted = 0
        """Reports taken (each for a task of the reporting node)."""
        self.superseded = 0
        """Reports replaced by a newer one of their task before they were written."""

    @property
    def pending(self) -> int:
        """Reports waiting for the next batch (at most one per task)."""
        return len(self._pending)

    def accept(self, node_id: str, report: TaskStatusReport) -> Rejected | None:
        task = self._state.tasks.get(report.task_id)
        if task is None:
            return Rejected(report.task_id, "unknown task")
        if task.node_id != node_id:
            return Rejected(report.task_id, "task is not assigned to this node")
        self.accepted += 1
        if report.task_id in self._pending:
            self.superseded += 1
        self._pending[report.task_id] = report
        self._wakeup.set()
        return None

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(FLUSH_INTERVAL)
            self._wakeup.clear()
            reports, self._pending = self._pending, {}
            if self._on_taken is not None:
                self._on_taken(self.accepted - self._counted)
                self._counted = self.accepted
            try:
                await self._write(reports)
            except StoreError as exc:
                log.warning("taskstatus.write_failed", error=str(exc), tasks=len(reports))
                self._keep(reports)
                await asyncio.sleep(0.5)
            except BaseException:
                self._keep(reports)  # for the restarted run
                raise

    def _keep(self, reports: dict[str, TaskStatusReport]) -> None:
        """Put back reports not written, behind any newer ones taken meanwhile."""
        for task_id, report in reports.items():
            self._pending.setdefault(task_id, report)
        self._wakeup.set()

    async def _write(self, reports: dict[str, TaskStatusReport]) -> None:
        for _ in range(5):
            tasks, ops = self._updated(reports)
            if not tasks:
                return
            before = {t.id: self._state.tasks[t.id].status.state for t in tasks}
            results = await self._store.commit_each(ops)
            self._count_transitions(tasks, results, before)
            await self._state.wait_for_revision(self._store.last_revision)
            reports = {t.id: reports[t.id] for t, ok in zip(tasks, results, strict=True) if not ok}
            if not reports:
                return

    def _updated(self, reports: Mapping[str, TaskStatusReport]) -> tuple[list[Task], list[Op]]:
        """The tasks these reports move on, each copied once with its new status and
        stamped with one time for the batch, and their writes."""
        now = now_timestamp()  # this controller's clock: planners never compare the agent's
        tasks: list[Task] = []
        ops: list[Op] = []
        for task_id, report in reports.items():
            task = self._state.tasks.get(task_id)
            if task is None or not _newer(report, task):
                continue
            updated = Task()
            updated.CopyFrom(task)
            updated.status.CopyFrom(report.status)
            if report.status.state != task.status.state:
                updated.observed_at.CopyFrom(now)
            version = task.meta.version
            ops.append(
                self._store.put_op(TASKS, task_id, updated, expect=version, owned=True, now=now)
            )
            tasks.append(updated)
        return tasks, ops

    def _count_transitions(
        self, tasks: list[Task], written: list[bool], before: Mapping[str, int]
    ) -> None:
        if self._on_transition is None:
            return
        counts: dict[TaskStatus.State.ValueType, int] = {}
        for task, ok in zip(tasks, written, strict=True):
            new = task.status.state
            if ok and new != before[task.id]:
                counts[new] = counts.get(new, 0) + 1
        for new, count in counts.items():  # one call per state, not per task
            self._on_transition(TaskStatus.State.Name(new), count)


def _newer(report: TaskStatusReport, task: Task) -> bool:
    """Agents move tasks forward only; a stale or repeated report is dropped."""
    current = task.status
    if report.status.state < current.state:
        return False
    return report.status != current
