"""The controller's side of its reader process (controller/reader.py): start it, learn
its port, restart it when it dies (on the same port), stop it with the controller.

The reader is the controller's child, started from the event loop's thread (so that
its PR_SET_PDEATHSIG follows the controller's main thread), with its stdin a pipe that
only the controller holds: when the controller exits or is killed, the reader reads
EOF, or is killed by the kernel, and leaves no orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time

import structlog

from dockyard.controller.reader import ReaderSetup, encode
from dockyard.controller.revision_cell import RevisionCell

__all__ = ["ReaderProcess", "ReaderStartError", "setup_for"]

log = structlog.get_logger(__name__)

# Seconds the reader has to connect to etcd and bind its port.
START_TIMEOUT = 60.0
# Restart delays: doubled on each quick death, back to the first after a long life.
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0
HEALTHY_AFTER = 30.0
# The ready line is one small JSON object.
READY_LINE_LIMIT = 4096


class ReaderStartError(RuntimeError):
    pass


class ReaderProcess:
    """One reader process at a time, restarted when it dies, until `stop`.

    Args:
        setup: what the reader is told (its `address` may have port 0: the port the
            first one binds is kept for its restarts).
        cell: the shared revision the reader waits for (its fd is passed on).
    """

    def __init__(self, setup: ReaderSetup, cell: RevisionCell) -> None:
        self._setup = setup
        self._cell = cell
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.http_port = 0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The running reader's pid (None between two)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> int:
        """Start the reader and wait until it listens; its gRPC port (0: none asked for;
        the HTTP one is `http_port`)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dockyard.controller.reader",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(self._cell.fd,),
            limit=READY_LINE_LIMIT,
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(self._setup.to_line())
        try:
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
            ports = json.loads(line) if line else {}
            port, http_port = int(ports["port"]), int(ports.get("http_port", 0))
        except (TimeoutError, ValueError, KeyError, TypeError, ConnectionError) as exc:
            log.error("reader.start_failed", error=f"{type(exc).__name__}: {exc}")
            port = http_port = 0
        setup = self._setup
        if (setup.address and not port) or (setup.http_address and not http_port):
            await self._kill(process)
            raise ReaderStartError(
                f"the reader process could not serve {setup.address or setup.http_address} "
                "(--read-listen, --read-http-listen): address in use or invalid, or etcd "
                "unreachable"
            )
        # Its restarts bind the ports the first one bound (an address may say port 0).
        if setup.address:
            setup = dataclasses.replace(setup, address=_with_port(setup.address, port))
        if setup.http_address:
            setup = dataclasses.replace(
                setup, http_address=_with_port(setup.http_address, http_port)
            )
        self._setup = setup
        self.port, self.http_port = port, http_port
        log.info("reader.running", pid=process.pid, port=port, http_port=http_port)
        return port

    async def run(self) -> None:
        """Restart the reader whenever it dies, until cancelled (a controller job)."""
        delay = FIRST_BACKOFF
        while True:
            process = self._process
            started = time.monotonic()
            if process is not None:
                code = await process.wait()
                log.warning("reader.exited", pid=process.pid, returncode=code)
            if time.monotonic() - started >= HEALTHY_AFTER:
                delay = FIRST_BACKOFF
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
            try:
                await self.start()
            except ReaderStartError as exc:
                self._process = None
                log.error("reader.restart_failed", error=str(exc), retry_in=delay)
            else:
                self.restarts += 1

    async def stop(self, grace: float = 2.0) -> None:
        """Close the reader's pipe (it exits), killing it after `grace` seconds."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            await self._kill(process)

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _with_port(address: str, port: int) -> str:
    return f"{address.rsplit(':', 1)[0]}:{port}"


def setup_for(
    address: str,
    endpoints: list[str],
    prefix: str,
    credentials: dict[str, bytes | None],
    server_name: str | None,
    etcd_timeout: float,
    tls: tuple[bytes, bytes, bytes] | None,
    cell: RevisionCell,
    log_level: str,
    http_address: str = "",
) -> ReaderSetup:
    """The reader's setup from the controller's own settings (`tls`: CA, key, cert)."""
    return ReaderSetup(
        address=address,
        parent=os.getpid(),
        revision_fd=cell.fd,
        etcd_endpoints=endpoints,
        etcd_prefix=prefix,
        etcd_credentials={k: encode(v) for k, v in credentials.items()},
        etcd_server_name=server_name,
        etcd_timeout=etcd_timeout,
        tls=(
            {name: encode(pem) or "" for name, pem in zip(("ca", "key", "cert"), tls, strict=True)}
            if tls is not None
            else None
        ),
        log_level=log_level,
        http_address=http_address,
    )
