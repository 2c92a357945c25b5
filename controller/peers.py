"""The other controllers, as this one sees them: their records in etcd, who leads,
and whether their API answers a dial from here (for `dockyard info`).

Reachable means "its API answered this controller within PROBE_TIMEOUT", not only
"its lease-backed record exists": a record outlives a killed controller by up to
one TTL, and outlives for good one that still reaches etcd but not its clients (a
wedged gRPC server, a firewall between controllers). One GetVersion per other
controller, all at once but at most PROBE_CONCURRENCY together, each over mutual
TLS with this controller's own certificate, is cheap next to what `info` reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.common.pki import CONTROLLER_TLS_NAME
from dockyard.controller.leadership import LEADER_KEY
from dockyard.controller.store import CONTROLLERS, LEADER, NotFound, Store
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.types_pb2 import ControllerRecord, GetVersionRequest, LeaderRecord

log = structlog.get_logger(__name__)

PROBE_TIMEOUT = 1.0
PROBE_CONCURRENCY = 16
MAX_CONTROLLERS = 64  # records reported (and dialled) at most


@dataclass(frozen=True)
class PeerStatus:
    """One registered controller: its record, whether it leads, whether it answered."""

    record: ControllerRecord
    is_leader: bool
    leader_since: Timestamp | None
    reachable: bool
    error: str
    is_self: bool


class ControllerDirectory:
    """Lists the registered controllers and dials each one's API.

    Args:
        store: the controller's store.
        self_id: this controller's ID (not dialled: it is answering).
        credentials: this controller's client credentials (its own certificate and
            the cluster CA); None dials in plaintext (`--insecure`).
    """

    def __init__(
        self, store: Store, self_id: str, credentials: grpc.ChannelCredentials | None
    ) -> None:
        self._store = store
        self._self_id = self_id
        self._credentials = credentials

    async def controllers(self) -> list[PeerStatus]:
        records, _ = await self._store.list_all(CONTROLLERS)
        records = sorted(records, key=lambda r: r.controller_id)[:MAX_CONTROLLERS]
        leader = await self._leader()
        limit = asyncio.Semaphore(PROBE_CONCURRENCY)
        async with asyncio.TaskGroup() as group:
            probes = [group.create_task(self._probe(record, limit)) for record in records]
        found = []
        for record, probe in zip(records, probes, strict=True):
            leads = leader is not None and leader.controller_id == record.controller_id
            found.append(
                PeerStatus(
                    record,
                    leads,
                    leader.since if leads and leader is not None else None,
                    probe.result() == "",
                    probe.result(),
                    record.controller_id == self._self_id,
                )
            )
        return found

    async def _leader(self) -> LeaderRecord | None:
        try:
            return await self._store.get(LEADER, LEADER_KEY)
        except NotFound:
            return None

    async def _probe(self, record: ControllerRecord, limit: asyncio.Semaphore) -> str:
        """ "" when the controller's API answered GetVersion, else why not."""
        if record.controller_id == self._self_id:
            return ""  # this one is answering
        if not record.api_address:
            return "no API address in its record"
        async with limit:
            return await dial(record.api_address, self._credentials)


async def dial(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """Ask a controller's API for its version; "" when it answered, else the reason."""
    channel = (
        grpc.aio.secure_channel(
            address, credentials, [("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME)]
        )
        if credentials is not None
        else grpc.aio.insecure_channel(address)
    )
    try:
        stub = control_pb2_grpc.ControlStub(channel)
        await stub.GetVersion(GetVersionRequest(), timeout=PROBE_TIMEOUT)
        return ""
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {PROBE_TIMEOUT:g} s"
        return f"{exc.code().name}: {_first_line(exc.details() or '')}"
    finally:
        await channel.close()


def _first_line(text: str, limit: int = 200) -> str:
    return text.splitlines()[0][:limit] if text else ""
