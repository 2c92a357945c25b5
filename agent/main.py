"""`dockyard-agent`: the node daemon."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dockyard.common import event_loop
from dockyard.common.addresses import (
    AGENT_METRICS_PORT as METRICS_PORT,
)
from dockyard.common.addresses import (
    AGENT_PORT,
    CONTROLLER_PORT,
    AddressError,
    normalize,
)
from dockyard.common.distribution.settings import check_registry_flags, registry_options
from dockyard.common.gc_settle import settle_gc
from dockyard.common.host_service import HostService, service_options
from dockyard.common.sizes import parse_size
from dockyard.common.version import package_version

DOCKER_API_PORT = 2376
"""dockerd's TLS port, the default port of --docker-api-listen."""

if TYPE_CHECKING:
    from dockyard.agent.config import AgentConfig
    from dockyard.agent.fleet import HollowFleet


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), prog_name="dockyard-agent")
def main() -> None:
    """The Dockyard agent: runs containers on this host for the controller."""


@main.command()
@click.option(
    "--controller",
    "controllers",
    multiple=True,
    metavar="HOST:PORT",
    help="Controller address (repeat, or comma-separate, for several) [the ones join gave].",
)
@click.option("--name", default="", help="Node name [hostname]; kept in --state-dir.")
@click.option(
    "--listen",
    default=f"127.0.0.1:{AGENT_PORT}",
    show_default=True,
    help="Address of this agent's own API.",
)
@click.option("--advertise", default="", help="Address others reach this agent's API at.")
@click.option(
    "--state-dir",
    default="/var/lib/dockyard/agent",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--runtime",
    default="runc",
    show_default=True,
    type=click.Choice(["runc", "docker", "hollow"]),
    help="runc: Dockyard's own containers; docker: the host's Docker engine runs the tasks.",
)
@click.option(
    "--docker-host",
    default="unix:///var/run/docker.sock",
    show_default=True,
    metavar="URL",
    help="The Docker engine's API, for --runtime docker.",
)
@click.option(
    "--cpus",
    type=click.FloatRange(min=0.01),
    default=None,
    help="CPUs to offer [all this process may use].",
)
@click.option("--memory", default=None, help="Memory to offer, e.g. 4G [all of the host's].")
@registry_options
@click.option(
    "--cgroup-parent",
    default="dockyard",
    show_default=True,
    help="cgroup that holds the containers' cgroups (runc runtime).",
)
@click.option(
    "--bridge",
    default="dockyard0",
    show_default=True,
    metavar="NAME",
    help="Linux bridge of the bridge network (give each agent on a host its own).",
)
@click.option(
    "--bridge-subnet",
    default="",
    metavar="CIDR",
    help="IPv4 subnet of the bridge network; its first address is the bridge's "
    "[the controller assigns one from its pool; alone, 10.87.0.0/16].",
)
@click.option(
    "--cni-path",
    default="/usr/lib/cni:/opt/cni/bin",
    show_default=True,
    metavar="DIR[:DIR...]",
    help="Where the CNI plugins (bridge, host-local, portmap, firewall) are.",
)
@click.option(
    "--peer-routes/--no-peer-routes",
    default=True,
    show_default=True,
    help="Route the other nodes' subnets through their hosts (this host's proto-77 routes "
    "and DOCKYARD-PEERS chains). Off for several agents on one host.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext, unauthenticated API and session (no join needed). Tests only.",
)
@click.option(
    "--allow-privileged",
    is_flag=True,
    help="Let this agent's own API (`dockyard -H AGENT run`) create privileged containers: "
    "--privileged, capabilities beyond the default set, bind mounts of protected host "
    "paths, the host network, seccomp=unconfined. Service tasks follow the cluster's policy.",
)
@click.option(
    "--metrics-listen",
    default="",
    metavar="HOST:PORT",
    help=f"Serve Prometheus `/metrics` here (HTTPS with client certificates, as the API; "
    f"admin, read-only and controller identities may scrape), e.g. 0.0.0.0:{METRICS_PORT} "
    "[not served].",
)
@click.option(
    "--metrics-max-containers",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Containers one scrape reports at most (running ones first): bounds the series.",
)
@click.option(
    "--docker-api-socket",
    default="/run/dockyard/docker.sock",
    show_default=True,
    metavar="PATH",
    help="Serve the Docker Engine API on this unix socket (DOCKER_HOST=unix://PATH); "
    "'' for none. Whoever can open it controls this host, as with docker.sock.",
)
@click.option(
    "--docker-api-group",
    default=None,
    metavar="GROUP",
    help="Group of the Docker API socket (mode 0660) [docker, when the host has it].",
)
@click.option(
    "--docker-api-listen",
    default="",
    metavar="HOST:PORT",
    help="Also serve the Docker API on TCP, with the cluster's mutual TLS: clients need an "
    "admin certificate (`dockyard context export --docker DIR`; docker --tlsverify) "
    "[not served].",
)
@click.option(
    "--docker-api-insecure",
    is_flag=True,
    help="Serve --docker-api-listen as plain, unauthenticated TCP. Tests only.",
)
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"])
)
def run(
    controllers: tuple[str, ...],
    name: str,
    listen: str,
    advertise: str,
    state_dir: Path,
    runtime: str,
    docker_host: str,
    cpus: float | None,
    memory: str | None,
    registry_mirrors: tuple[str, ...],
    insecure_registries: tuple[str, ...],
    registry_config: Path | None,
    cgroup_parent: str,
    bridge: str,
    bridge_subnet: str,
    cni_path: str,
    peer_routes: bool,
    insecure: bool,
    allow_privileged: bool,
    metrics_listen: str,
    metrics_max_containers: int,
    docker_api_socket: str,
    docker_api_group: str | None,
    docker_api_listen: str,
    docker_api_insecure: bool,
    log_level: str,
) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    from dockyard.agent.config import AgentConfig
    from dockyard.agent.network.bridge import check_bridge_name, check_subnet
    from dockyard.common import logging as dlogging
    from dockyard.common.validation import ValidationError, check_name

    dlogging.configure(log_level)
    try:
        targets = [
            normalize(c, CONTROLLER_PORT) for item in controllers for c in item.split(",") if c
        ]
        listen = normalize(listen, AGENT_PORT)
        if metrics_listen:
            metrics_listen = normalize(metrics_listen, METRICS_PORT)
        if docker_api_listen:
            docker_api_listen = normalize(docker_api_listen, DOCKER_API_PORT)
        if docker_api_socket and not docker_api_socket.startswith("/"):
            raise ValueError(
                f"--docker-api-socket {docker_api_socket!r}: expected an absolute path"
            )
        if docker_api_insecure and not docker_api_listen:
            raise ValueError("--docker-api-insecure: only with --docker-api-listen")
        if name:
            check_name("--name", name)
        memory_bytes = parse_size(memory) if memory else None
        check_registry_flags(registry_mirrors, insecure_registries)
        if not cgroup_parent.strip("/") or ".." in cgroup_parent.split("/"):
            raise ValueError(f"--cgroup-parent {cgroup_parent!r}: expected a cgroup path")
        for flag, check, value in (
            ("--bridge", check_bridge_name, bridge),
            ("--bridge-subnet", check_subnet, bridge_subnet),
        ):
            if not value:
                continue
            try:
                check(value)
            except ValueError as exc:
                raise ValueError(f"{flag}: {exc}") from None
        cni_dirs = [d for d in cni_path.split(":") if d]
        if not cni_dirs or any(not d.startswith("/") for d in cni_dirs):
            raise ValueError(f"--cni-path {cni_path!r}: expected absolute directories")
    except (AddressError, ValidationError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    config = AgentConfig(
        state_dir=state_dir,
        controllers=targets,
        name=name,
        listen=listen,
        advertise=advertise,
        runtime=runtime,
        docker_host=docker_host,
        cpus=cpus,
        memory_bytes=memory_bytes,
        registry_mirrors=list(registry_mirrors),
        insecure_registries=list(insecure_registries),
        registry_config=registry_config,
        cgroup_parent=cgroup_parent,
        bridge=bridge,
        bridge_subnet=bridge_subnet,
        cni_path=cni_dirs,
        peer_routes=peer_routes,
        insecure=insecure,
        allow_privileged=allow_privileged,
        metrics_listen=metrics_listen,
        metrics_max_containers=metrics_max_containers,
        docker_api_socket=Path(docker_api_socket) if docker_api_socket else None,
        docker_api_group="docker" if docker_api_group is None else docker_api_group,
        docker_api_group_required=docker_api_group is not None,
        docker_api_listen=docker_api_listen,
        docker_api_insecure=docker_api_insecure,
    )
    sys.exit(event_loop.run(_serve(config), libuv=False))  # see common/event_loop.py


@main.command()
@click.argument("address", metavar="CONTROLLER:JOIN_PORT")
@click.option(
    "--token",
    required=True,
    envvar="DOCKYARD_JOIN_TOKEN",
    help="Join token (`dockyard-controller token create`).",
)
@click.option("--name", default="", help="Node name [hostname]; kept in --state-dir.")
@click.option(
    "--state-dir",
    default="/var/lib/dockyard/agent",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--api-host",
    "api_hosts",
    multiple=True,
    metavar="HOST",
    help="The address this agent's API is reached at, put in its certificate: "
    "only the one the controller sees it connect from (or loopback) is "
    "accepted, which the certificate names anyway.",
)
@service_options("dockyard-agent")
def join(
    address: str,
    token: str,
    name: str,
    state_dir: Path,
    api_hosts: tuple[str, ...],
    service: HostService,
) -> None:
    """Join the cluster: pin the CA by the token's hash, get a node certificate.

    ADDRESS is the controller's join port (`dockyard-controller run --join-listen`,
    7399 by default). Into the unit's state dir (/var/lib/dockyard/agent), the join
    also writes /etc/default/dockyard-agent and, when systemd runs, enables and starts
    dockyard-agent.service. Otherwise `dockyard-agent run --state-dir ...` runs it.
    """
    import socket as socket_module

    from dockyard.agent.certs import JoinError, NodePKI
    from dockyard.agent.certs import join as join_cluster
    from dockyard.agent.identity import NodeIdentity, save
    from dockyard.common.addresses import JOIN_PORT
    from dockyard.common.host_service import ServiceError, options_value
    from dockyard.common.statedir import ensure_private_dir
    from dockyard.common.validation import ValidationError, check_name

    try:
        address = normalize(address, JOIN_PORT)
        if name:
            check_name("--name", name)
    except (AddressError, ValidationError) as exc:
        raise click.BadParameter(str(exc)) from exc
    ensure_private_dir(state_dir)
    node_pki = NodePKI.of(state_dir)
    try:
        identity = asyncio.run(join_cluster(address, token, node_pki, list(api_hosts)))
    except JoinError as exc:
        click.echo(f"dockyard-agent: {exc}", err=True)
        sys.exit(1)
    node_name = name or socket_module.gethostname()
    save(state_dir, NodeIdentity(identity.id, node_name))
    click.echo(f"joined as {identity.role} {identity.id}; certificate in {node_pki.directory}")
    click.echo(f"node name: {node_name}")
    listen = normalize(api_hosts[0], AGENT_PORT) if api_hosts else f"127.0.0.1:{AGENT_PORT}"
    try:
        started = service.settle(
            state_dir,
            {
                "DOCKYARD_LISTEN": listen,
                "DOCKYARD_AGENT_OPTS": options_value(service.state_dir_options(state_dir)),
            },
        )
    except (OSError, ValueError, ServiceError) as exc:
        click.echo(f"dockyard-agent: joined, but {exc}", err=True)
        sys.exit(1)
    if started:
        click.echo(
            f"watch it: journalctl -fu dockyard-agent; on a controller: "
            f"dockyard node inspect {node_name}"
        )
    else:
        click.echo(
            f"next: dockyard-agent run --state-dir {state_dir}; then, on a controller: "
            f"dockyard node inspect {node_name}"
        )


async def _serve(config: AgentConfig) -> int:
    import structlog

    from dockyard.agent.daemon import AgentDaemon, AgentStartError, exception_leaves
    from dockyard.agent.session import SessionRefused

    log = structlog.get_logger("dockyard.agent")
    daemon = AgentDaemon(config)
    stop = _stop_on_signals()
    try:
        await daemon.start()
    except AgentStartError as exc:
        click.echo(f"dockyard-agent: {exc}", err=True)
        return 1
    settle_gc()
    code = 0
    try:
        await _run_until(stop, daemon.run())
    except* SessionRefused as refused:
        click.echo(f"dockyard-agent: {exception_leaves(refused)[0]}", err=True)
        code = 1
    except* Exception:  # logged by the daemon (agent.failed)
        code = 1
    log.info("agent.stopping")
    await daemon.stop()
    return code


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _run_until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until `stop` is set (then cancel it, unless it ended already).

    Raises:
        ExceptionGroup: what `work` raised; it ends the wait at once.
    """
    async with asyncio.TaskGroup() as group:
        job = group.create_task(work)
        await stop.wait()  # the group cancels this wait when `work` fails
        job.cancel()


@main.command()
@click.option(
    "--controller",
    "controllers",
    multiple=True,
    required=True,
    metavar="HOST:PORT",
    help="Controller address (repeat, or comma-separate, for several).",
)
@click.option("--count", type=click.IntRange(min=1), required=True, help="Agents to run.")
@click.option(
    "--name-prefix",
    default="hollow",
    show_default=True,
    help="Agents are named PREFIX-0001, PREFIX-0002, ...",
)
@click.option(
    "--state-dir",
    default="/var/lib/dockyard/hollow",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Each agent keeps its identity and tasks in STATE_DIR/NAME.",
)
@click.option(
    "--cpus",
    type=click.FloatRange(min=0.01),
    default=4.0,
    show_default=True,
    help="CPUs each agent offers.",
)
@click.option("--memory", default="8G", show_default=True, help="Memory each agent offers.")
@click.option(
    "--stagger",
    type=click.FloatRange(min=0),
    default=0.01,
    show_default=True,
    help="Seconds between two agents' starts.",
)
@click.option(
    "--start-delay",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Seconds a simulated container takes to start.",
)
@click.option(
    "--log-level", default="warning", type=click.Choice(["debug", "info", "warning", "error"])
)
def hollow(
    controllers: tuple[str, ...],
    count: int,
    name_prefix: str,
    state_dir: Path,
    cpus: float,
    memory: str,
    stagger: float,
    start_delay: float,
    log_level: str,
) -> None:
    """Run COUNT simulated agents in this one process (scale tests, like kubemark)."""
    from dockyard.agent.fleet import HollowFleet
    from dockyard.common import logging as dlogging
    from dockyard.common.validation import ValidationError, check_name
    from dockyard.v1.types_pb2 import Resources

    dlogging.configure(log_level)
    try:
        targets = [
            normalize(c, CONTROLLER_PORT) for item in controllers for c in item.split(",") if c
        ]
        check_name("--name-prefix", f"{name_prefix}-{count}")
        resources = Resources(nano_cpus=int(cpus * 1e9), memory_bytes=parse_size(memory))
    except (AddressError, ValidationError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    fleet = HollowFleet(targets, count, state_dir, name_prefix, resources, stagger, start_delay)
    sys.exit(event_loop.run(_serve_fleet(fleet)))


async def _serve_fleet(fleet: HollowFleet) -> int:
    stop = _stop_on_signals()
    settle_gc()
    try:
        await _run_until(stop, fleet.start())
    finally:
        await fleet.stop()
    return 0
