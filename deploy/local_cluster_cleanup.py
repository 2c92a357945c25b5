"""What `deploy/local-cluster down` releases after a stopped agent, and the mount
checks before `down --purge` deletes a state dir. Standard library only; the network
is released with the agent's own code, run by the project's Python."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

__all__ = [
    "drop_subnet_claims",
    "mount_points",
    "release_agent",
    "remove_bridges",
    "remove_secret_files",
    "shared_bridges",
    "unmount_under",
]

RELEASE_NETWORK = """
import asyncio, sys
from pathlib import Path
from dockyard.agent.network.bridge import BridgeConfig, BridgeNetwork

async def main() -> None:
    network = BridgeNetwork(Path(sys.argv[1]), BridgeConfig(bridge=sys.argv[2]))
    try:
        await network.recover({})  # no container is kept: CNI DEL of every attachment
    finally:
        await network.close()

asyncio.run(main())
"""

# The agent's user-defined Docker networks (agent/network/local_bridges.py): CNI DEL of
# what is left on each, then its bridge, its lock and the agent's isolation table.
RELEASE_LOCAL_NETWORKS = """
import asyncio, json, subprocess, sys
from pathlib import Path
from dockyard.agent.network.bridge import LOCK_DIR, BridgeConfig, BridgeNetwork
from dockyard.agent.network.local_bridges import table_name

async def main() -> None:
    for spec_file in sorted(Path(sys.argv[1]).glob("*/network.json")):
        spec = json.loads(spec_file.read_text())
        config = BridgeConfig(bridge=spec["bridge"], subnet=spec["subnet"])
        network = BridgeNetwork(spec_file.parent, config, subnet_fixed=True)
        try:
            await network.recover({})
        finally:
            await network.close()
        for netns in Path("/run/netns").glob(f"dy-{spec['bridge']}-*"):
            subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True)
        subprocess.run(["ip", "link", "delete", spec["bridge"]], capture_output=True)
        (LOCK_DIR / f"{spec['bridge']}.lock").unlink(missing_ok=True)
        print(spec["bridge"])
    table = table_name(sys.argv[2])
    subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)

asyncio.run(main())
"""


def release_agent(
    agent_state: Path, bridge: str, python: str, in_host: tuple[str, ...] = ()
) -> None:
    """What a stopped agent left: its runc containers, their conmons, the mounts under
    its state dir and its network (CNI DEL of every attachment with the agent's own
    code: veths, published ports' DNAT rules, addresses; then the namespaces).
    Nothing if it left nothing; never while the agent runs (its bridge lock). `in_host`:
    the command prefix that enters the agent's host namespace (`--hosts`)."""
    name = agent_state.name
    runc_root = agent_state / "runtime" / "runc"
    killed = []
    for entry in sorted(runc_root.iterdir()) if runc_root.is_dir() else []:
        if entry.is_dir():
            subprocess.run(
                ["runc", "--root", str(runc_root), "kill", entry.name, "KILL"],
                capture_output=True,
                check=False,
            )
            subprocess.run(
                ["runc", "--root", str(runc_root), "delete", "-f", entry.name],
                capture_output=True,
                check=False,
            )
            killed.append(entry.name)
    for pid in _conmon_pids(agent_state / "runtime"):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"conmon" in cmdline and str(agent_state).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
    if killed:
        print(f"removed {len(killed)} containers {name} left behind")
    network = agent_state / "network"
    if any(network.glob("containers/*.json")):
        released = _release(in_host, python, RELEASE_NETWORK, network, bridge, f"{name}'s network")
        if released is not None:
            print(f"released the network {name} left behind")
    local = network / "local"
    if any(local.glob("*/network.json")):
        removed = _release(
            in_host, python, RELEASE_LOCAL_NETWORKS, local, bridge, f"{name}'s Docker networks"
        )
        if removed:
            print(f"removed the Docker networks {name} left: {' '.join(removed)}")
    for netns in list_netns(f"dy-{bridge}-"):
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
    left = unmount_under(agent_state)
    if left:
        print(
            f"local-cluster: still mounted under {agent_state}: {', '.join(left)}", file=sys.stderr
        )


def _conmon_pids(runtime: Path) -> list[int]:
    """The conmon of each container record (`conmon_pid` in its container.json; an older
    agent's double-forked conmon wrote a conmon.pid file instead)."""
    pids = []
    for base in runtime.glob("containers/*"):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            pid = int(json.loads((base / "container.json").read_text()).get("conmon_pid", 0))
            if not pid and (base / "conmon.pid").is_file():
                pid = int((base / "conmon.pid").read_text())
            if pid > 0:
                pids.append(pid)
    return pids


def _release(
    in_host: tuple[str, ...], python: str, script: str, root: Path, bridge: str, what: str
) -> list[str] | None:
    """Run a release `script` with the agent's own code (in its host namespace); the
    words it printed, or None (and the reason on stderr) when it failed."""
    done = subprocess.run(
        [*in_host, python, "-c", script, str(root), bridge],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(
            f"local-cluster: {what} not fully released: {done.stderr.strip()[-500:]}",
            file=sys.stderr,
        )
        return None
    return done.stdout.split()


def drop_subnet_claims(state_dir: Path, python: str) -> None:
    """The host-wide claims of the agents' Docker networks' subnets, once their state is
    purged (a plain `down` keeps them: the networks come back with `up`)."""
    subprocess.run([python, "-c", DROP_CLAIMS, str(state_dir)], capture_output=True, check=False)


DROP_CLAIMS = """
import sys
from pathlib import Path
from dockyard.agent.network.subnet_claims import drop_claims_under
drop_claims_under(Path(sys.argv[1]))
"""


def list_netns(prefix: str) -> list[str]:
    netns = Path("/run/netns")
    return (
        sorted(p.name for p in netns.iterdir() if p.name.startswith(prefix))
        if netns.is_dir()
        else []
    )


def remove_secret_files(state_dir: Path) -> None:
    """The agents' secret tmpfs (/run/dockyard/secrets/<node id>): their containers are
    gone, and an agent keeps the tmpfs mounted while a task's files are on it."""
    mounted = set(mount_points())
    for identity in sorted((state_dir / "agents").glob("node-*/node.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            root = Path("/run/dockyard/secrets") / json.loads(identity.read_text())["node_id"]
            if str(root) in mounted:
                subprocess.run(["umount", str(root)], capture_output=True, check=False)
            shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path("/run/dockyard/secrets").rmdir()  # the last agent on this host


SHARED_BRIDGES = """
import sys
from dockyard.agent.network.overlay import shared_bridge_name
print("\\n".join(shared_bridge_name(network_id) for network_id in sys.argv[1:]))
"""


def shared_bridges(python: str, network_ids: list[str]) -> list[str]:
    """The bridges agents sharing this host made for overlay networks: those of
    ``network_ids`` (named by the agent's own rule, run by the project's Python), and
    every other ``dys-*`` bridge with no port left (a network removed before `down`;
    another cluster's agent makes its bridge again when it plugs a container in)."""
    named: list[str] = []
    if network_ids:
        done = subprocess.run([python, "-c", SHARED_BRIDGES, *network_ids],
                              capture_output=True, text=True, check=False)  # fmt: skip
        named = done.stdout.split() if done.returncode == 0 else []
    unused = [
        bridge.name
        for bridge in sorted(Path("/sys/class/net").glob("dys-*"))
        if (bridge / "brif").is_dir() and not any((bridge / "brif").iterdir())
    ]
    return sorted(set(named) | set(unused))


def remove_bridges(state_dir: Path, bridges: list[str]) -> None:
    """The agents' bridges, once their containers are gone."""
    for bridge in bridges:
        if Path(f"/sys/class/net/{bridge}").exists():
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
            print(f"removed bridge {bridge}")
        Path(f"/run/dockyard/bridges/{bridge}.lock").unlink(missing_ok=True)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line.split()[4] for line in mountinfo]


def unmount_under(root: Path) -> list[str]:
    """Unmount whatever is mounted below `root` (deepest first); what is still mounted."""
    prefix = str(root).rstrip("/") + "/"
    for mount in sorted((m for m in mount_points() if m.startswith(prefix)), key=len, reverse=True):
        if subprocess.run(["umount", mount], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    return [m for m in mount_points() if m.startswith(prefix)]
