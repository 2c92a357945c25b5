"""What the store holds and answers: the record kinds (each a key prefix and a protobuf
type), a transaction's ops, the leader fence, watch events, and the store's errors.

Everything here is plain data; controller/store.py is the one module that talks to etcd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import grpc
from google.protobuf.message import Message

from dockyard.v1 import networks_pb2, types_pb2, workloads_pb2

M = TypeVar("M", bound=Message)


class StoreError(Exception):
    """Base of every error the store raises."""


class StoreUnavailable(StoreError):
    """etcd could not be reached (after the client's bounded retries)."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compared revision changed since it was read: read again and retry."""


class LeadershipLost(Exception):
    """A fenced write found the leader key gone or re-created: this controller no
    longer leads and nothing of the transaction was written.

    Not a StoreError on purpose: a loop that retries store errors must not retry
    this one; it ends the term (see `leadership.py`).
    """


class Compacted(StoreError):
    """A watch's start revision was compacted away: list again, then watch."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class Kind(Generic[M]):
    """A collection of records of one message type."""

    name: str
    message: type[M]


NODES: Kind[types_pb2.Node] = Kind("nodes", types_pb2.Node)
CLUSTER: Kind[types_pb2.Cluster] = Kind("cluster", types_pb2.Cluster)
LEADER: Kind[types_pb2.LeaderRecord] = Kind("leader", types_pb2.LeaderRecord)
# Each running controller's own record, on a lease of its own (controller/registration.py).
CONTROLLERS: Kind[types_pb2.ControllerRecord] = Kind("controllers", types_pb2.ControllerRecord)
NODE_NAMES: Kind[types_pb2.Node] = Kind("names/nodes", types_pb2.Node)  # value: node id bytes
SERVICES: Kind[workloads_pb2.Service] = Kind("services", workloads_pb2.Service)
SERVICE_NAMES: Kind[workloads_pb2.Service] = Kind("names/services", workloads_pb2.Service)
TASKS: Kind[workloads_pb2.Task] = Kind("tasks", workloads_pb2.Task)
# Secrets hold their data (as swarm keeps them in raft): etcd access is cluster ownership.
SECRETS: Kind[workloads_pb2.Secret] = Kind("secrets", workloads_pb2.Secret)
SECRET_DATA: Kind[workloads_pb2.Secret] = Kind("secretdata", workloads_pb2.Secret)  # raw bytes
SECRET_NAMES: Kind[workloads_pb2.Secret] = Kind("names/secrets", workloads_pb2.Secret)
# Configs are kept as secrets are (controller/secrets.py), under their own keys.
CONFIGS: Kind[workloads_pb2.Config] = Kind("configs", workloads_pb2.Config)
CONFIG_DATA: Kind[workloads_pb2.Config] = Kind("configdata", workloads_pb2.Config)  # raw bytes
CONFIG_NAMES: Kind[workloads_pb2.Config] = Kind("names/configs", workloads_pb2.Config)
# A service's `--with-registry-auth` credentials, keyed by service ID, kept apart from
# the service record (as a secret's data) so that no listing or Get returns them.
REGISTRY_AUTHS: Kind[workloads_pb2.RegistryAuth] = Kind("registryauth", workloads_pb2.RegistryAuth)
# Cluster networks (overlay) and their name index (controller/networks.py).
NETWORKS: Kind[networks_pb2.Network] = Kind("networks", networks_pb2.Network)
NETWORK_NAMES: Kind[networks_pb2.Network] = Kind("names/networks", networks_pb2.Network)
# Standalone containers on attachable networks (controller/attachments.py).
NETWORK_ATTACHMENTS: Kind[networks_pb2.NetworkAttachmentRecord] = Kind(
    "netattachments", networks_pb2.NetworkAttachmentRecord
)
# Security: the cluster CA (one record, "root"), join tokens keyed by token id,
# the certificates the CA issued and the revocation list, both keyed by serial.
ROOT_CA: Kind[types_pb2.RootCA] = Kind("pki/ca", types_pb2.RootCA)
JOIN_TOKENS: Kind[types_pb2.JoinTokenRecord] = Kind("pki/tokens", types_pb2.JoinTokenRecord)
ISSUED_CERTS: Kind[types_pb2.IssuedCert] = Kind("pki/issued", types_pb2.IssuedCert)
REVOKED_CERTS: Kind[types_pb2.RevokedCert] = Kind("pki/revoked", types_pb2.RevokedCert)
# Subjects (node IDs) removed from the cluster: no certificate is issued to one again.
REMOVED_SUBJECTS: Kind[types_pb2.RevokedCert] = Kind("pki/removed", types_pb2.RevokedCert)


class Op(NamedTuple):
    """One write in a transaction (a tuple: every task's write makes one, 0.8 µs
    against a frozen dataclass's 2.8).

    `expect` is the compare: None for none, 0 for "must not exist yet",
    a revision for "must still be at this mod_revision".
    """

    key: str
    value: bytes | None  # None deletes
    expect: int | None = None
    lease: int = 0
    check_only: bool = False  # only the compare: the key is neither written nor deleted
    range_end: str | None = None  # check_only over [key, range_end): nothing modified after expect


@dataclass(frozen=True)
class Fence:
    """The leader key as this controller created it when elected.

    A store fenced with it (`Store.fenced`) adds to every transaction the compare
    "the leader key's create_revision is still this one": once the key expired,
    was deleted or was taken by another controller (or by this one in a later
    term), every write of the term fails as a whole.
    """

    key: str
    create_revision: int


class WatchEvent(NamedTuple, Generic[M]):
    """One record's change as the watch saw it (a tuple: made for every record written,
    0.3 µs against a frozen dataclass's 1.3)."""

    kind: str
    id: str
    deleted: bool
    value: M | None
    revision: int


def short_error(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if "connection refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
