"""The controller process: store, leadership, dispatcher, monitor and API wired together."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from dockyard.common import pki
from dockyard.common.authz import AuthInterceptor
from dockyard.common.etcd_pki import make_etcd_pki
from dockyard.common.etcd_server import EtcdServer
from dockyard.common.listen import bind_port
from dockyard.common.statedir import ensure_private_dir, write_private
from dockyard.common.timestamps import now_timestamp
from dockyard.common.version import package_version
from dockyard.controller import schema
from dockyard.controller.api.control import ControllerIdentity, ControlServicer, cluster_info
from dockyard.controller.api.nodes import NodesAPI
from dockyard.controller.api.services import ServicesAPI
from dockyard.controller.assignments import Assigner, StatusWriter
from dockyard.controller.at_rest import SecretCipher
from dockyard.controller.attachments import AttachmentRegistry
from dockyard.controller.ca import (
    CAMismatch,
    ClusterCA,
    NodeCAServicer,
    has_ca,
    pki_dir,
    publish_ca,
)
from dockyard.controller.cluster import CLUSTER_ID, ClusterRecord
from dockyard.controller.config import ControllerConfig
from dockyard.controller.dispatcher import Dispatcher, Term
from dockyard.controller.http.metrics import (
    ClusterSources,
    ControllerMetrics,
    GrpcMetricsInterceptor,
)
from dockyard.controller.images import ImageResolver
from dockyard.controller.ingress_network import NodeAddresses
from dockyard.controller.leadership import Leadership
from dockyard.controller.network_map import NetworkMapper
from dockyard.controller.networks import NetworkRegistry
from dockyard.controller.nodemonitor import NodeMonitor
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.orchestrators.carry import PlanningCarry
from dockyard.controller.orchestrators.loop import Orchestrator
from dockyard.controller.peers import ControllerDirectory
from dockyard.controller.reader_supervisor import ReaderProcess, ReaderStartError, setup_for
from dockyard.controller.registration import Registration
from dockyard.controller.revision_cell import RevisionCell
from dockyard.controller.scheduler.constraints import parse_constraints
from dockyard.controller.scheduler.loop import SchedulingLoop
from dockyard.controller.secret_rewrap import SecretRewrapper
from dockyard.controller.services import ServiceRegistry
from dockyard.controller.sessions import Post, SessionRegistry
from dockyard.controller.snapshot import SnapshotBoard
from dockyard.controller.state import ClusterState
from dockyard.controller.store import CLUSTER, AlreadyExists, Fence, NotFound, Store
from dockyard.controller.subnets import protected_address
from dockyard.controller.supervision import Supervisor
from dockyard.v1 import ca_pb2_grpc, control_pb2_grpc, dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import DispatcherMessage
from dockyard.v1.types_pb2 import Cluster, ControllerRecord, Node
from dockyard.v1.workloads_pb2 import Service

if TYPE_CHECKING:
    from dockyard.controller.http.server import HttpServer

log = structlog.get_logger(__name__)

# The largest request the API takes (and answer it sends): a bigger one gets
# RESOURCE_EXHAUSTED before it is parsed.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Seconds a new term waits for the view to reach etcd's revision before its loops start.
TERM_CATCH_UP = 60.0
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", -1),
]


class ControllerStartError(RuntimeError):
    pass


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.etcd: EtcdServer | None = None
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.join_server: grpc.aio.Server | None = None
        self.ca: ClusterCA | None = None
        self.leadership: Leadership | None = None
        self.dispatcher: Dispatcher | None = None
        self.sessions = SessionRegistry()
        self.term: Term | None = None
        """What the current leader term lends the dispatcher (None between terms)."""
        self.port = 0
        self._jobs: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._background: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()
        """Set when a background job (leadership, registration, revocations) failed."""
        self.state: ClusterState | None = None
        self.board = SnapshotBoard()  # the view's snapshots, for the read API
        self.view: ClusterState | None = None
        """This controller's view, kept by a watch whether it leads or not: a term starts
        from it (`state` is it while this controller leads, None otherwise)."""
        # What the orchestrator of this controller's last term left to plan (kept, as
        # the view is, for its next term).
        self._planning: PlanningCarry | None = None
        self.reader: ReaderProcess | None = None
        """The read port's process (--read-listen), controller/reader_supervisor.py."""
        self._own_writes: RevisionCell | None = None
        self.read_port = 0
        self.read_http_port = 0
        self.scheduling: SchedulingLoop | None = None
        self.metrics = ControllerMetrics(package_version())
        self.metrics.count_session_messages(lambda: self.sessions.messages)
        self.http: HttpServer | None = None
        self.directory: ControllerDirectory | None = None
        self._client_tls: tuple[bytes, bytes, bytes] | None = None  # CA, key, certificate
        self.cipher = SecretCipher(config.secret_keys)
        """Seals and opens secrets' data at rest (plaintext without a key file)."""

    async def start(self) -> None:
        config = self.config
        ensure_private_dir(config.state_dir)
        if not config.insecure and not has_ca(config.state_dir):
            raise ControllerStartError(
                f"no cluster CA in {pki_dir(config.state_dir)}: run `dockyard-controller init "
                f"--state-dir {config.state_dir}` first (or pass --insecure for plaintext)"
            )
        controller_id = _load_or_create_id(config.state_dir / "controller-id")
        store, endpoints = await self._connect_store()
        cluster = await _load_or_create_cluster(store)
        registry = NodeRegistry(store, self.config.subnets, lambda: self._own_addresses(endpoints))
        server = await self._listen(controller_id)
        view = self.view = ClusterState(store, self.board)
        self._jobs.append(("view", lambda: Supervisor().supervise("view", view.follow)))
        advertise = config.advertise or _with_port(config.listen, self.port)
        leadership = self.leadership = Leadership(
            store, controller_id, advertise, config.leader_ttl
        )
        self.dispatcher = Dispatcher(
            registry,
            self.sessions,
            cluster.id,
            config.heartbeat_period,
            config.node_grace,
            self.leadership.leader_address,
            lambda: self.term,
            self.ca.is_revoked if self.ca is not None else lambda serial: False,
            self.leadership.await_leader,
            lambda: leadership.term,
            leadership.holds,
        )
        identity = self._identify(cluster.id, controller_id, endpoints)
        nodes_api, services_api = self._add_servicers(server, store, registry, identity)
        await server.start()
        if self.join_server is not None:
            await self.join_server.start()
        await self._start_http(identity, nodes_api, services_api)
        await self._start_reader(store)
        self._jobs.insert(0, ("leadership", lambda: leadership.run(self._lead)))
        self._register(controller_id, advertise)
        self._background = asyncio.create_task(self._run_jobs(), name="controller.jobs")
        log.info(
            "controller.started",
            listen=_with_port(config.listen, self.port),
            controller_id=controller_id,
            cluster_id=cluster.id,
            etcd=endpoints,
            embedded_etcd=self.etcd is not None,
            tls=not config.insecure,
            join=config.join_listen if self.join_server is not None else "",
            ca_fingerprint=self.ca.ca.fingerprint if self.ca else "",
            secret_key_id=config.secret_keys.write_key.id if config.secret_keys else "",
        )

    async def _connect_store(self) -> tuple[Store, list[str]]:
        """The store on the configured etcd, or on an embedded one started here."""
        config = self.config
        endpoints = list(config.etcd_endpoints)
        credentials: dict[str, Any] = dict(config.etcd_credentials)
        if not endpoints:
            tls = await asyncio.to_thread(make_etcd_pki, config.state_dir / "etcd" / "pki")
            self.etcd = EtcdServer(
                config.state_dir / "etcd" / "data",
                log_path=config.state_dir / "etcd.log",
                tls=tls,
            )
            await self.etcd.start()
            endpoints = [self.etcd.endpoint]
            credentials = tls.store_credentials()
        self.store = Store(endpoints, config.etcd_prefix, **credentials)
        self.store.observe = self.metrics.observe_etcd
        await self.store.connect(config.etcd_timeout)
        return self.store, endpoints

    async def _listen(self, controller_id: str) -> grpc.aio.Server:
        """The API's server, bound (plaintext with --insecure, else mutual TLS)."""
        config = self.config
        if config.insecure:
            self.server = grpc.aio.server(
                interceptors=[GrpcMetricsInterceptor(self.metrics)], options=SERVER_OPTIONS
            )
            self.port = bind_port(self.server, config.listen)
            log.warning(
                "controller.INSECURE",
                message="--insecure: the API and the agents' sessions are PLAINTEXT and "
                "UNAUTHENTICATED; anyone who reaches this port controls the cluster",
            )
        else:
            self.port = await self._listen_tls(controller_id)
        assert self.server is not None
        if self.port == 0:
            raise ControllerStartError(
                f"cannot listen on {config.listen}: address in use or invalid"
            )
        return self.server

    def _add_servicers(
        self,
        server: grpc.aio.Server,
        store: Store,
        registry: NodeRegistry,
        identity: ControllerIdentity,
    ) -> tuple[NodesAPI, ServicesAPI]:
        """The Control, Dispatcher and NodeCA services on `server`."""
        config = self.config
        assert self.dispatcher is not None
        cluster_record = ClusterRecord(store)
        resolver = ImageResolver(config.registry, config.resolve_image, config.resolve_timeout)
        nodes_api = NodesAPI(
            registry,
            self.sessions,
            lambda: self.state,
            store.current_revision,
            lambda: store.last_revision,
        )
        networks = NetworkRegistry(
            store,
            config.networks,
            config.subnets.pool,
            lambda: [
                p
                for a in self._own_addresses(store.endpoints)
                if (p := protected_address("controller or etcd", a)) is not None
            ],
        )
        services_api = ServicesAPI(
            store,
            ServiceRegistry(store, self.cipher),
            registry,
            cluster_record,
            resolver,
            lambda: self.state,
            networks=networks,
        )
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlServicer(
                identity,
                store,
                nodes_api,
                services_api,
                self.sessions,
                lambda: self.leadership,
                cluster_record,
                self.ca,
                self.directory,
                networks,
                self.cipher,
            ),
            server,
        )
        dispatcher_pb2_grpc.add_DispatcherServicer_to_server(self.dispatcher, server)
        if self.ca is not None:
            ca_pb2_grpc.add_NodeCAServicer_to_server(
                NodeCAServicer(self.ca, config.state_dir), server
            )
            sessions = self.sessions
            self.ca.on_revoke = lambda serial, subject: sessions.close_serial(serial)
            self.ca.on_change = self._revocations_changed
            self._jobs.append(("revocations", self.ca.watch_revocations))
        return nodes_api, services_api

    async def _start_reader(self, store: Store) -> None:
        """The list reads on --read-listen, served by a process of its own with its own
        watch and view (controller/reader.py), restarted when it dies."""
        config = self.config
        if not config.read_listen and not config.read_http_listen:
            return
        self._own_writes = cell = RevisionCell.create()
        cell.set(store.last_revision)
        store.committed = cell.set
        credentials, server_name = store.client_settings()
        reader = self.reader = ReaderProcess(
            setup_for(
                config.read_listen,
                store.endpoints,
                store.prefix,
                credentials,
                server_name,
                config.etcd_timeout,
                self._client_tls,
                cell,
                config.log_level,
                config.read_http_listen,
            ),
            cell,
        )
        try:
            self.read_port = await reader.start()
            self.read_http_port = reader.http_port
        except ReaderStartError as exc:
            raise ControllerStartError(str(exc)) from exc
        self._jobs.append(("reader", reader.run))

    def _identify(
        self, cluster_id: str, controller_id: str, endpoints: list[str]
    ) -> ControllerIdentity:
        """This controller as the API describes it, and its directory of the others."""
        assert self.store is not None
        self.directory = ControllerDirectory(self.store, controller_id, self._peer_credentials())
        return ControllerIdentity(
            cluster_id,
            controller_id,
            endpoints,
            self.etcd is not None,
            time.monotonic(),
            self.config.http_listen,
            self.config.heartbeat_period,
            self.config.node_grace,
        )

    def _register(self, controller_id: str, advertise: str) -> None:
        """Publish this controller's record in etcd (on its own lease) while it runs:
        `dockyard info` on any controller lists it (controller/registration.py)."""
        assert self.store is not None
        registration = Registration(
            self.store,
            ControllerRecord(
                controller_id=controller_id,
                api_address=advertise,
                http_address=self.config.http_listen,
                version=package_version(),
                started_at=now_timestamp(),
            ),
            self.config.leader_ttl,
        )
        self._jobs.append(("registration", registration.run))

    async def _run_jobs(self) -> None:
        """The controller's background jobs in one task group, until `stop`: one that
        fails is logged at once, ends the others and sets `failed` (the process exits),
        instead of waiting unseen until the controller stops."""
        try:
            async with asyncio.TaskGroup() as group:
                for name, job in self._jobs:
                    group.create_task(job(), name=f"controller:{name}")
        except* Exception as failed:
            for exc in failed.exceptions:
                log.error(
                    "controller.job_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc
                )
            self.failed.set()

    async def _start_http(
        self, identity: ControllerIdentity, nodes: NodesAPI, services: ServicesAPI
    ) -> None:
        """The JSON read API, /v1/events, /metrics and the dashboard (controller/http/)."""
        from dockyard.controller.http.server import HttpListenError, ReadSources, start_http
        from dockyard.controller.http.stats import AgentStats

        assert self.store is not None
        sessions, store, ca = self.sessions, self.store, self.ca
        self.metrics.watch_cluster(
            ClusterSources(
                store,
                lambda: self.state,
                lambda: bool(self.leadership and self.leadership.is_leader),
                lambda: len(sessions),
            )
        )
        sources = ReadSources(
            store,
            nodes,
            services,
            lambda: cluster_info(
                identity, store, nodes, services, sessions, self.leadership, self.directory
            ),
            lambda: self.leadership,
            lambda: self.state,
            ca.is_revoked if ca is not None else lambda serial: False,
            AgentStats(self._peer_credentials),
        )
        try:
            self.http = await start_http(
                self.config, sources, self.metrics, ca.ca.cert_pem if ca is not None else None
            )
        except HttpListenError as exc:
            raise ControllerStartError(str(exc)) from exc

    async def _listen_tls(self, controller_id: str) -> int:
        """The main port (mutual TLS, every method authorized by role) and the join
        port (TLS, no client certificate, only IssueNodeCertificate). grpc can only
        require client certificates for a whole port, hence two ports."""
        config = self.config
        assert self.store is not None
        ca = pki.CertificateAuthority.load(pki_dir(config.state_dir))
        try:
            await publish_ca(self.store, ca)
        except CAMismatch as exc:
            raise ControllerStartError(str(exc)) from exc
        self.ca = ClusterCA(
            self.store, ca, dt.timedelta(seconds=config.node_cert_validity), self._controllers
        )
        cert, key = ca.issue_pair(
            pki.CONTROLLER,
            controller_id,
            validity=dt.timedelta(days=365),
            sans=pki.controller_sans(
                config.listen, config.advertise, config.http_listen, config.read_http_listen
            ),
        )
        (pki_dir(config.state_dir) / "controller.pem").write_bytes(cert)
        write_private(pki_dir(config.state_dir) / "controller-key.pem", key)
        await self.ca.record_offline(config.state_dir)  # this one, init's and users'
        chain = cert + ca.cert_pem  # the CA goes along, so a joining host can pin it
        self._client_tls = (ca.cert_pem, key, cert)
        self.server = grpc.aio.server(
            interceptors=[
                GrpcMetricsInterceptor(self.metrics),
                AuthInterceptor(self.ca.is_revoked),
            ],
            options=SERVER_OPTIONS,
        )
        port = bind_port(
            self.server,
            config.listen,
            grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=ca.cert_pem, require_client_auth=True
            ),
        )
        self.join_server = grpc.aio.server(
            interceptors=[
                GrpcMetricsInterceptor(self.metrics),
                AuthInterceptor(public={"/dockyard.v1.NodeCA/IssueNodeCertificate"}),
            ],
            options=SERVER_OPTIONS,
        )
        ca_pb2_grpc.add_NodeCAServicer_to_server(NodeCAServicer(self.ca), self.join_server)
        if (
            bind_port(
                self.join_server, config.join_listen, grpc.ssl_server_credentials([(key, chain)])
            )
            == 0
        ):
            raise ControllerStartError(
                f"cannot listen on {config.join_listen} (--join-listen): address in use or invalid"
            )
        return port

    def _peer_credentials(self) -> grpc.ChannelCredentials | None:
        """This controller's certificate as a client's, to dial the other controllers
        (None with --insecure: they are dialled in plaintext)."""
        if self._client_tls is None:
            return None
        ca_pem, key, cert = self._client_tls
        return grpc.ssl_channel_credentials(ca_pem, key, cert)

    def _own_addresses(self, etcd_endpoints: list[str]) -> list[str]:
        """What no node subnet may cover: etcd, this controller, the leader."""
        config, leadership = self.config, self.leadership
        found = [*etcd_endpoints, config.listen, config.advertise, config.http_listen]
        if leadership is not None and leadership.leader is not None:
            found.append(leadership.leader.api_address)
        return [address for address in found if address]

    def _controllers(self) -> list[str]:
        """Where a joining node should open its session: the leader if known, else here."""
        leadership = self.leadership
        if leadership is not None and leadership.leader is not None:
            return [leadership.leader.api_address]
        return [self.config.advertise or _with_port(self.config.listen, self.port)]

    async def _lead(self, fence: Fence) -> None:
        """One term: the control loops, supervised in one task group, until cancelled
        (the lease is lost) or they give up. Every write of theirs is fenced."""
        assert self.store is not None
        became_leader = time.monotonic()
        store = self.store.fenced(fence)
        self.metrics.leadership_changes.labels("leader").inc()
        state = self.view
        assert state is not None
        try:
            await schema.migrate(store)
            # The view is kept across terms: it need only reach etcd's revision now (every
            # write of the last term is older than this term's fence), not list again.
            await state.wait_for_revision(await store.current_revision(), TERM_CATCH_UP)
            self.state = state
            loops = self._term_loops(store, state, became_leader)
            await self._greet_sessions(state)
            supervisor = Supervisor()
            async with asyncio.TaskGroup() as group:
                for name, run in loops:
                    group.create_task(supervisor.supervise(name, run), name=f"leader:{name}")
        finally:
            self._end_term(state)

    def _term_loops(
        self, store: Store, state: ClusterState, became_leader: float
    ) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """Build one term's loops over `store` (fenced), and what the term lends the
        dispatcher (`term`)."""
        config, ca = self.config, self.ca
        monitor = NodeMonitor(
            NodeRegistry(store, config.subnets),
            self.sessions,
            config.node_grace,
            view=lambda: self.state,
            term_started=became_leader,
        )
        post = leader_post(self.leadership, self.sessions)
        assigner = Assigner(
            state,
            post,
            store,
            self.sessions.takes_deltas,
            self.cipher,
            connected=self.sessions.is_open,
        )
        transitions = self.metrics.task_transitions
        writer = StatusWriter(
            store,
            state,
            lambda state, n: transitions.labels(state).inc(n),
            self.metrics.task_reports.inc,
        )
        self.scheduling = SchedulingLoop(
            store, state, config.strategy, self.metrics.observe_scheduling_round
        )
        if self._planning is None or self._planning.state is not state:
            self._planning = PlanningCarry(state)
        orchestrator = Orchestrator(store, state, config.node_down_grace, _eligible, self._planning)
        mapper = NetworkMapper(
            state,
            post,
            self.sessions.node_ids,
            ca.unexpired_revocations if ca is not None else lambda now: (),
            self.sessions.takes_map_deltas,
        )
        self.term = Term(
            writer,
            NodeRegistry(store, config.subnets),
            assigner,
            mapper,
            AttachmentRegistry(store, state),
        )
        return [
            ("nodemonitor", monitor.run),
            ("assigner", assigner.run),
            ("taskstatus", writer.run),
            ("scheduler", self.scheduling.run),
            ("orchestrator", orchestrator.run),
            ("networkmap", mapper.run),
            ("ingressaddresses", NodeAddresses(store, state).run),
            *self._rewrap_loop(store),
        ]

    def _rewrap_loop(self, store: Store) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """With an --encryption-key-file: the term's pass that re-encrypts secrets' data
        under its first key (plaintext ones, and those of a rotated key)."""
        if not self.cipher.enabled:
            return []
        return [("secretrewrap", SecretRewrapper(store, self.cipher).run)]

    async def _greet_sessions(self, state: ClusterState) -> None:
        """Sessions opened as the term began (before the loops were hooked) get their
        network map and full assignment set now (not those the last term closed, still
        ending: their agents' next sessions are greeted)."""
        term = self.term
        assert term is not None and term.assigner is not None
        for node_id in self.sessions.open_node_ids():
            if term.network_mapper is not None and (node := state.nodes.get(node_id)):
                term.network_mapper.send_now(node)
            await term.assigner.send_now(node_id)

    def _end_term(self, state: ClusterState) -> None:
        """Unhook the loops and close every agent session (they reconnect to the new
        leader); the view carries on, for the next term."""
        self.metrics.leadership_changes.labels("follower").inc()
        self.term = None
        self.sessions.close_all()
        if self.state is state:
            self.state = None

    def _revocations_changed(self) -> None:
        """When leading, send every agent the new revocation list (in its network map)."""
        if self.term is not None and self.term.network_mapper is not None:
            self.term.network_mapper.revocations_changed()

    async def stop(self, grace: float = 2.0) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.leadership is not None:
            self.leadership.close()
        await self._stop_jobs()  # leadership's term ends, its lease is given back
        self.sessions.close_all()
        if self.reader is not None:
            await self.reader.stop(grace)
            self.reader = None
        if self._own_writes is not None:
            if self.store is not None:
                self.store.committed = lambda revision: None
            self._own_writes.close()
            self._own_writes = None
        if self.join_server is not None:
            await self.join_server.stop(grace)
        if self.server is not None:
            await self.server.stop(grace)
        if self.store is not None:
            await self.store.close()
        if self.etcd is not None:
            await self.etcd.stop()
        log.info("controller.stopped")

    async def _stop_jobs(self) -> None:
        background, self._background = self._background, None
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background


def _eligible(service: Service, node: Node) -> bool:
    """Whether a node satisfies a service's placement constraints (global mode)."""
    return all(c.matches(node) for c in parse_constraints(service.spec.task.placement.constraints))


def _load_or_create_id(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    new_id = secrets.token_hex(10)
    path.write_text(new_id + "\n")
    return new_id


async def _load_or_create_cluster(store: Store) -> Cluster:
    """The cluster's record, once the records' schema is one this controller reads
    (schema.SchemaError, a StoreError, when not)."""
    await schema.check(store)
    try:
        return await store.get(CLUSTER, CLUSTER_ID)
    except NotFound:
        pass
    cluster = Cluster(id=secrets.token_hex(10), created_at=now_timestamp())
    try:
        await store.create(CLUSTER, CLUSTER_ID, cluster)
        log.info("cluster.created", cluster_id=cluster.id)
        return cluster
    except AlreadyExists:
        return await store.get(CLUSTER, CLUSTER_ID)


def leader_post(leadership: Leadership | None, sessions: SessionRegistry) -> Post:
    """Posting to a node's outbox while this controller leads. What is posted leaves
    only while the lease is provably held (the dispatcher's `lease_proven`: messages are
    not fenced by etcd, that is their fence), so agents get nothing from a leader paused
    past its lease, and a set posted while the lease is unproven for a moment waits in
    the outbox rather than being lost (the assigner counts it as sent: dropped, it
    stranded tasks ASSIGNED on a connected node)."""
    assert leadership is not None

    def post(node_id: str, message: DispatcherMessage) -> bool:
        return leadership.is_leader and sessions.post(node_id, message)

    return post


def _with_port(listen: str, port: int) -> str:
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"
