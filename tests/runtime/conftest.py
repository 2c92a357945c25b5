"""Fixtures for the runc runtime tests: a busybox rootfs and a runtime that cleans up.

`cleanup_everything` also releases the bridge network of an agent state dir (see
`cleanup_network`), so every test that runs agents leaves no namespace, veth, bridge,
iptables rule or IPAM reservation behind, also when it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.runtime.base import ContainerSpec
from dockyard.agent.runtime.runc.runtime import RuncRuntime

BUSYBOX = Path("/bin/busybox")


def _have_runc() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("runc") is not None
        and shutil.which("conmon") is not None
        and BUSYBOX.exists()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _have_runc():
        return
    skip = pytest.mark.skip(reason="needs root, runc, conmon and /bin/busybox")
    for item in items:
        if "runc" in item.keywords:
            item.add_marker(skip)


def make_busybox_rootfs(root: Path) -> Path:
    """A lower dir: /bin/busybox + applet links, /etc/passwd and group, /tmp."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    (root / "root").mkdir()
    return root


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("layers") / "busybox")


class Env:
    """What a test needs: the runtime, its lower dir, and a config factory."""

    def __init__(self, runtime: RuncRuntime, layer: Path, state_root: Path, cg: str) -> None:
        self.runtime = runtime
        self.layer = layer
        self.state_root = state_root
        self.cgroup_parent = cg

    def config(self, *command: str, **kwargs: object) -> ContainerSpec:
        cid = str(kwargs.pop("id", f"t{uuid.uuid4().hex[:16]}"))
        return ContainerSpec(
            id=cid,
            name=str(kwargs.pop("name", cid)),
            image="busybox-test",
            lower_dirs=[self.layer],
            image_config={"Cmd": ["sh"], "Env": ["IMAGE_VAR=1"]},
            command=list(command) if command else None,
            **kwargs,  # type: ignore[arg-type]
        )


def cleanup_everything(state_root: Path, cgroup_parent: str) -> None:
    """Kill and delete every container of this runc root, unmount, remove cgroups; then
    release the bridge network of the agent state dir that holds it (`<state>/network`)."""
    runc_root = state_root / "runc"
    if runc_root.is_dir():
        for entry in runc_root.iterdir():
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
    # conmon processes of this state root (found by their command line: conmon keeps
    # no pid file since --sync)
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            cmd = (proc / "cmdline").read_bytes()
            if cmd.split(b"\0", 1)[0].endswith(b"conmon") and str(state_root).encode() in cmd:
                os.kill(int(proc.name), 9)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split()[4] for line in f]
    for mount in sorted(
        (m for m in mounts if m.startswith(str(state_root))), key=len, reverse=True
    ):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    for controller in Path("/sys/fs/cgroup").iterdir():
        cg = controller / cgroup_parent
        if cg.is_dir():
            for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
    if (state_root.parent / "network").is_dir():
        cleanup_network(state_root.parent / "network")


# -- the bridge network -------------------------------------------------------------

SHARED_CHAINS = frozenset(
    {
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-MASQ",
        "CNI-HOSTPORT-SETMARK",
        "CNI-FORWARD",
        "CNI-ADMIN",
        "INPUT",
        "OUTPUT",
        "FORWARD",
        "PREROUTING",
        "POSTROUTING",
    }
)
"""Chains the plugins share between containers (left in place, as the plugins do)."""


def _in_thread(coro_factory: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run a coroutine to completion on a fresh loop in another thread (the caller may
    itself be inside a running loop)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_factory())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    if errors:
        print(f"network cleanup: {errors[0]!r}")


def bridge_links(bridge: str) -> list[str]:
    """The interfaces enslaved to `bridge` (its containers' host-side veths)."""
    brif = Path("/sys/class/net") / bridge / "brif"
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def iptables_lines(patterns: Iterable[str]) -> list[tuple[str, str]]:
    """`(table, rule)` of every iptables rule or chain that mentions one of `patterns`."""
    wanted = [p for p in patterns if p]
    if not wanted:
        return []
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    table = ""
    found = []
    for line in saved.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif any(p in line for p in wanted):
            found.append((table, line))
    return found


def purge_iptables(patterns: Iterable[str]) -> None:
    """Delete every rule that mentions one of `patterns`, and the per-container chains
    those rules jump to or live in (never the shared ones)."""
    chains: set[tuple[str, str]] = set()
    for table, line in iptables_lines(patterns):
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        chain = words[1]
        if "-j" in words:
            chains.add((table, words[words.index("-j") + 1]))
        chains.add((table, chain))
        subprocess.run(
            ["iptables", "-w", "-t", table, "-D", *words[1:]], capture_output=True, check=False
        )
    for table, chain in chains:
        if chain.startswith("CNI-") and chain not in SHARED_CHAINS:
            subprocess.run(
                ["iptables", "-w", "-t", table, "-F", chain], capture_output=True, check=False
            )
            subprocess.run(
                ["iptables", "-w", "-t", table, "-X", chain], capture_output=True, check=False
            )


def cleanup_network(
    network_root: Path, bridge: str | None = None, patterns: Iterable[str] = ()
) -> None:
    """Release everything an agent's bridge network holds, as if its containers were
    removed: CNI DEL of every recorded attachment (the agent's own code), then, in case
    that failed, delete the namespaces of the bridge, every rule naming one of its
    containers or addresses (or `patterns`), and the bridge itself once nothing is on it
    (its ports are deleted when `bridge` names it: a test bridge)."""
    from dockyard.agent.network.attachments import AttachmentStore
    from dockyard.agent.network.bridge import BridgeConfig, BridgeNetwork
    from dockyard.agent.network.netns import list_netns

    records = AttachmentStore(network_root).load_all()
    bridges = {r.bridge for r in records.values()} | ({bridge} if bridge else set())
    leftovers = [*records, *patterns]
    leftovers += [f"{r.ip_address}/32" for r in records.values() if r.ip_address]
    for name in sorted(bridges):
        network = BridgeNetwork(network_root, BridgeConfig(bridge=name))

        async def release(network: BridgeNetwork = network) -> None:
            try:
                await network.recover({})
            finally:
                await network.close()  # its lock on the bridge

        _in_thread(release)
        for netns in list_netns():
            if netns.startswith(f"dy-{name}-"):
                subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
    purge_iptables(leftovers)
    for name in sorted(bridges):
        if name == bridge:
            for link in bridge_links(name):
                subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
        if Path(f"/sys/class/net/{name}").exists() and not bridge_links(name):
            subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
    if bridge:  # a test's own bridge: its lock file too
        from dockyard.agent.network.bridge import LOCK_DIR

        (LOCK_DIR / f"{bridge}.lock").unlink(missing_ok=True)
    from dockyard.agent.network.subnet_claims import drop_claims_under

    drop_claims_under(network_root.parent)  # its Docker networks' subnets


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "state"
    cg = f"dockyard-test-{uuid.uuid4().hex[:8]}"
    try:
        yield root, cg
    finally:
        cleanup_everything(root, cg)


@pytest.fixture
async def env(state_root: tuple[Path, str], busybox_layer: Path) -> AsyncIterator[Env]:
    root, cg = state_root
    runtime = RuncRuntime(root, cgroup_parent=cg)
    await runtime.recover()
    env = Env(runtime, busybox_layer, root, cg)
    yield env
    await env.runtime.close()  # a test may have started another (an agent's restart)
