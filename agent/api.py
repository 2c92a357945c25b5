"""The agent's own local API: a client can address one agent directly."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.common.version import version_info
from dockyard.v1 import agent_pb2_grpc
from dockyard.v1.agent_pb2 import AgentInfo, GetAgentInfoRequest
from dockyard.v1.types_pb2 import GetVersionRequest, NodeDescription, VersionInfo

Context = grpc.aio.ServicerContext[object, object]


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(
        self,
        identity: NodeIdentity,
        session: ControllerSession,
        describe: Callable[[], NodeDescription],
        state_dir: str,
    ) -> None:
        self._identity = identity
        self._session = session
        self._describe = describe
        self._state_dir = state_dir
        self._started = time.monotonic()

    async def GetVersion(self, request: GetVersionRequest, context: Context) -> VersionInfo:
        return version_info("dockyard-agent")

    async def GetAgentInfo(self, request: GetAgentInfoRequest, context: Context) -> AgentInfo:
        status = self._session.status
        info = AgentInfo(
            node_id=self._identity.node_id,
            name=self._identity.name,
            description=self._describe(),
            controllers=self._session.controllers,
            session_state=status.state,
            connected_controller=status.controller if status.state == "connected" else "",
            session_id=status.session_id,
            heartbeat_rtt_seconds=status.rtt_seconds,
            state_dir=self._state_dir,
            version=version_info("dockyard-agent"),
            uptime_seconds=time.monotonic() - self._started,
        )
        if status.last_ack_wall:
            info.last_heartbeat_ack.FromNanoseconds(int(status.last_ack_wall * 1e9))
        return info
