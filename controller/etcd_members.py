"""etcd's members and their health, for `dockyard info`: the member list, then each
member's own maintenance Status, asked at its client URL (the store's round-robin
channel cannot pick a member)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dockyard.controller.records import StoreUnavailable, short_error

if TYPE_CHECKING:  # clients come from the store, the one module that makes them
    from etcd3aio import Etcd3Client

__all__ = ["EtcdAccess", "EtcdMember", "etcd_members"]

# `etcd_members`: each member's Status is asked at its own client URL, at most this long,
# at most this many members at once, and at most MAX_MEMBERS members reported.
MEMBER_STATUS_TIMEOUT = 1.0
MEMBER_STATUS_CONCURRENCY = 8
MAX_MEMBERS = 64


@dataclass(frozen=True)
class EtcdAccess:
    """What asking the members takes from the store.

    Args:
        client: the store's connected client (for the member list).
        endpoints: the configured endpoints (reported when the list does not come).
        credentials: the client's TLS material (the scheme of those endpoints).
        dial: a new client to one member's host:port (closed after one Status).
        call: runs one etcd call, turning its failure into StoreUnavailable.
    """

    client: Etcd3Client
    endpoints: Sequence[str]
    credentials: dict[str, Any]
    dial: Callable[[str], Etcd3Client]
    call: Callable[[str, Awaitable[Any]], Awaitable[Any]]


@dataclass(frozen=True)
class EtcdMember:
    """One etcd member's health: from the member list, and from its own maintenance
    Status when it answered at its first client URL (`error` says why not)."""

    id: int
    name: str
    client_urls: tuple[str, ...]
    is_learner: bool = False
    reachable: bool = False
    error: str = ""
    leader_id: int = 0  # the raft leader as this member sees it (0: none, or not reached)
    is_leader: bool = False  # the raft leader as most reachable members see it
    version: str = ""
    db_size: int = 0
    db_size_in_use: int = 0
    raft_term: int = 0
    raft_index: int = 0
    raft_applied_index: int = 0
    errors: tuple[str, ...] = ()


async def etcd_members(etcd: EtcdAccess) -> list[EtcdMember]:
    """Every etcd member with its health, each asked at its own client URL
    (this client's round-robin channel cannot pick a member).

    The member list is a serializable read, so it still answers without quorum.
    When the list does not come (within MEMBER_STATUS_TIMEOUT), each configured
    endpoint is asked as a member (unnamed), so an unreachable etcd shows as such
    instead of nothing.
    """
    assert etcd.client.cluster is not None
    try:
        listed = await etcd.call(
            "members",
            etcd.client.cluster.member_list(
                linearizable=False, timeout=MEMBER_STATUS_TIMEOUT, max_attempts=1
            ),
        )
        members = [
            EtcdMember(
                int(m.ID), str(m.name), tuple(str(u) for u in m.clientURLs), bool(m.isLearner)
            )
            for m in listed.members[:MAX_MEMBERS]
        ]
    except StoreUnavailable as exc:
        members = [
            EtcdMember(0, "", (_with_scheme(e, etcd.credentials),), error=str(exc))
            for e in etcd.endpoints[:MAX_MEMBERS]
        ]
    limit = asyncio.Semaphore(MEMBER_STATUS_CONCURRENCY)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_member_status(etcd, member, limit)) for member in members]
    found = [task.result() for task in tasks]
    seen = Counter(m.leader_id for m in found if m.reachable and m.leader_id)
    leader = seen.most_common(1)[0][0] if seen else 0
    return sorted(
        (replace(m, is_leader=bool(leader) and m.id == leader) for m in found),
        key=lambda m: (m.name, m.client_urls),
    )


async def _member_status(
    etcd: EtcdAccess, member: EtcdMember, limit: asyncio.Semaphore
) -> EtcdMember:
    """`member` with its own Status filled in, or with why it could not be asked."""
    if not member.client_urls:
        return replace(member, error=member.error or "no client URL (not started yet?)")
    url = member.client_urls[0]
    endpoint = _endpoint_of(url)
    if endpoint is None:
        return replace(member, error=f"cannot dial client URL {url!r}")
    async with limit:
        client = etcd.dial(endpoint)
        try:
            await client.connect()
            assert client.maintenance is not None
            status = await etcd.call(
                "status", client.maintenance.status(timeout=MEMBER_STATUS_TIMEOUT, max_attempts=1)
            )
        except StoreUnavailable as exc:
            return replace(member, reachable=False, error=short_error(exc.__cause__))
        finally:
            await client.close()
    return replace(
        member,
        id=member.id or int(status.header.member_id),
        reachable=True,
        error="",
        leader_id=int(status.leader),
        version=str(status.version),
        db_size=int(status.dbSize),
        db_size_in_use=int(status.dbSizeInUse),
        raft_term=int(status.raftTerm),
        raft_index=int(status.raftIndex),
        raft_applied_index=int(status.raftAppliedIndex),
        errors=tuple(str(e) for e in status.errors),
        is_learner=bool(status.isLearner),
    )


def _endpoint_of(url: str) -> str | None:
    """host:port of an etcd client URL (http or https); None for what cannot be dialled
    over TCP here (a unix socket, no port)."""
    parsed = urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        return None
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{host}:{parsed.port}"


def _with_scheme(endpoint: str, credentials: dict[str, bytes | None]) -> str:
    """A configured endpoint as a client URL."""
    return f"{'https' if credentials.get('ca_cert') else 'http'}://{endpoint}"
