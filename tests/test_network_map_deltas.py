"""Delta network maps, end to end without a network: the mapper's maps go through each
node's real outbox (which folds a delta into a map still waiting) to the agent's real
session logic (which applies a delta only on exactly the map it follows, and asks for a
full map otherwise).

Over random changes of tasks, nodes, services, the mesh's ports and the revoked serials,
random deliveries and random lost messages: every map the agent holds is field-equal to
the full map the controller would have built at the moment it sent that version, and
once everything is delivered (after a new session for a node that lost a message with
none after it) to the full map of the cluster now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hypothesis import example, given
from hypothesis import strategies as st

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.common.map_delta import apply_map_delta, compose_maps
from dockyard.common.states import TaskState
from dockyard.controller.ingress_network import find_ingress
from dockyard.controller.network_map import NetworkMapper, ingress_ports
from dockyard.controller.outbox import Outbox
from dockyard.controller.overlay_map import overlays
from dockyard.controller.service_names import full_names
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NETWORKS, NODES, SERVICES, TASKS
from dockyard.v1.dispatcher_pb2 import AgentMessage, DispatcherMessage, NetworkMap
from dockyard.v1.networks_pb2 import Network
from dockyard.v1.types_pb2 import Node, NodeDescription
from dockyard.v1.workloads_pb2 import PortConfig, Service, Task
from tests.test_incremental_views import SETTINGS
from tests.test_network_map_shared import cluster, make_node, reference_map

NODE_IDS = tuple(f"n{i}" for i in range(1, 10))  # n9 joins later (a node added)
SERIALS = ("0a", "0b", "0c")

task_event = st.tuples(
    st.just("task"),
    st.sampled_from([f"t{i}" for i in range(8)]),
    st.sampled_from(["s1", "s2", "s3"]),  # s3: a task of a service that is not (yet)
    st.sampled_from(["", "n1", "n2", "n3", "n7", "n8"]),
    st.sampled_from([TaskState.RUNNING, TaskState.ASSIGNED, TaskState.FAILED]),
    st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN]),
    st.sampled_from(["", "a", "b", "shared"]),  # a task's own addresses, or one of many
    st.sampled_from([(), ("green",), ("ing",), ("green", "ing")]),
)
other_events = st.one_of(
    st.tuples(st.just("remove_task"), st.sampled_from([f"t{i}" for i in range(8)])),
    st.tuples(
        st.just("node"),
        st.sampled_from(NODE_IDS),
        st.sampled_from(["move", "remove", "put"]),
    ),
    st.tuples(st.just("revoke"), st.sampled_from(SERIALS)),
    st.tuples(st.just("unrevoke"), st.sampled_from(SERIALS)),
    st.tuples(st.just("service"), st.sampled_from(["rename", "publish", "unpublish", "new"])),
    st.tuples(st.just("ingress_node"), st.sampled_from(NODE_IDS)),
    st.just(("look",)),
)
deliveries = st.tuples(
    st.sampled_from(["deliver", "lose", "reconnect"]), st.sampled_from(NODE_IDS[:8])
)
script = st.lists(st.one_of(task_event, other_events, deliveries), max_size=60)


def full_map(state: ClusterState, node: Node, revoked: list[str]) -> NetworkMap:
    """The node's full map computed from scratch (every task walked)."""
    routes = frozenset(
        (n.id, n.network.subnet, n.network.address)
        for n in state.nodes.values()
        if n.network.subnet and n.network.address
    )
    names = full_names(state.services.values(), state.tasks.values())
    overlay = overlays(
        state.networks,
        state.services.values(),
        state.tasks.values(),
        state.nodes,
        state.attachments.values(),
    )
    network = find_ingress(state.networks.values())
    ports = ingress_ports(
        state.services.values(), state.tasks_of_service, network.id if network else ""
    )
    addresses = tuple(sorted(network.node_addresses.items())) if network else ()
    return reference_map(node, routes, names, tuple(sorted(revoked)), overlay, (ports, addresses))


class Agent:
    """One node's agent: its session's logic for maps."""

    def __init__(self, node_id: str) -> None:
        self.session = ControllerSession(
            ["127.0.0.1:1"], NodeIdentity(node_id, node_id), NodeDescription
        )
        self.requests: asyncio.Queue[AgentMessage] = asyncio.Queue()
        self.session._outbox = self.requests
        self.applied: list[NetworkMap] = []

    def take(self, network_map: NetworkMap) -> None:
        whole = self.session._whole_map(network_map)
        if whole is not None:
            self.applied.append(whole)

    def asked_for_full_map(self) -> bool:
        asked = False
        while not self.requests.empty():
            asked |= self.requests.get_nowait().HasField("resync_network")
        return asked


class World:
    def __init__(self) -> None:
        self.state = cluster()
        self.revoked = ["0a"]
        self.outboxes = {node_id: Outbox() for node_id in NODE_IDS}
        self.agents = {node_id: Agent(node_id) for node_id in NODE_IDS}
        self.mapper = NetworkMapper(
            self.state,
            self.post,
            lambda: NODE_IDS,
            lambda now: list(self.revoked),
            takes_deltas=lambda node_id: True,
        )
        self.meant: dict[int, NetworkMap] = {}  # version -> the full map it stands for
        self.lost: set[str] = set()

    def post(self, node_id: str, message: DispatcherMessage) -> bool:
        meant = full_map(self.state, self.state.nodes[node_id], self.revoked)
        meant.version = message.network.version
        self.meant[meant.version] = meant
        self.outboxes[node_id].put(message)
        return True

    def greet(self, node_id: str) -> None:
        node = self.state.nodes.get(node_id)
        if node is not None:
            self.mapper._greeting = None  # the greeting's view of now (kept 0.5 s otherwise)
            self.mapper.send_now(node)

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
            before = len(agent.applied)
            agent.take(message.network)
            if len(agent.applied) > before:
                held = agent.applied[-1]
                assert held == self.meant[held.version], "a map never meant"
        if agent.asked_for_full_map():
            self.mapper._greeting = None
            self.mapper.resend(node_id)

    def reconnect(self, node_id: str) -> None:
        """A new session (what a lost message means on a real stream: the stream broke)."""
        session = self.agents[node_id].session
        session._map, session._map_resync_asked = None, False
        self.outboxes[node_id] = Outbox()
        self.lost.discard(node_id)
        self.greet(node_id)


def change(world: World, step: tuple[object, ...]) -> None:
    state = world.state
    kind = step[0]
    if kind == "task":
        _, task_id, service_id, node_id, status, desired, address, held = step
        record = Task(id=str(task_id), service_id=str(service_id), node_id=str(node_id))
        record.status.state = status  # type: ignore[assignment]
        record.desired_state = desired  # type: ignore[assignment]
        number = str(task_id)[1:]
        record.status.address = {"a": f"10.5.1.{number}", "b": f"10.5.2.{number}"}.get(
            str(address), "10.210.9.9" if address == "shared" else ""
        )
        for network_id in held:  # type: ignore[attr-defined]
            record.networks.add(network_id=network_id, address=f"10.11.0.{str(task_id)[1:]}")
        state._put(TASKS, state.tasks, record.id, record)
    elif kind == "remove_task" and step[1] in state.tasks:
        state._remove(TASKS, state.tasks, str(step[1]))
    elif kind == "node":
        change_node(state, str(step[1]), str(step[2]))
    elif kind == "revoke" and step[1] not in world.revoked:
        world.revoked.append(str(step[1]))
        world.mapper.revocations_changed()
    elif kind == "unrevoke" and step[1] in world.revoked:
        world.revoked.remove(str(step[1]))
    elif kind == "service":
        change_service(state, str(step[1]))
    elif kind == "ingress_node":
        ingress = Network()
        ingress.CopyFrom(state.networks["ing"])
        index = int(str(step[1])[1:])
        if ingress.node_addresses.get(str(step[1])):
            del ingress.node_addresses[str(step[1])]
        else:
            ingress.node_addresses[str(step[1])] = f"10.113.0.{index + 20}"
        state._put(NETWORKS, state.networks, ingress.id, ingress)


def change_node(state: ClusterState, node_id: str, how: str) -> None:
    index = int(node_id[1:])
    if how == "remove" and node_id in state.nodes:
        state._remove(NODES, state.nodes, node_id)
    elif how == "put":
        state._put(NODES, state.nodes, node_id, make_node(index))
    elif how == "move" and node_id in state.nodes and state.nodes[node_id].network.subnet:
        # (a node without a subnet has no route: its new address alone sends no map,
        # on main as here)
        moved = Node()
        moved.CopyFrom(state.nodes[node_id])
        elsewhere = f"192.0.3.{index}"
        moved.network.address = (
            f"192.0.2.{index}" if moved.network.address == elsewhere else elsewhere
        )
        state._put(NODES, state.nodes, node_id, moved)


def change_service(state: ClusterState, how: str) -> None:
    db = Service()
    db.CopyFrom(state.services["s2"])
    if how == "rename":
        db.spec.name = "store" if db.spec.name == "db" else "db"
    elif how == "publish" and not db.spec.task.ports:
        db.spec.task.ports.append(
            PortConfig(published_port=9090, target_port=90, publish_mode="ingress")
        )
        db.spec.task.networks.add(network_id="green", aliases=["data"], vip="10.114.0.250")
    elif how == "unpublish":
        del db.spec.task.ports[:]
        del db.spec.task.networks[:]
    elif how == "new" and "s3" not in state.services:
        cache = Service(id="s3")
        cache.spec.name = "cache"
        cache.spec.task.networks.add(network_id="green")
        state._put(SERVICES, state.services, "s3", cache)
        return
    state._put(SERVICES, state.services, "s2", db)


async def play(world: World, step: tuple[object, ...]) -> None:
    kind = step[0]
    if kind == "look":
        world.mapper.look()
    elif kind in ("deliver", "lose"):
        await world.deliver(str(step[1]), lose=kind == "lose")
    elif kind == "reconnect":
        world.reconnect(str(step[1]))
    else:
        change(world, step)


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coroutine())  # type: ignore[arg-type]


@SETTINGS
@given(steps=script)
@example(  # a delta lost on the way: the next one does not follow, a full map comes
    steps=[
        ("deliver", "n1"),
        ("task", "t5", "s1", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ()),
        ("look",),
        ("lose", "n1"),
        ("node", "n4", "move"),
        ("look",),
        ("deliver", "n1"),
        ("deliver", "n1"),
    ]
)
@example(  # deltas folded into the full map still waiting, then into each other
    steps=[
        ("revoke", "0b"),
        ("look",),
        ("service", "publish"),
        ("look",),
        ("deliver", "n3"),
        ("service", "rename"),
        ("look",),
        ("node", "n5", "remove"),
        ("unrevoke", "0a"),
        ("look",),
        ("deliver", "n3"),
    ]
)
@example(  # a service's addresses patched: one added, then one removed, then both folded
    steps=[
        ("task", "t5", "s1", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ()),
        ("task", "t6", "s1", "n3", TaskState.RUNNING, TaskState.RUNNING, "a", ()),
        ("look",),
        ("deliver", "n1"),
        ("deliver", "n1"),
        ("remove_task", "t5"),
        ("look",),
        ("deliver", "n1"),
        ("remove_task", "t6"),
        ("look",),
        ("task", "t7", "s1", "n3", TaskState.RUNNING, TaskState.RUNNING, "b", ()),
        ("look",),
        ("remove_task", "t7"),
        ("task", "t5", "s1", "n2", TaskState.RUNNING, TaskState.RUNNING, "b", ()),
        ("look",),
        ("deliver", "n1"),
    ]
)
@example(  # a greeting newer than the last send, then the change undone: caught up
    steps=[
        ("unrevoke", "0a"),
        ("look",),
        ("revoke", "0a"),
        ("reconnect", "n1"),
        ("unrevoke", "0a"),
    ]
)
@example(  # an overlay's entries patched: an endpoint gone, then one added, folded
    steps=[
        ("service", "publish"),
        ("task", "t5", "s2", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("look",),
        ("deliver", "n3"),
        ("remove_task", "t5"),
        ("look",),
        ("task", "t6", "s2", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("look",),
        ("deliver", "n3"),
    ]
)
@example(  # an overlay's names gone in one patch, an endpoint added in the next: folded
    steps=[
        ("service", "publish"),
        ("task", "t5", "s2", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("look",),
        ("deliver", "n3"),
        ("service", "unpublish"),
        ("look",),
        ("task", "t6", "s1", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("look",),
        ("deliver", "n3"),
    ]
)
@example(  # a name's addresses patched: one gone, then one added, folded
    steps=[
        ("service", "publish"),
        ("task", "t5", "s2", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("task", "t6", "s2", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("look",),
        ("deliver", "n3"),
        ("remove_task", "t5"),
        ("look",),
        ("task", "t7", "s2", "n3", TaskState.RUNNING, TaskState.RUNNING, "a", ("green",)),
        ("look",),
        ("deliver", "n3"),
    ]
)
def test_the_agent_holds_exactly_the_full_map(steps: list[tuple[object, ...]]) -> None:
    async def scenario() -> None:
        world = World()
        for node_id in NODE_IDS:  # the sessions open: a full map each (n9 has no node)
            world.greet(node_id)
        for step in steps:
            await play(world, step)
        world.mapper.look()
        for node_id in sorted(world.lost):  # a lost message with none after it: only
            world.reconnect(node_id)  # a new session brings the agent up to date
        for _ in range(3):  # deliver everything, answering each request for a full map
            for node_id in NODE_IDS:
                while len(world.outboxes[node_id]):
                    await world.deliver(node_id)
        for node_id, node in world.state.nodes.items():
            held = world.agents[node_id].session._map
            assert held is not None, node_id
            now = full_map(world.state, node, world.revoked)
            now.version = held.version
            assert held == now, node_id

    run(scenario)


def delta_world() -> tuple[World, Agent]:
    """n1's agent holding its session's first map, then a delta of a new task waiting."""
    world = World()
    world.greet("n1")
    asyncio.run(world.deliver("n1"))
    change(world, ("task", "t5", "s1", "n2", TaskState.RUNNING, TaskState.RUNNING, "a", ()))
    world.mapper.look()
    return world, world.agents["n1"]


def test_a_send_after_the_first_map_is_a_delta_with_only_the_change() -> None:
    world, _ = delta_world()
    message = world.outboxes["n1"]._waiting["network"].network
    assert message.base_version != 0
    assert [s.name for s in message.services] == ["web"]  # db's addresses did not change
    web = message.services[0]  # a patch: the one address added, not web's three
    assert web.patch and list(web.addresses) == ["10.5.1.5"] and not web.removed_addresses
    assert not message.peers and not message.overlays and not message.revoked_serials
    assert message.ingress_replaced  # web's port: a new backend on the mesh
    assert "10.5.1.5" in message.ingress[0].backends
    assert message.subnet == "10.210.1.0/24" and message.address == "192.0.2.1"


def test_a_delta_on_another_base_is_refused_whole_then_healed_by_a_full_map() -> None:
    world, agent = delta_world()
    held = agent.session._map
    assert held is not None
    delta = world.outboxes["n1"]._waiting.pop("network").network
    wrong = NetworkMap()
    wrong.CopyFrom(delta)
    wrong.base_version = held.version + 1000  # hostile, or a delta that went astray
    wrong.removed_peers.append("n2")
    agent.take(wrong)
    assert agent.session._map is held and held == world.meant[held.version]
    assert agent.asked_for_full_map()
    agent.take(wrong)  # asked once until a full map comes
    assert not agent.asked_for_full_map()
    world.mapper._greeting = None
    world.mapper.resend("n1")
    asyncio.run(world.deliver("n1"))
    healed = agent.session._map
    assert healed is not None and healed.version > delta.version
    assert healed == world.meant[healed.version]
    assert "10.5.1.5" in str(healed.services)
    assert not world.outboxes["n1"]._waiting


def test_a_new_session_gets_a_full_map_and_refuses_a_delta_before_it() -> None:
    world, agent = delta_world()
    delta = world.outboxes["n1"]._waiting.pop("network")
    world.reconnect("n1")  # the agent forgets the map; the mapper greets the new session
    full = world.outboxes["n1"]._waiting.pop("network")
    assert full.network.base_version == 0 and full.network.peers
    agent.take(delta.network)  # the old session's delta, late: no base on this session
    assert agent.session._map is None and agent.asked_for_full_map()
    agent.take(full.network)
    assert agent.session._map == world.meant[full.network.version]


def test_an_agent_without_deltas_gets_full_maps_without_versions() -> None:
    state = cluster()
    posted: list[DispatcherMessage] = []
    mapper = NetworkMapper(
        state, lambda node_id, message: posted.append(message) or True, lambda: ["n1"]
    )
    mapper.send_now(state.nodes["n1"])
    change_node(state, "n4", "move")
    assert mapper.look()
    assert [(m.network.version, m.network.base_version) for m in posted] == [(0, 0), (0, 0)]
    assert len(posted[1].network.peers) == 5


def test_composed_deltas_equal_the_deltas_applied_in_turn() -> None:
    """Two deltas folded in the outbox make what the agent would make of both."""
    world = World()
    world.greet("n2")
    first = world.outboxes["n2"]._waiting.pop("network").network
    steps: list[tuple[object, ...]] = [
        ("revoke", "0b"),
        ("service", "publish"),
        ("node", "n5", "remove"),
        ("look",),
        ("unrevoke", "0b"),
        ("revoke", "0c"),
        ("service", "rename"),
        ("node", "n5", "put"),
        ("node", "n6", "remove"),
        ("look",),
    ]
    deltas = []
    for step in steps:
        asyncio.run(play(world, step))
        if step == ("look",):
            deltas.append(world.outboxes["n2"]._waiting.pop("network").network)
    composed = compose_maps(deltas[0], deltas[1])
    assert composed is not None and composed.base_version == first.version
    in_turn = apply_map_delta(apply_map_delta(first, deltas[0]), deltas[1])
    assert apply_map_delta(first, composed) == in_turn == world.meant[in_turn.version]
    assert compose_maps(deltas[1], deltas[0]) is None  # out of order: not folded


def test_a_patch_of_a_service_not_held_is_refused_whole() -> None:
    """On the right base, but not made on this map: nothing of it is applied."""
    _, agent = delta_world()
    held = agent.session._map
    assert held is not None
    odd = NetworkMap(version=held.version + 1, base_version=held.version)
    odd.removed_peers.append("n2")  # would apply, were the rest sound
    odd.services.add(name="nowhere", addresses=["10.0.0.1"], patch=True)
    agent.take(odd)
    assert agent.session._map is held and agent.asked_for_full_map()


def test_a_patch_of_an_overlay_not_held_is_refused_whole() -> None:
    _, agent = delta_world()
    held = agent.session._map
    assert held is not None
    odd = NetworkMap(version=held.version + 1, base_version=held.version)
    odd.services.add(name="web", addresses=["10.0.0.1"])  # would apply, were the rest sound
    odd.overlays.add(network=Network(id="elsewhere"), patch=True, removed_names=["x"])
    agent.take(odd)
    assert agent.session._map is held and agent.asked_for_full_map()


def test_a_task_on_an_overlay_sends_its_members_a_patch_of_that_overlay() -> None:
    world = World()
    world.greet("n3")  # n3 runs a task on green
    asyncio.run(world.deliver("n3"))
    record = Task(id="t5", service_id="s2", node_id="n2")
    record.status.state = TaskState.RUNNING  # type: ignore[assignment]
    record.desired_state = TaskState.RUNNING
    record.networks.add(network_id="green", address="10.114.0.77")
    world.state._put(TASKS, world.state.tasks, record.id, record)
    world.mapper.look()
    delta = world.outboxes["n3"]._waiting["network"].network
    [green] = [o for o in delta.overlays if o.network.id == "green"]
    assert green.patch and [e.address for e in green.endpoints] == ["10.114.0.77"]
    asyncio.run(world.deliver("n3"))
    held = world.agents["n3"].session._map
    assert held is not None and held == world.meant[held.version]


def test_a_patch_of_a_name_the_older_delta_removed_is_not_folded() -> None:
    """Not made on the older delta: the outbox keeps the newer alone (the agent asks)."""
    older = NetworkMap(version=2, base_version=1)
    older.overlays.add(network=Network(id="g"), patch=True, removed_names=["x"])
    newer = NetworkMap(version=3, base_version=2)
    overlay = newer.overlays.add(network=Network(id="g"), patch=True)
    overlay.names.add(name="x", patch=True, addresses=["10.0.0.1"])
    assert compose_maps(older, newer) is None
