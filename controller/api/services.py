"""Service and task requests of the Control API."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from dockyard.common.distribution.auth import Credentials
from dockyard.common.states import TaskState
from dockyard.common.validation import ValidationError, check_ref
from dockyard.controller.cluster import ClusterRecord, privileges_of
from dockyard.controller.images import ImageResolver
from dockyard.controller.ingress_network import ensure_ingress_network, publishes_ingress
from dockyard.controller.ingress_ports import check_ingress_ports
from dockyard.controller.networks import NetworkRegistry
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.secrets import ObjectRegistries, SecretRegistry
from dockyard.controller.services import ServiceRegistry
from dockyard.controller.snapshot import MODES, ReadSnapshot, list_services
from dockyard.controller.specs import check_service_spec
from dockyard.controller.state import ClusterState
from dockyard.controller.store import TASKS, NotFound, Op, Store
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    ListServicesRequest,
    ListServicesResponse,
    ListTasksRequest,
    ListTasksResponse,
    UpdateServiceRequest,
)
from dockyard.v1.workloads_pb2 import RegistryAuth, Service, ServiceSpec, Task

MAX_AUTH_FIELD = 64 * 1024
MAX_REGISTRY_NAME = 255


def _registry_auth(auth: RegistryAuth) -> RegistryAuth:
    """Checked `--with-registry-auth` credentials (bounded; a registry and a secret)."""
    if (
        not auth.registry
        or len(auth.registry) > MAX_REGISTRY_NAME
        or any(c.isspace() or c == "/" for c in auth.registry)
    ):
        raise ValidationError(
            "registry_auth.registry", "must be a registry host[:port] such as docker.io"
        )
    if len(auth.username) > MAX_AUTH_FIELD:
        raise ValidationError("registry_auth.username", f"longer than {MAX_AUTH_FIELD} bytes")
    if not auth.password or len(auth.password) > MAX_AUTH_FIELD:
        raise ValidationError("registry_auth.password", f"must be 1 to {MAX_AUTH_FIELD} bytes")
    return auth


def _as_credentials(auth: RegistryAuth | None) -> dict[str, Credentials] | None:
    if auth is None:
        return None
    return {auth.registry: Credentials(auth.username, auth.password)}


class ServicesAPI:
    def __init__(
        self,
        store: Store,
        services: ServiceRegistry,
        nodes: NodeRegistry,
        cluster: ClusterRecord,
        resolver: ImageResolver,
        view: Callable[[], ClusterState | None] = lambda: None,
        secrets: SecretRegistry | None = None,
        networks: NetworkRegistry | None = None,
    ) -> None:
        """`view` gives the leader's in-memory cluster view (None on a follower):
        listings read it instead of etcd, which matters with tens of thousands of tasks."""
        self._store = store
        self._services = services
        self._nodes = nodes
        self._cluster = cluster
        self._resolver = resolver
        self._view = view
        # The secrets and configs a spec refers to (`secrets` for tests that pass one).
        self._secrets: SecretRegistry | ObjectRegistries = secrets or ObjectRegistries(store)
        self._networks = networks or NetworkRegistry(store)

    async def _resolve(
        self, spec: ServiceSpec, current: Service | None = None
    ) -> tuple[ServiceSpec, list[Op]]:
        """The spec with its secrets', configs' and networks' IDs (and VIPs), and the
        compares that keep them."""
        spec, object_checks = await self._secrets.resolve(spec)
        spec, network_checks = await self._networks.resolve(spec, current)
        spec, port_checks = await check_ingress_ports(
            self._store, spec, current.id if current is not None else ""
        )
        if publishes_ingress(spec):
            await ensure_ingress_network(self._networks)  # the mesh's carrier, as Swarm's
        return spec, object_checks + network_checks + port_checks

    async def _all_tasks(self) -> list[Task]:
        view = self._view()
        if view is not None:
            return list(view.tasks.values())
        tasks, _ = await self._store.list_all(TASKS)
        return tasks

    async def create(self, request: CreateServiceRequest) -> tuple[Service, list[str]]:
        """The new service, and warnings for the caller (an image left unpinned)."""
        check_service_spec(request.spec)  # before asking a registry about it
        policy = await self._cluster.check_spec(request.spec)
        spec, checks = await self._resolve(request.spec)
        check_service_spec(spec)
        auth = _registry_auth(request.registry_auth) if request.HasField("registry_auth") else None
        pinned = await self._resolver.pin(
            spec, request.resolve_image, credentials=_as_credentials(auth)
        )
        fenced = [*checks, policy.fence(self._store)]
        return await self._services.create(pinned.spec, fenced, auth), pinned.warnings

    async def get(self, ref: str) -> Service:
        return await self._services.find(ref)

    async def update(self, request: UpdateServiceRequest) -> tuple[Service, list[str]]:
        """The updated service, and warnings for the caller (an image left unpinned)."""
        if request.rollback:
            service = await self._services.find(request.service)
            policy = await self._cluster.check_spec(service.previous_spec, "previous_spec")
            _, checks = await self._resolve(service.previous_spec, service)  # still there?
            rolled = await self._services.rollback(request.service, request.version, checks, policy)
            return rolled, _dropped_target(service.spec, rolled)
        check_service_spec(request.spec)
        policy = await self._cluster.check_spec(request.spec)
        current = await self._services.find(request.service)
        spec, checks = await self._resolve(request.spec, current)
        check_service_spec(spec)
        auth = _registry_auth(request.registry_auth) if request.HasField("registry_auth") else None
        pinned = await self._resolver.pin(
            spec,
            request.resolve_image,
            previous=current.spec,
            force=request.force,
            credentials=_as_credentials(auth),
        )
        service = await self._services.update(
            request.service, request.version, pinned.spec, request.force, checks, policy, auth
        )
        return service, pinned.warnings + _dropped_target(current.spec, service)

    async def remove(self, ref: str) -> None:
        await self._services.remove(ref)

    async def _fresh_view(self) -> ClusterState | None:
        """The leader's view (None on a follower: etcd answers), settled for a read
        (`ClusterState.settle_for_read`: this controller's own writes are seen, others
        as far as the view has got). etcd unreachable fails the read, as a read from it
        would."""
        view = self._view()
        if view is not None:  # etcd's revision first: etcd unreachable fails the read
            current = await self._store.current_revision()
            await view.settle_for_read(current, self._store.last_revision)
        return view

    async def task_counts(self) -> tuple[int, int, int]:
        """How many tasks are meant to run, run, and wait for a node."""
        view = await self._fresh_view()
        if view is not None:
            counts = view.task_counts
            return counts["wanted"], counts["running"], counts["pending"]
        wanted = [t for t in await self._all_tasks() if t.desired_state == TaskState.RUNNING]
        running = sum(1 for t in wanted if t.status.state == TaskState.RUNNING)
        pending = sum(1 for t in wanted if t.status.state == TaskState.PENDING)
        return len(wanted), running, pending

    async def list(self, request: ListServicesRequest) -> ListServicesResponse:
        """A page of services (controller/snapshot.py): from the view's latest snapshot
        on the leader, from etcd on a follower."""
        if request.mode not in ("", *MODES):
            raise ValidationError("mode", f"must be {', '.join(MODES)} or empty")
        view = await self._fresh_view()
        snapshot = view.board.latest if view is not None else None
        if snapshot is None:  # a follower: etcd answers
            snapshot = await self._snapshot_from_store()
        return list_services(snapshot, request)

    async def _snapshot_from_store(self) -> ReadSnapshot:
        """What a follower lists from: etcd's services, nodes and tasks counted."""
        running: Counter[str] = Counter()
        succeeded: Counter[str] = Counter()
        for task in await self._all_tasks():
            if task.desired_state == TaskState.RUNNING and task.status.state == TaskState.RUNNING:
                running[task.service_id] += 1
            if task.status.state == TaskState.COMPLETE and task.status.exit_code == 0:
                succeeded[task.service_id] += 1
        services = {s.id: s for s in await self._services.list_all()}
        nodes = {n.id: n for n in await self._nodes.list_all()}
        return ReadSnapshot.of(0, nodes, services, running, succeeded)

    async def list_tasks(self, request: ListTasksRequest) -> ListTasksResponse:
        tasks = await self._all_tasks()
        if request.services:
            wanted = {(await self._services.find(ref)).id for ref in request.services}
            tasks = [t for t in tasks if t.service_id in wanted]
        if request.nodes:
            node_ids = {(await self._nodes.find(ref)).id for ref in request.nodes}
            tasks = [t for t in tasks if t.node_id in node_ids]
        if not request.include_history:
            tasks = [t for t in tasks if t.desired_state <= TaskState.RUNNING]
        tasks.sort(key=lambda t: (t.service_name, t.slot, t.node_id, -t.meta.created_at.seconds))
        return ListTasksResponse(tasks=tasks)

    async def get_task(self, ref: str) -> Task:
        check_ref("task", ref)
        tasks = await self._all_tasks()
        matches = [t for t in tasks if t.id == ref] or [t for t in tasks if t.id.startswith(ref)]
        if len(matches) != 1:
            raise NotFound(
                f"task {ref!r} not found" if not matches else f"task {ref!r} is ambiguous"
            )
        return matches[0]


def _dropped_target(old: ServiceSpec, written: Service) -> list[str]:
    """A warning when the spec left behind was not kept as the rollback target."""
    if written.HasField("previous_spec") or written.spec == old:
        return []
    why = "; ".join(str(p) for p in privileges_of(old, "previous_spec"))
    return [
        f"the previous spec is not kept for a rollback: the cluster's policy does not "
        f"allow privileged containers ({why})"
    ]
