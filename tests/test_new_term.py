"""What a new leader term costs when the view is current (`bench_scale.py
--lose-term-after`): at a term's start every agent's session is closed and opens again,
so the new term must not take the reconnections for changes to plan, and plans only
what the last term left and what changed since."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.assignment_keys import AssignmentKeys
from dockyard.controller.assignments import Assigner
from dockyard.controller.orchestrators.carry import PlanningCarry
from dockyard.controller.orchestrators.loop import Orchestrator
from dockyard.controller.sessions import AgentSession, SessionRegistry
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NODES, SERVICES, TASKS, LeadershipLost, Store
from dockyard.v1.dispatcher_pb2 import DispatcherMessage
from dockyard.v1.workloads_pb2 import Service, Task, UpdateStatus
from tests.orchestrators.helpers import is_live, node, service
from tests.polling import wait_until
from tests.test_incremental_views import cluster
from tests.views import watched_view


def placed(task_id: str, node_id: str) -> Task:
    record = Task(id=task_id, service_id="s1", node_id=node_id)
    record.status.state = TaskState.ASSIGNED
    record.desired_state = TaskState.RUNNING
    return record


def services_view(*service_ids: str) -> ClusterState:
    state = ClusterState(store=None)  # type: ignore[arg-type]  # nothing here reads etcd
    for service_id in service_ids:
        state._put(SERVICES, state.services, service_id, Service(id=service_id))
    state._put(NODES, state.nodes, "n1", node("n1"))
    return state


def test_a_term_plans_what_the_last_left_and_what_changed_since() -> None:
    state = services_view("s1", "s2", "s3")
    carry = PlanningCarry(state)
    _, dirty, since = carry.begin()  # the controller's first term: every service
    assert dirty == {"s1", "s2", "s3"} and since is None
    carry.taken(dirty)
    carry.planned(dirty)
    _, dirty, since = carry.begin()  # planned, stored, nothing moved: nothing
    assert dirty == set() and since is not None and not since.services
    carry.taken({"s1", "s2"})  # a round the term did not finish (its writes failed)
    carry.planned({"s2"})
    state._put_task("t1", placed("t1", "n1"))  # s1's task, in the vacancy
    moved = Task(id="t3", service_id="s3")
    state._put_task("t3", moved)
    _, dirty, since = carry.begin()
    assert dirty == {"s1"}
    assert since is not None and since.services == {"s1", "s3"}
    carry.planned({"s1", "s3"})
    updating = Service(id="s2")
    updating.update_status.state = UpdateStatus.UPDATING
    state._put(SERVICES, state.services, "s2", updating)
    assert carry.begin()[1] == {"s2"}  # being updated: its progress was the last term's
    carry.forget()  # the orchestrator crashed: what was planned is not known
    assert carry.begin()[1] == {"s1", "s2", "s3"}


class Planned:
    """An orchestrator's rounds: the services each took to plan."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.rounds: list[set[str]] = []
        round_ = orchestrator._round

        async def recorded(service_ids: set[str]) -> set[str]:
            self.rounds.append(set(service_ids))
            return await round_(service_ids)

        orchestrator._round = recorded  # type: ignore[method-assign]


async def live_tasks(store: Store, service_id: str) -> int:
    tasks, _ = await store.list_all(TASKS)
    return sum(t.service_id == service_id and is_live(t) for t in tasks)


async def test_a_new_term_plans_only_the_service_whose_tasks_changed_in_the_vacancy(
    etcd: EtcdServer,
) -> None:
    """Real etcd and view: a term plans both services, ends; in the vacancy one task of
    s2 goes; the next term's orchestrator (same controller, same carry) plans s2 first,
    alone, and refills it; s1, settled and unchanged, is not planned again."""
    store = Store([etcd.endpoint], "/newterm")
    await store.connect(5)
    try:
        await store.create(NODES, "n1", node("n1"))
        for service_id in ("s1", "s2"):
            svc = service(replicas=2)
            svc.id, svc.meta.version = service_id, 0
            await store.create(SERVICES, service_id, svc)
        async with watched_view(store) as view:
            carry = PlanningCarry(view)
            first = Orchestrator(store, view, 10.0, lambda s, n: True, carry)
            term = asyncio.create_task(first.run())
            for service_id in ("s1", "s2"):
                await wait_until_async(lambda s=service_id: live_tasks(store, s), 2)
            await wait_until(lambda: idle(carry), "both planned and stored, all changes taken")
            term.cancel()
            await asyncio.gather(term, return_exceptions=True)
            gone = next(t for t in view.tasks.values() if t.service_id == "s2")
            await store.delete(TASKS, gone.id)
            await view.wait_for_revision(await store.current_revision())
            second = Orchestrator(store, view, 10.0, lambda s, n: True, carry)
            planned = Planned(second)
            term = asyncio.create_task(second.run())
            try:
                await wait_until_async(lambda: live_tasks(store, "s2"), 2)
            finally:
                term.cancel()
                await asyncio.gather(term, return_exceptions=True)
            assert planned.rounds[0] == {"s2"}
            assert not any("s1" in r for r in planned.rounds)
    finally:
        await store.close()


def idle(carry: PlanningCarry) -> bool:
    return carry.unplanned == set() and carry.tracker is not None and not carry.tracker.services


async def wait_until_async(count: Callable[[], Awaitable[int]], wanted: int) -> None:
    for _ in range(400):
        if await count() == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted}: {await count()}")


@pytest.mark.parametrize(
    ("error", "left"),
    [(LeadershipLost("the key is gone"), {"s1", "s2"}), (RuntimeError("a bug"), None)],
)
async def test_a_round_cut_short_is_the_next_terms(error: Exception, left: set[str] | None) -> None:
    """A term that ends inside a round (its writes fenced) leaves the round's services to
    the next term; an orchestrator that crashed leaves nothing known (all planned)."""
    state = services_view("s1", "s2")
    carry = PlanningCarry(state)
    orchestrator = Orchestrator(None, state, 10.0, lambda s, n: True, carry)  # type: ignore[arg-type]

    async def cut_short(service_ids: set[str]) -> set[str]:
        raise error

    orchestrator._round = cut_short  # type: ignore[method-assign]
    with pytest.raises(type(error)):
        await orchestrator.run()
    assert carry.unplanned == left


def sessions_after_a_term() -> SessionRegistry:
    """n1 reconnected to the new term, n2's session was closed by the last term's end
    (its stream not ended yet), n3 has none."""
    sessions = SessionRegistry()
    for node_id in ("n1", "n2"):
        sessions.open(AgentSession(f"session-{node_id}", node_id, "ipv4:127.0.0.1:1"))
    sessions.close("n2")
    return sessions


def test_a_closed_session_takes_no_messages() -> None:
    sessions = sessions_after_a_term()
    assert [sessions.is_open(n) for n in ("n1", "n2", "n3")] == [True, False, False]
    assert sessions.open_node_ids() == ["n1"]
    assert sorted(sessions.node_ids()) == ["n1", "n2"]  # still there until its stream ends


async def test_no_set_is_built_for_a_node_without_a_session() -> None:
    """Tasks placed on a node whose agent has not reconnected yet (its session closed
    with the last term) build no set in each round: its session's greeting sends the
    whole set once it opens. A connected node gets its set."""
    state = cluster()
    sessions = sessions_after_a_term()
    posted: list[str] = []

    def post(node_id: str, message: DispatcherMessage) -> bool:
        posted.append(node_id)
        return sessions.post(node_id, message)

    assigner = Assigner(state, post, connected=sessions.is_open)
    keys = AssignmentKeys(state.tasks, lambda service_id: False)
    keys.reset()
    built: list[str] = []
    full_message = assigner._full_message

    async def counted(node_id: str, *args: object) -> DispatcherMessage:
        built.append(node_id)
        return await full_message(node_id, *args)  # type: ignore[arg-type]

    assigner._full_message = counted  # type: ignore[method-assign]
    for round_ in range(3):
        ids = [f"t{round_}{n}" for n in (1, 2, 3)]
        for task_id, node_id in zip(ids, ("n1", "n2", "n3"), strict=True):
            state._put(TASKS, state.tasks, task_id, placed(task_id, node_id))
        await assigner.round(keys, ids)
    assert set(built) == set(posted) == {"n1"}
    assert assigner.full_sets_sent == 3  # this assigner sends n1 no deltas
