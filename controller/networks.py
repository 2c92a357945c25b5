"""Cluster networks: overlay networks as Swarm has them, stored in etcd.

A network is two keys written in one transaction: its record (``networks/<id>``: spec,
allocated subnet, gateway, VNI) and its name index (``names/networks/<name>``). The
subnet and VNI are chosen from what the other networks and the nodes hold
(``controller/network_pool.py``), and the write compares that no network record changed
since that list was read, so two controllers creating networks at once never hand out
overlapping subnets or one VNI twice: the second write fails and is tried again.

A service names its networks in ``TaskSpec.networks``; the controller resolves each to
the network's ID when the spec is written, comparing the network's revision (as for
secrets), so a network removed at the same moment makes the service write fail. A removal
is refused while a service's spec or previous spec, or a task that has not ended, uses it,
or a standalone container is attached to it (controller/attachments.py).
"""

from __future__ import annotations

import ipaddress
import secrets as token_source
from collections.abc import Callable, Iterable, Sequence

import structlog

from dockyard.common.lookup import match_reference
from dockyard.common.validation import ValidationError, check_labels, check_name, check_ref
from dockyard.controller.conflicts import retry_conflicts
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.ingress_network import publishes_ingress
from dockyard.controller.network_addresses import AddressExhausted, next_vip, used_addresses
from dockyard.controller.network_pool import (
    NetworkPool,
    PoolExhausted,
    Taken,
    check_requested,
    next_vni,
)
from dockyard.controller.store import (
    NETWORK_ATTACHMENTS,
    NETWORK_NAMES,
    NETWORKS,
    NODES,
    SERVICES,
    TASKS,
    AlreadyExists,
    Conflict,
    NotFound,
    Op,
    Store,
)
from dockyard.controller.subnets import Protected, protected_address
from dockyard.v1.networks_pb2 import (
    Network,
    NetworkAttachmentConfig,
    NetworkContainer,
    NetworkSpec,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Service, ServiceSpec, Task

__all__ = ["DRIVERS", "ENDPOINT_MODES", "NetworkRegistry", "check_network_spec", "network_users"]

log = structlog.get_logger(__name__)

DRIVERS = ("overlay",)
ENDPOINT_MODES = ("vip", "dnsrr")
MAX_NETWORKS_PER_TASK = 16
MAX_ALIASES = 16
_ATTEMPTS = 5  # a create that raced another one reads again this many times
_ENDED = frozenset(
    {
        TaskStatus.COMPLETE,
        TaskStatus.SHUTDOWN,
        TaskStatus.FAILED,
        TaskStatus.REJECTED,
        TaskStatus.ORPHANED,
    }
)
# Names Docker reserves: `--network none|host|bridge` keep their per-node meaning.
RESERVED = frozenset({"none", "host", "bridge", "default"})


def check_network_spec(spec: NetworkSpec) -> None:
    check_name("spec.name", spec.name)
    if spec.name in RESERVED:
        raise ValidationError("spec.name", f"{spec.name!r} is reserved (a node-local network mode)")
    if spec.driver and spec.driver not in DRIVERS:
        raise ValidationError(
            "spec.driver", f"unknown driver {spec.driver!r}: use {', '.join(DRIVERS)}"
        )
    check_labels("spec.labels", dict(spec.labels))
    if len(spec.subnet) > len("255.255.255.255/32"):
        raise ValidationError("spec.subnet", f"{len(spec.subnet)} characters is not a subnet")


def check_attachments(field: str, attachments: Sequence[NetworkAttachmentConfig]) -> None:
    """Bounds and shapes of a spec's network attachments (before any lookup)."""
    if len(attachments) > MAX_NETWORKS_PER_TASK:
        raise ValidationError(field, f"at most {MAX_NETWORKS_PER_TASK} networks")
    for index, attachment in enumerate(attachments):
        where = f"{field}[{index}]"
        check_ref(f"{where}.target", attachment.target or attachment.network_id)
        if len(attachment.aliases) > MAX_ALIASES:
            raise ValidationError(f"{where}.aliases", f"at most {MAX_ALIASES} aliases")
        for number, alias in enumerate(attachment.aliases):
            check_name(f"{where}.aliases[{number}]", alias)


def _uses(spec: ServiceSpec, network_id: str) -> bool:
    return any(a.network_id == network_id for a in spec.task.networks)


def network_users(network_id: str, services: Sequence[Service], tasks: Sequence[Task]) -> list[str]:
    """What still uses the network, one phrase per service (empty when nothing does)."""
    phrases: dict[str, str] = {}
    for service in services:
        name = service.spec.name
        if _uses(service.spec, network_id):
            phrases[name] = f"service {name}"
        elif _uses(service.previous_spec, network_id):
            phrases[name] = f"service {name} (its previous spec, the rollback target)"
    for task in tasks:
        if task.status.state in _ENDED or task.desired_state > TaskStatus.RUNNING:
            continue
        held = {a.network_id for a in task.spec.networks}
        held.update(a.network_id for a in task.networks)  # the ingress network is here only
        if network_id in held:
            name = task.service_name or task.service_id
            phrases.setdefault(name, f"tasks of service {name}")
    return [phrases[name] for name in sorted(phrases)]


class NetworkRegistry:
    """Args:
    store: The cluster's store.
    pool: Where network subnets come from.
    node_pool: The node subnet pool (CIDR): no network may take from it.
    protected: Addresses no network may cover (the controllers', etcd's), given now.
    """

    def __init__(
        self,
        store: Store,
        pool: NetworkPool | None = None,
        node_pool: str = "",
        protected: Callable[[], Iterable[Protected]] = lambda: (),
    ) -> None:
        self._store = store
        self._pool = pool or NetworkPool()
        self._node_pool = node_pool
        self._protected = protected

    async def list_all(self) -> list[Network]:
        found, _ = await self._store.list_all(NETWORKS)
        return found

    async def find(self, ref: str) -> Network:
        """A network by ID, name or unique ID prefix."""
        check_ref("network", ref)
        networks = await self.list_all()
        exact = [n for n in networks if ref in (n.spec.name, n.id)]
        matches = exact or match_reference(ref, networks, lambda n: n.id, lambda n: n.spec.name)
        if len(matches) > 1:
            raise ValidationError("network", f"{ref!r} is ambiguous ({len(matches)} networks)")
        if not matches:
            raise NotFound(f"network {ref!r} not found")
        return matches[0]

    async def list_named(self, names: Sequence[str]) -> list[Network]:
        for index, name in enumerate(names):
            check_ref(f"names[{index}]", name)
        found = [n for n in await self.list_all() if not names or n.spec.name in names]
        return sorted(found, key=lambda n: n.spec.name)

    async def create(self, spec: NetworkSpec) -> Network:
        """A new network with its subnet and VNI, or AlreadyExists for its name.

        Raises:
            ValidationError: the spec (or its subnet) is refused, naming the field.
            FailedPrecondition: the pool has no free block left (naming the pool).
        """
        check_network_spec(spec)
        for _ in range(_ATTEMPTS):
            networks, revision = await self._store.list_all(NETWORKS)
            if any(n.spec.name == spec.name for n in networks):
                raise AlreadyExists(f"network {spec.name!r} already exists")
            if spec.ingress and any(n.spec.ingress for n in networks):
                raise AlreadyExists("the cluster already has an ingress network")
            network = await self._allocated(spec, networks)
            ops = [
                self._store.put_op(NETWORKS, network.id, network, expect=0),
                self._store.raw_op(NETWORK_NAMES, spec.name, network.id.encode(), expect=0),
                self._store.unchanged_op(NETWORKS, revision),
            ]
            try:
                network.meta.version = await self._store.commit(ops)
            except Conflict:
                continue  # another network was written meanwhile: choose again
            log.info(
                "network.created",
                network_id=network.id,
                name=spec.name,
                subnet=network.subnet,
                vni=network.vni,
            )
            return network
        raise Conflict(f"networks kept changing while {spec.name!r} was being created: try again")

    async def _allocated(self, spec: NetworkSpec, networks: Sequence[Network]) -> Network:
        taken, protected = await self._taken(networks)
        protected += list(self._protected())
        try:
            if spec.subnet:
                subnet = check_requested("spec.subnet", spec.subnet, taken, protected)
            else:
                subnet = self._pool.allocate(taken, protected)
            vni = next_vni(n.vni for n in networks)
        except PoolExhausted as exc:
            raise FailedPrecondition(str(exc)) from exc
        network = Network(
            id=token_source.token_hex(12), subnet=str(subnet), gateway=str(subnet[1]), vni=vni
        )
        network.spec.CopyFrom(spec)
        network.spec.driver = spec.driver or DRIVERS[0]
        return network

    async def _taken(self, networks: Sequence[Network]) -> tuple[list[Taken], list[Protected]]:
        """Every range a new network must not overlap (networks, node subnets, the node
        pool: future nodes take from it) and the nodes' host addresses."""
        nodes, _ = await self._store.list_all(NODES)
        taken: list[Taken] = [
            (f"network {n.spec.name}", ipaddress.IPv4Network(n.subnet)) for n in networks
        ]
        taken += [
            (f"node {n.id[:12]}'s bridge subnet", ipaddress.IPv4Network(n.network.subnet))
            for n in nodes
            if n.network.subnet
        ]
        if self._node_pool:
            taken.append(("the node subnet pool", ipaddress.IPv4Network(self._node_pool)))
        hosts = [protected_address(f"node {n.id[:12]}", n.network.address) for n in nodes]
        return taken, [p for p in hosts if p is not None]

    async def inspect(self, ref: str) -> Network:
        """The network with the standalone containers attached to it (``containers``)."""
        network = await self.find(ref)
        attachments, revision = await self._store.list_all(NETWORK_ATTACHMENTS)
        nodes, _ = await self._store.list_all(NODES, at_revision=revision)
        hostnames = {n.id: n.spec.name or n.description.hostname for n in nodes}
        shown = Network()
        shown.CopyFrom(network)
        shown.containers.extend(
            NetworkContainer(
                container_id=a.container_id,
                name=a.container_name,
                node_id=a.node_id,
                node=hostnames.get(a.node_id, ""),
                address=a.address,
                aliases=list(a.aliases),
            )
            for a in sorted(attachments, key=lambda a: (a.container_name, a.container_id))
            if a.network_id == network.id
        )
        return shown

    async def remove(self, ref: str) -> Network:
        """Delete the network unless a service's spec or previous spec, or a task that
        may still run, uses it (checked again if a service changed meanwhile)."""
        return await retry_conflicts(lambda: self._remove_once(ref))

    async def _remove_once(self, ref: str) -> Network:
        network = await self.find(ref)
        services, revision = await self._store.list_all(SERVICES)
        tasks, _ = await self._store.list_all(TASKS)
        attachments, _ = await self._store.list_all(NETWORK_ATTACHMENTS, at_revision=revision)
        users = network_users(network.id, services, tasks)
        users += sorted(
            f"container {a.container_name or a.container_id[:12]} (on node {a.node_id[:12]})"
            for a in attachments
            if a.network_id == network.id
        )
        if network.spec.ingress:
            users += [
                f"service {s.spec.name} (a port published with mode=ingress)"
                for s in services
                if publishes_ingress(s.spec) or publishes_ingress(s.previous_spec)
            ]
        if users:
            raise FailedPrecondition(
                f"network {network.spec.name} is in use by {'; '.join(users)}: remove the "
                "services (or `service update --network-rm`) and containers first"
            )
        ops = [
            self._store.raw_op(NETWORKS, network.id, None, expect=network.meta.version),
            self._store.raw_op(NETWORK_NAMES, network.spec.name, None, expect=None),
            self._store.unchanged_op(SERVICES, revision),
            self._store.unchanged_op(NETWORK_ATTACHMENTS, revision),
        ]
        try:
            await self._store.commit(ops)
        except Conflict as exc:
            raise Conflict(
                f"network {network.spec.name} or the services changed while it was being "
                "removed: try again"
            ) from exc
        log.info("network.removed", network_id=network.id, name=network.spec.name)
        return network

    async def resolve(
        self, spec: ServiceSpec, current: Service | None = None
    ) -> tuple[ServiceSpec, list[Op]]:
        """The spec with every network attachment's ID, name and VIP filled in, and the
        compares that keep those networks alive until the spec is written.

        A VIP the service already has on a network (in ``current``'s spec or previous
        spec) is kept; a new one is allocated, and then the write also compares that no
        service changed meanwhile (another one could have taken the same address).

        Raises:
            NotFound: a named network does not exist (the message names the field).
        """
        resolved = ServiceSpec()
        resolved.CopyFrom(spec)
        attachments = resolved.task.networks
        field = "spec.task.networks"
        check_attachments(field, attachments)
        mode = resolved.task.endpoint_mode
        if mode and mode not in ENDPOINT_MODES:
            raise ValidationError(
                "spec.task.endpoint_mode", f"{mode!r}: use {' or '.join(ENDPOINT_MODES)}"
            )
        if not attachments:
            return resolved, []
        networks = await self.list_all()
        checks: dict[str, Op] = {}
        seen: set[str] = set()
        for index, attachment in enumerate(attachments):
            ref = attachment.target or attachment.network_id
            found = [n for n in networks if ref in (n.id, n.spec.name)] or match_reference(
                ref, networks, lambda n: n.id, lambda n: n.spec.name
            )
            if len(found) != 1:
                raise NotFound(f"{field}[{index}].target: network {ref!r} not found")
            network = found[0]
            if network.spec.ingress:  # as Swarm: the mesh's tasks are put on it, not named
                raise ValidationError(
                    f"{field}[{index}].target",
                    f"network {network.spec.name!r} is the routing mesh's (ingress): a "
                    "service is on it by publishing a port with mode=ingress",
                )
            if network.id in seen:
                raise ValidationError(f"{field}[{index}].target", f"network {ref!r} given twice")
            seen.add(network.id)
            attachment.network_id, attachment.target = network.id, network.spec.name
            checks[network.id] = self._store.check_op(NETWORKS, network.id, network.meta.version)
        by_id = {n.id: n for n in networks}
        return resolved, list(checks.values()) + await self._vips(resolved, current, by_id)

    async def _vips(
        self, spec: ServiceSpec, current: Service | None, networks: dict[str, Network]
    ) -> list[Op]:
        kept: dict[str, set[str]] = {}
        if current is not None:
            for old in (current.spec, current.previous_spec):
                for attachment in old.task.networks:
                    if attachment.vip:
                        kept.setdefault(attachment.network_id, set()).add(attachment.vip)
        wanted = spec.task.endpoint_mode != "dnsrr"
        missing = []
        for attachment in spec.task.networks:
            if not wanted:
                attachment.vip = ""
            elif attachment.vip not in kept.get(attachment.network_id, set()):
                missing.append(attachment)
        if not missing:
            return []
        services, revision = await self._store.list_all(SERVICES)
        tasks, _ = await self._store.list_all(TASKS)
        attached, _ = await self._store.list_all(NETWORK_ATTACHMENTS, at_revision=revision)
        used = used_addresses(services, tasks, attached)
        for attachment in missing:
            network = networks[attachment.network_id]
            try:
                attachment.vip = next_vip(network, used.setdefault(network.id, set()))
            except AddressExhausted as exc:
                raise FailedPrecondition(str(exc)) from exc
        return [
            self._store.unchanged_op(SERVICES, revision),
            self._store.unchanged_op(NETWORK_ATTACHMENTS, revision),
        ]
