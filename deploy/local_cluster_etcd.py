"""The etcd cluster of `deploy/local-cluster up --etcd-members N`: one Debian etcd-server
process per member, each with its own ports on 127.0.0.1 and its own data dir, clients
and peers on mutual TLS. Standard library only; the certificates are made once with the
project's own `common/etcd_pki.py` (run by the project's Python).

One CA for the whole etcd cluster (its key discarded once the certificates exist, as the
embedded etcd's): a server certificate for 127.0.0.1 that every member uses for its
client and peer ports (`--peer-client-cert-auth`), and one client certificate that every
controller presents (`--client-cert-auth`). So only the controllers of this cluster (and
root, who can read STATE/etcd/pki) can read the cluster's state, which holds the cluster
CA's key, the secrets and the join tokens; no other local user can, nor a container on
the host network.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["client_flags", "etcd_health", "make_pki", "member_args"]

MAKE_PKI = """
import sys
from pathlib import Path
from dockyard.common.etcd_pki import make_etcd_pki

make_etcd_pki(Path(sys.argv[1]))
"""


def make_pki(pki_dir: Path, python: str) -> None:
    """The CA, the members' and the controllers' certificates, unless they exist."""
    if (pki_dir / "client-key.pem").exists():
        return
    subprocess.run([python, "-c", MAKE_PKI, str(pki_dir)], check=True)
    print(f"made the etcd cluster's certificates in {pki_dir}")


def client_flags(pki_dir: Path) -> list[str]:
    """The controller's flags (run, init, join) for client TLS to these members; the
    name checked is `localhost`, which every member's certificate carries (one name for
    several endpoints: the etcd client dials them all on one channel)."""
    return [
        "--etcd-cacert",
        str(pki_dir / "ca.pem"),
        "--etcd-cert",
        str(pki_dir / "client.pem"),
        "--etcd-key",
        str(pki_dir / "client-key.pem"),
        "--etcd-server-name",
        "localhost",
    ]


def member_args(
    name: str, data_dir: Path, ports: tuple[int, int], cluster: dict[str, int], pki_dir: Path
) -> list[str]:
    """etcd's flags for member `name` on (client, peer) `ports`; `cluster` maps every
    member's name to its peer port. The initial-cluster flags count only on the first
    start: later starts take the membership from the data dir."""
    client, peer = (f"https://127.0.0.1:{port}" for port in ports)
    initial = ",".join(f"{member}=https://127.0.0.1:{port}" for member, port in cluster.items())
    return [
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={initial}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token=dockyard-local-{pki_dir.parent.parent.name}",
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=10000",
        f"--cert-file={pki_dir / 'server.pem'}",
        f"--key-file={pki_dir / 'server-key.pem'}",
        f"--trusted-ca-file={pki_dir / 'ca.pem'}",
        "--client-cert-auth=true",
        f"--peer-cert-file={pki_dir / 'server.pem'}",
        f"--peer-key-file={pki_dir / 'server-key.pem'}",
        f"--peer-trusted-ca-file={pki_dir / 'ca.pem'}",
        "--peer-client-cert-auth=true",
    ]


def etcd_health(client_port: int, pki_dir: Path) -> str:
    """'healthy', 'unhealthy' (it answers, without quorum) or 'unreachable'."""
    try:
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
        context.load_cert_chain(str(pki_dir / "client.pem"), str(pki_dir / "client-key.pem"))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{client_port}/health", timeout=2, context=context
        ) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError:
        return "unhealthy"  # 503: it answers, but has no leader
    except (OSError, ValueError, ssl.SSLError):
        return "unreachable"
    return "healthy" if body.get("health") == "true" else "unhealthy"
