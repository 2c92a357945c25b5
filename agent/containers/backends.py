"""What the container service asks of a backend beside its runtime: images and networks.

A backend is three parts chosen together in one place (``dockyard.agent.daemon``):

* a :class:`~dockyard.agent.runtime.base.ContainerRuntime` (the leaf that runs a spec);
* an :class:`ImageProvider`: the node's image store (:class:`LocalImages`, for runc), or
  :class:`EngineImages` for a backend that brings its own images (hollow simulates them;
  the Docker engine pulls them itself);
* a :class:`NetworkAttacher`: the node's bridge (:class:`BridgeAttacher`, for runc), or
  :class:`EngineNetwork` for a backend that brings its own networking.

The container service (``dockyard.agent.containers.service``) is the only caller of all
three, so no part calls back into another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dockyard.agent.images.errors import ImageNotFound
from dockyard.agent.images.reference import Reference
from dockyard.agent.images.service import ImageService
from dockyard.agent.network.bridge import BridgeNetwork
from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.local_bridges import LocalBridges
from dockyard.agent.runtime.base import LocalBridge, NetworkEndpoint, NetworkInfo, PortMapping
from dockyard.common.distribution.auth import Credentials

__all__ = [
    "BridgeAttacher",
    "EngineImages",
    "EngineNetwork",
    "ImageProvider",
    "LocalImages",
    "NetworkAttacher",
    "ResolvedImage",
    "engine_ref",
]


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """An image as the runtime needs it.

    Attributes:
        digest: Its manifest digest ("" when the backend keeps its images itself).
        references: The names it has on the node.
        lower_dirs: Its unpacked layers, top first (empty: the backend has its own).
        config: The OCI image config, or ``None`` when only the backend knows it.
        runtime_ref: How the runtime names the image when it fetches it itself (the
            Docker engine: ``name@digest`` for a pinned reference); "" when the runtime
            takes the layers and ``spec.image`` is only shown.
    """

    digest: str
    references: tuple[str, ...] = ()
    lower_dirs: tuple[Path, ...] = ()
    config: Mapping[str, Any] | None = None
    runtime_ref: str = ""


class ImageProvider(Protocol):
    """The images containers are made from."""

    async def resolve(self, ref: Reference | str) -> ResolvedImage:
        """A local image by reference or (short) id.

        Raises:
            ImageNotFound: the node has no such image.
        """
        ...

    async def pull(
        self,
        ref: Reference,
        peers: Sequence[str] = (),
        credentials: Mapping[str, Credentials] | None = None,
    ) -> None:
        """Fetch the image (its layers from the agents at ``peers`` first, if any), with
        ``credentials`` per registry host before the node's own (``--with-registry-auth``)."""
        ...

    def hold(self, stack: contextlib.ExitStack, image: ResolvedImage) -> None:
        """Keep the image's content while ``stack`` is open (a container uses it)."""
        ...

    async def remove(self, text: str, force: bool = False) -> list[str]:
        """``docker rmi``: untag, delete once untagged; the lines to show."""
        ...


class NetworkAttacher(Protocol):
    """The network step: places a ``bridge`` container before the runtime creates it."""

    def check_ports(self, ports: Sequence[PortMapping]) -> None:
        """Raise ``PortInUse`` or ``NetworkError`` when the ports cannot be published now."""
        ...

    async def attach(
        self,
        container_id: str,
        ports: Sequence[PortMapping],
        local: LocalBridge | None = None,
    ) -> NetworkEndpoint:
        """Make the container's namespace, address and published ports (on the node's
        user-defined network ``local``, when given)."""
        ...

    async def detach(self, container_id: str) -> None:
        """Release all of it; nothing if the container was never attached."""
        ...

    def info(self, container_id: str) -> NetworkInfo:
        """Where a ``bridge`` container is reachable."""
        ...

    async def recover(
        self,
        keep: Mapping[str, Sequence[PortMapping]],
        local: Mapping[str, LocalBridge] | None = None,
    ) -> dict[str, NetworkEndpoint]:
        """After an agent restart: release the attachments not in ``keep``, hold the
        others again (those in ``local`` on their user-defined network); the endpoints
        of those that changed (a reboot took them)."""
        ...

    async def close(self) -> None:
        """Stop (the containers keep their network)."""
        ...


class LocalImages:
    """The node's image store (``dockyard.agent.images``), for the runc runtime."""

    def __init__(self, service: ImageService) -> None:
        self.service = service

    async def resolve(self, ref: Reference | str) -> ResolvedImage:
        image = self.service.resolve(ref)
        return ResolvedImage(
            image.digest,
            tuple(image.references),
            tuple(self.service.lower_dirs(image)),
            self.service.config(image).to_oci(),
        )

    async def pull(
        self,
        ref: Reference,
        peers: Sequence[str] = (),
        credentials: Mapping[str, Credentials] | None = None,
    ) -> None:
        await self.service.pull(ref, peers=peers, credentials=credentials)

    def hold(self, stack: contextlib.ExitStack, image: ResolvedImage) -> None:
        store = self.service.store
        lease = stack.enter_context(store.lease())
        if image.digest:
            with contextlib.suppress(ImageNotFound):
                found = store.get(image.digest)
                lease.add(
                    found.digest,
                    found.config_digest,
                    *(layer.digest for layer in found.layers),
                    *(layer.diff_id for layer in found.layers),
                )
        lease.add(*("sha256:" + path.name for path in image.lower_dirs))

    async def remove(self, text: str, force: bool = False) -> list[str]:
        return await self.service.remove(text, force=force)


def engine_ref(ref: Reference | str) -> str:
    """What to ask an engine for: ``name@digest`` when the reference pins one."""
    if isinstance(ref, str):
        return ref
    return f"{ref.name}@{ref.digest}" if ref.digest else str(ref)


class EngineImages:
    """Images a backend keeps itself: hollow (simulated: every image is there) or the
    Docker engine (``has`` and ``pull`` ask it; it takes the image at create).

    Args:
        has: Whether the engine has the image (None: always).
        pull: Has the engine pull it.
    """

    def __init__(
        self,
        has: Callable[[str], Awaitable[bool]] | None = None,
        pull: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._has = has
        self._pull = pull

    async def resolve(self, ref: Reference | str) -> ResolvedImage:
        name = engine_ref(ref)
        if self._has is not None and not await self._has(name):
            raise ImageNotFound(f"image {name} is not in the engine")
        return ResolvedImage("", (str(ref),), runtime_ref=name)

    async def pull(
        self,
        ref: Reference,
        peers: Sequence[str] = (),
        credentials: Mapping[str, Credentials] | None = None,
    ) -> None:
        # The engine pulls with its own registry settings (docker login on that host).
        if self._pull is not None:
            await self._pull(engine_ref(ref))

    def hold(self, stack: contextlib.ExitStack, image: ResolvedImage) -> None:
        """Nothing to hold: the backend keeps what its containers use."""

    async def remove(self, text: str, force: bool = False) -> list[str]:
        raise ImageNotFound(f"image {text}: this agent's backend keeps its own images")


class BridgeAttacher:
    """The node's bridge (``dockyard.agent.network.bridge``) as the network step, and
    its user-defined networks (``local_bridges``), each a bridge of its own."""

    def __init__(self, bridge: BridgeNetwork, local: LocalBridges | None = None) -> None:
        self.bridge = bridge
        self.local = local

    def check_ports(self, ports: Sequence[PortMapping]) -> None:
        self.bridge.check_ports(ports)
        if self.local is not None:
            self.local.check_ports(ports)

    def _endpoint(self, container_id: str) -> NetworkEndpoint | None:
        if self.local is not None and self.local.owns(container_id):
            attachment = self.local.get(container_id)
            nameserver = self.local.nameserver(container_id)
        else:
            attachment, nameserver = self.bridge.get(container_id), self.bridge.nameserver
        if attachment is None:
            return None
        return NetworkEndpoint(attachment.netns_path, attachment.ip_address, nameserver)

    async def attach(
        self,
        container_id: str,
        ports: Sequence[PortMapping],
        local: LocalBridge | None = None,
    ) -> NetworkEndpoint:
        if local is None:
            attachment = await self.bridge.attach(container_id, ports)
            return NetworkEndpoint(
                attachment.netns_path, attachment.ip_address, self.bridge.nameserver
            )
        if self.local is None:
            raise NetworkError("this agent has no user-defined networks")
        attachment = await self.local.attach(container_id, ports, local)
        return NetworkEndpoint(
            attachment.netns_path, attachment.ip_address, self.local.nameserver(container_id)
        )

    async def detach(self, container_id: str) -> None:
        if self.local is not None and self.local.owns(container_id):
            await self.local.detach(container_id)
            return
        await self.bridge.detach(container_id)

    def info(self, container_id: str) -> NetworkInfo:
        if self.local is not None and self.local.owns(container_id):
            attached = self.local.info(container_id)
        else:
            attached = self.bridge.info(container_id)
        return attached or NetworkInfo(mode="bridge", bridge=self.bridge.config.bridge)

    async def recover(
        self,
        keep: Mapping[str, Sequence[PortMapping]],
        local: Mapping[str, LocalBridge] | None = None,
    ) -> dict[str, NetworkEndpoint]:
        on_local = dict(local or {})
        changed = await self.bridge.recover(
            {cid: ports for cid, ports in keep.items() if cid not in on_local}
        )
        if self.local is not None:
            changed |= await self.local.recover(
                {cid: (keep[cid], spec) for cid, spec in on_local.items() if cid in keep}
            )
        endpoints = {cid: self._endpoint(cid) for cid in changed}
        return {cid: endpoint for cid, endpoint in endpoints.items() if endpoint is not None}

    async def close(self) -> None:
        await self.bridge.close()
        if self.local is not None:
            await self.local.close()


class EngineNetwork:
    """Networking a backend brings itself: hollow (simulated: no namespace, no address)
    or the Docker engine (its own bridge publishes the ports)."""

    def check_ports(self, ports: Sequence[PortMapping]) -> None:
        """The backend checks its ports when it creates the container."""

    async def attach(
        self,
        container_id: str,
        ports: Sequence[PortMapping],
        local: LocalBridge | None = None,
    ) -> NetworkEndpoint:
        return NetworkEndpoint(netns_path="", ip_address="")

    async def detach(self, container_id: str) -> None:
        """Nothing of ours to release."""

    def info(self, container_id: str) -> NetworkInfo:
        return NetworkInfo(mode="bridge")

    async def recover(
        self,
        keep: Mapping[str, Sequence[PortMapping]],
        local: Mapping[str, LocalBridge] | None = None,
    ) -> dict[str, NetworkEndpoint]:
        return {}

    async def close(self) -> None:
        """Nothing to stop."""
