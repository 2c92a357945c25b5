"""The controller's settings, from its command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dockyard.common.addresses import CONTROLLER_PORT, JOIN_PORT
from dockyard.common.distribution.registry import RegistryConfig
from dockyard.controller.encryption_keys import KeyRing
from dockyard.controller.http import HTTP_PORT
from dockyard.controller.network_pool import NetworkPool
from dockyard.controller.subnets import SubnetPool
from dockyard.v1.control_pb2 import ResolveImage

DEFAULT_HEARTBEAT_PERIOD = 2.0
DEFAULT_GRACE_PERIODS = 3


@dataclass
class ControllerConfig:
    state_dir: Path
    listen: str = f"127.0.0.1:{CONTROLLER_PORT}"
    # Empty: start an embedded etcd with its data under state_dir.
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_prefix: str = "/dockyard"
    # Client TLS to the etcd of etcd_endpoints (Store's ca_cert, cert_chain, cert_key,
    # tls_server_name).
    etcd_credentials: dict[str, Any] = field(default_factory=dict)
    etcd_timeout: float = 10.0
    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD
    node_grace: float = DEFAULT_HEARTBEAT_PERIOD * DEFAULT_GRACE_PERIODS
    leader_ttl: int = 3
    # A DOWN node's tasks are replaced elsewhere after this long.
    node_down_grace: float = 10.0
    strategy: Literal["spread", "binpack"] = "spread"
    advertise: str = ""  # address other components reach this controller at
    # Security: plaintext only with insecure; else mutual TLS with the CA in state_dir/pki.
    insecure: bool = False
    join_listen: str = f"127.0.0.1:{JOIN_PORT}"  # TLS without client certs: joins only
    node_cert_validity: float = 90 * 24 * 3600.0  # seconds
    # Pinning image tags to digests: where to ask (as the agents do), and by default.
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    resolve_image: ResolveImage.ValueType = ResolveImage.ALWAYS
    resolve_timeout: float = 10.0
    # The HTTP side: HTTPS with client certificates unless insecure; "" disables it.
    http_listen: str = f"127.0.0.1:{HTTP_PORT}"
    http_max_streams: int = 64  # concurrent /v1/events streams
    # The list reads on a port of their own, served by a reader process with its own
    # watch (controller/reader.py); "" : none.
    read_listen: str = ""
    # The HTTP JSON reads of nodes and services, served by the same reader process
    # (controller/read_http.py); "" : none.
    read_http_listen: str = ""
    log_level: str = "info"  # also the reader process's
    subnets: SubnetPool = field(default_factory=SubnetPool)  # the nodes' bridge subnets
    networks: NetworkPool = field(default_factory=NetworkPool)  # the overlay networks' subnets
    # --encryption-key-file: secrets' data is encrypted at rest with the first key, and
    # the leader re-encrypts what is not (controller/at_rest.py); None: plaintext.
    secret_keys: KeyRing | None = None
