"""The orchestration loop: snapshot, then react to changes; debounce; write in batches.

Each round takes the services that changed (their record or one of their
tasks), asks the mode's reconciler for a plan, writes every plan's creates and
updates in as few etcd transactions as possible, and waits until the cluster
view has seen its own writes before the next round.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from dockyard.common.quiet_edge import QuietEdge
from dockyard.common.timestamps import now_timestamp, wall_time
from dockyard.controller.conflicts import PAUSE as CONFLICT_PAUSE
from dockyard.controller.ingress_network import find_ingress
from dockyard.controller.network_addresses import (
    AddressExhausted,
    next_task_address,
    used_addresses,
)
from dockyard.controller.orchestrators.carry import PlanningCarry
from dockyard.controller.orchestrators.global_mode import Eligible, reconcile_global
from dockyard.controller.orchestrators.jobs import reconcile_job
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.reaper import plan_reaping
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.settled import (
    Created,
    created_only,
    node_key,
    own_writes_only,
)
from dockyard.controller.orchestrators.tasks import shut_down
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.controller.state import ChangeTracker, ClusterState
from dockyard.controller.store import SERVICES, TASKS, LeadershipLost, Op, Store, StoreError
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task

log = structlog.get_logger(__name__)

DEBOUNCE = 0.05
# A service whose plan's write conflicted is planned again after CONFLICT_PAUSE
# (controller/conflicts.py's pause), doubled after each conflict in a row, up to:
CONFLICT_PAUSE_MAX = 5.0


class Orchestrator:
    def __init__(
        self,
        store: Store,
        state: ClusterState,
        down_grace: float,
        eligible: Eligible,
        carry: PlanningCarry | None = None,
    ) -> None:
        """`carry`: what the controller's last term left to plan (orchestrators/carry.py);
        None: every run plans every service first."""
        self._store = store
        self._carry = carry
        self._state = state
        self._down_grace = down_grace
        self._eligible = eligible
        self._progress: dict[str, UpdateProgress] = {}
        self._wake_at: dict[str, float] = {}
        self._conflicts: dict[str, int] = {}  # service ID -> its conflicted rounds in a row
        # Services whose last plan only created tasks, all written (controller/
        # orchestrators/settled.py), and what planning last read of each node.
        self._created: dict[str, Created] = {}
        self._node_keys: dict[str, bytes] = {}

    async def run(self) -> None:
        """Reconcile until cancelled. A store error is retried here; LeadershipLost
        and anything else end the run (its supervisor restarts it or ends the term)."""
        carry = self._carry or PlanningCarry(self._state)
        changed = self._state.subscribe()
        try:
            await self._run(changed, carry)
        except Exception as exc:
            if not isinstance(exc, LeadershipLost):
                carry.forget()  # a crash: what was planned is not known
            raise
        finally:
            self._state.unsubscribe(changed)
            carry.taken(set(self._wake_at))  # due re-plans: the next term's
            if self._carry is None:
                carry.close()

    async def _run(self, changed: asyncio.Event, carry: PlanningCarry) -> None:
        tracker, dirty, since = carry.begin()
        # Both updated in place: the next term reads them.
        self._node_keys, self._created = carry.node_keys, carry.created
        if since is not None:
            dirty |= self._unsettled(since)
            if self._nodes_changed(since.nodes):
                dirty |= set(self._state.services)
        edge = QuietEdge(DEBOUNCE)
        while True:
            carry.taken(dirty)
            try:
                conflicted = await self._round(dirty)
            except StoreError as exc:
                log.warning("orchestrator.store_error", error=str(exc))
                await asyncio.sleep(0.5)
            else:
                carry.planned(dirty - conflicted)
            if dirty:
                edge.worked()
            await edge.wait(self._sleep_until_change(changed))
            changed.clear()
            changes = tracker.take()
            dirty = self._unsettled(changes)
            if self._nodes_changed(changes.nodes):
                dirty |= set(self._state.services)
            now = wall_time()
            due = {sid for sid, at in self._wake_at.items() if at <= now}
            dirty |= due

    def _unsettled(self, changes: ChangeTracker) -> set[str]:
        """The changed services but those whose only changes are their last plan's
        own creates (planning them again would plan nothing)."""
        if not self._created:
            return changes.services
        tasks = self._state.tasks
        by_service: dict[str, list[str]] = {}
        for task_id in changes.task_ids or ():
            task = tasks.get(task_id)
            if task is None:  # removed: whose it was is not known any more
                return changes.services
            by_service.setdefault(task.service_id, []).append(task_id)
        dirty = set()
        for service_id in changes.services:
            created = self._created.get(service_id)
            service = self._state.services.get(service_id)
            changed = by_service.get(service_id, ())
            if created is None or not own_writes_only(created, service, changed, tasks):
                dirty.add(service_id)
        return dirty

    def _nodes_changed(self, node_ids: set[str]) -> bool:
        """Whether a node changed in what planning reads (not only its heartbeat)."""
        changed = False
        for node_id in node_ids:
            node = self._state.nodes.get(node_id)
            key = node_key(node) if node is not None else None
            if self._node_keys.get(node_id) != key:
                changed = True
                if key is None:
                    self._node_keys.pop(node_id, None)
                else:
                    self._node_keys[node_id] = key
        return changed

    async def _sleep_until_change(self, changed: asyncio.Event) -> None:
        timeout = None
        if self._wake_at:
            timeout = max(0.0, min(self._wake_at.values()) - wall_time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    async def _round(self, service_ids: set[str]) -> set[str]:
        """Plan these services and write their plans; returns those whose writes
        conflicted (each is planned again by itself, after a pause: `_retry`). A fenced
        write (LeadershipLost) is not a conflict: it ends the round and the term."""
        now = wall_time()
        # (its ID, the service as planned, its plan)
        plans: list[tuple[str, Service | None, Plan]] = []
        for service_id in service_ids:
            await asyncio.sleep(0)  # a round over many services lets the API answer
            self._wake_at.pop(service_id, None)
            self._created.pop(service_id, None)
            plan = self._plan(service_id, now)
            if plan.wake_at is not None:
                self._wake_at[service_id] = plan.wake_at
            plans.append((service_id, self._state.services.get(service_id), plan))
        # Once for the round: the tasks of every plan are committed together, so a
        # service's new tasks must see the addresses another's just took.
        self._addresses([t for _, _, plan in plans for t in plan.creates])
        ops: list[Op] = []
        planned: list[tuple[str, Service | None, Plan, int, int]] = []  # and its ops' range
        for service_id, service, plan in plans:
            start = len(ops)
            ops.extend(self._ops(plan))
            planned.append((service_id, service, plan, start, len(ops)))
        if not ops:
            self._retry(service_ids, set())
            return set()
        results = await self._store.commit_each(ops)
        conflicted: set[str] = set()
        for service_id, service, plan, start, end in planned:
            written = all(results[start:end])
            if not written:
                conflicted.add(service_id)
            created = created_only(service, plan, written)
            if service is not None and created is not None:
                self._created[service.id] = created
        revision = self._store.last_revision
        if conflicted:
            log.info("orchestrator.conflicts", failed=results.count(False), total=len(ops))
            # The winning write may be newer than ours: the next plan must see it.
            revision = max(revision, await self._store.current_revision())
        self._retry(service_ids, conflicted)
        await self._state.wait_for_revision(revision)
        return conflicted

    def _retry(self, service_ids: set[str], conflicted: set[str]) -> None:
        """Have each conflicted service planned again after a pause that doubles with
        each conflict in a row: the winning write may be one the orchestrator does not
        plan for (the scheduler's placement of a task is a status-only change), so no
        change event is sure to bring the service back."""
        if self._conflicts:
            for service_id in service_ids - conflicted:
                self._conflicts.pop(service_id, None)
        now = wall_time()
        for service_id in conflicted:
            count = self._conflicts.get(service_id, 0)
            self._conflicts[service_id] = count + 1
            pause = min(CONFLICT_PAUSE * 2**count, CONFLICT_PAUSE_MAX)
            at = self._wake_at.get(service_id)
            self._wake_at[service_id] = now + pause if at is None else min(at, now + pause)

    def _plan(self, service_id: str, now: float) -> Plan:
        state = self._state
        tasks = state.tasks_of_service(service_id)
        service = state.services.get(service_id)
        if service is None:
            return _orphaned_tasks(tasks)
        progress = self._progress.setdefault(service_id, UpdateProgress())
        mode = service.spec.WhichOneof("mode")
        if mode == "global":
            plan = reconcile_global(
                service, tasks, state.nodes, now, self._down_grace, progress, self._eligible
            )
        elif mode == "job":
            plan = reconcile_job(service, tasks, state.nodes, now, self._down_grace)
        else:
            plan = reconcile_replicated(
                service, tasks, state.nodes, now, self._down_grace, progress
            )
        plan_reaping(tasks, plan)
        return plan

    def _ops(self, plan: Plan) -> list[Op]:
        now = now_timestamp()  # one stamp for the round's writes (a clock read costs)
        put = self._store.put_op
        # A new task is the plan's own (made for this write): stamped in place, not copied.
        ops = [put(TASKS, t.id, t, expect=0, owned=True, now=now) for t in plan.creates]
        ops += [put(TASKS, t.id, t, expect=t.meta.version, now=now) for t in plan.updates]
        ops += [
            self._store.raw_op(TASKS, task_id, None, expect=version)
            for task_id, version in plan.deletes
        ]
        if plan.service is not None:
            ops.append(
                self._store.put_op(
                    SERVICES, plan.service.id, plan.service, expect=plan.service.meta.version
                )
            )
        return ops

    def _addresses(self, creates: list[Task]) -> None:
        """Each new task's address on each of its networks (only the leader creates
        tasks, and its view has every live task's, and ``creates`` is every task of the
        round: no two get one address)."""
        state = self._state
        ingress = find_ingress(state.networks.values())
        meshed = ingress is not None and any(_meshed(t) for t in creates)
        if not meshed and not any(t.spec.networks for t in creates):
            return
        used = used_addresses(
            state.services.values(), state.tasks.values(), state.attachments.values()
        )
        if ingress is not None:  # the nodes' own addresses there
            used.setdefault(ingress.id, set()).update(ingress.node_addresses.values())
        for task in creates:
            del task.networks[:]
            wanted = [a.network_id for a in task.spec.networks]
            if ingress is not None and _meshed(task) and ingress.id not in wanted:
                wanted.append(ingress.id)  # the routing mesh's backends (as Swarm's)
            for network_id in wanted:
                network = state.networks.get(network_id)
                if network is None:
                    continue  # removed meanwhile: the service's next write is refused
                held = used.setdefault(network.id, set())
                try:
                    address = next_task_address(network, held)
                except AddressExhausted as exc:
                    log.warning("orchestrator.no_address", task_id=task.id, error=str(exc))
                    continue
                task.networks.add(network_id=network.id, address=address)


def _meshed(task: Task) -> bool:
    """The task's service publishes a port through the routing mesh."""
    return any(p.publish_mode == "ingress" and p.published_port for p in task.spec.ports)


def _orphaned_tasks(tasks: list[Task]) -> Plan:
    """A removed service's tasks: shut the live ones down, delete the ended ones."""
    plan = Plan()
    for task in tasks:
        if task.desired_state <= TaskStatus.RUNNING:
            plan.update(shut_down(task))
    plan_reaping(tasks, plan, keep=0)
    return plan
