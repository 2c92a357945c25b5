"""The reader process: the read port (`--read-listen`) and the HTTP JSON reads' port
(`--read-http-listen`, controller/read_http.py) served by a process of its own, with
its own etcd watch and view, so that a list read shares no GIL with the leader's
control loops.

`python -m dockyard.controller.reader` is started by the controller
(controller/reader_supervisor.py), which writes one JSON line on its stdin (the
`ReaderSetup`) and keeps that pipe open: the reader exits when it reads EOF (the
controller stopped or died) and, in case the pipe outlives it, asks the kernel for
SIGKILL when its parent dies (PR_SET_PDEATHSIG). Once listening it writes
`{"port": N, "http_port": M}` on its stdout (0: not asked for). Its view is the
controller's own `ClusterState` (list, then a watch resumed from its revision, a
relist when etcd compacted it away), publishing snapshots that `ReadServer` (and
`ReadHttpServer`) answer from; a read waits (bounded) for the controller's own last
write, shared in a `RevisionCell`.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import functools
import json
import os
import signal
import ssl
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from dockyard.common import event_loop
from dockyard.common import logging as dlogging
from dockyard.common.statedir import write_private
from dockyard.controller.http.server import server_tls
from dockyard.controller.read_http import ReadHttpServer
from dockyard.controller.read_server import ReadServer
from dockyard.controller.revision_cell import RevisionCell
from dockyard.controller.snapshot import SnapshotBoard
from dockyard.controller.state import ClusterState
from dockyard.controller.store import REVOKED_CERTS, Compacted, Store, StoreError
from dockyard.controller.supervision import Supervisor

__all__ = ["ReaderSetup", "encode", "main"]

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ReaderSetup:
    """What the controller tells its reader process (PEMs base64-encoded)."""

    address: str
    parent: int
    revision_fd: int
    etcd_endpoints: list[str]
    etcd_prefix: str
    etcd_credentials: dict[str, str | None] = field(default_factory=dict)
    etcd_server_name: str | None = None
    etcd_timeout: float = 10.0
    tls: dict[str, str] | None = None  # ca, key, cert
    log_level: str = "info"
    http_address: str = ""  # the JSON reads' port (controller/read_http.py); "": none

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> ReaderSetup:
        return cls(**json.loads(line))


def encode(pem: bytes | None) -> str | None:
    return base64.b64encode(pem).decode() if pem is not None else None


def _decode(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text is not None else None


def main() -> None:
    """The reader process's entry point."""
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)  # the controller went away before it said anything
    setup = ReaderSetup.from_line(line)
    _die_with_parent(setup.parent)
    dlogging.configure(setup.log_level)
    structlog.contextvars.bind_contextvars(process="reader")  # its lines in the controller's log
    sys.exit(event_loop.run(_serve(setup)))


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the controller dies, however it dies (its pipe covers the rest)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


async def _serve(setup: ReaderSetup) -> int:
    credentials = {k: _decode(v) for k, v in setup.etcd_credentials.items()}
    store = Store(
        setup.etcd_endpoints,
        setup.etcd_prefix,
        tls_server_name=setup.etcd_server_name,
        **credentials,
    )
    try:
        await store.connect(setup.etcd_timeout)
    except StoreError as exc:
        log.error("reader.etcd_unreachable", error=str(exc))
        return 2
    revoked = _Revoked()
    board = SnapshotBoard()
    view = ClusterState(store, board)
    cell = RevisionCell.attach(setup.revision_fd)
    blocking = store.renewer()
    server = ReadServer(
        board,
        cell.get,
        lambda node: node,  # persisted heartbeats: the live ones are the leader's
        lambda: None,
        revoked.has,
        functools.partial(store.list_blocking, blocking),
    )
    port = server.start(setup.address, _server_credentials(setup.tls)) if setup.address else 0
    http = ReadHttpServer(server, revoked.has, _http_tls(setup.tls))
    http_port = http.start(setup.http_address) if setup.http_address else 0
    if (setup.address and not port) or (setup.http_address and not http_port):
        log.error("reader.cannot_listen", address=setup.address, http=setup.http_address)
        server.stop(0)
        http.stop(0)
        return 2
    _announce(port, http_port)
    log.info(
        "reader.started", address=setup.address, port=port, http_port=http_port, pid=os.getpid()
    )
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(Supervisor().supervise("reader_view", view.follow))
            if setup.tls is not None:
                group.create_task(_follow_revocations(store, revoked))
            await _until_told_to_stop()
            raise _Stop
    except* _Stop:
        pass
    finally:
        await asyncio.to_thread(server.stop, 1.0)
        await asyncio.to_thread(http.stop, 1.0)
        blocking.close()
        await store.close()
        log.info("reader.stopped")
    return 0


class _Stop(Exception):
    """Ends the reader's task group."""


def _announce(port: int, http_port: int) -> None:
    """Tell the controller the bound ports, then let stdout be stderr (nothing else may
    fill a pipe that nobody reads)."""
    os.write(1, json.dumps({"port": port, "http_port": http_port}).encode() + b"\n")
    os.dup2(2, 1)


async def _until_told_to_stop() -> None:
    """Until SIGTERM/SIGINT, or EOF on stdin (the controller closed it or died)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader(limit=1024)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )

    async def eof() -> None:
        while await reader.read(1024):
            pass  # the controller sends nothing more: anything is dropped
        log.info("reader.parent_gone")
        stop.set()

    watcher = asyncio.create_task(eof())
    try:
        await stop.wait()
    finally:
        watcher.cancel()


class _Revoked:
    """The revoked serials, replaced whole (a read thread never sees a half-built set)."""

    def __init__(self) -> None:
        self.serials: frozenset[str] = frozenset()

    def has(self, serial: str) -> bool:
        return serial in self.serials


async def _follow_revocations(store: Store, revoked: _Revoked) -> None:
    """Keep `revoked` in step with etcd, as the controller's CA does."""
    while True:
        try:
            records, revision = await store.list_all(REVOKED_CERTS)
            revoked.serials = frozenset(r.serial for r in records)
            async for event in store.watch(REVOKED_CERTS, revision):
                if event.deleted:
                    revoked.serials = revoked.serials - {event.id}
                else:
                    revoked.serials = revoked.serials | {event.id}
        except (Compacted, StoreError) as exc:
            log.warning("reader.revocations_watch_failed", error=str(exc))
            await asyncio.sleep(1.0)


def _server_credentials(tls: dict[str, Any] | None) -> grpc.ServerCredentials | None:
    if tls is None:
        return None
    ca, key, cert = (base64.b64decode(tls[name]) for name in ("ca", "key", "cert"))
    return grpc.ssl_server_credentials(
        [(key, cert + ca)], root_certificates=ca, require_client_auth=True
    )


def _http_tls(tls: dict[str, Any] | None) -> ssl.SSLContext | None:
    """The HTTP side's TLS (controller/http/server.py's server_tls) from the PEMs: the
    key and certificate pass through a private temporary directory (ssl loads files)."""
    if tls is None:
        return None
    ca, key, cert = (base64.b64decode(tls[name]) for name in ("ca", "key", "cert"))
    with tempfile.TemporaryDirectory(prefix="dockyard-reader-") as directory:
        cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(cert)
        write_private(key_file, key)
        return server_tls(cert_file, key_file, ca)


if __name__ == "__main__":
    main()
