"""Many hollow agents in one process, for scale tests (kubemark's hollow nodes).

A test harness of whole agents, not a runtime: each agent has its own identity
(`<state dir>/<name>/node.json`), session, worker and container service over its own
`HollowRuntime`; they share the event loop and nothing else. There is no
local API. Session starts are staggered so a thousand agents do not say hello at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import structlog

from dockyard.agent import hostinfo
from dockyard.agent.daemon import hollow_executor
from dockyard.agent.identity import load_or_create
from dockyard.agent.runtime.hollow.runtime import HollowRuntime
from dockyard.agent.session import ControllerSession, SessionRefused
from dockyard.agent.worker import Worker
from dockyard.common.version import package_version
from dockyard.v1.dispatcher_pb2 import AssignmentSet
from dockyard.v1.types_pb2 import NodeDescription, Resources

__all__ = ["HollowAgent", "HollowFleet", "agent_names"]

log = structlog.get_logger(__name__)


def agent_names(prefix: str, count: int) -> list[str]:
    """`prefix-0001` … (zero-padded so they sort)."""
    width = max(4, len(str(count)))
    return [f"{prefix}-{index:0{width}d}" for index in range(1, count + 1)]


class HollowAgent:
    """One simulated node: identity, session and worker, no local API."""

    def __init__(
        self,
        name: str,
        state_dir: Path,
        controllers: list[str],
        resources: Resources,
        start_delay: float = 0.05,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.controllers = controllers
        self.resources = resources
        self.runtime = HollowRuntime(start_delay=start_delay)
        self.session: ControllerSession | None = None
        self.worker: Worker | None = None
        self._description: NodeDescription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load or make the identity, resume the worker, open the session."""
        identity = await asyncio.to_thread(load_or_create, self.state_dir, self.name)
        self._description = hostinfo.describe_host(
            "hollow", package_version(), "", self.resources, hostname=self.name
        )
        self.session = ControllerSession(
            self.controllers, identity, self.describe, on_assignments=self._on_assignments
        )
        self.worker = Worker(
            hollow_executor(self.runtime),
            self.session,
            self.state_dir,
            persist=False,
        )
        await self.worker.start()
        self._task = asyncio.create_task(self._run(), name=f"hollow-{self.name}")

    def describe(self) -> NodeDescription:
        assert self._description is not None
        return self._description

    async def _on_assignments(self, assignments: AssignmentSet) -> None:
        if self.worker is not None:
            await self.worker.on_assignments(assignments)

    async def _run(self) -> None:
        assert self.session is not None
        try:
            await self.session.run()
        except SessionRefused as exc:
            log.error("hollow.refused", name=self.name, error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.worker is not None:
            await self.worker.close()


@dataclass
class HollowFleet:
    """`count` hollow agents named `<prefix>-NNNN`, state under `state_dir/<name>`."""

    controllers: list[str]
    count: int
    state_dir: Path
    name_prefix: str = "hollow"
    resources: Resources | None = None
    stagger: float = 0.01
    start_delay: float = 0.05

    def __post_init__(self) -> None:
        resources = self.resources or Resources(nano_cpus=4 * 10**9, memory_bytes=8 << 30)
        self.agents = [
            HollowAgent(name, self.state_dir / name, self.controllers, resources, self.start_delay)
            for name in agent_names(self.name_prefix, self.count)
        ]

    async def start(self) -> None:
        """Start every agent, `stagger` seconds apart."""
        for index, agent in enumerate(self.agents):
            if index and self.stagger > 0:
                await asyncio.sleep(self.stagger)
            await agent.start()
        log.info("hollow.started", agents=len(self.agents))

    def connected(self) -> int:
        """How many sessions are open."""
        return sum(1 for a in self.agents if a.session is not None and a.session.connected.is_set())

    async def stop(self) -> None:
        await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
        log.info("hollow.stopped", agents=len(self.agents))
