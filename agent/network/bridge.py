"""``BridgeNetwork``: the agent's bridge (Docker's ``bridge`` network) over CNI plugins.

Per container: a named network namespace (``/run/netns/dy-<bridge>-<container id>``),
then the plugin list ADDed into it:

- ``bridge`` makes (once) the agent's Linux bridge with the subnet's first address as
  the gateway, a veth pair into the namespace (``eth0``), and masquerading for traffic
  that leaves the subnet; its ``host-local`` IPAM hands out addresses, keeping its
  reservations under the agent's state dir (``<state>/network/ipam``);
- ``portmap`` (only with published ports) DNATs ``host_ip:host_port`` to the container,
  also for connections from the host itself to 127.0.0.1;
- ``firewall`` lets the container's traffic through the host's FORWARD chain even where
  its policy is DROP (as on a host with Docker installed).

The namespace lives as long as the container, not its process: a restart keeps the
address and the ports. Removing the container DELs the list in reverse (addresses and
rules released) and deletes the namespace (and with it the veth pair). The record of
each attachment (``store.py``) lets a restarted agent find everything again.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.network.attachments import ATTACHED, STALE, Attachment, AttachmentStore
from dockyard.agent.network.cni import CniRunner, CniTarget
from dockyard.agent.network.errors import CniError, NetworkError
from dockyard.agent.network.netns import create_netns, delete_netns, ip_command, netns_path
from dockyard.agent.network.ports import PortReservations
from dockyard.agent.runtime.base import ContainerRuntimeError, NetworkInfo, PortMapping
from dockyard.common.atomic_file import write_atomic
from dockyard.common.validation import check_subnet

__all__ = [
    "CNI_VERSION",
    "DEFAULT_BRIDGE",
    "DEFAULT_CNI_PATH",
    "DEFAULT_SUBNET",
    "BridgeConfig",
    "BridgeNetwork",
    "assigned_subnet",
    "check_bridge_name",
    "check_subnet",
]

log = structlog.get_logger(__name__)

DEFAULT_BRIDGE = "dockyard0"
DEFAULT_SUBNET = "10.87.0.0/16"
"""Not Podman's 10.88.0.0/16 (nor its 10.89.x networks), Docker's 172.17.0.0/16 or the
Kubernetes CNIs' usual ranges, so the agent can share a host with them."""
DEFAULT_CNI_PATH: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
"""Debian's ``containernetworking-plugins``, then the upstream tarball's location."""
CNI_VERSION = "1.0.0"
IFNAME = "eth0"

ASSIGNED_SUBNET_FILE = "assigned-subnet"
"""Under the network's state dir: the subnet the controller gave this node, used from the
next start on (before the session opens) unless ``--bridge-subnet`` says otherwise."""

LOCK_DIR = Path("/run/dockyard/bridges")
"""``<bridge>.lock``: held (flock) by the agent that uses the bridge."""

_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def check_bridge_name(name: str) -> str:
    """A Linux interface name: 1-15 of ``[A-Za-z0-9_.-]``, starting alphanumeric.

    Raises:
        ValueError: it is not.
    """
    if not _BRIDGE_NAME.match(name):
        raise ValueError(
            f"bridge name {name!r}: use 1-15 characters [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """The agent's bridge: its name, subnet and where the CNI plugins are."""

    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    cni_path: tuple[str, ...] = DEFAULT_CNI_PATH
    timeout: float = 30.0
    """Seconds one plugin call may take."""

    def __post_init__(self) -> None:
        check_bridge_name(self.bridge)
        check_subnet(self.subnet)

    @property
    def network_name(self) -> str:
        """The CNI network name (in iptables comments and chain hashes)."""
        return f"dockyard-{self.bridge}"

    @property
    def gateway(self) -> str:
        """The bridge's own address: the subnet's first."""
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))


class BridgeNetwork:
    """Attach containers to the agent's bridge and release them again.

    Args:
        root: State directory of the network (``<agent state>/network``).
        config: The bridge's settings.
        runner: Runs the plugins (a test may pass its own).
        subnet_fixed: The subnet was given (``--bridge-subnet``): the controller may not
            hand this node another one.
    """

    def __init__(
        self,
        root: Path,
        config: BridgeConfig | None = None,
        runner: CniRunner | None = None,
        subnet_fixed: bool = True,
    ) -> None:
        self.root = Path(root)
        self.config = config or BridgeConfig()
        self._subnet_fixed = subnet_fixed
        self.nameserver = ""
        """The agent's DNS server for the bridge's containers ("": none; they get the
        host's resolvers)."""
        self.runner = runner or CniRunner(self.config.cni_path, self.config.timeout)
        self._store = AttachmentStore(self.root)
        self._attachments: dict[str, Attachment] = {}
        self._ports = PortReservations()
        self._lock = asyncio.Lock()
        """Held while ports are reserved and records added (never across a plugin call)."""
        self._cni_lock = asyncio.Lock()
        """One plugin list at a time: they all edit the same iptables chains."""
        self._mtu: int | None = None
        self._lock_fd = -1

    # ----------------------------------------------------------------- queries

    def netns_name(self, container_id: str) -> str:
        """``dy-<bridge>-<container id>``: under ``/run/netns``, shown by ``ip netns``."""
        return f"dy-{self.config.bridge}-{container_id}"

    def subnet_claim(self) -> tuple[str, bool]:
        """The subnet in use, and whether it is fixed: given by the operator, or
        containers hold addresses in it."""
        return self.config.subnet, self._subnet_fixed or bool(self._attachments)

    async def use_subnet(self, subnet: str) -> bool:
        """Take the subnet the controller assigned to this node (kept for the next start).

        Returns:
            False when the current one is kept: it is fixed (see :meth:`subnet_claim`).

        Raises:
            ValueError: ``subnet`` is not a usable one.
        """
        check_subnet(subnet)
        async with self._lock:
            if subnet == self.config.subnet:
                await asyncio.to_thread(self._remember_subnet, subnet)
                return True
            if self.subnet_claim()[1]:
                log.warning(
                    "bridge.subnet_fixed",
                    subnet=self.config.subnet,
                    assigned=subnet,
                    containers=len(self._attachments),
                )
                return False
            await self._remove_idle_bridge()
            self.config = replace(self.config, subnet=subnet)
            self._mtu = None  # check the new subnet against the host's routes again
            await asyncio.to_thread(self._remember_subnet, subnet)
        log.info("bridge.subnet_assigned", bridge=self.config.bridge, subnet=subnet)
        return True

    def _remember_subnet(self, subnet: str) -> None:
        write_atomic(self.root / ASSIGNED_SUBNET_FILE, f"{subnet}\n".encode())

    async def _remove_idle_bridge(self) -> None:
        """Delete this agent's bridge (nothing is attached to it) so that the plugin makes
        it again with the new gateway address instead of adding a second one."""
        # `ip`, not /sys/class/net: that shows the namespace that mounted /sys, not ours.
        code, _, _ = await ip_command("link", "show", "dev", self.config.bridge, check=False)
        if code != 0:
            return
        self._claim()  # never another agent's bridge
        await ip_command("link", "delete", self.config.bridge, check=False)

    def get(self, container_id: str) -> Attachment | None:
        """The container's attachment, if it has one."""
        return self._attachments.get(container_id)

    def info(self, container_id: str) -> NetworkInfo | None:
        """Address, gateway and bound ports of an attached container."""
        attachment = self._attachments.get(container_id)
        if attachment is None or attachment.state != ATTACHED:
            return None
        return attachment.info()

    def check_ports(self, ports: Sequence[PortMapping]) -> None:
        """Raise :class:`~dockyard.agent.network.errors.PortInUse` (or a
        :class:`NetworkError` for a ``host_ip`` that is not the host's) when ``ports``
        cannot be published now; nothing is kept."""
        self._ports.check(ports)

    def holds_port(self, protocol: str, port: int) -> bool:
        """A container of this agent publishes ``port`` (the routing mesh asks: that
        holder is a task of its own, not "something else")."""
        return bool(self._ports.holder(PortMapping(0, protocol, port)))

    def conflist(self, with_ports: bool) -> dict[str, Any]:
        """The CNI network configuration list of one attachment."""
        config = self.config
        bridge: dict[str, Any] = {
            "type": "bridge",
            "bridge": config.bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": config.subnet, "gateway": config.gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.root / "ipam"),
            },
        }
        if self._mtu:
            bridge["mtu"] = self._mtu
        plugins: list[dict[str, Any]] = [bridge]
        if with_ports:
            plugins.append(
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
            )
        plugins.append({"type": "firewall", "backend": "iptables"})
        return {"cniVersion": CNI_VERSION, "name": config.network_name, "plugins": plugins}

    # --------------------------------------------------------------- lifecycle

    async def attach(self, container_id: str, ports: Sequence[PortMapping]) -> Attachment:
        """Give the container a namespace on the bridge with ``ports`` published.

        Nothing is left behind when it fails.

        Raises:
            PortInUse: a host port is taken (``ports[i]`` names it).
            NetworkError: the namespace or a plugin failed (``CniError`` names it).
        """
        await self._preflight()
        async with self._lock:
            self._claim()
            if container_id in self._attachments:
                raise NetworkError(f"container {container_id} is already on the bridge")
            held = self._ports.reserve(container_id, ports)
            name = self.netns_name(container_id)
            attachment = Attachment(
                container_id=container_id,
                netns=name,
                netns_path=str(netns_path(name)),
                bridge=self.config.bridge,
                conflist=self.conflist(bool(ports)),
                ports=self._ports.bound(held),
            )
            self._attachments[container_id] = attachment
        try:
            await asyncio.to_thread(self._store.save, attachment)
            await self._setup(attachment)
        except BaseException:
            await asyncio.shield(self.detach(container_id))
            raise
        log.info(
            "network.attached",
            container_id=container_id,
            ip=attachment.ip_address,
            bridge=attachment.bridge,
            ports=[p.to_dict() for p in attachment.ports],
        )
        return attachment

    async def _setup(self, attachment: Attachment, ip: str = "") -> None:
        """Namespace, then ADD of the list (asking host-local for ``ip`` when given)."""
        await create_netns(attachment.netns)
        target = CniTarget(attachment.container_id, attachment.netns_path, attachment.ifname)
        cni_args = {"bridge": f"IgnoreUnknown=1;IP={ip}"} if ip else None
        async with self._cni_lock:
            result = await self.runner.add_list(
                attachment.conflist, target, attachment.runtime_config(), cni_args
            )
        attachment.take_result(result)
        if not attachment.ip_address:
            raise NetworkError(
                f"the bridge plugin gave container {attachment.container_id} no IPv4 address"
            )
        attachment.state = ATTACHED
        await asyncio.to_thread(self._store.save, attachment)

    async def detach(self, container_id: str) -> None:
        """Release the container's address, rules, ports and namespace (nothing if it has
        none). A failed DEL is logged and left for the next recovery to retry."""
        attachment = self._attachments.get(container_id)
        if attachment is not None:
            await self._release(attachment)

    async def _release(self, attachment: Attachment) -> None:
        cid = attachment.container_id
        target = CniTarget(cid, attachment.netns_path, attachment.ifname)
        async with self._cni_lock:
            failures = await self.runner.del_list(
                attachment.conflist, target, attachment.runtime_config(), attachment.result
            )
        try:
            await delete_netns(attachment.netns)
        except NetworkError as exc:
            log.warning("network.netns_delete_failed", container_id=cid, error=str(exc))
        self._ports.release(cid)
        self._attachments.pop(cid, None)
        if failures and attachment.result is not None:
            attachment.state = STALE
            await asyncio.to_thread(self._store.save, attachment)
            log.error(
                "network.release_incomplete",
                container_id=cid,
                retried="at the next agent start",
                errors=[str(f) for f in failures],
            )
        else:
            await asyncio.to_thread(self._store.delete, cid)
            log.info("network.detached", container_id=cid)

    async def recover(self, keep: Mapping[str, Sequence[PortMapping]]) -> set[str]:
        """Find the attachments again after an agent start.

        Args:
            keep: The bridge containers that exist, with their configured ports.

        Every record of a container not in ``keep`` (removed while the agent was down,
        or a create that died halfway) is released. Kept ones hold their ports again; one
        whose namespace is gone (a reboot) is set up again, asking for its old address.
        A kept container without a record gets a new attachment.

        Returns:
            The containers whose address changed (their /etc/hosts needs writing).
        """
        records = await asyncio.to_thread(self._store.load_all)
        changed: set[str] = set()
        if records or keep:
            self._claim()
        for cid, attachment in records.items():
            if cid not in keep or attachment.state != ATTACHED:
                log.info("network.release_gone_container", container_id=cid, state=attachment.state)
                self._attachments[cid] = attachment
                await self._release(attachment)
                continue
            self._attachments[cid] = attachment
            self._ports.reserve(cid, attachment.ports, strict=False)
            if not await asyncio.to_thread(os.path.lexists, attachment.netns_path):
                old = attachment.ip_address
                await self._reattach(attachment)
                if attachment.ip_address != old:
                    changed.add(cid)
        for cid, ports in keep.items():
            if cid not in self._attachments:
                try:
                    await self.attach(cid, ports)
                    changed.add(cid)
                except ContainerRuntimeError as exc:
                    log.error("network.recover_attach_failed", container_id=cid, error=str(exc))
        return changed

    async def _reattach(self, attachment: Attachment) -> None:
        cid = attachment.container_id
        log.info("network.netns_recreated", container_id=cid, ip=attachment.ip_address)
        target = CniTarget(cid, attachment.netns_path, attachment.ifname)
        async with self._cni_lock:
            await self.runner.del_list(
                attachment.conflist, target, attachment.runtime_config(), attachment.result
            )
        try:
            await self._setup(attachment, ip=attachment.ip_address)
        except CniError as exc:
            log.warning("network.address_lost", container_id=cid, error=str(exc))
            async with self._cni_lock:
                await self.runner.del_list(
                    attachment.conflist, target, attachment.runtime_config(), None
                )
            try:
                await self._setup(attachment)
            except ContainerRuntimeError as again:
                log.error("network.restore_failed", container_id=cid, error=str(again))

    async def close(self) -> None:
        """Let go of the held ports (the agent stops; its containers keep their rules)."""
        self._ports.release_all()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _claim(self) -> None:
        """Hold the bridge's lock file: two agents on one bridge would hand out the same
        addresses (each has its own IPAM), so the second is refused, naming the first.

        Raises:
            NetworkError: another live process holds it.
        """
        if self._lock_fd >= 0:
            return
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        path = LOCK_DIR / f"{self.config.bridge}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise NetworkError(
                f"bridge {self.config.bridge} is in use by another agent (pid {holder or '?'}):"
                " give each agent on a host its own --bridge and --bridge-subnet"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    # ----------------------------------------------------------------- helpers

    async def _preflight(self) -> None:
        """Before the bridge exists: learn the uplink's MTU, and refuse a subnet that
        overlaps a route of the host (another agent's bridge, the LAN)."""
        bridge = self.config.bridge
        if self._mtu is not None and await asyncio.to_thread(
            os.path.exists, f"/sys/class/net/{bridge}"
        ):
            return
        _, routes, _ = await ip_command("-4", "-o", "route", "show", "table", "main", check=False)
        subnet = ipaddress.IPv4Network(self.config.subnet)
        mtu = 0
        for line in routes.splitlines():
            words = line.split()
            if not words:
                continue
            dev = words[words.index("dev") + 1] if "dev" in words[:-1] else ""
            if words[0] == "default":
                mtu = mtu or await asyncio.to_thread(_link_mtu, dev)
                continue
            try:
                destination = ipaddress.IPv4Network(words[0], strict=False)
            except ValueError:
                continue
            if destination.overlaps(subnet) and dev != bridge:
                raise NetworkError(
                    f"bridge subnet {subnet} overlaps the host's route '{line.strip()}': "
                    "give the agent another --bridge-subnet"
                )
        self._mtu = mtu


def _link_mtu(dev: str) -> int:
    """The MTU of interface ``dev`` (0 when unknown)."""
    if not dev or "/" in dev:
        return 0
    try:
        return int(Path(f"/sys/class/net/{dev}/mtu").read_text().strip())
    except (OSError, ValueError):
        return 0


def assigned_subnet(root: Path) -> str:
    """The subnet the controller last assigned (``""``: none, or unreadable)."""
    try:
        text = (Path(root) / ASSIGNED_SUBNET_FILE).read_text().strip()
        check_subnet(text)
    except (OSError, ValueError):
        return ""
    return text
