"""The Control service: what `dockyard` speaks to a controller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from dockyard.common.metadata import WARNING_KEY
from dockyard.common.version import version_info
from dockyard.controller.api.nodes import NodesAPI
from dockyard.controller.api.services import ServicesAPI
from dockyard.controller.at_rest import SecretCipher
from dockyard.controller.ca import ClusterCA
from dockyard.controller.cluster import ClusterRecord
from dockyard.controller.errors import FailedPrecondition, grpc_errors
from dockyard.controller.leadership import Leadership
from dockyard.controller.networks import NetworkRegistry
from dockyard.controller.peers import ControllerDirectory, PeerStatus
from dockyard.controller.secrets import CONFIG_KIND, SecretRegistry, without_data
from dockyard.controller.sessions import SessionRegistry
from dockyard.controller.store import EtcdMember, Store, StoreError, StoreUnavailable
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    ClusterInfo,
    ControllerInfo,
    CreateConfigRequest,
    CreateJoinTokenRequest,
    CreateJoinTokenResponse,
    CreateSecretRequest,
    CreateServiceRequest,
    EtcdMemberInfo,
    GetClusterRequest,
    GetConfigRequest,
    GetInfoRequest,
    GetNodeRequest,
    GetSecretRequest,
    GetServiceRequest,
    GetTaskRequest,
    ListConfigsRequest,
    ListConfigsResponse,
    ListJoinTokensRequest,
    ListJoinTokensResponse,
    ListNodesRequest,
    ListNodesResponse,
    ListSecretsRequest,
    ListSecretsResponse,
    ListServicesRequest,
    ListServicesResponse,
    ListTasksRequest,
    ListTasksResponse,
    RemoveConfigRequest,
    RemoveConfigResponse,
    RemoveNodeRequest,
    RemoveNodeResponse,
    RemoveSecretRequest,
    RemoveSecretResponse,
    RemoveServiceRequest,
    RemoveServiceResponse,
    UpdateClusterRequest,
    UpdateNodeRequest,
    UpdateServiceRequest,
)
from dockyard.v1.networks_pb2 import (
    CreateNetworkRequest,
    GetNetworkRequest,
    ListNetworksRequest,
    ListNetworksResponse,
    Network,
    RemoveNetworkRequest,
    RemoveNetworkResponse,
)
from dockyard.v1.types_pb2 import Cluster, GetVersionRequest, Node, NodeStatus, VersionInfo
from dockyard.v1.workloads_pb2 import Config, Secret, Service, Task

Context = grpc.aio.ServicerContext[object, object]

T = TypeVar("T")


def _send_warnings(context: Context, warnings: Sequence[str]) -> None:
    if warnings:  # metadata values are ASCII
        context.set_trailing_metadata(
            tuple((WARNING_KEY, w.encode("ascii", "backslashreplace").decode()) for w in warnings)
        )


@dataclass
class ControllerIdentity:
    cluster_id: str
    controller_id: str
    etcd_endpoints: Sequence[str]
    etcd_embedded: bool
    started: float
    http_address: str = ""  # where the HTTP side listens ("": off)
    heartbeat_period: float = 0.0
    node_grace: float = 0.0


async def cluster_info(
    identity: ControllerIdentity,
    store: Store,
    nodes_api: NodesAPI,
    services: ServicesAPI,
    sessions: SessionRegistry,
    leadership: Leadership | None,
    directory: ControllerDirectory | None = None,
) -> ClusterInfo:
    """The cluster summary `dockyard info` shows (GetInfo; the HTTP API's /v1/info):
    with `directory`, every controller and every etcd member too.

    When etcd cannot answer (quorum lost) the summary still comes, with `state_error`
    saying why the nodes, tasks and controllers are missing: the members' health is
    what an operator needs most then, and it is asked of each member on its own."""
    info = ClusterInfo(
        cluster_id=identity.cluster_id,
        controller_id=identity.controller_id,
        is_leader=bool(leadership and leadership.is_leader),
        leader_address=(leadership.leader.api_address if leadership and leadership.leader else ""),
        etcd_endpoints=list(identity.etcd_endpoints),
        etcd_embedded=identity.etcd_embedded,
        version=version_info("dockyard-controller"),
        uptime_seconds=time.monotonic() - identity.started,
        heartbeat_period_seconds=identity.heartbeat_period,
        node_grace_seconds=identity.node_grace,
        agent_sessions=len(sessions),
        http_address=identity.http_address,
    )
    reads = [_add_counts(info, nodes_api, services)]
    if directory is not None:
        reads.append(_add_controllers(info, directory))
    try:
        async with asyncio.TaskGroup() as group:
            versioned = group.create_task(_unavailable(store.server_version()))
            if directory is not None:
                group.create_task(_add_members(info, store))
            read = [group.create_task(_unavailable(r)) for r in reads]
    except* StoreError as failed:  # as the caller would get it without the group
        raise failed.exceptions[0] from None
    version = versioned.result()
    info.etcd_version = "unreachable" if isinstance(version, Unreadable) else version
    if why := next((r.result() for r in read if isinstance(r.result(), Unreadable)), None):
        info.state_error = f"the cluster's state cannot be read: {why}"
    return info


class Unreadable(str):
    """Why etcd could not answer one part of the summary."""


async def _unavailable(read: Awaitable[T]) -> T | Unreadable:
    """`read`'s result, or why etcd could not answer it (any other error is raised)."""
    try:
        return await read
    except StoreUnavailable as exc:
        return Unreadable(str(exc))


async def _add_counts(info: ClusterInfo, nodes_api: NodesAPI, services: ServicesAPI) -> None:
    nodes = (await nodes_api.list(ListNodesRequest())).nodes
    states = [n.status.state for n in nodes]
    info.nodes_total = len(nodes)
    info.nodes_ready = states.count(NodeStatus.READY)
    info.nodes_down = states.count(NodeStatus.DOWN)
    info.nodes_unknown = len(nodes) - info.nodes_ready - info.nodes_down
    info.tasks_total, info.tasks_running, info.tasks_pending = await services.task_counts()


async def _add_controllers(info: ClusterInfo, directory: ControllerDirectory) -> None:
    info.controllers.extend(_controller_info(p) for p in await directory.controllers())


async def _add_members(info: ClusterInfo, store: Store) -> None:
    """Every etcd member, each asked on its own (this answers without quorum)."""
    info.etcd_members.extend(_member_info(m) for m in await store.etcd_members())


def _controller_info(peer: PeerStatus) -> ControllerInfo:
    record = peer.record
    info = ControllerInfo(
        controller_id=record.controller_id,
        api_address=record.api_address,
        http_address=record.http_address,
        version=record.version,
        is_leader=peer.is_leader,
        reachable=peer.reachable,
        error=peer.error,
        is_self=peer.is_self,
    )
    if record.HasField("started_at"):
        info.started_at.CopyFrom(record.started_at)
    if peer.leader_since is not None:
        info.leader_since.CopyFrom(peer.leader_since)
    return info


def _member_info(member: EtcdMember) -> EtcdMemberInfo:
    return EtcdMemberInfo(
        id=f"{member.id:x}" if member.id else "",
        name=member.name,
        client_urls=list(member.client_urls),
        is_leader=member.is_leader,
        reachable=member.reachable,
        error=member.error,
        version=member.version,
        db_size=member.db_size,
        db_size_in_use=member.db_size_in_use,
        raft_term=member.raft_term,
        raft_index=member.raft_index,
        raft_applied_index=member.raft_applied_index,
        is_learner=member.is_learner,
        errors=list(member.errors),
    )


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(
        self,
        identity: ControllerIdentity,
        store: Store,
        nodes: NodesAPI,
        services: ServicesAPI,
        sessions: SessionRegistry,
        leadership: Callable[[], Leadership | None],
        cluster: ClusterRecord,
        ca: ClusterCA | None = None,
        directory: ControllerDirectory | None = None,
        networks: NetworkRegistry | None = None,
        cipher: SecretCipher | None = None,
    ) -> None:
        """`cipher`: how secrets' data is sealed at rest (default: not; controller/at_rest.py)."""
        self._identity = identity
        self._store = store
        self._nodes = nodes
        self._services = services
        self._sessions = sessions
        self._leadership = leadership
        self._cluster = cluster
        self._ca = ca
        self._directory = directory
        self._secrets = SecretRegistry(store, cipher=cipher)
        self._networks = networks or NetworkRegistry(store)
        self._configs = SecretRegistry(store, CONFIG_KIND)

    @grpc_errors
    async def GetVersion(self, request: GetVersionRequest, context: Context) -> VersionInfo:
        return version_info("dockyard-controller")

    @grpc_errors
    async def GetInfo(self, request: GetInfoRequest, context: Context) -> ClusterInfo:
        return await cluster_info(
            self._identity,
            self._store,
            self._nodes,
            self._services,
            self._sessions,
            self._leadership(),
            self._directory if request.members else None,
        )

    @grpc_errors
    async def ListNodes(self, request: ListNodesRequest, context: Context) -> ListNodesResponse:
        return await self._nodes.list(request)

    @grpc_errors
    async def GetNode(self, request: GetNodeRequest, context: Context) -> Node:
        return await self._nodes.get(request.node)

    @grpc_errors
    async def UpdateNode(self, request: UpdateNodeRequest, context: Context) -> Node:
        return await self._nodes.update(request)

    @grpc_errors
    async def RemoveNode(self, request: RemoveNodeRequest, context: Context) -> RemoveNodeResponse:
        ca = self._ca

        async def revoke(node: Node) -> None:  # before the record goes and the session ends
            if ca is not None:
                await ca.revoke_subject(node.id, "node removed")

        await self._nodes.remove(request, revoke)
        return RemoveNodeResponse()

    def _cluster_ca(self) -> ClusterCA:
        if self._ca is None:
            raise FailedPrecondition("this controller runs without TLS (--insecure): no tokens")
        return self._ca

    @grpc_errors
    async def CreateJoinToken(
        self, request: CreateJoinTokenRequest, context: Context
    ) -> CreateJoinTokenResponse:
        token, record = await self._cluster_ca().create_token(
            request.role, request.ttl_seconds, request.max_uses
        )
        return CreateJoinTokenResponse(token=token, record=record)

    @grpc_errors
    async def ListJoinTokens(
        self, request: ListJoinTokensRequest, context: Context
    ) -> ListJoinTokensResponse:
        return ListJoinTokensResponse(tokens=await self._cluster_ca().list_tokens())

    @grpc_errors
    async def RotateJoinTokens(
        self, request: CreateJoinTokenRequest, context: Context
    ) -> CreateJoinTokenResponse:
        token, record = await self._cluster_ca().rotate(
            request.role, request.ttl_seconds, request.max_uses
        )
        return CreateJoinTokenResponse(token=token, record=record)

    @grpc_errors
    async def GetCluster(self, request: GetClusterRequest, context: Context) -> Cluster:
        return await self._cluster.get()

    @grpc_errors
    async def UpdateCluster(self, request: UpdateClusterRequest, context: Context) -> Cluster:
        return await self._cluster.update(request.version, request.spec)

    @grpc_errors
    async def CreateService(self, request: CreateServiceRequest, context: Context) -> Service:
        service, warnings = await self._services.create(request)
        _send_warnings(context, warnings)
        return service

    @grpc_errors
    async def GetService(self, request: GetServiceRequest, context: Context) -> Service:
        return await self._services.get(request.service)

    @grpc_errors
    async def ListServices(
        self, request: ListServicesRequest, context: Context
    ) -> ListServicesResponse:
        return await self._services.list(request)

    @grpc_errors
    async def UpdateService(self, request: UpdateServiceRequest, context: Context) -> Service:
        service, warnings = await self._services.update(request)
        _send_warnings(context, warnings)
        return service

    @grpc_errors
    async def RemoveService(
        self, request: RemoveServiceRequest, context: Context
    ) -> RemoveServiceResponse:
        await self._services.remove(request.service)
        return RemoveServiceResponse()

    @grpc_errors
    async def ListTasks(self, request: ListTasksRequest, context: Context) -> ListTasksResponse:
        return await self._services.list_tasks(request)

    @grpc_errors
    async def GetTask(self, request: GetTaskRequest, context: Context) -> Task:
        return await self._services.get_task(request.task)

    @grpc_errors
    async def CreateSecret(self, request: CreateSecretRequest, context: Context) -> Secret:
        return without_data(await self._secrets.create(request.spec))

    @grpc_errors
    async def GetSecret(self, request: GetSecretRequest, context: Context) -> Secret:
        return without_data(await self._secrets.find(request.secret))

    @grpc_errors
    async def ListSecrets(
        self, request: ListSecretsRequest, context: Context
    ) -> ListSecretsResponse:
        found = await self._secrets.list_named(list(request.names))
        return ListSecretsResponse(secrets=[without_data(s) for s in found])

    @grpc_errors
    async def RemoveSecret(
        self, request: RemoveSecretRequest, context: Context
    ) -> RemoveSecretResponse:
        await self._secrets.remove(request.secret)
        return RemoveSecretResponse()

    @grpc_errors
    async def CreateNetwork(self, request: CreateNetworkRequest, context: Context) -> Network:
        return await self._networks.create(request.spec)

    @grpc_errors
    async def GetNetwork(self, request: GetNetworkRequest, context: Context) -> Network:
        return await self._networks.inspect(request.network)

    @grpc_errors
    async def ListNetworks(
        self, request: ListNetworksRequest, context: Context
    ) -> ListNetworksResponse:
        return ListNetworksResponse(networks=await self._networks.list_named(list(request.names)))

    @grpc_errors
    async def RemoveNetwork(
        self, request: RemoveNetworkRequest, context: Context
    ) -> RemoveNetworkResponse:
        await self._networks.remove(request.network)
        return RemoveNetworkResponse()

    @grpc_errors
    async def CreateConfig(self, request: CreateConfigRequest, context: Context) -> Config:
        config: Config = await self._configs.create(request.spec)
        return config

    @grpc_errors
    async def GetConfig(self, request: GetConfigRequest, context: Context) -> Config:
        """With its data, as `docker config inspect` shows it."""
        config = Config()
        config.CopyFrom(await self._configs.find(request.config))
        config.spec.data = await self._configs.data(config.id)
        return config

    @grpc_errors
    async def ListConfigs(
        self, request: ListConfigsRequest, context: Context
    ) -> ListConfigsResponse:
        return ListConfigsResponse(configs=await self._configs.list_named(list(request.names)))

    @grpc_errors
    async def RemoveConfig(
        self, request: RemoveConfigRequest, context: Context
    ) -> RemoveConfigResponse:
        await self._configs.remove(request.config)
        return RemoveConfigResponse()
