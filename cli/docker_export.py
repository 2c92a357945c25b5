"""A context's TLS identity as Docker's ``DOCKER_CERT_PATH`` files.

Docker's clients (``docker --tlsverify``, the SDKs, docker-compose) read ``ca.pem``,
``cert.pem`` and ``key.pem`` from one directory; an agent's Docker API over TCP accepts
the cluster's admin certificate (``agent/dockerapi/listen.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dockyard.common.atomic_file import write_atomic

__all__ = ["export_docker_certs"]

FILES = (("ca", "ca.pem", 0o644), ("cert", "cert.pem", 0o644), ("key", "key.pem", 0o600))


def export_docker_certs(tls: Mapping[str, str], directory: str) -> Path:
    """Copy the context's CA, certificate and key into `directory` (made 0700 when
    missing); the key stays 0600. Returns the directory, absolute.

    Raises:
        ValueError: the context has no TLS material.
        OSError: a file cannot be read or written.
    """
    if not all(tls.get(key) for key, _, _ in FILES):
        raise ValueError("it has no TLS identity (create it with --tlscacert/--tlscert/--tlskey)")
    target = Path(directory).absolute()
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for key, name, mode in FILES:
        write_atomic(target / name, Path(tls[key]).read_bytes(), mode=mode)
    return target
