"""`dockyard-controller`: the cluster's control plane daemon."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dockyard.common import event_loop
from dockyard.common.addresses import CONTROLLER_PORT, JOIN_PORT, AddressError, normalize
from dockyard.common.distribution.settings import check_registry_flags, registry_options
from dockyard.common.gc_settle import settle_gc
from dockyard.common.version import package_version
from dockyard.controller.http import HTTP_PORT

if TYPE_CHECKING:
    from dockyard.controller.config import ControllerConfig


def _etcd_tls_options(command: Any) -> Any:
    from dockyard.controller.admin import etcd_tls_options

    return etcd_tls_options(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), prog_name="dockyard-controller")
def main() -> None:
    """The Dockyard controller: desired state in etcd, the agents' dispatcher, the API."""


@main.command()
@click.option(
    "--listen",
    default=f"127.0.0.1:{CONTROLLER_PORT}",
    show_default=True,
    help="gRPC address for clients and agents.",
)
@click.option("--advertise", default="", help="Address others reach this controller at.")
@click.option(
    "--etcd",
    "etcd_endpoints",
    multiple=True,
    metavar="HOST:PORT",
    help="etcd endpoint (repeat for a cluster, or comma-separate). "
    "None: start an embedded etcd under --state-dir.",
)
@click.option("--etcd-prefix", default="/dockyard", show_default=True)
@_etcd_tls_options
@click.option(
    "--etcd-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for etcd at start before giving up.",
)
@click.option(
    "--state-dir",
    default="/var/lib/dockyard/controller",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--heartbeat-period",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between agent heartbeats.",
)
@click.option(
    "--node-grace",
    default=None,
    type=click.FloatRange(min=0.1),
    help="Seconds without a heartbeat before a node is DOWN [3 heartbeat periods].",
)
@click.option(
    "--leader-ttl",
    default=3,
    show_default=True,
    type=click.IntRange(min=2),
    help="Seconds the leader lease lasts without renewal.",
)
@click.option(
    "--node-down-grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Seconds a node may be DOWN before its tasks are replaced elsewhere.",
)
@click.option(
    "--node-subnet-pool",
    default="10.87.0.0/16",
    show_default=True,
    metavar="CIDR",
    help="Where each node's bridge subnet comes from (agents without --bridge-subnet).",
)
@click.option(
    "--node-subnet-size",
    default=24,
    show_default=True,
    type=click.IntRange(min=8, max=29),
    help="Prefix length of each node's subnet in the pool.",
)
@click.option(
    "--strategy",
    default="spread",
    show_default=True,
    type=click.Choice(["spread", "binpack"]),
    help="How tasks are placed.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext, unauthenticated gRPC (no init needed). For tests and benchmarks only.",
)
@click.option(
    "--join-listen",
    default="",
    metavar="HOST:PORT",
    help=f"TLS port (no client certificate) for `dockyard-agent join` [--listen host:{JOIN_PORT}].",
)
@click.option(
    "--cert-expiry",
    default="90d",
    show_default=True,
    help="Validity of the node certificates this controller issues (e.g. 90d, 12h).",
)
@registry_options
@click.option(
    "--resolve-image",
    default="always",
    show_default=True,
    type=click.Choice(["always", "changed", "never"]),
    help="Pin service image tags to the digest the registry serves (when a request "
    "does not say): every replica then runs the same bytes.",
)
@click.option(
    "--resolve-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for a registry when pinning an image.",
)
@click.option(
    "--http-listen",
    default=None,
    metavar="HOST:PORT",
    help=f"HTTP(S) address of the JSON read API, /v1/events, /metrics and the dashboard; "
    f'"" disables it [--listen host:{HTTP_PORT}].',
)
@click.option(
    "--read-listen",
    default="",
    metavar="HOST:PORT",
    help="Address of a port serving the Control API's list reads (ListServices, "
    "ListNodes) from a reader process of the controller's, with its own etcd watch and "
    "view: never waiting for the control loops; the same TLS and roles as --listen; "
    'restarted if it dies, gone with the controller. "" : none.',
)
@click.option(
    "--read-http-listen",
    default="",
    metavar="HOST:PORT",
    help="Address of a port serving the HTTP side's JSON reads of nodes and services "
    "(GET /v1/nodes, /v1/services: the same JSON and pages) from the reader process "
    '(as --read-listen); the same TLS and roles as --http-listen. "" : none.',
)
@click.option(
    "--http-max-streams",
    default=64,
    show_default=True,
    type=click.IntRange(min=1, max=10_000),
    help="Concurrent /v1/events streams; more get 503.",
)
@click.option(
    "--encryption-key-file",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypt secrets' data in etcd (AES-256-GCM) with the first key of FILE (0600, "
    "`ID BASE64` lines; `init --encryption-key-file` makes one); every key decrypts. "
    "The same file on every controller. None: secrets are stored in plaintext.",
)
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"])
)
def run(
    listen: str,
    advertise: str,
    etcd_endpoints: tuple[str, ...],
    etcd_prefix: str,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_server_name: str | None,
    etcd_timeout: float,
    state_dir: Path,
    heartbeat_period: float,
    node_grace: float | None,
    leader_ttl: int,
    node_down_grace: float,
    node_subnet_pool: str,
    node_subnet_size: int,
    strategy: str,
    insecure: bool,
    join_listen: str,
    cert_expiry: str,
    registry_mirrors: tuple[str, ...],
    insecure_registries: tuple[str, ...],
    registry_config: Path | None,
    resolve_image: str,
    resolve_timeout: float,
    http_listen: str | None,
    http_max_streams: int,
    read_listen: str,
    read_http_listen: str,
    encryption_key_file: Path | None,
    log_level: str,
) -> None:
    """Run the controller until SIGTERM or SIGINT."""
    from dockyard.common import logging as dlogging
    from dockyard.common.distribution.settings import registry_config as make_registry_config
    from dockyard.common.sizes import parse_duration
    from dockyard.controller.admin import days_as_hours, etcd_credentials
    from dockyard.controller.config import ControllerConfig
    from dockyard.controller.encryption_keys import KeyFileError, load_key_file
    from dockyard.controller.subnets import SubnetPool
    from dockyard.v1.control_pb2 import ResolveImage

    dlogging.configure(log_level)
    endpoints = [e for item in etcd_endpoints for e in item.split(",") if e]
    try:
        endpoints = [normalize(e, 2379) for e in endpoints]
        listen = normalize(listen, CONTROLLER_PORT)
        join_listen = normalize(join_listen or f"{listen.rsplit(':', 1)[0]}:{JOIN_PORT}", JOIN_PORT)
        validity = parse_duration(days_as_hours(cert_expiry))
        check_registry_flags(registry_mirrors, insecure_registries)
        if http_listen is None:
            http_listen = f"{listen.rsplit(':', 1)[0]}:{HTTP_PORT}"
        http = normalize(http_listen, HTTP_PORT) if http_listen else ""
        read = normalize(read_listen, CONTROLLER_PORT) if read_listen else ""
        read_http = normalize(read_http_listen, HTTP_PORT) if read_http_listen else ""
        subnets = SubnetPool(node_subnet_pool, node_subnet_size)
        credentials = etcd_credentials(
            endpoints, etcd_cacert, etcd_cert, etcd_key, etcd_server_name
        )
    except (AddressError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        secret_keys = load_key_file(encryption_key_file) if encryption_key_file else None
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--encryption-key-file") from exc
    config = ControllerConfig(
        state_dir=state_dir,
        listen=listen,
        advertise=advertise,
        etcd_endpoints=endpoints,
        etcd_prefix=etcd_prefix,
        etcd_credentials=credentials,
        etcd_timeout=etcd_timeout,
        heartbeat_period=heartbeat_period,
        node_grace=node_grace if node_grace is not None else heartbeat_period * 3,
        leader_ttl=leader_ttl,
        node_down_grace=node_down_grace,
        strategy="binpack" if strategy == "binpack" else "spread",
        insecure=insecure,
        join_listen=join_listen,
        node_cert_validity=validity,
        registry=make_registry_config(registry_mirrors, insecure_registries, registry_config),
        resolve_image=ResolveImage.Value(resolve_image.upper()),
        resolve_timeout=resolve_timeout,
        http_listen=http,
        http_max_streams=http_max_streams,
        read_listen=read,
        read_http_listen=read_http,
        log_level=log_level,
        subnets=subnets,
        secret_keys=secret_keys,
    )
    sys.exit(event_loop.run(_serve(config)))


async def _serve(config: ControllerConfig) -> int:
    import structlog

    from dockyard.common.etcd_server import EtcdServerError
    from dockyard.controller.server import Controller, ControllerStartError
    from dockyard.controller.store import StoreError

    log = structlog.get_logger("dockyard.controller")
    controller = Controller(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.start()
    except (StoreError, EtcdServerError, ControllerStartError) as exc:
        log.error("controller.start_failed", error=str(exc))
        await controller.stop()
        click.echo(f"dockyard-controller: {exc}", err=True)
        return 1
    settle_gc()
    async with asyncio.TaskGroup() as group:  # until a signal, or a background job fails
        waits = [group.create_task(stop.wait()), group.create_task(controller.failed.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
    log.info("controller.stopping")
    await controller.stop()
    return 1 if controller.failed.is_set() else 0


def _add_admin_commands() -> None:
    from dockyard.controller.admin import init, join, user
    from dockyard.controller.key_admin import encryption_key

    main.add_command(encryption_key)
    main.add_command(init)
    main.add_command(join)
    main.add_command(user)


_add_admin_commands()
