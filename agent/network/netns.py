"""Named network namespaces, as ``ip netns`` makes them: ``/run/netns/NAME``.

A named namespace is a bind mount of a namespace file, so it lives on while no process is
in it: a container on the bridge keeps its address and rules across restarts of its
process, and runc joins it by path (``linux.namespaces: [{"type": "network", "path": …}]``).
``/run`` is a tmpfs: after a reboot the names are gone, and recovery makes them again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from dockyard.agent.network.errors import NetworkError

__all__ = ["NETNS_DIR", "create_netns", "delete_netns", "ip_command", "list_netns", "netns_path"]

NETNS_DIR = Path("/run/netns")
_TIMEOUT = 30.0


def netns_path(name: str) -> Path:
    """Where ``ip netns`` keeps the namespace called ``name``."""
    return NETNS_DIR / name


async def ip_command(*args: str, check: bool = True) -> tuple[int, str, str]:
    """Run ``ip ARGS``; ``(status, stdout, stderr)``.

    Raises:
        NetworkError: it failed (with ``check``) or did not finish in time.
    """
    binary = shutil.which("ip") or "/usr/sbin/ip"
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NetworkError(f"cannot run ip (install iproute2): {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _TIMEOUT)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    code = proc.returncode or 0
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace").strip()
    if check and code != 0:
        raise NetworkError(f"ip {' '.join(args)} failed ({code}): {stderr}")
    return code, stdout, stderr


async def create_netns(name: str) -> Path:
    """A new named network namespace with its loopback up; a stale one is replaced."""
    path = netns_path(name)
    if await asyncio.to_thread(os.path.lexists, path):
        await delete_netns(name)
    await ip_command("netns", "add", name)
    try:
        await ip_command("-n", name, "link", "set", "lo", "up")
    except BaseException:
        await asyncio.shield(delete_netns(name))
        raise
    return path


async def delete_netns(name: str) -> None:
    """Unmount and remove the namespace; nothing when it does not exist. Its interfaces
    (the container end of a veth pair, and with it the host end) go with it."""
    if not await asyncio.to_thread(os.path.lexists, netns_path(name)):
        return
    code, _, err = await ip_command("netns", "delete", name, check=False)
    if code != 0 and await asyncio.to_thread(os.path.lexists, netns_path(name)):
        raise NetworkError(f"cannot delete network namespace {name}: {err}")


def list_netns() -> list[str]:
    """Names of every named namespace (blocking)."""
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except OSError:
        return []
