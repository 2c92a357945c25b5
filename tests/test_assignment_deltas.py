"""Delta assignment sets, end to end without a network: the assigner's sets go through
each node's real outbox (which folds a delta into a set still waiting) to the agent's
real session logic (which applies a delta only on top of the set it follows, and asks
for a full set otherwise).

Over random task changes, random deliveries and random lost messages: every set the
agent holds is exactly one the controller meant at some moment (never a mixture that
lacks a task), and once everything is delivered (after a new session for a node that
lost a message with none after it, as a broken stream gives) it is the node's current set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hypothesis import example, given
from hypothesis import strategies as st

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.common.states import TaskState
from dockyard.controller.assignment_keys import AssignmentKeys
from dockyard.controller.assignments import Assigner, assigned_to_agent
from dockyard.controller.outbox import Outbox
from dockyard.controller.state import ClusterState
from dockyard.controller.store import TASKS
from dockyard.v1.dispatcher_pb2 import AgentMessage, AssignmentSet, DispatcherMessage
from dockyard.v1.types_pb2 import NodeDescription
from tests.test_incremental_views import (
    SETTINGS,
    cluster,
    moved_on,
    put_event,
    remove_event,
    step_event,
    task,
)

NODES = ("n1", "n2", "n3")
Held = dict[str, tuple[int, int]]  # task ID -> (desired state, spec version)

deliveries = st.tuples(st.sampled_from(["deliver", "lose"]), st.sampled_from(NODES))
change = st.one_of(put_event, remove_event, step_event, st.just(("look",)))
script = st.lists(st.one_of(change, deliveries), max_size=60)


def meant(state: ClusterState, node_id: str) -> Held:
    """What the controller means the node to hold now."""
    tasks = state.tasks_of_node(node_id)
    return {t.id: (t.desired_state, t.spec_version) for t in tasks if assigned_to_agent(t)}


class Agent:
    """One node's agent: its session's logic over a model of the worker's tasks."""

    def __init__(self, node_id: str) -> None:
        self.session = ControllerSession(
            ["127.0.0.1:1"], NodeIdentity(node_id, node_id), NodeDescription
        )
        self.requests: asyncio.Queue[AgentMessage] = asyncio.Queue()
        self.session._outbox = self.requests
        self.held: Held = {}
        self.versions: list[int] = []

    async def apply(self, assignments: AssignmentSet) -> None:
        if assignments.full:
            self.held = {}
        for task_id in assignments.removed_task_ids:
            self.held.pop(task_id, None)
        for record in assignments.tasks:
            self.held[record.id] = (record.desired_state, record.spec_version)
        self.versions.append(assignments.version)

    async def take(self, assignments: AssignmentSet) -> None:
        await self.session._take(assignments, self.apply)

    def asked_for_full_set(self) -> bool:
        asked = False
        while not self.requests.empty():
            asked |= self.requests.get_nowait().HasField("resync_assignments")
        return asked


class Cluster:
    def __init__(self) -> None:
        self.state = cluster()
        self.outboxes = {node_id: Outbox() for node_id in NODES}
        self.agents = {node_id: Agent(node_id) for node_id in NODES}
        self.assigner = Assigner(self.state, self.post, takes_deltas=lambda node_id: True)
        self.meant: dict[int, Held] = {}  # version -> what that set meant the node to hold
        self.lost: set[str] = set()  # nodes a message to which was lost
        self.tracker = self.state.track(task_ids=True)
        self.keys = AssignmentKeys(self.state.tasks, lambda service_id: False)
        self.keys.reset()

    def post(self, node_id: str, message: DispatcherMessage) -> bool:
        self.meant[message.assignments.version] = meant(self.state, node_id)
        self.outboxes[node_id].put(message)
        return True

    async def deliver(self, node_id: str, lose: bool = False) -> None:
        outbox = self.outboxes[node_id]
        if not len(outbox):
            return
        message = await outbox.get()
        assert message is not None
        agent = self.agents[node_id]
        if lose:
            self.lost.add(node_id)
        else:
            await agent.take(message.assignments)
            if agent.versions and agent.versions[-1] == message.assignments.version:
                assert agent.held == self.meant[agent.versions[-1]], "a set never meant"
        if agent.asked_for_full_set():
            await self.assigner.send_now(node_id)

    async def reconnect(self, node_id: str) -> None:
        """A new session (what a lost message means on a real stream: the stream broke)."""
        session = self.agents[node_id].session
        session._held_version, session._resync_asked = 0, False
        self.outboxes[node_id] = Outbox()
        self.assigner.forget(node_id)
        await self.assigner.send_now(node_id)

    async def look(self) -> None:
        await self.assigner.round(self.keys, self.tracker.take().task_ids or ())


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coroutine())  # type: ignore[arg-type]


@SETTINGS
@given(steps=script)
@example(  # a delta lost on the way: the next one does not follow, a full set comes
    steps=[
        ("put", "t0", "s1", "n1", TaskState.RUNNING, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("lose", "n1"),
        ("put", "t1", "s1", "n1", TaskState.RUNNING, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("deliver", "n1"),
    ]
)
@example(  # two deltas wait in the outbox behind the session's full set: folded into it
    steps=[
        ("deliver", "n1"),
        ("put", "t0", "s1", "n1", TaskState.RUNNING, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("put", "t1", "s1", "n1", TaskState.RUNNING, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("put", "t0", "s1", "n1", TaskState.RUNNING, TaskState.SHUTDOWN, "", False, 1),
        ("look",),
        ("deliver", "n1"),
    ]
)
@example(  # the last message lost, nothing after it: the agent waits for a new session
    steps=[
        ("put", "t0", "s1", "n1", TaskState.ASSIGNED, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("lose", "n1"),
    ]
)
def test_the_agent_holds_only_sets_the_controller_meant(steps: list[tuple[object, ...]]) -> None:
    async def scenario() -> None:
        world = Cluster()
        for node_id in NODES:  # the sessions open: a full set each
            await world.assigner.send_now(node_id)
        for step in steps:
            await play(world, step)
        await world.look()
        for node_id in world.lost:  # a lost message with none after it: only a new
            await world.reconnect(node_id)  # session brings the agent up to date
        for _ in range(4):  # deliver everything, answering each request for a full set
            for node_id in NODES:
                while len(world.outboxes[node_id]):
                    await world.deliver(node_id)
        for node_id in NODES:
            assert world.agents[node_id].held == meant(world.state, node_id), node_id

    run(scenario)


async def play(world: Cluster, step: tuple[object, ...]) -> None:
    state = world.state
    kind = step[0]
    if kind == "put":
        record = task(step)
        state._put(TASKS, state.tasks, record.id, record)
    elif kind == "remove":
        state._remove(TASKS, state.tasks, str(step[1]))
    elif kind == "step" and state.tasks:
        moved = moved_on(state.tasks[sorted(state.tasks)[0]], str(step[1]), step[2])
        state._put(TASKS, state.tasks, moved.id, moved)
    elif kind == "look":
        await world.look()
    elif kind in ("deliver", "lose"):
        await world.deliver(str(step[1]), lose=kind == "lose")
