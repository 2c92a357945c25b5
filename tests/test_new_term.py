"""What a new leader term costs when the view is current (`bench_scale.py
--lose-term-after`): at a term's start every agent's session is closed and opens again,
so the new term must not pay for the nodes that have not reconnected yet, and must not
take the reconnections for changes to plan."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.assignment_keys import AssignmentKeys
from dockyard.controller.assignments import Assigner
from dockyard.controller.sessions import AgentSession, SessionRegistry
from dockyard.controller.store import TASKS
from dockyard.v1.dispatcher_pb2 import DispatcherMessage
from dockyard.v1.workloads_pb2 import Task
from tests.test_incremental_views import cluster


def placed(task_id: str, node_id: str) -> Task:
    record = Task(id=task_id, service_id="s1", node_id=node_id)
    record.status.state = TaskState.ASSIGNED
    record.desired_state = TaskState.RUNNING
    return record


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
