"""The invariant checker that runs beside every chaos scenario.

It follows the store from its own etcd client (a watch on tasks, services, nodes and the
leader key, listed again after any etcd error) and keeps, as events arrive:

- live tasks per slot: a task is live while its desired state is at most RUNNING and its
  status is not terminal; a replicated slot is (service, slot), a global one (service,
  node). Above one live task per slot is an extra replica; the checker keeps the most
  extra replicas at once and how long extras lasted, and a violation whenever one
  stretch of extras outlasts the scenario's documented window (0 s unless a scenario
  says otherwise);
- records lost: every service and node seen at the start must still be there at the
  end, and every task live at the start must still exist (ended or not);
- the time each change was seen, so a scenario can ask when a condition first held;
- every task change seen in etcd also on a controller's `/v1/events` stream (resumed
  from its last id on the next controller when one stops answering).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockyard.controller.store import LEADER, NODES, SERVICES, TASKS, Store, StoreError
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Task
from tests.chaos.events import EventFollower
from tests.conftest import LoopThread

State = TaskStatus.State
TERMINAL = {State.COMPLETE, State.SHUTDOWN, State.FAILED, State.REJECTED, State.ORPHANED}


def live(task: Task) -> bool:
    return task.desired_state <= State.RUNNING and task.status.state not in TERMINAL


def slot_key(task: Task) -> tuple[str, str]:
    return (task.service_id, str(task.slot) if task.slot else f"node:{task.node_id}")


@dataclass
class View:
    """The store as the checker last saw it."""

    tasks: dict[str, Task] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    leader: str = ""  # the leader record's controller_id ("" none)
    leader_revision: int = 0  # mod_revision of the leader key's last put

    def running(self, service_id: str, exclude_node: str = "") -> list[Task]:
        return [
            t
            for t in self.tasks.values()
            if t.service_id == service_id
            and live(t)
            and t.status.state == State.RUNNING
            and t.node_id != exclude_node
        ]

    def live_per_slot(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for task in self.tasks.values():
            if live(task):
                counts[slot_key(task)] = counts.get(slot_key(task), 0) + 1
        return counts


@dataclass
class Summary:
    max_extra: int
    extra_window: float  # the longest stretch with any extra replica, seconds
    violations: list[str]
    task_changes: int = 0  # task changes compared with /v1/events


class InvariantChecker:
    """Start with `start()` once the cluster has its services; `finish()` at the end."""

    def __init__(
        self, endpoints: list[str], window: float = 0.0, http_addresses: list[str] | None = None
    ) -> None:
        self.endpoints = endpoints
        self.http_addresses = http_addresses or []
        self.events: EventFollower | None = None
        self.task_changes: set[tuple[int, str]] = set()  # (revision, task id) from the watch
        self.start_revision = 0
        self.window = window
        self.view = View()
        self.violations: list[str] = []
        self.max_extra = 0
        self.longest_extra = 0.0
        self._extra_since: float | None = None
        self._changed = threading.Condition()
        self._baseline: View | None = None
        self._runner = LoopThread()
        self._task: concurrent.futures.Future[None] | None = None
        self._store: Store | None = None
        self._recount_due = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._task = asyncio.run_coroutine_threadsafe(self._follow(ready), self._runner.loop)
        if not ready.wait(30):
            raise AssertionError("the invariant checker could not list the store")
        self.mark_baseline()
        if self.http_addresses:
            self.events = EventFollower(self.http_addresses, self.start_revision)
            self.events.start()

    def mark_baseline(self) -> None:
        """The records that must all be there at the end: the store as it is now."""
        with self._changed:
            self._baseline = _copy(self.view)

    def finish(self) -> Summary:
        """Stop following; check that no record was lost; the scenario's figures."""
        self._close_extra(time.monotonic())
        baseline = self._baseline
        with self._changed:
            now = _copy(self.view)
        if baseline is not None:
            self._check_lost(baseline, now)
        self._check_events()
        self.close()
        return Summary(
            self.max_extra, self.longest_extra, list(self.violations), len(self.task_changes)
        )

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
            if self._store is not None:
                with contextlib.suppress(Exception):
                    self._runner.run(self._store.close())
            self._runner.close()

    # -- queries from the test -------------------------------------------------

    def wait_for(self, predicate: Callable[[View], bool], what: str, timeout: float) -> float:
        """Block until predicate(view) holds; return the monotonic time it first held."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.view):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self._changed.wait(min(left, 0.2))
            return time.monotonic()

    def snapshot(self) -> View:
        with self._changed:
            return _copy(self.view)

    def baseline(self) -> View:
        """The store when the checker started."""
        assert self._baseline is not None
        return self._baseline

    def relist(self) -> None:
        """List every followed record again (each must still decode)."""
        self._runner.run(self._list())

    def current_revision(self) -> int:
        assert self._store is not None
        store = self._store

        async def revision() -> int:
            reply = await store._client.kv.get(b"/", timeout=5)  # type: ignore[union-attr]
            return int(reply.header.revision)

        return self._runner.run(revision())

    def writes_between(self, after: int, upto: int) -> list[tuple[int, str]]:
        """(revision, key) of every etcd write in (after, upto], from etcd's history."""
        assert self._store is not None
        store = self._store

        async def collect() -> list[tuple[int, str]]:
            found: list[tuple[int, str]] = []
            if upto <= after:
                return found
            watch = store._client.watch
            assert watch is not None
            stream = watch.watch(b"\0", b"\0", start_revision=after + 1)
            try:
                async with asyncio.timeout(10):
                    async for response in stream:
                        for event in response.events:
                            if event.kv.mod_revision <= upto:
                                found.append(
                                    (int(event.kv.mod_revision), bytes(event.kv.key).decode())
                                )
                        if response.events and response.events[-1].kv.mod_revision >= upto:
                            return found
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            return found

        return self._runner.run(collect())

    # -- following the store ---------------------------------------------------

    async def _follow(self, ready: threading.Event) -> None:
        self._store = Store(self.endpoints)
        await self._store.connect(30)
        while True:
            try:
                revision = await self._list()
                ready.set()
                async for event in self._store.watch_kinds(
                    [TASKS, SERVICES, NODES, LEADER], revision
                ):
                    self._apply(event)
            except StoreError:
                await asyncio.sleep(0.2)

    async def _list(self) -> int:
        assert self._store is not None
        tasks, revision = await self._store.list_all(TASKS)
        services, _ = await self._store.list_all(SERVICES, revision)
        nodes, _ = await self._store.list_all(NODES, revision)
        leaders, _ = await self._store.list_all(LEADER, revision)
        with self._changed:
            self.start_revision = self.start_revision or revision
            self.view.tasks = {t.id: t for t in tasks}
            self.view.services = {s.id: s for s in services}
            self.view.nodes = {n.id: n for n in nodes}
            self.view.leader = leaders[0].controller_id if leaders else ""
            self._count_extra()
            self._changed.notify_all()
        return revision

    def _apply(self, event: Any) -> None:
        with self._changed:
            if event.kind == LEADER.name:
                self.view.leader = "" if event.deleted else event.value.controller_id
                if not event.deleted:
                    self.view.leader_revision = event.revision
            else:
                records = {
                    TASKS.name: self.view.tasks,
                    SERVICES.name: self.view.services,
                    NODES.name: self.view.nodes,
                }[event.kind]
                if event.kind == TASKS.name:
                    self.task_changes.add((event.revision, event.id))
                if event.deleted:
                    records.pop(event.id, None)
                else:
                    records[event.id] = event.value
            if event.kind == TASKS.name and not self._recount_due:
                # One transaction's events arrive one by one: count once all of the
                # watch response (whole revisions) is applied.
                self._recount_due = True
                asyncio.get_running_loop().call_soon(self._recount)
            self._changed.notify_all()

    def _recount(self) -> None:
        with self._changed:
            self._recount_due = False
            self._count_extra()

    def _count_extra(self) -> None:
        now = time.monotonic()
        extra = sum(count - 1 for count in self.view.live_per_slot().values() if count > 1)
        self.max_extra = max(self.max_extra, extra)
        if extra and self._extra_since is None:
            self._extra_since = now
        elif not extra:
            self._close_extra(now)

    def _close_extra(self, now: float) -> None:
        if self._extra_since is not None:
            stretch = now - self._extra_since
            self.longest_extra = max(self.longest_extra, stretch)
            if stretch > self.window:
                self.violations.append(
                    f"extra live tasks lasted {stretch:.2f} s (window {self.window:g} s)"
                )
            self._extra_since = None

    def _check_events(self, timeout: float = 15) -> None:
        """Every task change the checker saw in etcd was on some controller's /v1/events."""
        if self.events is None:
            return
        with self._changed:
            changes = set(self.task_changes)
        deadline = time.monotonic() + timeout
        missing = changes
        while time.monotonic() < deadline:
            missing = changes - self.events.seen()[1]
            if not missing:
                return
            time.sleep(0.2)
        self.violations.append(
            f"{len(missing)} of {len(changes)} task changes never on /v1/events, "
            f"e.g. {sorted(missing)[:3]}"
        )

    def _check_lost(self, before: View, after: View) -> None:
        for kind, old, new in (
            ("service", before.services, after.services),
            ("node", before.nodes, after.nodes),
        ):
            for record_id in old.keys() - new.keys():
                self.violations.append(f"{kind} {record_id} lost")
        for task_id, task in before.tasks.items():
            if live(task) and task_id not in after.tasks:
                self.violations.append(f"task {task_id} (slot {slot_key(task)}) lost")


def _copy(view: View) -> View:
    return View(
        dict(view.tasks), dict(view.services), dict(view.nodes), view.leader, view.leader_revision
    )
