"""What `deploy/local-cluster` sets up and where: the ports, bridges, subnets and
counts of controllers, etcd members and nodes, kept in STATE/cluster.json by `up`, and
the `up` options that set them (refused when bad). Standard library only."""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LAYOUT_FIELDS",
    "Layout",
    "add_up_options",
    "apply_up_options",
    "read_layout",
    "write_layout",
]


@dataclass
class Layout:
    """Where the cluster lives: kept in STATE/cluster.json by `up`.

    The controller listens on `port`, takes joins on `port - 1` and serves HTTP on
    `port + 2`; node N listens on `port + 10 + N`. Node N's bridge is
    `<bridge_prefix>node-N` with the N-th /24 of `subnet_pool`. Controller C (C >= 2)
    listens on `port + 60 + 4C` (joins one below, HTTP two above); etcd member M
    (M >= 1) serves clients on `port + 90 + 2M` and peers one above.
    `etcd_members` 0: the first controller's embedded etcd.
    """

    state_dir: Path
    nodes: int = 3
    port: int = 7400
    registry_port: int = 5000
    subnet_pool: str = "10.210.0.0/16"
    bridge_prefix: str = "dy-"
    cgroup_parent: str = "dockyard"
    sample_port: int = 8080
    context: str = "local"
    controllers: int = 1
    etcd_members: int = 0
    # Separate hosts (`up --hosts N`): each agent in a network namespace on the LAN.
    hosts: bool = False
    lan: str = "10.209.0.0/24"
    # `--segments S`: the LAN cut into S equal L2 segments joined by a router namespace.
    segments: int = 1

    @property
    def machine_ip(self) -> str:
        """Where the controllers and the registry listen: loopback, or with separate hosts
        the LAN's first address (the hosts reach this machine there)."""
        return str(next(ipaddress.IPv4Network(self.lan).hosts())) if self.hosts else "127.0.0.1"

    def segment_networks(self) -> list[ipaddress.IPv4Network]:
        """The LAN's segments: the LAN itself, or its S equal parts (`--segments S`)."""
        lan = ipaddress.IPv4Network(self.lan)
        if self.segments <= 1:
            return [lan]
        cut = (self.segments - 1).bit_length()
        return list(lan.subnets(prefixlen_diff=cut))[: self.segments]

    def segment_of(self, index: int) -> int:
        """Node N's segment (1-based): the nodes take the segments in turn."""
        return (index - 1) % max(self.segments, 1) + 1

    def node_ip(self, index: int) -> str:
        """Node N's own address: the (10 + N)th of its segment with separate hosts."""
        if not self.hosts:
            return "127.0.0.1"
        segment = self.segment_networks()[self.segment_of(index) - 1]
        return str(segment.network_address + 10 + index)

    def netns(self, name: str) -> str:
        """Node `name`'s host namespace (separate hosts only)."""
        return f"{self.bridge_prefix}host-{int(name.removeprefix('node-'))}"

    @property
    def controller(self) -> str:
        return f"{self.machine_ip}:{self.port}"

    @property
    def join_address(self) -> str:
        return f"{self.machine_ip}:{self.port - 1}"

    @property
    def http_address(self) -> str:
        return f"{self.machine_ip}:{self.port + 2}"

    def controller_port(self, index: int) -> int:
        return self.port if index == 1 else self.port + 60 + 4 * index

    def controller_names(self) -> list[str]:
        """Daemon (and state dir) names: `controller`, `controller-2`, ..."""
        return [
            "controller" if i == 1 else f"controller-{i}" for i in range(1, self.controllers + 1)
        ]

    def controller_addresses(self) -> list[str]:
        return [
            f"{self.machine_ip}:{self.controller_port(i)}" for i in range(1, self.controllers + 1)
        ]

    def etcd_ports(self, index: int) -> tuple[int, int]:
        """Member `index`'s client and peer ports."""
        return self.port + 90 + 2 * index, self.port + 91 + 2 * index

    def etcd_endpoints(self) -> list[str]:
        return [f"127.0.0.1:{self.etcd_ports(i)[0]}" for i in range(1, self.etcd_members + 1)]

    @property
    def etcd_pki(self) -> Path:
        return self.state_dir / "etcd" / "pki"

    @property
    def encryption_keys(self) -> Path:
        """The key file every controller encrypts secrets at rest with (0600)."""
        return self.state_dir / "encryption-keys"

    def controller_ports(self) -> list[int]:
        return [
            p
            for i in range(1, self.controllers + 1)
            for p in (
                self.controller_port(i) - 1,
                self.controller_port(i),
                self.controller_port(i) + 2,
            )
        ]

    @property
    def registry(self) -> str:
        return f"{self.machine_ip}:{self.registry_port}"

    def agent_address(self, name: str) -> str:
        index = int(name.removeprefix("node-"))
        return f"{self.node_ip(index)}:{self.port + 10 + index}"

    def bridge(self, name: str) -> str:
        return f"{self.bridge_prefix}{name}"

    def subnet(self, index: int) -> str:
        pool = ipaddress.IPv4Network(self.subnet_pool)
        return str(next(itertools.islice(pool.subnets(new_prefix=24), index, None)))

    def published(self) -> list[str]:
        """`hello`: one replica publishing `sample_port` (the routing mesh's, Swarm's
        default). With `--hosts` it answers on every host's address. Without, the agents
        share one host (loopback addresses, no overlays, no mesh): an ingress port is
        then published on the node that runs its task, as `mode=host`, so only one task
        can publish it: `web` (3 replicas) stays unpublished, and `curl
        http://127.0.0.1:8080/` reaches `hello`."""
        return [
            "--name",
            "hello",
            "--replicas",
            "1",
            "--publish",
            f"{self.sample_port}:8080",
            "busybox",
            "sh",
            "-c",
            "echo hello from $(hostname) > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
        ]


LAYOUT_FIELDS = (
    "nodes",
    "port",
    "registry_port",
    "subnet_pool",
    "bridge_prefix",
    "cgroup_parent",
    "sample_port",
    "context",
    "controllers",
    "etcd_members",
    "hosts",
    "lan",
    "segments",
)


def read_layout(state_dir: Path) -> Layout:
    path = state_dir / "cluster.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    layout = Layout(state_dir)
    for name in LAYOUT_FIELDS:
        if name in stored:
            setattr(layout, name, type(getattr(layout, name))(stored[name]))
    return layout


def write_layout(layout: Layout) -> None:
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    fields = {name: getattr(layout, name) for name in LAYOUT_FIELDS}
    fields["controller"] = layout.controller
    fields["controller_addresses"] = layout.controller_addresses()
    fields["etcd_endpoints"] = layout.etcd_endpoints()
    tmp = layout.state_dir / "cluster.json.tmp"
    tmp.write_text(json.dumps(fields, indent=2) + "\n")
    tmp.replace(layout.state_dir / "cluster.json")


def add_up_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--nodes", type=int, default=None, help="number of agents (default 3, or as last time)"
    )
    command.add_argument(
        "--no-sample",
        action="store_true",
        help="do not create the sample services `web` and `hello`",
    )
    command.add_argument(
        "--port",
        type=int,
        default=None,
        help="controller port (7400); joins on PORT-1, HTTP on PORT+2, "
        "node N on PORT+10+N. Set at the first `up` only",
    )
    command.add_argument("--registry-port", type=int, default=None, help="registry (5000)")
    command.add_argument(
        "--sample-port", type=int, default=None, help="host port `hello` publishes (8080)"
    )
    command.add_argument(
        "--subnet-pool",
        default=None,
        help="node N's bridge gets the N-th /24 of it (10.210.0.0/16)",
    )
    command.add_argument(
        "--bridge-prefix", default=None, help="node N's bridge is PREFIXnode-N (dy-)"
    )
    command.add_argument("--cgroup-parent", default=None, help="the agents' (dockyard)")
    command.add_argument("--context", default=None, help="CLI context to create (local)")
    command.add_argument(
        "--controllers",
        type=int,
        default=None,
        help="controllers (1); more than one needs --etcd-members (3 if "
        "not given). Set at the first `up` only",
    )
    command.add_argument(
        "--hosts",
        type=int,
        default=None,
        metavar="N",
        help="N agents, each on a host of its own: a network namespace "
        "with its own address on a LAN bridge (needs root; else the "
        "agents share this host, as without it). First `up` only",
    )
    command.add_argument(
        "--lan",
        default=None,
        metavar="CIDR",
        help="the LAN of --hosts (10.209.0.0/24): this machine at its "
        "first address, host N at its (10+N)th. First `up` only",
    )
    command.add_argument(
        "--segments",
        type=int,
        default=None,
        metavar="S",
        help="with --hosts: cut the LAN into S L2 segments (1) joined by a "
        "router namespace; the hosts take them in turn, so hosts on different "
        "segments reach each other only through the router. First `up` only",
    )
    command.add_argument(
        "--etcd-members",
        type=int,
        default=None,
        help="etcd members of their own (1, 3 or 5); none (the default): "
        "the controller's embedded etcd. Set at the first `up` only",
    )


def apply_up_options(layout: Layout, args: argparse.Namespace, fresh: bool) -> None:
    """Options given to `up` over what cluster.json kept; refuses bad values. Only the
    node count and the sample can change once the cluster exists."""
    if args.hosts is not None:
        if args.nodes is not None and args.nodes != args.hosts:
            raise ValueError("--hosts N runs N agents: give --hosts or --nodes")
        args.nodes = args.hosts
    if args.nodes is not None:
        if not 1 <= args.nodes <= 50:
            raise ValueError("--nodes must be between 1 and 50")
        layout.nodes = args.nodes
    if args.sample_port is not None:
        layout.sample_port = args.sample_port
    members = args.etcd_members
    if members is None and args.controllers is not None and args.controllers > 1 and fresh:
        members = 3  # several controllers need an etcd that none of them runs
    fixed = {
        "port": args.port,
        "registry_port": args.registry_port,
        "subnet_pool": args.subnet_pool,
        "bridge_prefix": args.bridge_prefix,
        "cgroup_parent": args.cgroup_parent,
        "context": args.context,
        "controllers": args.controllers,
        "etcd_members": members,
        "hosts": True if args.hosts is not None else None,
        "lan": args.lan,
        "segments": args.segments,
    }
    for field, value in fixed.items():
        if value is None or value == getattr(layout, field):
            continue
        if not fresh and field == "hosts":
            raise ValueError(
                "--hosts: this cluster was set up on one host (see cluster.json); "
                "`down --purge` it first"
            )
        if not fresh:
            raise ValueError(
                f"--{field.replace('_', '-')}: this cluster was set up with "
                f"{getattr(layout, field)!r} (see cluster.json)"
            )
        setattr(layout, field, value)
    if not 1 <= layout.controllers <= 5:
        raise ValueError("--controllers must be between 1 and 5")
    if layout.etcd_members not in (0, 1, 3, 5):
        raise ValueError(
            "--etcd-members must be 1, 3 or 5 (an even count survives no more "
            "member failures than one fewer)"
        )
    if layout.controllers > 1 and not layout.etcd_members:
        raise ValueError(
            "--controllers: several controllers need an etcd that no controller "
            "runs (an embedded etcd dies with its controller): add "
            "--etcd-members 3"
        )
    ports = [
        layout.port - 1,
        layout.port + 10 + layout.nodes,
        layout.registry_port,
        *layout.controller_ports(),
        *(p for i in range(1, layout.etcd_members + 1) for p in layout.etcd_ports(i)),
    ]
    for port in ports:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
    if not 1 <= layout.sample_port <= 65535:
        raise ValueError("--sample-port must be between 1 and 65535")
    pool = ipaddress.IPv4Network(layout.subnet_pool)
    if pool.prefixlen > 24 or 2 ** (24 - pool.prefixlen) <= layout.nodes:
        raise ValueError(f"--subnet-pool {pool} has no /24 for each of {layout.nodes} nodes")
    lan = ipaddress.IPv4Network(layout.lan)
    if lan.num_addresses < 64 or lan.overlaps(pool):
        raise ValueError(
            f"--lan {lan}: expected a network of at least 64 addresses apart "
            f"from --subnet-pool {pool}"
        )
    if not 1 <= layout.segments <= 4:
        raise ValueError("--segments must be between 1 and 4")
    if layout.segments > 1 and not layout.hosts:
        raise ValueError("--segments needs --hosts (segments are the hosts' LAN)")
    smallest = min(n.num_addresses for n in layout.segment_networks())
    if layout.segments > 1 and 10 + layout.nodes + 2 > smallest - 2:
        raise ValueError(
            f"--lan {lan} cut into {layout.segments} segments of {smallest} addresses "
            f"has no room for {layout.nodes} hosts (each segment's router address is "
            "its last)"
        )
    if not 1 <= len(layout.bridge("node-50")) <= 15:
        raise ValueError("--bridge-prefix: a bridge name has at most 15 characters")
