"""`dockyard login|logout`: registry credentials in docker's config.json or its helpers.

`login` checks the credentials against the registry (`GET /v2/` with them) before it
keeps them, as `docker login` does; see cli/docker_config.py for where they go.
"""

from __future__ import annotations

import sys

import click

from dockyard.cli.client import CliError
from dockyard.cli.docker_config import (
    DOCKER_HUB_SERVER,
    CredentialsError,
    Login,
    erase_login,
    server_key,
    store_login,
)

MAX_PASSWORD = 64 * 1024


def registry_name(server: str) -> str:
    """The registry as image references name it (`docker.io`, `host:port`)."""
    key = server_key(server)
    return "docker.io" if key == DOCKER_HUB_SERVER else key


def check_login(registry: str, login: Login) -> None:
    """Ask the registry's /v2/ with the credentials; a refusal raises CliError."""
    import asyncio

    from dockyard.common.distribution.auth import Credentials
    from dockyard.common.distribution.errors import RegistryError
    from dockyard.common.distribution.registry import RegistryClient, RegistryConfig

    async def ping() -> int:
        config = RegistryConfig(attempts=2, connect_timeout=10, read_timeout=20)
        async with RegistryClient(
            config, {registry: Credentials(login.username, login.secret)}
        ) as client:
            endpoint = client.endpoints(registry, pull=False)[-1]
            response = await client.request(endpoint, "GET", "/v2/", scope="", ok=(200,))
            response.release()
            return response.status

    try:
        status = asyncio.run(ping())
    except RegistryError as exc:
        raise CliError(f"login to {registry} refused: {exc}") from exc
    except OSError as exc:
        raise CliError(f"cannot reach registry {registry}: {exc}") from exc
    if status != 200:
        raise CliError(f"{registry} is not a registry: GET /v2/ answered {status}")


@click.command("login")
@click.option("-u", "--username", default=None, help="Username.")
@click.option("-p", "--password", default=None, help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.argument("server", required=False, default=DOCKER_HUB_SERVER, metavar="[SERVER]")
def login(username: str | None, password: str | None, password_stdin: bool, server: str) -> None:
    """Log in to a registry (Docker Hub by default): check the credentials and keep them
    in docker's config.json ($DOCKER_CONFIG) or its credential helper."""
    if password is not None and password_stdin:
        raise click.UsageError("--password and --password-stdin: give one")
    if password_stdin:
        if username is None:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read(MAX_PASSWORD + 1).rstrip("\r\n")
        if len(password) > MAX_PASSWORD:
            raise click.UsageError(f"the password on stdin is longer than {MAX_PASSWORD} bytes")
    elif password is not None:
        click.echo(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True
        )
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    if not username or not password:
        raise click.UsageError("a username and a password are needed")
    registry = registry_name(server)
    credentials = Login(username, password)
    check_login(registry, credentials)
    try:
        where = store_login(server, credentials)
    except CredentialsError as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"Login Succeeded (credentials kept in {where})")


@click.command("logout")
@click.argument("server", required=False, default=DOCKER_HUB_SERVER, metavar="[SERVER]")
def logout(server: str) -> None:
    """Forget the credentials of a registry (Docker Hub by default)."""
    try:
        found = erase_login(server)
    except CredentialsError as exc:
        raise CliError(str(exc)) from exc
    key = server_key(server)
    click.echo(f"Removing login credentials for {key}" if found else f"Not logged in to {key}")
