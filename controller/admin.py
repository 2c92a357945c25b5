"""`dockyard-controller init | join | user create`: the cluster's PKI from the command line.

`init` and `user create` work offline on the state dir (they need the CA key); `join`
redeems a controller token at a running controller and takes the CA from etcd. The
commands that are RPCs on a running controller (`token`, `cert`, `user rm`) are client
commands: they live in the CLI package (cli/controller_tool.py). A certificate
made offline is recorded in etcd (so `cert ls` shows it and `cert revoke` can refuse
it) when the controller of that state dir starts or next serves `cert ls`/`cert revoke`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dockyard.common.addresses import CONTROLLER_PORT, JOIN_PORT, AddressError, normalize
from dockyard.common.host_service import HostService, service_options

DEFAULT_STATE_DIR = "/var/lib/dockyard/controller"
state_dir_option = click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)


def _write_identity(directory: Path, ca_pem: bytes, cert: bytes, key: bytes) -> dict[str, str]:
    from dockyard.common.statedir import write_private

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca_pem)
    (directory / "cert.pem").write_bytes(cert)
    write_private(directory / "key.pem", key)
    return {name: str((directory / f"{name}.pem").resolve()) for name in ("ca", "cert", "key")}


def _make_context(name: str, host: str, tls: dict[str, str], description: str) -> None:
    from dockyard.common.contexts import DEFAULT_CONTEXT, ContextError, ContextStore

    store = ContextStore()
    try:
        store.create(name, host, description, overwrite=True, tls=tls)
        if store.current() == DEFAULT_CONTEXT:
            store.use(name)
    except ContextError as exc:
        raise click.ClickException(str(exc)) from exc


async def _ca_from_etcd(
    endpoints: list[str], prefix: str, timeout: float, *, create: bool, credentials: dict[str, Any]
) -> Any:
    """The CA in etcd (None if there is none); with `create`, a new one published there."""
    from dockyard.common import pki
    from dockyard.controller.ca import fetch_ca, publish_ca
    from dockyard.controller.store import Store, StoreError

    store = Store(endpoints, prefix, **credentials)
    try:
        await store.connect(timeout)
        ca = await fetch_ca(store)
        if ca is None and create:
            ca = pki.CertificateAuthority.create()
            await publish_ca(store, ca)
        return ca
    except StoreError as exc:
        raise click.ClickException(f"etcd at {','.join(endpoints)}: {exc}") from exc
    finally:
        await store.close()


def etcd_tls_options(command: Any) -> Any:
    """--etcd-cacert, --etcd-cert, --etcd-key: client TLS to an etcd given with --etcd."""
    for option in reversed(
        [
            click.option(
                "--etcd-cacert",
                default=None,
                metavar="FILE",
                type=click.Path(dir_okay=False, path_type=Path),
                help="CA that signed the etcd servers' certificates (with --etcd).",
            ),
            click.option(
                "--etcd-cert",
                default=None,
                metavar="FILE",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Client certificate for etcd's --client-cert-auth.",
            ),
            click.option(
                "--etcd-key",
                default=None,
                metavar="FILE",
                type=click.Path(dir_okay=False, path_type=Path),
                help="The client certificate's key.",
            ),
            click.option(
                "--etcd-server-name",
                default=None,
                metavar="NAME",
                help="A DNS name every etcd member's certificate carries: checked "
                "instead of each endpoint's host (needed with several endpoints "
                "over TLS).",
            ),
        ]
    ):
        command = option(command)
    return command


def etcd_credentials(
    endpoints: list[str],
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    server_name: str | None,
) -> dict[str, Any]:
    """`Store(..., **these)` from the --etcd-* TLS flags: all three or none, only with
    --etcd (an embedded etcd makes its own)."""
    given = [f for f in (cacert, cert, key) if f is not None]
    if not given:
        if server_name:
            raise click.BadParameter(
                "--etcd-server-name needs --etcd-cacert, --etcd-cert and --etcd-key"
            )
        return {}
    if len(given) != 3:
        raise click.BadParameter(
            "TLS to etcd needs all three of --etcd-cacert, --etcd-cert and --etcd-key"
        )
    if not endpoints:
        raise click.BadParameter(
            "--etcd-cacert/--etcd-cert/--etcd-key need --etcd (an "
            "embedded etcd makes its own certificates)"
        )
    assert cacert is not None and cert is not None and key is not None
    try:
        return {
            "ca_cert": cacert.read_bytes(),
            "cert_chain": cert.read_bytes(),
            "cert_key": key.read_bytes(),
            "tls_server_name": server_name or None,
        }
    except OSError as exc:
        raise click.BadParameter(f"cannot read etcd TLS material: {exc}") from exc


def _key_file_option(help_text: str) -> Callable[[Any], Any]:
    def add(command: Any) -> Any:
        return click.option(
            "--encryption-key-file",
            default=None,
            metavar="FILE",
            type=click.Path(dir_okay=False, path_type=Path),
            help=help_text,
        )(command)

    return add


def _ensure_key_file(path: Path | None, *, create: bool) -> None:
    """Check (or, with `create`, make if missing) the secrets' key file of `run`."""
    from dockyard.controller.encryption_keys import (
        KeyFileError,
        create_key_file,
        load_key_file,
    )

    if path is None:
        return
    try:
        if create and not path.exists():
            ring = create_key_file(path)
            click.echo(f"secrets' encryption key {ring.write_key.id}: {path} (0600)")
        else:
            ring = load_key_file(path)
            click.echo(f"secrets' encryption keys {', '.join(ring.ids)}: {path}")
    except (KeyFileError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--encryption-key-file") from exc


def _etcd_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--etcd-prefix", default="/dockyard", show_default=True),
            click.option("--etcd-timeout", default=10.0, show_default=True, type=float),
        ]
    ):
        command = option(command)
    return etcd_tls_options(command)


def _identity_options(command: Any) -> Any:
    """--listen, --advertise and --context of `init` and `join`."""
    for option in reversed(
        [
            click.option(
                "--listen",
                default=f"127.0.0.1:{CONTROLLER_PORT}",
                show_default=True,
                help="The address `run --listen` will use (in the server certificate).",
            ),
            click.option(
                "--advertise",
                default="",
                metavar="HOST:PORT",
                help="Address clients reach the controller at (a SAN; the context's host).",
            ),
            click.option(
                "--context",
                "context_name",
                default="default-admin",
                show_default=True,
                help="CLI context to write with the admin identity.",
            ),
        ]
    ):
        command = option(command)
    return command


def _addresses(listen: str, advertise: str, etcd: tuple[str, ...]) -> tuple[str, str, list[str]]:
    try:
        return (
            normalize(listen, CONTROLLER_PORT),
            normalize(advertise, CONTROLLER_PORT) if advertise else "",
            [normalize(e, 2379) for item in etcd for e in item.split(",") if e],
        )
    except AddressError as exc:
        raise click.BadParameter(str(exc)) from exc


def _initialized(state_dir: Path) -> bool:
    from dockyard.common import pki
    from dockyard.controller.ca import has_ca, pki_dir

    directory = pki_dir(state_dir)
    if has_ca(state_dir) and (directory / "admin" / "cert.pem").exists():
        fingerprint = pki.fingerprint((directory / "ca.pem").read_bytes())
        click.echo(f"{state_dir} is already initialized (CA sha256 {fingerprint})")
        return True
    return False


def _write_controller(
    state_dir: Path, ca: Any, cert: bytes, key: bytes, host: str, context_name: str
) -> None:
    """The CA, this controller's certificate, an admin identity and its CLI context."""
    from dockyard.common import pki
    from dockyard.common.statedir import ensure_private_dir, write_private
    from dockyard.controller.ca import pki_dir

    ensure_private_dir(state_dir)
    directory = pki_dir(state_dir)
    ca.save(directory)
    (directory / "controller.pem").write_bytes(cert)
    write_private(directory / "controller-key.pem", key)
    (directory / "cluster.json").write_text(json.dumps({"address": host}) + "\n")
    tls = _write_identity(directory / "admin", ca.cert_pem, *ca.issue_pair(pki.ADMIN, "admin"))
    _make_context(context_name, host, tls, f"admin of the cluster in {state_dir}")
    click.echo(f"cluster CA: {directory / 'ca.pem'} (sha256 {ca.fingerprint})")
    click.echo(f"admin identity: {directory / 'admin'}; CLI context {context_name!r}")


@click.command()
@state_dir_option
@_identity_options
@click.option(
    "--etcd",
    "etcd_endpoints",
    multiple=True,
    metavar="HOST:PORT",
    help="The etcd the cluster will keep its state in (a new CA is published "
    "there; an etcd that already holds a cluster is joined with `join`).",
)
@_etcd_options
@_key_file_option(
    "Encrypt secrets at rest with the keys of FILE: made (one generated key, 0600) when "
    "it does not exist; `run` is then given --encryption-key-file FILE."
)
@service_options("dockyard-controller")
def init(
    state_dir: Path,
    listen: str,
    advertise: str,
    context_name: str,
    etcd_endpoints: tuple[str, ...],
    etcd_prefix: str,
    etcd_timeout: float,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_server_name: str | None,
    encryption_key_file: Path | None,
    service: HostService,
) -> None:
    """Create the cluster CA, the controller's certificate and an admin identity."""
    from dockyard.common import pki
    from dockyard.controller.ca import has_ca, pki_dir

    listen, advertise, endpoints = _addresses(listen, advertise, etcd_endpoints)
    credentials = etcd_credentials(endpoints, etcd_cacert, etcd_cert, etcd_key, etcd_server_name)
    _ensure_key_file(encryption_key_file, create=True)
    if _initialized(state_dir):
        return
    directory = pki_dir(state_dir)
    if endpoints:
        existing = asyncio.run(
            _ca_from_etcd(
                endpoints, etcd_prefix, etcd_timeout, create=False, credentials=credentials
            )
        )
        if existing is not None and not (
            has_ca(state_dir)
            and pki.CertificateAuthority.load(directory).fingerprint == existing.fingerprint
        ):
            raise click.ClickException(
                f"etcd at {','.join(endpoints)} already holds a cluster (CA sha256 "
                f"{existing.fingerprint}): join it with `dockyard-controller join --token "
                "<controller token> CONTROLLER:7399 --etcd ...` (an admin makes the token "
                "with `dockyard-controller token create --role controller`)"
            )
        ca = existing or asyncio.run(
            _ca_from_etcd(
                endpoints, etcd_prefix, etcd_timeout, create=True, credentials=credentials
            )
        )
    elif has_ca(state_dir):
        ca = pki.CertificateAuthority.load(directory)
    else:
        ca = pki.CertificateAuthority.create()
    cert, key = ca.issue_pair(
        pki.CONTROLLER,
        "init",
        validity=dt.timedelta(days=365),
        sans=pki.controller_sans(listen, advertise),
    )
    _write_controller(state_dir, ca, cert, key, advertise or listen, context_name)
    started = _settle(
        service,
        state_dir,
        listen,
        advertise,
        endpoints,
        etcd_prefix,
        (etcd_cacert, etcd_cert, etcd_key, etcd_server_name),
        encryption_key_file,
    )
    key_flag = f" --encryption-key-file {encryption_key_file}" if encryption_key_file else ""
    run_first = (
        "" if started else f"dockyard-controller run --state-dir {state_dir}{key_flag}, then "
    )
    click.echo(f"next: {run_first}dockyard-controller token create --role agent")


@click.command()
@click.argument("address", metavar="CONTROLLER:JOIN_PORT")
@click.option(
    "--token",
    required=True,
    envvar="DOCKYARD_JOIN_TOKEN",
    help="A controller join token (`dockyard-controller token create --role controller`).",
)
@state_dir_option
@_identity_options
@click.option(
    "--etcd",
    "etcd_endpoints",
    multiple=True,
    metavar="HOST:PORT",
    required=True,
    help="The cluster's etcd (repeat for several endpoints).",
)
@_etcd_options
@_key_file_option(
    "The cluster's secrets key file (a copy of the other controllers', 0600): checked, "
    "and `run` is given --encryption-key-file FILE."
)
@service_options("dockyard-controller")
def join(
    address: str,
    token: str,
    state_dir: Path,
    listen: str,
    advertise: str,
    context_name: str,
    etcd_endpoints: tuple[str, ...],
    etcd_prefix: str,
    etcd_timeout: float,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_server_name: str | None,
    encryption_key_file: Path | None,
    service: HostService,
) -> None:
    """Join a running cluster as one more controller.

    As `dockyard-agent join`: the CA the controller at ADDRESS (its join port) presents
    must match the token's, and the token must be a controller token. The cluster's CA
    is then taken from etcd, which must hold that same CA. Then `run --etcd ...`.
    """
    from dockyard.common import pki
    from dockyard.common.joining import JoinError, request_certificate

    listen, advertise, endpoints = _addresses(listen, advertise, etcd_endpoints)
    credentials = etcd_credentials(endpoints, etcd_cacert, etcd_cert, etcd_key, etcd_server_name)
    try:
        address = normalize(address, JOIN_PORT)
    except AddressError as exc:
        raise click.BadParameter(str(exc)) from exc
    _ensure_key_file(encryption_key_file, create=False)
    if _initialized(state_dir):
        return
    hosts = [h for h in (listen, advertise) if h]
    try:
        issued, key = asyncio.run(request_certificate(address, token, hosts))
    except JoinError as exc:
        raise click.ClickException(str(exc)) from exc
    if issued.role != pki.CONTROLLER:
        raise click.ClickException(
            f"this is a {issued.role} join token: an agent joins with "
            "`dockyard-agent join`; ask for `token create --role "
            "controller`"
        )
    ca = asyncio.run(
        _ca_from_etcd(endpoints, etcd_prefix, etcd_timeout, create=False, credentials=credentials)
    )
    if ca is None:
        raise click.ClickException(
            f"etcd at {','.join(endpoints)} holds no cluster: give the "
            "etcd the cluster's controllers use"
        )
    if ca.fingerprint != pki.fingerprint(issued.ca_pem):
        raise click.ClickException(
            f"etcd at {','.join(endpoints)} holds another cluster's CA (sha256 "
            f"{ca.fingerprint}), not the one of the controller at {address}; nothing written"
        )
    _write_controller(
        state_dir, ca, issued.cert_pem, pki.key_pem(key), advertise or listen, context_name
    )
    click.echo(f"joined as controller {issued.node_id}")
    if not _settle(
        service,
        state_dir,
        listen,
        advertise,
        endpoints,
        etcd_prefix,
        (etcd_cacert, etcd_cert, etcd_key, etcd_server_name),
        encryption_key_file,
    ):
        key_flag = f" --encryption-key-file {encryption_key_file}" if encryption_key_file else ""
        click.echo(
            f"next: dockyard-controller run --state-dir {state_dir} --etcd {','.join(endpoints)}"
            + key_flag
        )


def _settle(
    service: HostService,
    state_dir: Path,
    listen: str,
    advertise: str,
    endpoints: list[str],
    etcd_prefix: str,
    tls: tuple[Path | None, Path | None, Path | None, str | None],
    key_file: Path | None = None,
) -> bool:
    """The unit's settings and its start (common/host_service.py); whether it started."""
    from dockyard.common.host_service import ServiceError, controller_settings

    flags = ("--etcd-cacert", "--etcd-cert", "--etcd-key", "--etcd-server-name")
    paths: dict[str, Path | str | None] = dict(zip(flags, tls, strict=True))
    paths["--encryption-key-file"] = key_file
    try:
        settings = controller_settings(
            service, state_dir, listen, advertise, endpoints, etcd_prefix, paths
        )
        started = service.settle(state_dir, settings)
    except (OSError, ValueError, ServiceError) as exc:
        raise click.ClickException(f"the controller's identity is written, but {exc}") from exc
    if started:
        click.echo("watch it: journalctl -fu dockyard-controller; dockyard info")
    return started


@click.group()
def user() -> None:
    """Client identities (certificates with a role)."""


@user.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "read-only"]), required=True)
@state_dir_option
@click.option("--context", "context_name", default=None, help="Context to write [NAME].")
@click.option(
    "--host",
    default=None,
    metavar="HOST:PORT",
    help="The controller's address [the one given to init].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write ca.pem, cert.pem, key.pem [STATE_DIR/pki/users/NAME].",
)
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
def create_user(
    name: str,
    role: str,
    state_dir: Path,
    context_name: str | None,
    host: str | None,
    out: Path | None,
    days: int,
) -> None:
    """Issue a client identity for NAME with a role, and a CLI context for it."""
    from dockyard.common import pki
    from dockyard.common.validation import ValidationError, check_name
    from dockyard.controller.ca import has_ca, pki_dir

    try:
        check_name("NAME", name)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not has_ca(state_dir):
        raise click.ClickException(f"no cluster CA in {pki_dir(state_dir)}: run init first")
    directory = pki_dir(state_dir)
    ca = pki.CertificateAuthority.load(directory)
    if host is None:
        cluster = directory / "cluster.json"
        host = (
            json.loads(cluster.read_text())["address"]
            if cluster.exists()
            else (f"127.0.0.1:{CONTROLLER_PORT}")
        )
    cert, key = ca.issue_pair(role, name, validity=dt.timedelta(days=days))
    tls = _write_identity(out or directory / "users" / name, ca.cert_pem, cert, key)
    # A copy the controller records (cert ls, cert revoke), wherever --out put the files.
    serial = pki.identity_of(cert).serial
    (directory / "issued").mkdir(exist_ok=True)
    (directory / "issued" / f"{serial}.pem").write_bytes(cert)
    _make_context(context_name or name, host, tls, f"{role} user {name}")
    click.echo(
        f"{role} identity for {name}: {Path(tls['cert']).parent}; "
        f"CLI context {context_name or name!r}; serial {serial}"
    )


def days_as_hours(text: str) -> str:
    """parse_duration knows h, m, s; a trailing `Nd` is turned into hours."""
    if text.endswith("d") and text[:-1].isdigit():
        return f"{int(text[:-1]) * 24}h"
    return text


__all__ = ["days_as_hours", "init", "join", "user"]
