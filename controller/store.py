"""The store: the only module that talks to etcd.

Values are protobuf messages stored under `<prefix>/<kind>/<id>`. Every record
read carries its etcd mod_revision as `meta.version`; writes that depend on a
read compare that revision in a transaction (optimistic concurrency), and many
writes go in one transaction. Watches resume from the last revision seen after
a reconnect; when etcd has compacted past it, `Compacted` tells the caller to
list again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import select
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio._protobuf import Compare, KVStub, RangeRequest, TxnRequest
from etcd3aio.kv import KVService, prefix_range_end
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.etcd_gateway import GatewayClient
from dockyard.controller.etcd_members import EtcdAccess, EtcdMember, etcd_members
from dockyard.controller.records import (
    CLUSTER,
    CONFIG_DATA,
    CONFIG_NAMES,
    CONFIGS,
    CONTROLLERS,
    ISSUED_CERTS,
    JOIN_TOKENS,
    LEADER,
    NETWORK_ATTACHMENTS,
    NETWORK_NAMES,
    NETWORKS,
    NODE_NAMES,
    NODES,
    REGISTRY_AUTHS,
    REMOVED_SUBJECTS,
    REVOKED_CERTS,
    ROOT_CA,
    SECRET_DATA,
    SECRET_NAMES,
    SECRETS,
    SERVICE_NAMES,
    SERVICES,
    TASKS,
    AlreadyExists,
    Compacted,
    Conflict,
    Fence,
    Kind,
    LeadershipLost,
    NotFound,
    Op,
    StoreError,
    StoreUnavailable,
    WatchEvent,
)
from dockyard.controller.records import short_error as _short

log = structlog.get_logger(__name__)

# The store's public surface: what it holds and raises is defined in records.py,
# the etcd members' health in etcd_members.py.
__all__ = [
    "CLUSTER",
    "CONFIGS",
    "CONFIG_DATA",
    "CONFIG_NAMES",
    "CONTROLLERS",
    "ISSUED_CERTS",
    "JOIN_TOKENS",
    "LEADER",
    "NETWORKS",
    "NETWORK_ATTACHMENTS",
    "NETWORK_NAMES",
    "NODES",
    "NODE_NAMES",
    "REGISTRY_AUTHS",
    "REMOVED_SUBJECTS",
    "REVOKED_CERTS",
    "ROOT_CA",
    "SECRETS",
    "SECRET_DATA",
    "SECRET_NAMES",
    "SERVICES",
    "SERVICE_NAMES",
    "TASKS",
    "AlreadyExists",
    "Compacted",
    "Conflict",
    "EtcdMember",
    "Fence",
    "Kind",
    "LeadershipLost",
    "LeaseRenewer",
    "NotFound",
    "Op",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WatchEvent",
    "relative_sleep",
]

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# etcd refuses transactions with more operations than --max-txn-ops (128 by default).
MAX_TXN_OPS = 128
# With requests larger than --max-request-bytes (1.5 MiB by default) refused, a
# transaction of `commit_each` holds at most about this many bytes of keys and values.
MAX_TXN_BYTES = 1024 * 1024
# How often a blocking call's monotonic deadline is looked at (LeaseRenewer).
POLL_SECONDS = 0.05
# Transactions `commit_each` keeps in flight at once.
COMMIT_CONCURRENCY = 4
# A list asks for pages of about LIST_PAGE_BYTES: the record count of each page follows
# the sizes of the records read so far, and a page that still comes back over the
# receive limit is asked again with half as many records. etcd has no byte limit on a
# range, only a count, so the bound is kept here.
LIST_PAGE_BYTES = 4 * 1024 * 1024
LIST_FIRST_PAGE = 256
LIST_PAGE_MAX_RECORDS = 10_000
# The client's gRPC receive limit (gRPC's default is 4 MiB). It leaves room for a page
# whose count was sized from small records and that meets large ones (etcd takes values
# up to its --max-request-bytes, 1.5 MiB by default) and for large watch responses.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# Bytes a record costs in a range response beyond its key and value (revisions, framing).
_KV_OVERHEAD = 32


class Store:
    """Typed protobuf records in etcd.

    Args:
        endpoints: etcd client endpoints as host:port (several for a cluster).
        prefix: key prefix so several clusters can share one etcd.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/dockyard",
        *,
        ca_cert: bytes | None = None,
        cert_key: bytes | None = None,
        cert_chain: bytes | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.prefix = prefix.rstrip("/")
        self._credentials = {"ca_cert": ca_cert, "cert_key": cert_key, "cert_chain": cert_chain}
        self._tls_server_name = tls_server_name
        self._client = _Etcd3Client(
            self.endpoints,
            rpc_max_attempts=3,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=2.0,
            tls_server_name=tls_server_name,
            **self._credentials,
        )
        self._connected = False
        self._fence: Fence | None = None
        # The newest revision this client committed at (for read-your-writes waits);
        # a failed transaction never moves it.
        self.last_revision = 0
        self.observe: Callable[[str, float], None] = lambda op, seconds: None
        """Called with each etcd request's kind (get, range, txn, lease) and duration,
        failed ones included (the controller's metrics)."""
        self.committed: Callable[[int], None] = lambda revision: None
        """Called with `last_revision` after each transaction this client commits (not
        a fenced view's): the controller shares it with its reader process."""

    # -- lifecycle ---------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the client and wait until etcd answers, at most `timeout` seconds."""
        await self._client.connect()
        self._connected = True
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                await self._kv.get(self._key(CLUSTER, "id"), timeout=2.0, max_attempts=1)
                return
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(0.2)
        await self.close()
        raise StoreUnavailable(
            f"cannot reach etcd at {', '.join(self.endpoints)} after {timeout:g} s: "
            f"{_short(last_error)}"
        )

    def client_settings(self) -> tuple[dict[str, bytes | None], str | None]:
        """This client's TLS material (CA, key, chain) and etcd's expected server name,
        for another process's client of the same etcd (the reader process)."""
        return dict(self._credentials), self._tls_server_name

    def renewer(self) -> LeaseRenewer:
        """A blocking client for lease renewals on the same etcd, for a thread of its
        own (controller/leadership.py's keeper)."""
        return LeaseRenewer(self.endpoints, self._credentials, self._tls_server_name)

    def list_blocking(
        self, renewer: LeaseRenewer, kind: Kind[M], timeout: float = 5.0
    ) -> tuple[list[M], int]:
        """Every record of a kind over a blocking client (`renewer`), for a thread that
        must not wait for the event loop (controller/read_server.py)."""
        kvs, revision = renewer.range_prefix(self._key(kind, ""), timeout)
        return [self._decode(kind, kv) for kv in kvs], revision

    def fenced(self, fence: Fence) -> Store:
        """A view of this store whose every transaction also compares `fence`
        (the writes a leader makes because it leads), raising LeadershipLost
        when the fence fails. It shares this store's connection (closing the
        view closes nothing) and keeps its own `last_revision`."""
        view = copy.copy(self)
        view._fence = fence
        view._connected = False
        view.last_revision = 0
        view.committed = lambda revision: None
        return view

    def fence(self, kind: Kind[M], record_id: str, create_revision: int) -> Fence:
        """The fence on one key as created at `create_revision`."""
        return Fence(self._key(kind, record_id), create_revision)

    @property
    def max_ops(self) -> int:
        """The most ops one `commit` takes (the fence takes one of etcd's compares)."""
        return MAX_TXN_OPS - (1 if self._fence is not None else 0)

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._client.close()

    async def server_version(self) -> str:
        assert self._client.maintenance is not None
        try:
            status = await self._client.maintenance.status(timeout=2.0)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as exc:
            raise StoreUnavailable(f"etcd status: {_short(exc)}") from exc
        return str(status.version)

    async def etcd_members(self) -> list[EtcdMember]:
        """Every etcd member with its health (controller/etcd_members.py)."""
        assert self._client is not None
        return await etcd_members(
            EtcdAccess(
                self._client,
                self.endpoints,
                self._credentials,
                lambda endpoint: _Etcd3Client(
                    [endpoint],
                    rpc_max_attempts=1,
                    tls_server_name=self._tls_server_name,
                    **self._credentials,
                ),
                self._call,
            )
        )

    # -- reads -------------------------------------------------------------

    async def get(self, kind: Kind[M], record_id: str) -> M:
        response = await self._call("get", self._kv.get(self._key(kind, record_id), timeout=5.0))
        if not response.kvs:
            raise NotFound(f"{kind.name} {record_id!r} not found")
        return self._decode(kind, response.kvs[0])

    async def current_revision(self) -> int:
        """etcd's revision now (one small request: a count of one key). A read served
        from the cluster view waits for the view to reach it, so it is as fresh as a
        read from etcd (a consistent read from the cache, as Kubernetes' KEP-2340)."""
        response = await self._call(
            "get", self._kv.get(self._key(CLUSTER, "id"), count_only=True, timeout=5.0)
        )
        return int(response.header.revision)

    async def get_raw(self, kind: Kind[M], record_id: str) -> tuple[bytes, int] | None:
        """The raw value and mod_revision of one key, for index records."""
        response = await self._call("get", self._kv.get(self._key(kind, record_id), timeout=5.0))
        if not response.kvs:
            return None
        return bytes(response.kvs[0].value), int(response.kvs[0].mod_revision)

    async def list_all(self, kind: Kind[M], at_revision: int = 0) -> tuple[list[M], int]:
        """Every record of a kind and the revision the list was read at
        (`at_revision` reads an earlier, consistent snapshot).

        Read in pages of about LIST_PAGE_BYTES, every page at the first page's
        revision, so the list is one consistent snapshot however large the kind.
        """
        prefix = self._key(kind, "")
        end = prefix_range_end(prefix)
        start: bytes = prefix.encode()
        records: list[M] = []
        revision = at_revision
        limit = LIST_FIRST_PAGE
        while True:
            response, limit = await self._range_page(start, end, revision, limit)
            revision = revision or int(response.header.revision)
            records.extend(self._decode(kind, kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return records, revision
            start = bytes(response.kvs[-1].key) + b"\0"
            limit = _page_records(response.kvs)

    async def _range_page(
        self, start: bytes, end: bytes, revision: int, limit: int
    ) -> tuple[Any, int]:
        """One page of at most `limit` records; a page over the receive limit is
        asked again with half as many. Returns the response and the count it used."""
        while True:
            try:
                response = await self._call(
                    "range", self._kv.get(start, end, revision=revision, limit=limit, timeout=10.0)
                )
            except StoreUnavailable as exc:
                if not _too_large(exc.__cause__):
                    raise
                if limit == 1:
                    raise StoreError(
                        f"the record at {start!r} is larger than the etcd client's receive "
                        f"limit of {MAX_RECEIVE_BYTES} bytes: {_short(exc.__cause__)}"
                    ) from exc
                log.warning(
                    "store.list_page_too_large",
                    start=start.decode(errors="replace"),
                    records=limit,
                    limit_bytes=MAX_RECEIVE_BYTES,
                )
                limit = max(1, limit // 2)
                continue
            return response, limit

    # -- writes ------------------------------------------------------------

    def put_op(
        self,
        kind: Kind[M],
        record_id: str,
        value: M,
        *,
        expect: int | None,
        owned: bool = False,
        now: Timestamp | None = None,
    ) -> Op:
        """An Op that writes `value`, stamping meta times (`now`, else the clock's);
        `meta.version` is not stored. `owned`: the caller made `value` for this write
        and gives it up, so it is stamped in place instead of copied."""
        stored = value
        if not owned:
            stored = type(value)()
            stored.CopyFrom(value)
        if _has_meta(type(stored)):
            meta: Any = getattr(stored, "meta")  # noqa: B009 - not every kind has one
            meta.version = 0
            meta.updated_at.CopyFrom(now if now is not None else now_timestamp())
            if expect == 0 or not meta.created_at.seconds:
                meta.created_at.CopyFrom(meta.updated_at)
        return Op(self._key(kind, record_id), stored.SerializeToString(), expect)

    def raw_op(
        self, kind: Kind[M], record_id: str, value: bytes | None, *, expect: int | None
    ) -> Op:
        return Op(self._key(kind, record_id), value, expect)

    def check_op(self, kind: Kind[M], record_id: str, version: int) -> Op:
        """A compare only: the record is still at `version` (0: still absent)."""
        return Op(self._key(kind, record_id), None, version, check_only=True)

    def unchanged_op(self, kind: Kind[M], revision: int) -> Op:
        """A compare only: no record of the kind was created or modified after `revision`
        (a list read at that revision is still true, deletions aside)."""
        prefix = self._key(kind, "")
        return Op(
            prefix, None, revision, check_only=True, range_end=prefix_range_end(prefix).decode()
        )

    async def create(self, kind: Kind[M], record_id: str, value: M) -> int:
        try:
            return await self.commit([self.put_op(kind, record_id, value, expect=0)])
        except Conflict as exc:
            raise AlreadyExists(f"{kind.name} {record_id!r} already exists") from exc

    async def update(self, kind: Kind[M], record_id: str, value: M) -> int:
        """Write `value` if the stored record is still at `value.meta.version`."""
        version = int(getattr(value, "meta").version)  # noqa: B009
        if version <= 0:
            raise ValueError("update needs the version the record was read at")
        return await self.commit([self.put_op(kind, record_id, value, expect=version)])

    async def put(self, kind: Kind[M], record_id: str, value: M) -> int:
        """Write unconditionally (for records only one writer owns)."""
        return await self.commit([self.put_op(kind, record_id, value, expect=None)])

    async def delete(self, kind: Kind[M], record_id: str, version: int | None = None) -> int:
        return await self.commit([Op(self._key(kind, record_id), None, version)])

    async def commit(self, ops: Sequence[Op]) -> int:
        """Apply `ops` in one transaction; raise Conflict when any compare fails
        (LeadershipLost when the store is fenced and the fence failed).

        Returns the revision the transaction was committed at.
        """
        if not ops:
            raise ValueError("commit needs at least one op")
        if len(ops) > self.max_ops:
            raise ValueError(f"at most {self.max_ops} ops in one transaction, got {len(ops)}")
        request = _txn_request(ops, self._fence)
        response = await self._call("txn", _send_txn(self._kv, request, timeout=5.0))
        if not response.succeeded:
            self._check_fence(response)
            raise Conflict(
                "the record changed since it was read: "
                + ", ".join(
                    op.key.removeprefix(self.prefix + "/") for op in ops if op.expect is not None
                )
            )
        self.last_revision = max(self.last_revision, int(response.header.revision))
        self.committed(self.last_revision)
        return int(response.header.revision)

    def _check_fence(self, response: Any) -> None:
        """Raise LeadershipLost when a failed transaction's fence read shows another key."""
        fence = self._fence
        if fence is None:
            return
        kvs = response.responses[0].response_range.kvs if response.responses else []
        held = int(kvs[0].create_revision) if kvs else 0
        if held != fence.create_revision:
            raise LeadershipLost(
                f"the leader key {fence.key.removeprefix(self.prefix + '/')} "
                + (f"was re-created at revision {held}" if held else "is gone")
                + f" (this term's was created at {fence.create_revision}): nothing was written"
            )

    async def commit_each(self, ops: Sequence[Op]) -> list[bool]:
        """Apply independent ops in as few transactions as possible.

        Ops go in batches of `max_ops` (and about MAX_TXN_BYTES), up to COMMIT_CONCURRENCY
        transactions in flight at once (etcd batches concurrent proposals into one raft
        round). Each compared op goes with the batch but a failed compare only drops
        that op: the batch is retried without it. Returns per-op success. A failed fence
        is not a compare to drop: LeadershipLost ends the call, nothing more written.
        """
        results = [False] * len(ops)
        batches = self._batches(ops)
        if len(batches) == 1:
            await self._commit_batch(ops, batches[0], results)
            return results
        limit = asyncio.Semaphore(COMMIT_CONCURRENCY)

        async def one(batch: list[int]) -> None:
            async with limit:
                await self._commit_batch(ops, batch, results)

        try:
            async with asyncio.TaskGroup() as group:
                for batch in batches:
                    group.create_task(one(batch))
        except BaseExceptionGroup as failed:  # as the caller would get it sequentially
            raise failed.exceptions[0] from None
        return results

    def _batches(self, ops: Sequence[Op]) -> list[list[int]]:
        """The ops' indexes in batches of at most `max_ops` ops and about MAX_TXN_BYTES."""
        batches: list[list[int]] = []
        current: list[int] = []
        size = 0
        for index, op in enumerate(ops):
            cost = len(op.key) + len(op.value or b"") + 16
            if current and (len(current) >= self.max_ops or size + cost > MAX_TXN_BYTES):
                batches.append(current)
                current, size = [], 0
            current.append(index)
            size += cost
        if current:
            batches.append(current)
        return batches

    async def _commit_batch(self, ops: Sequence[Op], batch: list[int], results: list[bool]) -> None:
        while batch:
            try:
                await self.commit([ops[i] for i in batch])
                for i in batch:
                    results[i] = True
                return
            except Conflict:
                batch = await self._drop_failed(ops, batch)

    async def _drop_failed(self, ops: Sequence[Op], batch: list[int]) -> list[int]:
        keep = []
        for i in batch:
            op = ops[i]
            if op.expect is None:
                keep.append(i)
                continue
            response = await self._call("get", self._kv.get(op.key, timeout=5.0))
            revision = int(response.kvs[0].mod_revision) if response.kvs else 0
            if revision == op.expect:
                keep.append(i)
        return keep

    # -- leases (leader election) -------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        assert self._client.lease is not None
        response = await self._call("lease", self._client.lease.grant(ttl=ttl, timeout=5.0))
        return int(response.ID)

    async def refresh_lease(self, lease_id: int) -> bool:
        """Renew a lease once; False when it has expired. Any failure to ask
        (etcd down, the keep-alive stream broken) is StoreUnavailable."""
        assert self._client.lease is not None
        response = await self._call("lease", self._client.lease.time_to_live(lease_id, timeout=5.0))
        if response.TTL <= 0:
            return False
        return await self._call("lease", self._keep_alive_once(lease_id))

    async def _keep_alive_once(self, lease_id: int) -> bool:
        assert self._client.lease is not None
        call = self._client.lease.keep_alive(lease_id)
        try:
            async with asyncio.timeout(5.0):
                async for reply in call:
                    return int(reply.TTL) > 0
        finally:
            call.cancel()
        return False

    async def fence_holds(self, fence: Fence) -> bool:
        """Whether the fenced key still exists as created at the fence's revision."""
        response = await self._call("get", self._kv.get(fence.key, timeout=5.0))
        return bool(response.kvs) and int(response.kvs[0].create_revision) == fence.create_revision

    async def revoke_lease(self, lease_id: int) -> None:
        assert self._client.lease is not None
        await self._call("lease", self._client.lease.revoke(lease_id, timeout=5.0))

    def leased_op(self, kind: Kind[M], record_id: str, value: M, lease: int) -> Op:
        return Op(self._key(kind, record_id), value.SerializeToString(), 0, lease)

    async def put_leased(self, kind: Kind[M], record_id: str, value: M, lease: int) -> int:
        """Write `value` unconditionally, attached to `lease` (a record only its owner
        writes, such as a controller's own registration): it goes when the lease does."""
        return await self.commit(
            [Op(self._key(kind, record_id), value.SerializeToString(), None, lease)]
        )

    # -- watches -----------------------------------------------------------

    async def watch(self, kind: Kind[M], start_revision: int) -> AsyncIterator[WatchEvent[M]]:
        """Events on a kind after `start_revision`, across etcd reconnects.

        Raises Compacted when etcd no longer has that history.
        """
        async for event in self.watch_kinds([kind], start_revision):
            yield event

    async def watch_kinds(
        self, kinds: Sequence[Kind[Any]], start_revision: int
    ) -> AsyncIterator[WatchEvent[Any]]:
        """Events on several kinds in revision order, through one watch."""
        async for events, _ in self.watch_batches(kinds, start_revision):
            for event in events:
                yield event

    async def watch_batches(
        self, kinds: Sequence[Kind[Any]], start_revision: int
    ) -> AsyncIterator[tuple[list[WatchEvent[Any]], int]]:
        """Events on several kinds in revision order, one list per etcd watch response
        (whole revisions: a transaction's events never straddle two lists), with the
        revision the response reaches: its last event's, counting the events on other
        records of the prefix too (watched, not decoded), so that a reader waiting for
        etcd's current revision is not held up by a write to the leader key."""
        assert self._client.watch is not None
        by_prefix = {self._key(kind, "").encode(): kind for kind in kinds}
        start = self._key(kinds[0], "") if len(kinds) == 1 else self.prefix + "/"
        stream = self._client.watch.watch(
            start, prefix_range_end(start), start_revision=start_revision + 1
        )
        try:
            async for response in stream:
                if response.compact_revision:
                    raise Compacted(int(response.compact_revision))
                if response.canceled:
                    raise StoreUnavailable(f"etcd canceled the watch: {response.cancel_reason}")
                events = []
                for event in response.events:
                    # A kind's record is "<kind's prefix><ID>", the ID without a "/".
                    head, _, record_id = event.kv.key.rpartition(b"/")
                    kind = by_prefix.get(head + b"/")
                    if kind is not None:
                        events.append(self._event(kind, record_id.decode(), event))
                if response.events:
                    yield events, int(response.events[-1].kv.mod_revision)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    # -- helpers -----------------------------------------------------------

    @property
    def _kv(self) -> KVService:
        if self._client.kv is None:
            raise StoreUnavailable("store is not connected")
        return self._client.kv

    def _key(self, kind: Kind[M], record_id: str) -> str:
        return f"{self.prefix}/{kind.name}/{record_id}"

    def _decode(self, kind: Kind[M], kv: Any, revision: int | None = None) -> M:
        """The record in `kv`, its `meta.version` set to `revision` (else the kv's)."""
        message = kind.message
        try:
            record = message.FromString(kv.value)
        except DecodeError as exc:
            raise StoreError(f"corrupt {kind.name} record at {kv.key!r}") from exc
        if _has_meta(message):
            meta: Any = getattr(record, "meta")  # noqa: B009 - not every kind has one
            meta.version = int(kv.mod_revision) if revision is None else revision
        return record

    def _event(self, kind: Kind[M], record_id: str, event: Any) -> WatchEvent[M]:
        kv = event.kv
        revision = int(kv.mod_revision)
        if event.type == 1:  # mvccpb.Event.DELETE
            return WatchEvent(kind.name, record_id, True, None, revision)
        return WatchEvent(kind.name, record_id, False, self._decode(kind, kv, revision), revision)

    async def _call(self, op: str, awaitable: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await awaitable
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"etcd is unavailable ({', '.join(self.endpoints)}): {_short(exc)}"
            ) from exc
        finally:
            self.observe(op, time.perf_counter() - started)


# The blocking client also lists nodes for the read API: more than gRPC's default 4 MiB.
BLOCKING_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024)
]


class LeaseRenewer:
    """Lease renewals and the fence check for a thread that must not depend on the
    controller's event loop (grpc.aio calls are served by the loop that made them):
    both over etcd's HTTP/JSON gateway (`GatewayClient`), one blocking request read on
    the calling thread, which a busy process answers sooner than a blocking gRPC call
    (several threads, each waiting for the GIL). The reader's listing
    (`range_prefix`) stays on gRPC's blocking API. Tries the endpoints in turn."""

    def __init__(
        self,
        endpoints: Sequence[str],
        credentials: dict[str, bytes | None],
        tls_server_name: str | None,
    ) -> None:
        self._endpoints = list(endpoints)
        self._credentials = credentials
        self._tls_server_name = tls_server_name
        self._index = 0
        self._channel: grpc.Channel | None = None
        self._gateway: GatewayClient | None = None

    def refresh_lease(self, lease_id: int, timeout: float) -> bool:
        """Renew once; False when the lease has expired. Failures (no endpoint answered
        within `timeout` seconds) raise StoreUnavailable."""
        return self._http().keep_alive(lease_id, timeout)

    def fence_holds(self, fence: Fence, timeout: float) -> bool:
        revision = self._http().create_revision(fence.key, timeout)
        return revision == fence.create_revision

    def range_prefix(self, prefix: str, timeout: float) -> tuple[list[Any], int]:
        """Every key-value under `prefix` and the revision read at (one request: for
        the read API's few kinds, nodes and services); failures raise StoreUnavailable."""
        kv = KVStub(self._open())
        request = RangeRequest(key=prefix.encode(), range_end=prefix_range_end(prefix))
        try:
            future = kv.Range.future(request)
            with _cancelled_after(future, timeout):
                response = future.result()
        except (grpc.RpcError, grpc.FutureCancelledError) as exc:
            self._next()
            raise StoreUnavailable(f"etcd range: {_short(exc)}") from exc
        return list(response.kvs), int(response.header.revision)

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _http(self) -> GatewayClient:
        if self._gateway is None:
            self._gateway = GatewayClient(self._endpoints, self._credentials, self._tls_server_name)
        return self._gateway

    def _open(self) -> grpc.Channel:
        if self._channel is None:
            target = self._endpoints[self._index % len(self._endpoints)]
            ca_cert = self._credentials.get("ca_cert")
            if ca_cert is None:
                self._channel = grpc.insecure_channel(target, options=BLOCKING_OPTIONS)
            else:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=ca_cert,
                    private_key=self._credentials.get("cert_key"),
                    certificate_chain=self._credentials.get("cert_chain"),
                )
                options: list[tuple[str, str | int]] = list(BLOCKING_OPTIONS)
                if self._tls_server_name is not None:
                    options.append(("grpc.ssl_target_name_override", self._tls_server_name))
                self._channel = grpc.secure_channel(target, credentials, options=options)
        return self._channel

    def _next(self) -> None:
        self.close()
        self._index += 1


def relative_sleep(seconds: float) -> None:
    """Sleep `seconds` with a relative timeout (epoll_wait's, as asyncio's loop): under
    libfaketime, `time.sleep` (an absolute clock_nanosleep) fails with EINVAL and timed
    waits on locks follow the faked wall clock."""
    with select.epoll() as poller:
        poller.poll(max(0.0, seconds))


@contextlib.contextmanager
def _cancelled_after(call: Any, seconds: float) -> Iterator[None]:
    """Cancel a blocking gRPC call after `seconds` on the monotonic clock: gRPC's own
    timeouts are deadlines on the wall clock (time.time()), which may jump. Polled with
    short relative sleeps (`relative_sleep`)."""
    done = threading.Event()
    deadline = time.monotonic() + seconds

    def cancel_when_due() -> None:
        while not done.is_set():
            if time.monotonic() >= deadline:
                call.cancel()
                return
            relative_sleep(POLL_SECONDS)

    watcher = threading.Thread(target=cancel_when_due, name="etcd-call-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


class _Etcd3Client(Etcd3Client):
    """etcd3aio's client with the gRPC receive limit raised to MAX_RECEIVE_BYTES.

    etcd3aio 0.3 takes no channel options, but its connection manager builds every
    channel from its `grpc_options` list, so the limit is added there before connect.
    """

    def __init__(self, endpoints: Sequence[str], **kwargs: Any) -> None:
        super().__init__(endpoints, **kwargs)
        self._manager.grpc_options.append(("grpc.max_receive_message_length", MAX_RECEIVE_BYTES))


_HAS_META: dict[type[Message], bool] = {}


def _has_meta(message: type[Message]) -> bool:
    """Whether records of this type carry `meta` (read from the descriptor once a type:
    writes and decodes ask it for every record)."""
    has = _HAS_META.get(message)
    if has is None:
        has = _HAS_META[message] = "meta" in message.DESCRIPTOR.fields_by_name
    return has


def _page_records(kvs: Sequence[Any]) -> int:
    """How many records of the size just read make about LIST_PAGE_BYTES."""
    size = sum(len(kv.key) + len(kv.value) + _KV_OVERHEAD for kv in kvs) // len(kvs)
    return max(1, min(LIST_PAGE_MAX_RECORDS, LIST_PAGE_BYTES // max(1, size)))


def _too_large(exc: BaseException | None) -> bool:
    """A response refused for being over the client's receive limit."""
    return (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def _txn_request(ops: Sequence[Op], fence: Fence | None) -> TxnRequest:
    """One transaction: the ops' compares then the fence's (its failure branch reads the
    fence key, to tell why it failed), and the ops' puts and deletes, in order.

    The messages are built in place in the request: etcd3aio's builders
    (`KVService.txn_op_put`, `txn_compare_create_revision`) make each one apart, and
    its `txn` copies each into a new request, about 5 µs per op against about 1 µs."""
    request = TxnRequest()
    add_compare, add_request = request.compare.add, request.success.add
    for op in ops:
        key = op.key.encode()
        if op.expect is not None:
            _add_compare(add_compare, key, op)
        if op.check_only:
            continue
        if op.value is None:
            add_request().request_delete_range.key = key
            continue
        put = add_request().request_put
        put.key = key
        put.value = op.value
        if op.lease:
            put.lease = op.lease
    if fence is not None:
        add_compare(
            key=fence.key.encode(), target=Compare.CREATE, create_revision=fence.create_revision
        )
        request.failure.add().request_range.key = fence.key.encode()
    return request


def _add_compare(add: Callable[..., Any], key: bytes, op: Op) -> None:
    """create_revision == 0 for "absent", else mod_revision == expected; over a range
    (`unchanged_op`), every key's mod_revision <= expected."""
    assert op.expect is not None
    if op.range_end is not None:
        add(
            key=key,
            range_end=op.range_end.encode(),
            target=Compare.MOD,
            result=Compare.LESS,
            mod_revision=op.expect + 1,
        )
    elif op.expect == 0:
        add(key=key, target=Compare.CREATE, create_revision=0)
    else:
        add(key=key, target=Compare.MOD, mod_revision=op.expect)


def _send_txn(kv: KVService, request: TxnRequest, timeout: float) -> Awaitable[Any]:
    """etcd3aio's own transaction call (its retries of UNAVAILABLE, its errors) with a
    request built whole: `KVService.txn` takes lists of messages and copies each."""
    return kv._rpc(kv._stub.Txn, request, operation="KV.Txn", timeout=timeout)
