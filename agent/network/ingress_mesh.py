"""``IngressMesh``: this node's part of the routing mesh, kept as the controller's maps say.

Each NetworkMap lists every port published with ``mode=ingress`` with the addresses of
its service's running tasks: on the ``ingress`` overlay network (reached over its VXLAN,
from this node's own address there) and on the cluster network (reached over the host-gw
routes, from the bridge gateway: only where the overlay cannot be used, as on agents
sharing a loopback host address). The node's table (``ingress.py``) is replaced when that
list changes. A port another process of the node already holds is logged
naming it (once): the mesh's DNAT would shadow that listener.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.ingress import IngressPort, apply_ingress, port_taken, remove_ingress
from dockyard.v1.dispatcher_pb2 import IngressPort as IngressPortMessage

__all__ = ["IngressMesh"]

log = structlog.get_logger(__name__)


class IngressMesh:
    """Args:
    held_here: Whether a container of this agent publishes (protocol, port) itself.
    netns: A named namespace standing for the node (tests); None: the agent's own.
    """

    def __init__(
        self, held_here: Callable[[str, int], bool] = lambda p, n: False, netns: str | None = None
    ) -> None:
        self._held_here = held_here
        self._netns = netns
        self._applied: tuple[str, tuple[IngressPort, ...]] | None = None
        self._reported: set[tuple[str, int]] = set()

    async def apply(
        self, source: str, ports: Sequence[IngressPortMessage], overlay: bool = False
    ) -> None:
        """The node's mesh is ``ports`` (a no-op when nothing changed, or when the node
        never had a mesh and still has none: the host's nftables stay untouched).
        ``overlay``: ``source`` is the node's ingress address and the backends are the
        tasks' ingress addresses; else the bridge gateway and cluster-network addresses.

        Raises:
            NetworkError: nft refused the ruleset (the caller retries).
        """
        wanted = tuple(
            sorted(
                (
                    IngressPort(
                        p.published_port,
                        p.target_port,
                        p.protocol,
                        tuple(p.ingress_backends if overlay else p.backends),
                    )
                    for p in ports
                ),
                key=lambda p: (p.protocol, p.published),
            )
        )
        if (not wanted and self._applied is None) or self._applied == (source, wanted):
            return
        self._report_taken(wanted)
        try:
            await apply_ingress(source, wanted, self._netns)
        except (RuntimeError, ValueError) as exc:
            raise NetworkError(f"routing mesh: {exc}") from exc
        self._applied = (source, wanted)

    def _report_taken(self, ports: Sequence[IngressPort]) -> None:
        if self._netns is not None:
            return  # the probe binds in the agent's namespace, not the test's node
        for port in ports:
            key = (port.protocol, port.published)
            if key in self._reported or self._held_here(*key):
                continue
            why = port_taken(*key)
            if why is not None:
                self._reported.add(key)
                log.error(
                    "ingress.port_in_use", port=f"{port.published}/{port.protocol}", error=why
                )

    async def close(self) -> None:
        """The agent stops: its table goes (the node no longer answers the mesh's ports)."""
        if self._applied is None:
            return
        try:
            await remove_ingress(self._netns)
        except RuntimeError as exc:
            log.warning("ingress.remove_failed", error=str(exc))
        self._applied = None
