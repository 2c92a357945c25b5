"""The registry flags both daemons take (`--registry-mirror`, `--insecure-registry`,
`--registry-config`), checked, and the `RegistryConfig` they make."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # the client pulls in aiohttp: not for `--help`
    from dockyard.common.distribution.registry import RegistryConfig

__all__ = ["check_registry_flags", "registry_config", "registry_options"]

F = TypeVar("F", bound=Callable[..., Any])


def registry_options(func: F) -> F:
    """Add the three registry flags to a click command (as registry_mirrors,
    insecure_registries and registry_config)."""
    options = [
        click.option(
            "--registry-mirror",
            "registry_mirrors",
            multiple=True,
            metavar="URL",
            help="Mirror of docker.io, tried before it (repeatable; Docker's registry-mirrors).",
        ),
        click.option(
            "--insecure-registry",
            "insecure_registries",
            multiple=True,
            metavar="HOST:PORT",
            help="Registry spoken to over plain HTTP (repeatable; loopback ones always are).",
        ),
        click.option(
            "--registry-config",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Docker config.json with registry credentials.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def check_registry_flags(mirrors: Sequence[str], insecure: Sequence[str]) -> None:
    """Raises ValueError naming the flag when a mirror is not a URL or a host has a path."""
    for mirror in mirrors:
        if not mirror.startswith(("http://", "https://")):
            raise ValueError(f"--registry-mirror {mirror!r}: expected an http(s):// URL")
    for host in insecure:
        if not host or "/" in host:
            raise ValueError(f"--insecure-registry {host!r}: expected HOST[:PORT]")


def registry_config(
    mirrors: Sequence[str], insecure: Sequence[str], auth_file: Path | None
) -> RegistryConfig:
    """The client settings for docker.io mirrors, plaintext hosts and a credentials file."""
    from dockyard.common.distribution.registry import RegistryConfig

    return RegistryConfig(
        mirrors={"docker.io": list(mirrors)} if mirrors else {},
        insecure_registries=frozenset(insecure),
        auth_file=auth_file,
    )
