"""Small blocking file helpers of the runc runtime (call them through ``to_thread``)."""

from __future__ import annotations

import functools
import json
import os
import platform
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dockyard.agent.runtime.runc.records import ContainerDir, write_atomic
from dockyard.agent.runtime.runc.spec import EtcFiles, ResolvedUser

__all__ = [
    "EtcExtras",
    "ResolvedUser",
    "UserDbs",
    "agent_resolv_conf",
    "bridge_resolv_conf",
    "clear_exit_files",
    "host_devices",
    "kernel_runs_x32",
    "read_exit",
    "read_json",
    "read_user_db",
    "user_from_spec",
    "write_etc_files",
    "write_json",
    "write_new",
]


def _read_text(path: Path) -> str:
    """A file of the rootfs; only regular files (a symlink could point at the host)."""
    try:
        if path.is_symlink() or not path.is_file():
            return ""
        return path.read_text(errors="replace")
    except OSError:
        return ""


def read_user_db(rootfs: Path) -> tuple[str, str]:
    """The rootfs's ``/etc/passwd`` and ``/etc/group`` text ("" when missing)."""
    return _read_text(rootfs / "etc" / "passwd"), _read_text(rootfs / "etc" / "group")


class UserDbs:
    """Images' ``/etc/passwd`` and ``/etc/group`` text, by their lower dirs: read in the
    rootfs of the first container of each image, then kept (the layers are immutable, so
    every fresh container of the image sees the same files). Thread-safe: creates ask in
    their worker threads, several at once during a scale-up."""

    def __init__(self, kept: int = 64) -> None:
        """Keep the text of at most ``kept`` images (the oldest read goes first)."""
        self._kept = kept
        self._texts: dict[tuple[Path, ...], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._texts)

    def read(self, lower_dirs: Sequence[Path], rootfs: Path) -> tuple[str, str]:
        """The image's passwd and group text; ``rootfs``: a fresh container's, mounted
        over ``lower_dirs``, where they are read the first time (blocking)."""
        key = tuple(lower_dirs)
        with self._lock:
            found = self._texts.get(key)
        if found is not None:
            return found
        found = read_user_db(rootfs)
        with self._lock:
            if key not in self._texts and len(self._texts) >= self._kept:
                del self._texts[next(iter(self._texts))]
            self._texts[key] = found
        return found

    def __contains__(self, lower_dirs: object) -> bool:
        return lower_dirs in self._texts


SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")
"""systemd-resolved's list of the real upstream servers (its stub is 127.0.0.53)."""


def _loopback_nameserver(line: str) -> bool:
    words = line.split()
    if len(words) < 2 or words[0] != "nameserver":
        return False
    address = words[1].split("%", 1)[0]
    return address.startswith("127.") or address in ("::1", "0:0:0:0:0:0:0:1")


def bridge_resolv_conf(host_text: str, fallback_text: str = "") -> str:
    """A resolv.conf for a container in its own network namespace.

    Loopback nameservers (127.x, ::1: a local dnsmasq or systemd-resolved's stub) cannot
    be reached from the namespace, so they are dropped. When that leaves none,
    ``fallback_text`` (systemd-resolved's upstream list) is tried the same way; when
    that has none either, the container gets no nameserver (search and options stay).
    """

    def has_nameserver(text: str) -> bool:
        return any(
            line.split()[:1] == ["nameserver"] and not _loopback_nameserver(line)
            for line in text.splitlines()
        )

    text = host_text
    if not has_nameserver(host_text) and has_nameserver(fallback_text):
        text = fallback_text
    kept = [line for line in text.splitlines() if not _loopback_nameserver(line)]
    result = "\n".join(kept).strip("\n")
    return f"{result}\n" if result else ""


def agent_resolv_conf(host_text: str, nameserver: str) -> str:
    """A resolv.conf that sends every query to the agent's DNS server (service names,
    the rest forwarded to the host's resolvers), keeping the host's search domains and
    options, as Docker's embedded DNS server does."""
    kept = [
        line
        for line in host_text.splitlines()
        if line.split()[:1] in (["search"], ["domain"], ["options"])
    ]
    return "\n".join([f"nameserver {nameserver}", *kept]) + "\n"


def _hosts_with(hosts: str, extra_hosts: Sequence[str]) -> str:
    if not extra_hosts:
        return hosts
    lines = ["\t".join(line.split(" ", 1)) for line in extra_hosts]
    return hosts.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def _resolv_with(
    resolv: str, dns_servers: Sequence[str], dns_search: Sequence[str], agent_nameserver: str
) -> str:
    if not dns_servers and not dns_search:
        return resolv
    kept, servers, search = [], [], []
    for line in resolv.splitlines():
        word = line.split()[:1]
        if word == ["nameserver"]:
            servers.append(line)
        elif word in (["search"], ["domain"]):
            search.append(line)
        else:
            kept.append(line)
    if dns_servers:
        own = [f"nameserver {agent_nameserver}"] if agent_nameserver else []
        servers = own + [f"nameserver {s}" for s in dns_servers]
    if dns_search:
        search = [f"search {' '.join(dns_search)}"]
    return "\n".join([*servers, *search, *kept]) + "\n"


@dataclass(frozen=True, slots=True)
class EtcExtras:
    """Docker's --host, --dns and --dns-search over the generated files.

    `extra_hosts` lines ("IP NAME") are appended to /etc/hosts. `dns_servers` replace the
    nameservers of resolv.conf, after the agent's own when it runs one (service names
    must still resolve); `dns_search` replaces its search domains.
    """

    extra_hosts: Sequence[str] = ()
    dns_servers: Sequence[str] = ()
    dns_search: Sequence[str] = ()


def write_new(path: Path, data: bytes) -> None:
    """Write ``path`` in place: one open, no temporary, no rename (blocking).

    Only for files of a container that has no record yet (its create): a crash cuts the
    create before ``container.json`` exists, and recovery discards such a directory
    whole, so a half-written file here is never used.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with open(fd, "wb") as f:
        f.write(data)


def write_etc_files(
    etc: EtcFiles,
    hostname: str,
    network: str,
    address: str = "",
    name: str = "",
    nameserver: str = "",
    extras: EtcExtras | None = None,
    fresh: bool = False,
) -> None:
    """The container's /etc/hosts, /etc/resolv.conf and /etc/hostname.

    On the bridge, ``address`` (the container's) resolves to its host name and name, and
    ``nameserver`` (the agent's DNS server, when it runs one) is the only nameserver.
    ``extras`` are applied before the files are written (each file written once).
    ``fresh``: the container has no record yet (its create), and ``etc``'s directory
    exists: the files are written in place (:func:`write_new`), else each one is replaced
    atomically (a running container may be reading it).
    """
    if not fresh:
        etc.hosts.parent.mkdir(parents=True, exist_ok=True)
    resolv = _read_text(Path("/etc/resolv.conf"))
    if network == "host":
        hosts = _read_text(Path("/etc/hosts"))
    else:
        own = address or "127.0.1.1"
        names = hostname
        if network == "bridge" and name and name != hostname:
            names = f"{hostname} {name}"
        hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{names}\n"
    if network == "bridge" and nameserver:
        resolv = agent_resolv_conf(resolv, nameserver)
    elif network == "bridge":
        resolv = bridge_resolv_conf(resolv, _read_text(SYSTEMD_RESOLV_CONF))
    if extras is not None:
        hosts = _hosts_with(hosts, extras.extra_hosts)
        resolv = _resolv_with(resolv, extras.dns_servers, extras.dns_search, nameserver)
    write = write_new if fresh else write_atomic
    write(etc.hosts, hosts.encode())
    write(etc.resolv_conf, resolv.encode())
    write(etc.hostname, f"{hostname}\n".encode())


# runc creates these itself (or they are their own filesystems in the container).
_SKIP_DEVICES = frozenset(
    {
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/console",
    }
)
_SKIP_DEVICE_DIRS = ("/dev/pts", "/dev/shm", "/dev/mqueue")

# getpid(2) through the x32 ABI (its number with __X32_SYSCALL_BIT): the pid where the
# kernel runs x32, ENOSYS where it does not (not built, or off at boot).
_X32_PROBE = (
    "import ctypes, sys\n"
    "r = ctypes.CDLL(None, use_errno=True).syscall(0x40000000 | 39)\n"
    "sys.exit(0 if r > 0 else 3 if ctypes.get_errno() == 38 else 4)\n"
)


@functools.cache
def kernel_runs_x32() -> bool:
    """Whether this kernel runs x32 syscalls (blocking, once per process).

    Probed in a child process: a seccomp filter above the agent (a container, systemd's
    ``SystemCallArchitectures=native``) may kill the caller of an x32 syscall. False only
    when the kernel answered ENOSYS, or the probe was killed (a filter above us already
    refuses x32, for the containers too); any other outcome keeps x32 in the filter.
    """
    if platform.machine() != "x86_64":
        return False
    try:
        rc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _X32_PROBE],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode
    except (OSError, subprocess.TimeoutExpired):
        return True
    return not (rc == 3 or rc < 0)


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """The host's device nodes as OCI ``linux.devices`` entries (for ``--privileged``)."""
    devices: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in _SKIP_DEVICE_DIRS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in _SKIP_DEVICES:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                devices.append(
                    {
                        "path": path,
                        "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                        "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                    }
                )
    return sorted(devices, key=lambda d: d["path"])


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    write_atomic(path, json.dumps(data).encode())


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(path.read_bytes())


def clear_exit_files(cdir: ContainerDir, container_id: str) -> None:
    """Forget the previous run's exit and OOM markers."""
    for path in (*cdir.exit_files(container_id), *cdir.oom_files()):
        path.unlink(missing_ok=True)


def read_exit(cdir: ContainerDir, container_id: str) -> tuple[int | None, datetime | None, bool]:
    """conmon's exit code (``None`` if it wrote none), when it was written, and OOM flag."""
    oom = any(path.exists() for path in cdir.oom_files())
    for path in cdir.exit_files(container_id):
        try:
            text = path.read_text().strip()
            finished = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError:
            continue
        if text.lstrip("-").isdigit():
            return int(text), finished, oom
    return None, None, oom


def user_from_spec(process: dict[str, Any]) -> ResolvedUser:
    """The user of an OCI process object."""
    user = process.get("user", {})
    return ResolvedUser(
        uid=int(user.get("uid", 0)),
        gid=int(user.get("gid", 0)),
        additional_gids=tuple(int(g) for g in user.get("additionalGids", [])),
    )
