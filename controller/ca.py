"""The controller's certificate authority: join tokens, node certificates, revocation.

The CA's certificate and key are made by `dockyard-controller init` under the
state dir (`pki/`) and published to etcd at start (kind `pki/ca`, not
encrypted: like swarm's root key in its raft store, whoever can read the
cluster's etcd owns the cluster). A controller whose state dir has no CA yet
adopts etcd's at `init --etcd ...`; one whose CA differs from etcd's refuses to
start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import math
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.common import pki
from dockyard.common.authz import peer_identity
from dockyard.common.timestamps import is_set, now_timestamp, to_seconds
from dockyard.common.validation import ValidationError
from dockyard.controller.errors import grpc_errors
from dockyard.controller.ratelimit import renewal_limiter
from dockyard.controller.store import (
    ISSUED_CERTS,
    JOIN_TOKENS,
    REVOKED_CERTS,
    ROOT_CA,
    AlreadyExists,
    Compacted,
    Conflict,
    NotFound,
    Store,
    StoreError,
)
from dockyard.v1 import ca_pb2_grpc
from dockyard.v1.ca_pb2 import (
    IssueNodeCertificateRequest,
    NodeCertificate,
    RenewNodeCertificateRequest,
)
from dockyard.v1.types_pb2 import IssuedCert, JoinTokenRecord, RevokedCert, RootCA

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]

TOKEN_ROLES = {"agent": pki.NODE, "controller": pki.CONTROLLER}
MAX_TOKEN_TTL = 10 * 365 * 24 * 3600.0


def check_token_request(role: str, ttl_seconds: float, max_uses: int) -> None:
    if role not in TOKEN_ROLES:
        raise ValidationError("role", f"expected agent or controller, got {role[:64]!r}")
    if not math.isfinite(ttl_seconds) or not 0 <= ttl_seconds <= MAX_TOKEN_TTL:
        raise ValidationError("ttl_seconds", f"must be between 0 and {MAX_TOKEN_TTL:.0f} s")
    if max_uses < 0:
        raise ValidationError("max_uses", "must not be negative")


PKI_DIR = "pki"


class CAMismatch(Exception):
    """The state dir's CA is not the one the cluster's etcd holds."""


class TokenRefused(Exception):
    """A join token that is unknown, expired, used up or for another cluster."""


def pki_dir(state_dir: Path) -> Path:
    return state_dir / PKI_DIR


def has_ca(state_dir: Path) -> bool:
    return (pki_dir(state_dir) / "ca.pem").exists() and (pki_dir(state_dir) / "ca-key.pem").exists()


async def publish_ca(store: Store, ca: pki.CertificateAuthority) -> None:
    """Make `ca` the cluster's CA in etcd, or check that it already is."""
    record = RootCA(
        cert_pem=ca.cert_pem, key_pem=pki.key_pem(ca.key), fingerprint=ca.fingerprint
    )
    try:
        await store.create(ROOT_CA, "root", record)
        log.info("ca.published", fingerprint=ca.fingerprint)
        return
    except AlreadyExists:
        pass
    stored = await store.get(ROOT_CA, "root")
    if stored.fingerprint != ca.fingerprint:
        raise CAMismatch(
            f"etcd holds another cluster CA ({stored.fingerprint[:16]}…) than this state dir "
            f"({ca.fingerprint[:16]}…): run `dockyard-controller init --etcd ...` with an empty "
            "state dir to adopt the cluster's CA"
        )


async def fetch_ca(store: Store) -> pki.CertificateAuthority | None:
    try:
        record = await store.get(ROOT_CA, "root")
    except NotFound:
        return None
    return pki.CertificateAuthority.from_pem(record.cert_pem, record.key_pem)


def _timestamp(when: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


class ClusterCA:
    """Issues certificates, keeps join tokens and the revocation list.

    Args:
        node_validity: how long a node certificate lasts.
        controllers: the main (mutual TLS) addresses a joining node is sent to.
    """

    def __init__(
        self,
        store: Store,
        ca: pki.CertificateAuthority,
        node_validity: dt.timedelta,
        controllers: Callable[[], list[str]],
    ) -> None:
        self.store = store
        self.ca = ca
        self.node_validity = node_validity
        self._controllers = controllers
        self.revoked: dict[str, float] = {}
        """Revoked serials -> their certificates' expiry (epoch seconds)."""
        self.on_revoke: Callable[[str, str], None] = lambda serial, subject: None
        """Called for a revocation made by another controller (serial, subject)."""
        self.on_change: Callable[[], None] = lambda: None
        """Called whenever the revoked set changes, here or elsewhere."""

    # -- tokens --------------------------------------------------------------

    async def create_token(
        self, role: str, ttl_seconds: float, max_uses: int
    ) -> tuple[str, JoinTokenRecord]:
        check_token_request(role, ttl_seconds, max_uses)
        token = pki.JoinToken.new(self.ca.fingerprint)
        record = JoinTokenRecord(
            id=token.secret_hash[:12], role=role, secret_hash=token.secret_hash,
            created_at=now_timestamp(), max_uses=max_uses,
        )  # fmt: skip
        if ttl_seconds:
            record.expires_at.CopyFrom(
                _timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_seconds))
            )
        await self.store.create(JOIN_TOKENS, record.id, record)
        log.info("token.created", token_id=record.id, role=role, ttl=ttl_seconds,
                 max_uses=max_uses)  # fmt: skip
        return str(token), record

    async def list_tokens(self) -> list[JoinTokenRecord]:
        records, _ = await self.store.list_all(JOIN_TOKENS)
        return sorted(records, key=lambda r: (r.role, r.created_at.seconds))

    async def rotate(
        self, role: str, ttl_seconds: float, max_uses: int
    ) -> tuple[str, JoinTokenRecord]:
        """Every token of `role` stops working; a new one is made."""
        check_token_request(role, ttl_seconds, max_uses)  # before anything is removed
        for record in await self.list_tokens():
            if record.role == role:
                await self.store.delete(JOIN_TOKENS, record.id)
        log.info("token.rotated", role=role)
        return await self.create_token(role, ttl_seconds, max_uses)

    async def redeem(self, text: str) -> str:
        """Use one of a token's uses; return the certificate role it grants."""
        try:
            token = pki.parse_token(text)
        except pki.TokenError as exc:
            raise TokenRefused(str(exc)) from exc
        if token.ca_fingerprint != self.ca.fingerprint:
            raise TokenRefused("the join token is for another cluster (its CA hash differs)")
        token_id = token.secret_hash[:12]
        for _ in range(10):
            raw = await self.store.get_raw(JOIN_TOKENS, token_id)
            if raw is None:
                raise TokenRefused("the join token is not valid (unknown, or rotated)")
            record = JoinTokenRecord()
            record.ParseFromString(raw[0])
            if not pki.same_hash(record.secret_hash, token.secret_hash):
                raise TokenRefused("the join token is not valid (unknown, or rotated)")
            if record.HasField("expires_at") and record.expires_at.ToDatetime(
                tzinfo=dt.UTC
            ) < dt.datetime.now(dt.UTC):
                raise TokenRefused("the join token has expired")
            if record.max_uses and record.uses >= record.max_uses:
                raise TokenRefused("the join token is used up")
            record.uses += 1
            op = self.store.raw_op(JOIN_TOKENS, token_id, record.SerializeToString(),
                                   expect=raw[1])  # fmt: skip
            try:
                await self.store.commit([op])
            except Conflict:
                continue
            return TOKEN_ROLES[record.role]
        raise TokenRefused("the join token is busy; try again")

    # -- certificates --------------------------------------------------------

    async def issue(
        self, csr_pem: bytes, role: str, subject_id: str, hosts: list[str]
    ) -> NodeCertificate:
        csr_key = check_certificate_request(csr_pem, hosts)
        sans = pki.controller_sans(*hosts) if role == pki.CONTROLLER else [
            "127.0.0.1", "::1", "localhost", *[h for h in hosts if h]]  # fmt: skip
        cert = self.ca.issue(csr_key, role, subject_id, validity=self.node_validity, sans=sans)
        serial = format(cert.serial_number, "x")
        await self.store.put(
            ISSUED_CERTS, serial,
            IssuedCert(serial=serial, subject_id=subject_id, role=role,
                       not_after=_timestamp(cert.not_valid_after_utc)),
        )  # fmt: skip
        log.info("cert.issued", role=role, subject=subject_id, serial=serial,
                 not_after=cert.not_valid_after_utc.isoformat())  # fmt: skip
        return NodeCertificate(
            node_id=subject_id, role=role, cert_pem=pki.cert_pem(cert), ca_pem=self.ca.cert_pem,
            controllers=self._controllers(),
        )  # fmt: skip

    async def revoke_subject(self, subject_id: str, reason: str) -> list[str]:
        """Revoke every certificate issued to `subject_id`; return their serials."""
        issued, _ = await self.store.list_all(ISSUED_CERTS)
        serials = []
        for cert in issued:
            if cert.subject_id != subject_id:
                continue
            await self.store.put(
                REVOKED_CERTS, cert.serial,
                RevokedCert(serial=cert.serial, subject_id=subject_id, revoked_at=now_timestamp(),
                            not_after=cert.not_after, reason=reason),
            )  # fmt: skip
            self.revoked[cert.serial] = _expiry(cert.not_after)
            serials.append(cert.serial)
        log.info("cert.revoked", subject=subject_id, serials=serials, reason=reason)
        if serials:
            self.on_change()
        return serials

    def is_revoked(self, serial: str) -> bool:
        return serial in self.revoked

    def unexpired_revocations(self, now: float) -> list[str]:
        """The revoked serials whose certificates would still be valid at ``now`` (epoch
        seconds): what a party that checks certificates by itself must still refuse."""
        return sorted(serial for serial, expiry in self.revoked.items() if expiry > now)

    async def watch_revocations(self) -> None:
        """Keep `revoked` in step with etcd (other controllers revoke too)."""
        while True:
            try:
                records, revision = await self.store.list_all(REVOKED_CERTS)
                self.revoked = {r.serial: _expiry(r.not_after) for r in records}
                self.on_change()
                async for event in self.store.watch(REVOKED_CERTS, revision + 1):
                    if event.deleted:
                        self.revoked.pop(event.id, None)
                        self.on_change()
                    elif event.id not in self.revoked and event.value is not None:
                        self.revoked[event.id] = _expiry(event.value.not_after)
                        self.on_revoke(event.id, event.value.subject_id)
                        self.on_change()
            except (Compacted, StoreError) as exc:
                log.warning("ca.revocations_watch_failed", error=str(exc))
                await asyncio.sleep(1.0)


def _expiry(not_after: Timestamp) -> float:
    """A certificate's expiry in seconds since the epoch; unset counts as never."""
    return to_seconds(not_after) if is_set(not_after) else math.inf


MAX_HOSTS = 16
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\Z")


def check_certificate_request(csr_pem: bytes, hosts: list[str]) -> ec.EllipticCurvePublicKey:
    """The CSR's public key, once the CSR and the hosts (names or IPs, with or without a
    port) are valid; ValidationError naming the field otherwise. Checked before a join
    token is used, so a bad request costs the token nothing."""
    try:
        key = pki.load_csr_key(csr_pem)
    except pki.PKIError as exc:
        raise ValidationError("csr_pem", str(exc)) from exc
    if len(hosts) > MAX_HOSTS:
        raise ValidationError("hosts", f"at most {MAX_HOSTS} names, got {len(hosts)}")
    for index, text in enumerate(hosts):
        host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not _HOSTNAME.match(host):
                raise ValidationError(f"hosts[{index}]", f"not a host name or IP: {text[:80]!r}") \
                    from None
    return key


class NodeCAServicer(ca_pb2_grpc.NodeCAServicer):
    def __init__(self, ca: ClusterCA) -> None:
        self._ca = ca
        self._renewals = renewal_limiter(ca.node_validity.total_seconds())

    @grpc_errors
    async def IssueNodeCertificate(
        self, request: IssueNodeCertificateRequest, context: Context
    ) -> NodeCertificate:
        check_certificate_request(request.csr_pem, list(request.hosts))
        try:
            role = await self._ca.redeem(request.token)
        except TokenRefused as exc:
            log.warning("join.refused", peer=context.peer(), reason=str(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise AssertionError("unreachable") from exc
        # The controller names the node: a token holder cannot claim a node's ID.
        subject = secrets.token_hex(10)
        issued = await self._ca.issue(request.csr_pem, role, subject, list(request.hosts))
        log.info("join.accepted", peer=context.peer(), node_id=subject, role=role)
        return issued

    @grpc_errors
    async def RenewNodeCertificate(
        self, request: RenewNodeCertificateRequest, context: Context
    ) -> NodeCertificate:
        identity = peer_identity(context)
        if identity is None or identity.role not in (pki.NODE, pki.CONTROLLER):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "only a node renews its own certificate")  # fmt: skip
            raise AssertionError("unreachable")
        check_certificate_request(request.csr_pem, list(request.hosts))  # a bad one costs nothing
        await self._limit_renewals(identity.id, context)
        return await self._ca.issue(request.csr_pem, identity.role, identity.id,
                                    list(request.hosts))  # fmt: skip

    async def _limit_renewals(self, node_id: str, context: Context) -> None:
        """Refuse a renewal past the identity's rate (each one writes an issued record)."""
        wait = self._renewals.take(node_id)
        if wait > 0:
            log.warning("cert.renew_limited", node_id=node_id, retry_after=round(wait, 1))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node {node_id} renews too often: at most {self._renewals.burst} renewals "
                f"at once, then one every {self._renewals.interval:g} s; retry in {wait:.0f} s",
            )
