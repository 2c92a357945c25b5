"""Run a real etcd server as a child process.

The controller uses this when it is given no `--etcd` endpoints (the embedded
default: data under its state dir, stopped with it, client and peer ports on
loopback with TLS and client-certificate authentication, `common/etcd_pki.py`); the
tests use it for a fixture on free ports (plaintext unless given `tls`).
"""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dockyard.common.etcd_pki import EtcdTLS

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1


class EtcdServerError(RuntimeError):
    pass


class _PortTaken(EtcdServerError):
    """etcd exited because one of its ports was already bound."""


_PORT_ATTEMPTS = 3
_PORT_IN_USE = "address already in use"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # An embedded etcd must not outlive a controller that was SIGKILLed.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class EtcdServer:
    """One etcd member listening on loopback.

    Args:
        data_dir: etcd's --data-dir; kept across restarts.
        client_port / peer_port: 0 picks free ports.
        binary: path or name of the etcd executable.
        tls: certificates for both ports; clients and peers must present one from the
            same CA. None: plaintext (test fixtures).
    """

    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    binary: str = "etcd"
    name: str = "dockyard"
    log_path: Path | None = None
    tls: EtcdTLS | None = None
    _process: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self, timeout: float = 20.0) -> None:
        executable = shutil.which(self.binary)
        if executable is None:
            raise EtcdServerError(
                f"etcd executable {self.binary!r} not found: install Debian's etcd-server "
                "or pass --etcd host:port"
            )
        picks_ports = not (self.client_port and self.peer_port)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            chosen = (self.client_port, self.peer_port)
            try:
                await self._start_once(executable, timeout)
                return
            except _PortTaken as error:
                # A port chosen here was free when chosen, but something took it
                # before etcd bound it: choose again rather than fail the daemon.
                if not picks_ports or attempt == _PORT_ATTEMPTS:
                    raise EtcdServerError(str(error)) from None
                log.warning("etcd.port_taken", error=str(error), attempt=attempt)
                self.client_port, self.peer_port = chosen

    async def _start_once(self, executable: str, timeout: float) -> None:
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.data_dir.parent / "etcd.log"
        log_start = log_path.stat().st_size if log_path.exists() else 0
        scheme = "https" if self.tls else "http"
        client_url = f"{scheme}://127.0.0.1:{self.client_port}"
        peer_url = f"{scheme}://127.0.0.1:{self.peer_port}"
        args = [
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}",
            "--initial-cluster-state=new",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=10000",
            *_tls_args(self.tls),
        ]
        with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - opening a log is instant
            self._process = await asyncio.create_subprocess_exec(
                executable,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=_die_with_parent,
                env={"ETCD_UNSUPPORTED_ARCH": "", "PATH": "/usr/bin:/bin"},
            )
        log.info("etcd.starting", endpoint=self.endpoint, data_dir=str(self.data_dir), pid=self.pid)
        await self._wait_ready(timeout, log_path, log_start)

    async def _wait_ready(self, timeout: float, log_path: Path, log_start: int) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._process.returncode is not None:
                output = await asyncio.to_thread(_read_from, log_path, log_start)
                message = f"etcd exited with code {self._process.returncode} (log {log_path})"
                if _PORT_IN_USE in output:
                    raise _PortTaken(f"{message}: {_line_with(output, _PORT_IN_USE)}")
                raise EtcdServerError(f"{message}: {output[-800:]}")
            if await _answers_health(self.client_port, self.tls):
                log.info("etcd.ready", endpoint=self.endpoint)
                return
            await asyncio.sleep(0.1)
        await self.stop()
        raise EtcdServerError(f"etcd did not become healthy within {timeout:g} s (log {log_path})")

    async def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("etcd.stopped", endpoint=self.endpoint)

    async def kill(self) -> None:
        """SIGKILL, for tests of an etcd that dies under a running controller."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


def _read_from(path: Path, offset: int) -> str:
    """What etcd wrote to its log since this start (the log is shared across restarts)."""
    with open(path, "rb") as log_file:
        log_file.seek(offset)
        return log_file.read().decode(errors="replace")


def _line_with(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), needle)


def _tls_args(tls: EtcdTLS | None) -> list[str]:
    if tls is None:
        return []
    return [
        f"--cert-file={tls.server_cert}",
        f"--key-file={tls.server_key}",
        f"--trusted-ca-file={tls.ca}",
        "--client-cert-auth=true",
        f"--peer-cert-file={tls.server_cert}",
        f"--peer-key-file={tls.server_key}",
        f"--peer-trusted-ca-file={tls.ca}",
        "--peer-client-cert-auth=true",
    ]


def _client_context(tls: EtcdTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return context


async def _answers_health(port: int, tls: EtcdTLS | None = None) -> bool:
    context = _client_context(tls) if tls else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context), 1.0
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    try:
        writer.write(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        body = await asyncio.wait_for(reader.read(), 2.0)
        return b'"health":"true"' in body
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
