"""The agent's settings, from its command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dockyard.agent.network.bridge import DEFAULT_BRIDGE, DEFAULT_CNI_PATH
from dockyard.common.addresses import AGENT_PORT

RUNTIMES = ("runc", "docker", "hollow")


@dataclass
class AgentConfig:
    state_dir: Path
    controllers: list[str] = field(default_factory=list)
    name: str = ""
    listen: str = f"127.0.0.1:{AGENT_PORT}"
    advertise: str = ""
    runtime: str = "runc"
    cpus: float | None = None
    memory_bytes: int | None = None
    registry_mirrors: list[str] = field(default_factory=list)
    """Mirrors of docker.io, tried first (Docker's `registry-mirrors`)."""
    insecure_registries: list[str] = field(default_factory=list)
    """`host:port` registries spoken to over plain HTTP."""
    registry_config: Path | None = None
    """A docker `config.json` with registry credentials."""
    insecure: bool = False
    """Plaintext, unauthenticated: no node certificate needed (tests, benchmarks)."""
    docker_host: str = "unix:///var/run/docker.sock"
    """The Docker engine's API, for --runtime docker."""
    cgroup_parent: str = "dockyard"
    """The cgroup (in every v1 hierarchy) that holds the containers' cgroups."""
    bridge: str = DEFAULT_BRIDGE
    """The Linux bridge of the agent's `bridge` network (one per agent on a host)."""
    bridge_subnet: str = ""
    """Its IPv4 subnet; the first address is the bridge's (the containers' gateway).
    "": the one the controller assigns (until then the last assigned, else
    ``DEFAULT_SUBNET``)."""
    cni_path: list[str] = field(default_factory=lambda: list(DEFAULT_CNI_PATH))
    """Where the CNI plugins are."""
    peer_routes: bool = True
    """Route the other nodes' subnets through their hosts (proto-77 routes and the
    DOCKYARD-PEERS chains, which each sync makes exactly the map's). Off when several
    agents share one host (deploy/local-cluster, tests): no peer is routable there, and
    the host's routes and chains are not this agent's to rewrite."""
    allow_privileged: bool = False
    """Whether the agent's own API may create privileged containers (`common/privilege.py`).
    Tasks are held to the cluster's policy by the controller instead."""
    metrics_listen: str = ""
    """host:port of `/metrics` (Prometheus; HTTPS with the node certificate and client
    certificates, as the API). "": not served."""
    metrics_max_containers: int = 1000
    """Containers one scrape reports at most (bounds the series; docs/metrics.md)."""
    docker_api_socket: Path | None = None
    """The Docker Engine API's unix socket (`docs/docker-api.md`); None: not served.
    `dockyard-agent run` defaults it to /run/dockyard/docker.sock."""
    docker_api_group: str = ""
    """The socket's group (mode 0660); "": the agent's own."""
    docker_api_group_required: bool = False
    """Whether the group was named explicitly (missing on the host: the start fails)."""
    docker_api_listen: str = ""
    """host:port of the Docker API over TCP (mutual TLS with an admin certificate)."""
    docker_api_insecure: bool = False
    """Plain, unauthenticated TCP for --docker-api-listen."""
