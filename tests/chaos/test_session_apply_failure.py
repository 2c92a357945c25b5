"""An agent session outlives a failure to apply what the controller sent.

Found by the disk-full scenario: with the agent's state disk full, writing what a
message from the controller asked for raised OSError out of the session task, which
ended it, and the agent stopped. Here both handlers (assignments, network map) fail
with ENOSPC on every message: the session must stay connected and keep heartbeating
past the node grace, with every message still handed to the handlers.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
from pathlib import Path

from dockyard.v1.dispatcher_pb2 import AssignmentSet, NetworkMap
from dockyard.v1.types_pb2 import NodeDescription
from tests.chaos.rig import GRACE, Rig
from tests.conftest import LoopThread


def test_session_survives_handlers_failing_with_a_full_disk(tmp_path: Path) -> None:
    from dockyard.agent.identity import NodeIdentity
    from dockyard.agent.session import ControllerSession

    calls: list[str] = []
    called = asyncio.Event()

    async def on_assignments(assignments: AssignmentSet) -> None:
        calls.append("assignments")
        called.set()
        raise OSError(errno.ENOSPC, "No space left on device")

    async def on_network(network_map: NetworkMap) -> None:
        calls.append("network")
        called.set()
        raise OSError(errno.ENOSPC, "No space left on device")

    rig = Rig(tmp_path)
    runner = LoopThread()
    try:
        rig.start_controllers(1)
        address = rig.controllers[0].address
        identity = NodeIdentity(secrets.token_hex(10), "full")

        async def run() -> tuple[bool, str, list[str]]:
            session = ControllerSession(
                [address],
                identity,
                NodeDescription,
                on_assignments=on_assignments,
                on_network=on_network,
            )
            task = asyncio.create_task(session.run())
            try:
                await asyncio.wait_for(session.connected.wait(), 30)
                await asyncio.wait_for(called.wait(), 30)
                await asyncio.sleep(GRACE * 3)  # heartbeats go on past the grace
                return task.done(), session.status.state, list(calls)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        ended, state, seen = runner.run(run())
        assert seen, "the controller sent nothing to apply"
        assert not ended, f"the session ended after a handler failed ({seen})"
        assert state == "connected", f"session {state} after a handler failed ({seen})"
    finally:
        runner.close()
        rig.close()
