"""The agent process: identity, local API and the session to the controller."""

from __future__ import annotations

import asyncio
import socket

import grpc
import structlog

from dockyard.agent import hostinfo
from dockyard.agent.api import AgentServicer
from dockyard.agent.config import AgentConfig
from dockyard.agent.identity import load_or_create
from dockyard.agent.session import ControllerSession
from dockyard.v1 import agent_pb2_grpc
from dockyard.v1.types_pb2 import NodeDescription

log = structlog.get_logger(__name__)


class AgentStartError(RuntimeError):
    pass


class AgentDaemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.server: grpc.aio.Server | None = None
        self.session: ControllerSession | None = None
        self.port = 0
        self._description: NodeDescription | None = None
        self._session_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        identity = load_or_create(config.state_dir, config.name or socket.gethostname())
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port(config.listen)
        if self.port == 0:
            raise AgentStartError(f"cannot listen on {config.listen}: address in use or invalid")
        api_address = config.advertise or f"{config.listen.rsplit(':', 1)[0]}:{self.port}"
        self._description = hostinfo.describe_host(
            config.runtime,
            await hostinfo.runtime_version(config.runtime),
            api_address,
            hostinfo.host_resources(config.cpus, config.memory_bytes),
        )
        self.session = ControllerSession(config.controllers, identity, self.describe)
        agent_pb2_grpc.add_AgentServicer_to_server(
            AgentServicer(identity, self.session, self.describe, str(config.state_dir)),
            self.server,
        )
        await self.server.start()
        self._session_task = asyncio.create_task(self.session.run())
        log.info(
            "agent.started",
            node_id=identity.node_id,
            name=identity.name,
            api=api_address,
            controllers=config.controllers,
            runtime=config.runtime,
        )

    def describe(self) -> NodeDescription:
        assert self._description is not None
        return self._description

    async def wait_session(self) -> None:
        """Return when the session task ends (it only ends on a final refusal)."""
        assert self._session_task is not None
        await self._session_task

    async def stop(self, grace: float = 1.0) -> None:
        if self._session_task is not None:
            self._session_task.cancel()
            try:
                await self._session_task
            except (asyncio.CancelledError, Exception):
                pass
        if self.server is not None:
            await self.server.stop(grace)
        log.info("agent.stopped")
