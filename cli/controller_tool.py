"""`dockyard-controller token | cert | user rm`: RPCs on a running controller, made
with an admin identity (the current CLI context, or --context / -H with --tls* flags).

They are client commands, so they live here, beside the CLI's targets, client and
tables; this module adds them to the controller's own commands (run, init, join,
user create: controller/main.py, controller/admin.py) and is `dockyard-controller`'s
entry point. The controller package never imports the CLI.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from dockyard.controller.admin import days_as_hours, user
from dockyard.controller.main import main as controller_main


def _target(
    host: str | None,
    context_name: str | None,
    tlscacert: str | None,
    tlscert: str | None,
    tlskey: str | None,
) -> Any:
    from dockyard.cli.client import resolve_targets, tls_files

    tls = tls_files(tlscacert, tlscert, tlskey, "--tlscacert/--tlscert/--tlskey")
    return resolve_targets((host,) if host else (), context_name, tls)[0]


def _client_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "-H",
                "--host",
                default=None,
                metavar="HOST:PORT",
                help="The controller [the context's].",
            ),
            click.option(
                "-c",
                "--context",
                "context_name",
                default=None,
                envvar="DOCKYARD_CONTEXT",
                help="CLI context with an admin identity.",
            ),
            click.option("--tlscacert", default=None, envvar="DOCKYARD_TLS_CACERT"),
            click.option("--tlscert", default=None, envvar="DOCKYARD_TLS_CERT"),
            click.option("--tlskey", default=None, envvar="DOCKYARD_TLS_KEY"),
        ]
    ):
        command = option(command)
    return command


def _ttl(text: str) -> float:
    from dockyard.common.sizes import parse_duration

    if text in ("0", "never", ""):
        return 0.0
    try:
        return parse_duration(days_as_hours(text))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from exc


def _token_call(method: str, request: Any, **target: Any) -> Any:
    from dockyard.cli.client import call
    from dockyard.v1 import control_pb2_grpc

    return call(_target(**target), control_pb2_grpc.ControlStub, method, request)


@click.group()
def token() -> None:
    """Join tokens (`dockyard-agent join --token ...`); needs an admin identity."""


@token.command("create")
@click.option(
    "--role", type=click.Choice(["agent", "controller"]), default="agent", show_default=True
)
@click.option("--ttl", default="24h", show_default=True, help="Lifetime; 0 for none.")
@click.option(
    "--max-uses",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Joins the token allows; 0 for no limit.",
)
@_client_options
def create_token(role: str, ttl: str, max_uses: int, **target: Any) -> None:
    """Make a join token and print it (the secret is shown only now)."""
    from dockyard.v1.control_pb2 import CreateJoinTokenRequest

    response = _token_call(
        "CreateJoinToken",
        CreateJoinTokenRequest(role=role, ttl_seconds=_ttl(ttl), max_uses=max_uses),
        **target,
    )
    click.echo(response.token)


@token.command("rotate")
@click.option("--role", type=click.Choice(["agent", "controller"]), required=True)
@click.option("--ttl", default="24h", show_default=True, help="Lifetime; 0 for none.")
@click.option("--max-uses", type=click.IntRange(min=0), default=0, show_default=True)
@_client_options
def rotate_token(role: str, ttl: str, max_uses: int, **target: Any) -> None:
    """Invalidate every token of ROLE and print a new one."""
    from dockyard.v1.control_pb2 import CreateJoinTokenRequest

    response = _token_call(
        "RotateJoinTokens",
        CreateJoinTokenRequest(role=role, ttl_seconds=_ttl(ttl), max_uses=max_uses),
        **target,
    )
    click.echo(response.token)


@token.command("ls")
@_client_options
def list_tokens(**target: Any) -> None:
    """The join tokens (without their secrets)."""
    from dockyard.cli.render import emit_table
    from dockyard.v1.control_pb2 import ListJoinTokensRequest

    tokens = _token_call("ListJoinTokens", ListJoinTokensRequest(), **target).tokens
    now = dt.datetime.now(dt.UTC)
    rows = []
    for record in tokens:
        expires = (
            record.expires_at.ToDatetime(tzinfo=dt.UTC) if record.HasField("expires_at") else None
        )
        rows.append(
            (
                record.id,
                record.role,
                record.created_at.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "never"
                if expires is None
                else ("expired" if expires < now else expires.strftime("%Y-%m-%d %H:%M:%S")),
                f"{record.uses}/{record.max_uses}" if record.max_uses else str(record.uses),
            )
        )
    emit_table(["ID", "ROLE", "CREATED", "EXPIRES", "USES"], rows)


def _ca_call(method: str, request: Any, **target: Any) -> Any:
    from dockyard.cli.client import call
    from dockyard.v1 import ca_pb2_grpc

    return call(_target(**target), ca_pb2_grpc.NodeCAStub, method, request)


@user.command("rm")
@click.argument("name")
@_client_options
def remove_user(name: str, **target: Any) -> None:
    """Revoke every certificate of the admin or read-only user NAME.

    The user's next call is refused (UNAUTHENTICATED), on every controller.
    """
    from dockyard.common import pki
    from dockyard.v1.ca_pb2 import ListCertificatesRequest, RevokeCertificateRequest

    listed = _ca_call("ListCertificates", ListCertificatesRequest(), **target)
    done = {r.serial for r in listed.revoked}
    serials = [
        c.serial
        for c in listed.issued
        if c.subject_id == name and c.role in (pki.ADMIN, pki.READ_ONLY)
    ]
    if not serials:
        raise click.ClickException(
            f"no admin or read-only certificate was issued to {name!r} "
            "(see `dockyard-controller cert ls`)"
        )
    for serial in serials:
        if serial not in done:
            _ca_call(
                "RevokeCertificate",
                RevokeCertificateRequest(serial=serial, reason=f"user {name} removed"),
                **target,
            )
    click.echo(f"user {name}: revoked {', '.join(serials)}")


@click.group()
def cert() -> None:
    """The certificates the cluster CA issued; needs an admin identity."""


@cert.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also expired certificates.")
@_client_options
def list_certs(show_all: bool, **target: Any) -> None:
    """Every certificate the CA issued: nodes, controllers, users; revoked or not."""
    from dockyard.cli.render import emit_table
    from dockyard.v1.ca_pb2 import ListCertificatesRequest

    listed = _ca_call("ListCertificates", ListCertificatesRequest(), **target)
    revoked = {r.serial: r for r in listed.revoked}
    now = dt.datetime.now(dt.UTC)
    rows = []
    for record in sorted(listed.issued, key=lambda c: (c.role, c.subject_id, c.not_after.seconds)):
        expires = record.not_after.ToDatetime(tzinfo=dt.UTC)
        if expires < now and not show_all:
            continue
        status = (
            "revoked: " + revoked[record.serial].reason
            if record.serial in revoked
            else "expired"
            if expires < now
            else "valid"
        )
        rows.append(
            (
                record.serial,
                record.role,
                record.subject_id,
                expires.strftime("%Y-%m-%d %H:%M:%S"),
                status,
            )
        )
    emit_table(["SERIAL", "ROLE", "SUBJECT", "EXPIRES", "STATUS"], rows)


@cert.command("revoke")
@click.argument("serial")
@click.option("--reason", default="", help="Kept in the revocation list.")
@_client_options
def revoke_cert(serial: str, reason: str, **target: Any) -> None:
    """Revoke the certificate SERIAL (hex, as `cert ls` shows it).

    Its holder's next call is refused, on every controller; a node's open session
    ends at once.
    """
    from dockyard.v1.ca_pb2 import RevokeCertificateRequest

    response = _ca_call(
        "RevokeCertificate", RevokeCertificateRequest(serial=serial, reason=reason), **target
    )
    click.echo(f"revoked {response.revoked.serial} ({response.revoked.subject_id})")


def _add_commands() -> click.Group:
    user.add_command(remove_user)
    controller_main.add_command(token)
    controller_main.add_command(cert)
    return controller_main


main = _add_commands()

__all__ = ["cert", "main", "token"]
