"""The agent process: identity, local API and the session to the controller."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import structlog

from dockyard.agent import hostinfo
from dockyard.agent.api import AgentServicer
from dockyard.agent.certs import NodePKI, renew_loop
from dockyard.agent.config import AgentConfig
from dockyard.agent.identity import load_or_create
from dockyard.agent.metrics.pulls import PullMetrics
from dockyard.agent.secret_files import DEFAULT_ROOT as SECRETS_ROOT
from dockyard.agent.secret_files import SecretFiles
from dockyard.agent.session import ControllerSession, SessionRefused
from dockyard.agent.worker import Worker
from dockyard.common.addresses import JOIN_PORT
from dockyard.common.authz import AuthInterceptor
from dockyard.common.listen import bind_port
from dockyard.common.statedir import ensure_private_dir
from dockyard.v1 import agent_pb2_grpc
from dockyard.v1.dispatcher_pb2 import AssignmentSet, NetworkMap
from dockyard.v1.types_pb2 import NodeDescription

if TYPE_CHECKING:
    from dockyard.agent.containers.admission import Admission
    from dockyard.agent.containers.service import ContainerService
    from dockyard.agent.dockerapi.listen import DockerApiServer
    from dockyard.agent.executor import Executor
    from dockyard.agent.executors.task import TaskExecutor
    from dockyard.agent.images.service import ImageService
    from dockyard.agent.metrics.http import MetricsServer
    from dockyard.agent.metrics.source import ContainerRef
    from dockyard.agent.network.attacher import NetworkAttacher
    from dockyard.agent.network.cluster import ClusterNetwork
    from dockyard.agent.network.detach_queue import DetachQueue
    from dockyard.agent.runtime.docker import DockerRuntime
    from dockyard.agent.runtime.hollow import HollowRuntime
    from dockyard.agent.runtime.runc.runtime import RuncRuntime

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest gRPC message either way (a container list or an image config fits easily)."""
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class AgentStartError(RuntimeError):
    pass


class AgentDaemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._node_name = ""
        self.server: grpc.aio.Server | None = None
        self.session: ControllerSession | None = None
        self.port = 0
        self._description: NodeDescription | None = None
        self.containers: ContainerService | None = None
        self._runc_runtime: RuncRuntime | None = None
        self._images: ImageService | None = None
        self.worker: Worker | None = None
        self._docker: TaskExecutor | None = None
        self._hollow: TaskExecutor | None = None
        self._runc: TaskExecutor | None = None
        self.cluster_network: ClusterNetwork | None = None
        self._controllers: list[str] = []
        self._node_id = ""
        self._node_pki: NodePKI | None = None
        self.metrics: MetricsServer | None = None
        self.docker_api: DockerApiServer | None = None
        self._admission: Admission | None = None
        self._detaches: DetachQueue | None = None
        """Releases of cluster-network attachments not yet made (Docker API, runc)."""
        self._pulls = PullMetrics()
        self._revoked: frozenset[str] = frozenset()
        """Serials of the cluster's revoked certificates (from the network map): the API
        refuses them, as the controllers do."""

    async def start(self) -> None:
        config = self.config
        ensure_private_dir(config.state_dir)
        identity = load_or_create(config.state_dir, config.name)
        self._node_id = identity.node_id
        self._node_name = identity.name
        node_pki = NodePKI.of(config.state_dir)
        controllers = self._controllers = config.controllers or node_pki.controllers()
        if not controllers:
            raise AgentStartError("no controller: give --controller, or run `dockyard-agent join`")
        if config.insecure:
            self.server = grpc.aio.server(options=SERVER_OPTIONS)
            self.port = bind_port(self.server, config.listen)
            log.warning(
                "agent.INSECURE",
                message="--insecure: this agent's API and its session are PLAINTEXT and "
                "UNAUTHENTICATED; anyone who reaches its port controls this host",
            )
        else:
            if not node_pki.exists():
                raise AgentStartError(
                    f"no node certificate in {node_pki.directory}: run `dockyard-agent join "
                    f"--token TOKEN CONTROLLER:{JOIN_PORT} --state-dir {config.state_dir}` "
                    "first (or pass --insecure for plaintext)"
                )
            cert_identity = node_pki.identity()
            if cert_identity.id != identity.node_id:
                raise AgentStartError(
                    f"the node certificate is for node {cert_identity.id}, but "
                    f"{config.state_dir} holds node {identity.node_id}: join again"
                )
            self._node_pki = node_pki
            self._revoked = await asyncio.to_thread(node_pki.load_revoked)
            self.server = grpc.aio.server(
                options=SERVER_OPTIONS,
                interceptors=[AuthInterceptor(lambda serial: serial in self._revoked)],
            )
            self.port = bind_port(self.server, config.listen, node_pki.server_credentials())
        if self.port == 0:
            raise AgentStartError(f"cannot listen on {config.listen}: address in use or invalid")
        api_address = config.advertise or f"{config.listen.rsplit(':', 1)[0]}:{self.port}"
        self._description = hostinfo.describe_host(
            config.runtime,
            await hostinfo.runtime_version(config.runtime),
            api_address,
            hostinfo.host_resources(config.cpus, config.memory_bytes),
        )
        self.session = ControllerSession(
            controllers,
            identity,
            self.describe,
            on_assignments=self._on_assignments,
            on_network=self._on_network,
            credentials=None if config.insecure else node_pki.channel_credentials,
        )
        agent_pb2_grpc.add_AgentServicer_to_server(
            AgentServicer(identity, self.session, self.describe, str(config.state_dir)),
            self.server,
        )
        executor: Executor | None = None
        if config.runtime == "runc":
            executor = await self._start_containers(self.server)
        elif config.runtime == "docker":
            executor = await self._start_docker(self.server)
        elif config.runtime == "hollow":
            from dockyard.agent.runtime.hollow import HollowRuntime

            executor = self._hollow = hollow_executor(HollowRuntime())
        if config.metrics_listen:  # before the worker: a port in use stops the start
            self.metrics = await self._start_metrics(identity.name)
        if config.docker_api_socket is not None or config.docker_api_listen:
            # runc: the node's container service; hollow and docker: their executor's
            service = self.containers or getattr(executor, "service", None)
            self.docker_api = await self._start_docker_api(identity.name, service)
        if executor is not None:
            self.worker = Worker(
                executor, self.session, config.state_dir, secrets=getattr(executor, "secrets", None)
            )
            await self.worker.start()
        await self.server.start()
        log.info(
            "agent.started",
            node_id=identity.node_id,
            name=identity.name,
            api=api_address,
            controllers=controllers,
            tls=not config.insecure,
            runtime=config.runtime,
        )

    async def _on_assignments(self, assignments: AssignmentSet) -> None:
        if self._runc is not None:  # a delta adds to what the last sets gave
            sources = {s.image: tuple(s.api_addresses) for s in assignments.image_sources}
            auths = dict(assignments.registry_auths)
            if not assignments.full:
                sources = {**self._runc.image_sources, **sources}
                auths = {**self._runc.registry_auths, **auths}
            self._runc.image_sources = sources
            self._runc.registry_auths = auths
        if self.worker is not None:
            await self.worker.on_assignments(assignments)
            if self._runc is not None and not assignments.full:  # only its tasks' services
                held = self.worker.service_ids()
                auths = self._runc.registry_auths
                self._runc.registry_auths = {i: a for i, a in auths.items() if i in held}
        else:
            log.warning(
                "agent.assignments_ignored",
                runtime=self.config.runtime,
                tasks=len(assignments.tasks),
            )

    async def _on_network(self, network_map: NetworkMap) -> None:
        revoked = frozenset(network_map.revoked_serials)
        if revoked != self._revoked and self._node_pki is not None:
            self._revoked = revoked
            await asyncio.to_thread(self._node_pki.save_revoked, revoked)
            log.info("agent.revocations", count=len(revoked))
        if self.cluster_network is not None:
            await self.cluster_network.on_map(network_map)

    async def _start_docker(self, server: grpc.aio.Server) -> Executor:
        """The host's Docker engine runs the tasks; it must answer now. Of the
        Containers API only Logs is served (for `service logs`)."""
        from dockyard.agent.containers.docker_logs import DockerLogsServicer
        from dockyard.agent.runtime.base import ContainerRuntimeError
        from dockyard.agent.runtime.docker import DockerRuntime

        runtime = DockerRuntime(self.config.docker_host)
        try:
            version = await runtime.version()
        except ContainerRuntimeError as exc:
            await runtime.close()
            raise AgentStartError(str(exc)) from exc
        executor = docker_executor(runtime, self._secret_files())
        self._docker = executor
        server.add_generic_rpc_handlers((DockerLogsServicer(runtime).handler(),))
        log.info("agent.docker", host=self.config.docker_host, version=version)
        return executor

    async def _start_containers(self, server: grpc.aio.Server) -> Executor:
        """The runc backend (runtime, the node's image store, its bridge as the network
        step) under the container service, and their API; recovers containers."""
        from dockyard.agent.containers.admission import Admission
        from dockyard.agent.containers.backends import BridgeAttacher, LocalImages
        from dockyard.agent.containers.images_servicer import ImagesServicer
        from dockyard.agent.containers.peer_servicer import PeerServicer
        from dockyard.agent.containers.service import ContainerService
        from dockyard.agent.containers.servicer import ContainersServicer
        from dockyard.agent.containers.volumes_servicer import VolumesServicer
        from dockyard.agent.executors.task import TaskExecutor
        from dockyard.agent.images.peer_fetch import PeerFetcher
        from dockyard.agent.images.service import ImageService
        from dockyard.agent.network.bridge import (
            DEFAULT_SUBNET,
            BridgeConfig,
            BridgeNetwork,
            assigned_subnet,
        )
        from dockyard.agent.network.cluster import ClusterNetwork
        from dockyard.agent.network.local_bridges import LocalBridges
        from dockyard.agent.network.overlays import OverlayManager
        from dockyard.agent.runtime.runc.runtime import RuncRuntime
        from dockyard.common.distribution.settings import registry_config
        from dockyard.v1 import containers_pb2_grpc, images_pb2_grpc, peer_pb2_grpc

        config = self.config
        registry = registry_config(
            config.registry_mirrors, config.insecure_registries, config.registry_config
        )
        images = await asyncio.to_thread(
            ImageService, config.state_dir / "images", registry, on_blob=self._pulls.observe
        )
        network_dir = config.state_dir / "network"
        subnet = (
            config.bridge_subnet
            or await asyncio.to_thread(assigned_subnet, network_dir)
            or DEFAULT_SUBNET
        )
        bridge = BridgeConfig(bridge=config.bridge, subnet=subnet, cni_path=tuple(config.cni_path))
        network = BridgeNetwork(network_dir, bridge, subnet_fixed=bool(config.bridge_subnet))
        overlays = OverlayManager()
        local = LocalBridges(network_dir, config.bridge, tuple(config.cni_path))
        self.cluster_network = ClusterNetwork(
            network, route_peers=config.peer_routes, overlays=overlays, local=local
        )
        runtime = RuncRuntime(config.state_dir / "runtime", cgroup_parent=config.cgroup_parent)
        manager = ContainerService(
            runtime,
            LocalImages(images),
            config.state_dir / "containers",
            network=BridgeAttacher(network, local),
            overlays=overlays,
        )
        try:
            await manager.start()
        except Exception as exc:
            raise AgentStartError(f"cannot recover containers: {exc}") from exc
        self.containers, self._runc_runtime, self._images = manager, runtime, images
        own = {str(config.state_dir.absolute()), str(config.state_dir.resolve())}
        admission = self._admission = Admission(config.allow_privileged, tuple(sorted(own)))
        containers_pb2_grpc.add_ContainersServicer_to_server(
            ContainersServicer(manager, admission), server
        )
        images_pb2_grpc.add_ImagesServicer_to_server(ImagesServicer(images, manager), server)
        containers_pb2_grpc.add_VolumesServicer_to_server(VolumesServicer(manager), server)
        images.peer_fetcher = PeerFetcher(  # the node's certificate; None: --insecure
            self._node_pki.channel_credentials if self._node_pki is not None else None
        )
        peer_pb2_grpc.add_PeerServicer_to_server(PeerServicer(images.store.blobs), server)
        self._runc = TaskExecutor(
            manager, self._secret_files(), meshes_ingress=lambda: overlays.meshes_ingress
        )
        self._runc.node_hostname = self._node_name
        return self._runc

    async def _start_metrics(self, node_name: str) -> MetricsServer:
        """`/metrics` on --metrics-listen, over this node's containers (when it runs runc)."""
        from prometheus_client import ProcessCollector
        from prometheus_client.registry import Collector

        from dockyard.agent.metrics.cgroups import detect_reader
        from dockyard.agent.metrics.collector import ContainerCollector
        from dockyard.agent.metrics.exposition import AgentMetrics
        from dockyard.agent.metrics.http import MetricsServer, server_tls
        from dockyard.agent.metrics.node import ConmonCollector, DnsCollector, StoreSizeCollector

        config = self.config
        node: list[Collector] = [ProcessCollector(namespace="dockyard_agent", registry=None)]
        if self._runc_runtime is not None and self._images is not None:
            runtime, store = self._runc_runtime, self._images.store
            node += [
                self._pulls,
                ConmonCollector(runtime.runc_root),
                StoreSizeCollector(
                    {"blobs": store.root / "blobs", "snapshots": store.snapshots_dir}
                ),
            ]
        if self.cluster_network is not None:
            node.append(DnsCollector(self.cluster_network.dns.query_counts))
        collector = ContainerCollector(detect_reader(), node_name, config.metrics_max_containers)
        metrics = AgentMetrics(self._metric_containers, collector, node)
        tls = None
        if self._node_pki is not None:
            pki_files = self._node_pki
            tls = await asyncio.to_thread(server_tls, pki_files.cert, pki_files.key, pki_files.ca)
        server = MetricsServer(
            config.metrics_listen, metrics, tls, lambda serial: serial in self._revoked
        )
        try:
            await server.start()
        except OSError as exc:
            raise AgentStartError(
                f"cannot listen on {config.metrics_listen} (--metrics-listen):"
                f" {exc.strerror or exc}"
            ) from exc
        return server

    async def _start_docker_api(
        self, node_name: str, containers: ContainerService | None
    ) -> DockerApiServer:
        """The Docker Engine API (`agent/dockerapi/`) over this node's services."""
        from dockyard.agent.containers.admission import Admission
        from dockyard.agent.dockerapi.context import DockerApiContext
        from dockyard.agent.dockerapi.listen import (
            DockerApiListenError,
            DockerApiServer,
            ListenConfig,
        )
        from dockyard.agent.dockerapi.server import build_app
        from dockyard.agent.metrics.http import server_tls

        config = self.config
        assert self.session is not None
        attacher = self._attacher()
        self._detaches = await self._detach_queue(attacher)
        context = DockerApiContext(
            node_id=self._node_id,
            node_name=node_name,
            runtime=config.runtime,
            state_dir=config.state_dir,
            describe=self.describe,
            containers=containers,
            images=self._images,
            admission=self._admission or Admission(config.allow_privileged),
            session=self.session.status,
            controllers=list(self._controllers),
            cluster_network=self.cluster_network,
            attacher=attacher,
            detaches=self._detaches,
            connected=self.session.connected,
        )
        tls = None
        if self._node_pki is not None and config.docker_api_listen:
            pki_files = self._node_pki
            tls = await asyncio.to_thread(server_tls, pki_files.cert, pki_files.key, pki_files.ca)
        listen = ListenConfig(
            socket=config.docker_api_socket,
            group=config.docker_api_group,
            group_required=config.docker_api_group_required,
            tcp=config.docker_api_listen,
            insecure=config.docker_api_insecure,
        )
        try:
            server = DockerApiServer(
                build_app(context), listen, tls, lambda serial: serial in self._revoked
            )
            await server.start()
        except DockerApiListenError as exc:
            raise AgentStartError(str(exc)) from exc
        return server

    async def _metric_containers(self) -> list[ContainerRef]:
        """The one place the metrics read the node's containers (runc runtime only)."""
        from dockyard.agent.metrics.source import ContainerRef
        from dockyard.agent.runtime.base import ContainerStatus

        if self.containers is None or self._runc_runtime is None:
            return []
        parent = self._runc_runtime.cgroup_parent
        return [
            ContainerRef(
                id=i.id,
                name=i.name,
                image=i.image,
                cgroups_path=f"/{parent}/{i.id}",
                pid=i.state.pid,
                running=i.state.status is ContainerStatus.RUNNING,
                restarts=i.state.restart_count,
                oom_killed=i.state.oom_killed,
                started_at=i.state.started_at.timestamp() if i.state.started_at else 0.0,
                host_network=i.config.network == "host",
                labels=i.labels,
            )
            for i in (view.info for view in await self.containers.list(all=True))
        ]

    def _attacher(self) -> NetworkAttacher | None:
        """Attaches the Docker API's containers to cluster networks (runc: the one
        runtime whose containers join overlays)."""
        from dockyard.agent.network.attacher import NetworkAttacher

        if self.session is None or self.containers is None or self.containers.overlays is None:
            return None
        return NetworkAttacher(self._node_id, self.session.channel)

    async def _detach_queue(self, attacher: NetworkAttacher | None) -> DetachQueue | None:
        """The releases the attacher could not make yet (recorded in the state dir)."""
        from dockyard.agent.network.detach_queue import DetachQueue

        session = self.session
        if attacher is None or session is None:
            return None
        queue = DetachQueue(
            attacher,
            self.config.state_dir / "dockerapi" / "pending-detaches.json",
            session.connected,
            lambda: session.status.session_id,
        )
        await queue.load()
        return queue

    def _secret_files(self) -> SecretFiles:
        """Where this agent's tasks' secret files go (a tmpfs, mounted on first use)."""
        return SecretFiles(SECRETS_ROOT / self._node_id)

    def describe(self) -> NodeDescription:
        assert self._description is not None
        if self.cluster_network is None:
            return self._description
        described = NodeDescription()
        described.CopyFrom(self._description)
        described.bridge_subnet, described.bridge_subnet_fixed = (
            self.cluster_network.bridge.subnet_claim()
        )
        return described

    async def run(self) -> None:
        """Run the agent's loops (after `start`) until cancelled, in one task group.

        Raises:
            ExceptionGroup: what ended a loop: `SessionRefused` (the controller refused
                this node for good) or an error no loop handles (a bug, logged here);
                the other loops are cancelled then.
        """
        session = self.session
        assert session is not None, "start() first"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(session.run(), name="session")
                if self.cluster_network is not None:
                    group.create_task(self.cluster_network.run(), name="cluster-network")
                if self._node_pki is not None:
                    first = self._controllers[0]
                    renewal = renew_loop(
                        self._node_pki, lambda: session.status.controller or first, []
                    )
                    group.create_task(renewal, name="cert-renewal")
                if self.worker is not None:
                    group.create_task(self.worker.wait(), name="worker")
                if self.docker_api is not None:
                    group.create_task(self.docker_api.refresh_tls(), name="docker-api-tls")
                if self._detaches is not None:
                    group.create_task(self._detaches.run(), name="network-detaches")
        except Exception as exc:
            for error in exception_leaves(exc):
                if not isinstance(error, SessionRefused):
                    reason = str(error) or type(error).__name__
                    log.error("agent.failed", error=reason, exc_info=error)
            raise

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving and close every part (after `run` has ended)."""
        if self.server is not None:
            await self.server.stop(grace)
        if self.metrics is not None:
            await self.metrics.stop()
        if self.docker_api is not None:  # its listeners, connections and socket
            await self.docker_api.stop()
        if self.worker is not None:  # its containers keep running
            await self.worker.close()
        if self.cluster_network is not None:  # routes and rules stay for the containers
            await self.cluster_network.close()
        if self.containers is not None:  # containers keep running (live restore)
            await self.containers.close()
        if self._images is not None:  # pulls under way are cancelled
            await self._images.close()
        if self._docker is not None:  # the engine keeps its containers
            await self._docker.close()
        if self._hollow is not None:  # its watchers (the simulated containers end here)
            await self._hollow.close()
        log.info("agent.stopped")


def exception_leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in a (nested) exception group, or the one given."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in exception_leaves(inner)]
    return [error]


def hollow_executor(runtime: HollowRuntime) -> TaskExecutor:
    """The hollow backend: simulated containers, images and networking under the container
    service (its records in memory: nothing outlives the process)."""
    from dockyard.agent.containers.backends import EngineImages, EngineNetwork
    from dockyard.agent.containers.service import ContainerService
    from dockyard.agent.executors.task import TaskExecutor

    return TaskExecutor(ContainerService(runtime, EngineImages(), None, None, EngineNetwork()))


def docker_executor(runtime: DockerRuntime, secrets: SecretFiles | None = None) -> TaskExecutor:
    """The docker backend: the engine keeps images, networking and named volumes, so the
    container service pairs its runtime with `EngineImages` and `EngineNetwork` (its
    records in memory: the engine keeps the containers, with their task labels)."""
    from dockyard.agent.containers.backends import EngineImages, EngineNetwork
    from dockyard.agent.containers.service import ContainerService
    from dockyard.agent.executors.task import TaskExecutor

    images = EngineImages(runtime.has_image, runtime.pull)
    return TaskExecutor(ContainerService(runtime, images, None, None, EngineNetwork()), secrets)
