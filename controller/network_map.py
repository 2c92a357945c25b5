"""Tells every agent where the other nodes' containers live, and what service names mean.

Each node's map holds its own bridge subnet, every other node's subnet with the host
address to route it through, every service's name with the addresses of its running
tasks (what the node's DNS server answers), and the cluster's revoked certificates that
have not expired (which the agent's own API must refuse: a removed node's). The whole map
goes out when a session opens and to every session whenever any of that changes; agents
replace what they had. An agent that takes deltas (its hello says so) is sent, after its
session's first map, only what changed since the map it holds
(controller/network_map_delta.py); it asks for a full map when a delta does not follow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dockyard.common.states import TaskState
from dockyard.controller.ingress_network import find_ingress
from dockyard.controller.network_map_delta import (
    Ingress,
    IngressView,
    MapState,
    OverlayView,
    Revoked,
    Routes,
    SharedDelta,
    ingress_entries,
    node_delta,
    own_copy,
    shared_delta,
)
from dockyard.controller.overlay_map import node_overlays, overlays
from dockyard.controller.service_names import Names, ServiceNames
from dockyard.controller.sessions import Post
from dockyard.controller.state import ClusterState
from dockyard.v1.dispatcher_pb2 import (
    DispatcherMessage,
    NetworkMap,
    PeerNetwork,
    ServiceAddresses,
)
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task

__all__ = [
    "NetworkMapper",
    "SharedMap",
    "ingress_ports",
    "node_message",
    "quiet_pause",
    "shared_map",
]

RUNNING = TaskState.RUNNING  # looked up once: an enum attribute costs on every task
SEND_INTERVAL = 0.5
"""Seconds between two looks at the cluster (and so between two maps sent to every node):
a burst of task starts makes one map, not one per task (each map goes to every session)."""
LOOK_SHARE = 0.1
"""After a look that sent nothing, the pause before the next is so long that looking takes
at most this share of the time (at least QUIET_PAUSE, at most SEND_INTERVAL). Looking costs
a walk over every task, and a scale-up's burst of new tasks changes no map; but the write
that matters often follows one that does not (`service scale` writes the service, then the
tasks' desired states): a fixed SEND_INTERVAL after the first would leave a removed task's
address in the VIPs and DNS for that long after its agent stopped it."""
QUIET_PAUSE = 0.02


class NetworkMapper:
    """Args:
    state: The leader's view of the cluster (its nodes).
    post: Queues a message on a node's outbox (False when it has no session).
    sessions: The nodes with an open session now.
    revoked: The revoked certificate serials that have not expired, given the time now
        (epoch seconds); call ``revocations_changed`` when they change.
    takes_deltas: Whether a node's session takes delta maps (its hello said so).
    """

    def __init__(
        self,
        state: ClusterState,
        post: Post,
        sessions: Callable[[], Iterable[str]],
        revoked: Callable[[float], Iterable[str]] = lambda now: (),
        takes_deltas: Callable[[str], bool] = lambda node_id: False,
    ) -> None:
        self._state = state
        self._post = post
        self._sessions = sessions
        self._revoked = revoked
        self._takes_deltas = takes_deltas
        self._changed = state.subscribe()
        # The names are patched per changed task rather than walked from every task.
        self._tracker = state.track(task_ids=True)
        self._service_names = ServiceNames(state.tasks)
        self._service_names.reset()
        # The tasks holding an address on a cluster network: the overlays' only input
        # among the tasks (most tasks hold none, and walking all of them cost as much).
        self._networked = {i for i, t in state.tasks.items() if t.networks}
        # The routes are walked from every node only after a node's record changed
        # (the tracker says so): a look during a scale-up finds none changed.
        self._nodes_changed = True
        self._walked_routes: Routes = frozenset()
        self._sent: MapState = (frozenset(), (), (), ({}, {}), ((), ()))
        """The state the last send was built from (every session's map but greetings')."""
        self._sent_at = 0.0
        # What a newly opened session is sent: computed at most once per SEND_INTERVAL
        # (1,000 sessions opening at once would each walk every task otherwise); the run
        # loop sends every session the newer map when the cluster changed since.
        self._greeting: tuple[Routes, Names, OverlayView, IngressView] | None = None
        self._greeting_at = 0.0
        self._greeting_map: tuple[MapState, SharedMap] | None = None
        # The version of the last map posted (to any node): versions never repeat, and
        # start from the clock so that no other mapper's (an earlier term's) can match.
        self._version = time.time_ns()
        self._held: dict[str, tuple[int, MapState]] = {}
        """Node ID -> the version of the last map posted to its session and the state it
        was built from (the base of its next delta)."""
        self._stale: set[str] = set()  # greeted since the last send

    def _greeting_map_now(self) -> tuple[MapState, SharedMap]:
        """The state a greeting is built from now, and its shared part."""
        now = time.monotonic()
        if self._greeting is None or now - self._greeting_at >= SEND_INTERVAL:
            self._greeting = (
                self._current_routes(),
                self._current_names(),
                self._current_overlays(),
                self._current_ingress(),
            )
            self._greeting_at = now
            self._greeting_map = None
        elif self._sent_at > self._greeting_at:  # a send since: its view is the newer
            routes, names, _, overlays, ingress = self._sent
            self._greeting = routes, names, overlays, ingress
            self._greeting_at = self._sent_at
            self._greeting_map = None
        revoked = self._current_revocations()
        if self._greeting_map is None or self._greeting_map[0][2] != revoked:
            routes, names, overlays, ingress = self._greeting
            state: MapState = (routes, names, revoked, overlays, ingress)
            if state == self._sent:  # the base most sessions hold: one delta for all
                state = self._sent
            self._greeting_map = state, shared_map(*state)
        return self._greeting_map

    def send_now(self, node: Node) -> None:
        """Send ``node`` its full map (its session just opened, or its agent could not
        apply a delta); its record as just registered (the view may not have it yet)."""
        state, shared = self._greeting_map_now()
        self._send(node, node_message(node, shared), state)
        # The greeting's view is not the last send's (older or newer): the next look
        # brings the node to the cluster's map if it differs (else nothing is sent).
        self._stale.add(node.id)
        self._changed.set()

    def resend(self, node_id: str) -> None:
        """Send ``node_id`` a full map (its agent asked: a delta did not follow)."""
        node = self._state.nodes.get(node_id)
        if node is not None:
            self.send_now(node)

    def _send(self, node: Node, message: DispatcherMessage, state: MapState) -> None:
        self._version += 1
        if self._takes_deltas(node.id):  # an older agent is sent the map it knows
            message.network.version = self._version
        if self._post(node.id, message):
            self._held[node.id] = self._version, state
        else:
            self._held.pop(node.id, None)

    def revocations_changed(self) -> None:
        """A certificate was revoked: send every node the new list."""
        self._changed.set()

    async def run(self) -> None:
        changed = self._changed
        self._sent = self._current_state()
        while True:
            await changed.wait()
            changed.clear()
            started = time.monotonic()
            if self.look():
                await asyncio.sleep(SEND_INTERVAL)  # a burst of changes makes one map
            else:
                await asyncio.sleep(quiet_pause(time.monotonic() - started))

    def look(self) -> bool:
        """Send every session its map if the cluster network changed since the last
        send; whether it did."""
        current = self._current_state()
        stale, self._stale = self._stale, set()
        sessions = list(self._sessions())
        if current == self._sent:
            return self._catch_up(self._sent, [n for n in sessions if n in stale])
        self._sent, self._sent_at = current, time.monotonic()
        live = set(sessions)
        self._held = {node_id: held for node_id, held in self._held.items() if node_id in live}
        self._send_maps(current, sessions)
        return True

    def _catch_up(self, current: MapState, greeted: list[str]) -> bool:
        """Send the greeted sessions whose map is not of ``current`` theirs; whether any."""
        behind = []
        for node_id in greeted:
            held = self._held.get(node_id)
            if held is None or held[1] is current:
                continue
            if held[1] == current:  # the same maps: the next send's base is the shared one
                self._held[node_id] = held[0], current
            else:
                behind.append(node_id)
        self._send_maps(current, behind)
        return bool(behind)

    def _send_maps(self, current: MapState, node_ids: Iterable[str]) -> None:
        """Each of ``node_ids`` its map of ``current``: a delta on the map it holds when
        it takes them, else the whole map. The parts alike for every node are built once
        (per base, for the deltas; most sessions hold the last send's)."""
        full: SharedMap | None = None
        # base state's id -> (the state, kept alive so that the id stays its own; its delta)
        deltas: dict[int, tuple[MapState, SharedDelta | None]] = {}
        for node_id in node_ids:
            node = self._state.nodes.get(node_id)
            if node is None:
                self._held.pop(node_id, None)
                continue
            held = self._held.get(node_id)
            delta: SharedDelta | None = None
            if held is not None and self._takes_deltas(node_id):
                base = held[1]
                if id(base) not in deltas:
                    deltas[id(base)] = base, shared_delta(base, current)
                delta = deltas[id(base)][1]
            if held is not None and delta is not None:
                message = node_delta(node, delta)
                message.network.base_version = held[0]
            else:
                full = full or shared_map(*current)
                message = node_message(node, full)
            self._send(node, message, current)

    def _current_state(self) -> MapState:
        return (
            self._current_routes(),
            self._current_names(),
            self._current_revocations(),
            self._current_overlays(),
            self._current_ingress(),
        )

    def _current_overlays(self) -> OverlayView:
        self._absorb()
        state, networked = self._state, self._networked
        tasks = [state.tasks[i] for i in networked]
        return overlays(
            state.networks,
            state.services.values(),
            tasks,
            state.nodes,
            state.attachments.values(),
        )

    def _absorb(self) -> None:
        """Take the tasks changed since the last look into the names and overlays, and
        note whether a node's record changed (the routes)."""
        taken = self._tracker.take()
        if taken.nodes:
            self._nodes_changed = True
        changed = taken.task_ids or set()
        if not changed:
            return
        self._service_names.update(changed)
        tasks = self._state.tasks
        for task_id in changed:
            task = tasks.get(task_id)
            if task is not None and task.networks:
                self._networked.add(task_id)
            else:
                self._networked.discard(task_id)

    def _current_ingress(self) -> IngressView:
        state = self._state
        network = find_ingress(state.networks.values())
        ports = ingress_ports(
            state.services.values(), state.tasks_of_service, network.id if network else ""
        )
        nodes = tuple(sorted(network.node_addresses.items())) if network is not None else ()
        return ports, nodes

    def _current_revocations(self) -> Revoked:
        return tuple(sorted(self._revoked(time.time())))

    def _current_routes(self) -> Routes:
        self._absorb()
        if not self._nodes_changed:
            return self._walked_routes
        self._nodes_changed = False
        self._walked_routes = frozenset(
            (n.id, n.network.subnet, n.network.address)
            for n in self._state.nodes.values()
            if n.network.subnet and n.network.address
        )
        return self._walked_routes

    def _current_names(self) -> Names:
        """Every service's name with its running tasks' addresses, sorted."""
        self._absorb()
        return self._service_names.names(self._state.services.values())


def quiet_pause(look_seconds: float) -> float:
    """Seconds to wait after a look that took ``look_seconds`` and sent nothing."""
    return min(SEND_INTERVAL, max(QUIET_PAUSE, look_seconds / LOOK_SHARE))


def ingress_ports(
    services: Iterable[Service],
    tasks_of_service: Callable[[str], Iterable[Task]],
    ingress_id: str = "",
) -> Ingress:
    """The routing mesh: each mode=ingress port with its service's running tasks'
    cluster-network addresses and their addresses on the ingress network ``ingress_id``,
    sorted (compared to the last map's to see a change)."""
    ports = []
    for service in services:
        meshed = [
            p for p in service.spec.task.ports if p.publish_mode == "ingress" and p.published_port
        ]
        if not meshed:
            continue
        running = [
            t
            for t in tasks_of_service(service.id)
            if t.status.state == RUNNING and t.desired_state <= RUNNING
        ]
        backends = tuple(sorted(t.status.address for t in running if t.status.address))
        overlay = tuple(
            sorted(
                held.address
                for t in running
                for held in t.networks
                if held.network_id == ingress_id
            )
        )
        for port in meshed:
            protocol = (port.protocol or "tcp").lower()
            ports.append((port.published_port, port.target_port, protocol, backends, overlay))
    return tuple(sorted(ports))


@dataclass(frozen=True)
class SharedMap:
    """What every node's map holds alike, built once per send: a map with every peer,
    the names, the revoked serials and the mesh's ports; a node's own map is a copy of
    it (in C, not a Python object per peer) without its own peer, plus its own fields."""

    template: NetworkMap
    peer_index: dict[str, int]
    """Node ID -> its position in ``template.peers``."""
    overlays: OverlayView
    ingress_addresses: dict[str, str]


def shared_map(
    routes: Routes,
    names: Names,
    revoked: Revoked,
    overlay: OverlayView,
    ingress: IngressView,
) -> SharedMap:
    """The part of every node's map that does not depend on the node."""
    ordered = sorted(routes)
    template = NetworkMap(
        peers=[
            PeerNetwork(node_id=node_id, subnet=subnet, address=address)
            for node_id, subnet, address in ordered
        ],
        services=[ServiceAddresses(name=name, addresses=addresses) for name, addresses in names],
        revoked_serials=revoked,
        ingress=ingress_entries(ingress[0]),
    )
    index = {node_id: i for i, (node_id, _, _) in enumerate(ordered)}
    return SharedMap(template, index, overlay, dict(ingress[1]))


def node_message(node: Node, shared: SharedMap) -> DispatcherMessage:
    """``node``'s map, in the message that carries it (built in place: no second copy)."""
    message = own_copy(node, shared.template, shared.peer_index, shared.ingress_addresses)
    message.network.overlays.extend(node_overlays(node.id, *shared.overlays))
    return message
