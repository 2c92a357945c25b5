"""Host ports of published container ports, held by the agent.

portmap only adds DNAT rules: nothing on the host would stop another process, or another
agent on the same machine, from using the same port, and nothing would pick a free one.
So, as Kubernetes' kubelet does for ``hostPort``, the agent binds a socket to every
published ``host_ip:host_port`` and keeps it while the container exists. TCP sockets are
bound but never listen (traffic is DNATed to the container before it could reach them,
and with no rule in place a connection is refused rather than left hanging). Port 0 asks
the kernel for a free port. Binding is instant, so it is done on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dockyard.agent.network.errors import NetworkError, PortInUse
from dockyard.agent.runtime.base import PortMapping

__all__ = ["PortReservations", "overlaps"]


def overlaps(a: PortMapping, b: PortMapping) -> bool:
    """Whether two bound mappings claim the same host port (a wildcard IP covers all)."""
    return (
        a.host_port == b.host_port
        and a.protocol == b.protocol
        and (not a.host_ip or not b.host_ip or a.host_ip == b.host_ip)
    )


@dataclass
class _Held:
    mapping: PortMapping
    sock: socket.socket | None


def _bind(mapping: PortMapping) -> socket.socket:
    kind = socket.SOCK_DGRAM if mapping.protocol == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind((mapping.host_ip or "0.0.0.0", mapping.host_port))
    except BaseException:
        sock.close()
        raise
    return sock


class PortReservations:
    """Which container holds which host port, with the sockets that hold them."""

    def __init__(self) -> None:
        self._held: dict[str, list[_Held]] = {}

    def holder(self, mapping: PortMapping, exclude: str = "") -> str:
        """The container holding a port that ``mapping`` (port != 0) overlaps, or ``""``."""
        if not mapping.host_port:
            return ""
        for container_id, held in self._held.items():
            if container_id != exclude and any(overlaps(h.mapping, mapping) for h in held):
                return container_id
        return ""

    def check(self, mappings: Sequence[PortMapping]) -> None:
        """Raise :class:`PortInUse` for the first port that is taken (nothing is kept)."""
        bound = self.reserve("", mappings)
        self._release_list(bound)

    def reserve(
        self, container_id: str, mappings: Sequence[PortMapping], strict: bool = True
    ) -> list[_Held]:
        """Bind every mapping for ``container_id``; all or nothing.

        Args:
            strict: With ``False`` (recovery), a port that cannot be bound is recorded
                unheld instead of refused: the container has it already.

        Raises:
            PortInUse: with ``strict``, a port is taken (``ports[i]`` names it).
            NetworkError: ``host_ip`` is not an address of this host.
        """
        taken: list[_Held] = []
        try:
            for index, mapping in enumerate(mappings):
                holder = self.holder(mapping, exclude=container_id)
                if holder and strict:
                    raise PortInUse(index, mapping, holder)
                try:
                    sock = _bind(mapping)
                except OSError as exc:
                    if not strict:
                        taken.append(_Held(mapping, None))
                        continue
                    if exc.errno == errno.EADDRINUSE:
                        raise PortInUse(index, mapping) from None
                    if exc.errno == errno.EADDRNOTAVAIL:
                        raise NetworkError(
                            f"ports[{index}].host_ip: {mapping.host_ip} is not "
                            "an address of this host"
                        ) from None
                    raise NetworkError(
                        f"ports[{index}]: cannot bind host port {mapping.host_port}: {exc}"
                    ) from None
                port = sock.getsockname()[1]
                taken.append(_Held(replace(mapping, host_port=port), sock))
                # a port the kernel picked must not clash with ports held unbound
                if not mapping.host_port and self.holder(taken[-1].mapping, container_id):
                    raise PortInUse(index, taken[-1].mapping, self.holder(taken[-1].mapping))
        except BaseException:
            self._release_list(taken)
            raise
        if container_id:
            self._held.setdefault(container_id, []).extend(taken)
        return taken

    def bound(self, held: Sequence[_Held]) -> list[PortMapping]:
        """The mappings as bound (picked ports filled in)."""
        return [h.mapping for h in held]

    def release(self, container_id: str) -> None:
        """Close the container's sockets; its ports are free again."""
        self._release_list(self._held.pop(container_id, []))

    def release_all(self) -> None:
        """Close every socket (the agent stops; containers keep their DNAT rules)."""
        for container_id in list(self._held):
            self.release(container_id)

    @staticmethod
    def _release_list(held: Sequence[_Held]) -> None:
        for entry in held:
            if entry.sock is not None:
                with contextlib.suppress(OSError):
                    entry.sock.close()
