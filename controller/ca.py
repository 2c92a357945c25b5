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
from cryptography import x509
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
    REMOVED_SUBJECTS,
    REVOKED_CERTS,
    ROOT_CA,
    AlreadyExists,
    Compacted,
    Conflict,
    NotFound,
    Store,
    StoreError,
)
from dockyard.controller.subnets import host_of_peer
from dockyard.v1 import ca_pb2_grpc
from dockyard.v1.ca_pb2 import (
    IssueNodeCertificateRequest,
    ListCertificatesRequest,
    ListCertificatesResponse,
    NodeCertificate,
    RenewNodeCertificateRequest,
    RevokeCertificateRequest,
    RevokeCertificateResponse,
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


class SubjectRemoved(Exception):
    """A certificate asked for a node (or controller) that was removed from the cluster."""


def pki_dir(state_dir: Path) -> Path:
    return state_dir / PKI_DIR


def has_ca(state_dir: Path) -> bool:
    return (pki_dir(state_dir) / "ca.pem").exists() and (pki_dir(state_dir) / "ca-key.pem").exists()


async def publish_ca(store: Store, ca: pki.CertificateAuthority) -> None:
    """Make `ca` the cluster's CA in etcd, or check that it already is."""
    record = RootCA(cert_pem=ca.cert_pem, key_pem=pki.key_pem(ca.key), fingerprint=ca.fingerprint)
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
        """Called for every revocation, here or by another controller (serial, subject)."""
        self.on_change: Callable[[], None] = lambda: None
        """Called whenever the revoked set changes, here or elsewhere."""

    # -- tokens --------------------------------------------------------------

    async def create_token(
        self, role: str, ttl_seconds: float, max_uses: int
    ) -> tuple[str, JoinTokenRecord]:
        check_token_request(role, ttl_seconds, max_uses)
        token = pki.JoinToken.new(self.ca.fingerprint)
        record = JoinTokenRecord(
            id=token.secret_hash[:12],
            role=role,
            secret_hash=token.secret_hash,
            created_at=now_timestamp(),
            max_uses=max_uses,
        )
        if ttl_seconds:
            record.expires_at.CopyFrom(
                _timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_seconds))
            )
        await self.store.create(JOIN_TOKENS, record.id, record)
        log.info("token.created", token_id=record.id, role=role, ttl=ttl_seconds, max_uses=max_uses)
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

    async def token_role(self, text: str) -> str | None:
        """The certificate role a token would grant, without using it; None if it is
        not a valid token (`redeem` then says why)."""
        try:
            token = pki.parse_token(text)
        except pki.TokenError:
            return None
        raw = await self.store.get_raw(JOIN_TOKENS, token.secret_hash[:12])
        if raw is None:
            return None
        record = JoinTokenRecord()
        record.ParseFromString(raw[0])
        if not pki.same_hash(record.secret_hash, token.secret_hash):
            return None
        return TOKEN_ROLES.get(record.role)

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
            op = self.store.raw_op(JOIN_TOKENS, token_id, record.SerializeToString(), expect=raw[1])
            try:
                await self.store.commit([op])
            except Conflict:
                continue
            return TOKEN_ROLES[record.role]
        raise TokenRefused("the join token is busy; try again")

    # -- certificates --------------------------------------------------------

    async def issue(
        self, csr_pem: bytes, role: str, subject_id: str, hosts: list[str], observed: str = ""
    ) -> NodeCertificate:
        """Sign the CSR for `subject_id` in `role` and record it; the controllers to use.

        A node's certificate names what the controller vouches for: the node's ID,
        loopback and `observed` (the address the request came from); `hosts` may only
        repeat those. No certificate is issued to a removed subject: the record is
        written in one transaction with the check that the subject was not removed,
        so a renewal racing with `node rm` is either refused or seen (and revoked) by it.
        """
        csr_key = check_certificate_request(csr_pem, hosts)
        sans = (
            pki.controller_sans(*hosts)
            if role == pki.CONTROLLER
            else node_sans(subject_id, hosts, observed)
        )
        cert = self.ca.issue(csr_key, role, subject_id, validity=self.node_validity, sans=sans)
        serial = format(cert.serial_number, "x")
        try:
            await self.store.commit(
                [
                    self.store.check_op(REMOVED_SUBJECTS, subject_id, 0),
                    self.store.put_op(ISSUED_CERTS, serial, _issued_record(cert), expect=None),
                ]
            )
        except Conflict as exc:
            log.warning("cert.refused_removed", role=role, subject=subject_id)
            raise SubjectRemoved(
                f"{role} {subject_id} was removed from the cluster: its "
                "certificates are revoked and none is issued again"
            ) from exc
        log.info(
            "cert.issued",
            role=role,
            subject=subject_id,
            serial=serial,
            sans=sans,
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        return NodeCertificate(
            node_id=subject_id,
            role=role,
            cert_pem=pki.cert_pem(cert),
            ca_pem=self.ca.cert_pem,
            controllers=self._controllers(),
        )

    async def record(self, cert_pem: bytes) -> bool:
        """Record a certificate this CA issued elsewhere (a controller's own, `init`'s,
        `user create`'s), so it can be listed and revoked; False if it was already."""
        cert = pki.load_cert(cert_pem)
        if cert.issuer != self.ca.cert.subject:
            return False
        try:
            pki.identity_of(cert)
        except pki.PKIError:
            return False
        serial = format(cert.serial_number, "x")
        try:
            await self.store.create(ISSUED_CERTS, serial, _issued_record(cert))
        except AlreadyExists:
            return False
        return True

    async def record_offline(self, state_dir: Path) -> int:
        """Record the certificates `init` and `user create` wrote under the state dir;
        how many were new."""
        recorded = 0
        for path in offline_certificates(pki_dir(state_dir)):
            try:
                recorded += await self.record(path.read_bytes())
            except (OSError, pki.PKIError) as exc:
                log.warning("cert.record_failed", path=str(path), error=str(exc))
        if recorded:
            log.info("cert.recorded", count=recorded, state_dir=str(state_dir))
        return recorded

    async def certificates(self) -> tuple[list[IssuedCert], list[RevokedCert]]:
        """Every recorded certificate and the revocation list."""
        issued, _ = await self.store.list_all(ISSUED_CERTS)
        revoked, _ = await self.store.list_all(REVOKED_CERTS)
        return issued, revoked

    async def revoke_subject(self, subject_id: str, reason: str) -> list[str]:
        """Remove `subject_id` from the cluster: no certificate is issued to it again,
        and every certificate issued to it is revoked; return their serials."""
        await self.store.put(
            REMOVED_SUBJECTS,
            subject_id,
            RevokedCert(subject_id=subject_id, revoked_at=now_timestamp(), reason=reason),
        )
        # Listed after the mark: a certificate recorded before it is in this list, one
        # after it was refused (`issue`).
        issued, _ = await self.store.list_all(ISSUED_CERTS)
        serials = [cert.serial for cert in issued if cert.subject_id == subject_id]
        for cert in issued:
            if cert.subject_id == subject_id:
                await self._revoke(cert, reason)
        log.info("cert.revoked", subject=subject_id, serials=serials, reason=reason)
        if serials:
            self.on_change()
        return serials

    async def revoke_serial(self, serial: str, reason: str) -> RevokedCert:
        """Revoke one recorded certificate by its serial (hex)."""
        serial = serial.strip().lower().removeprefix("0x")
        if not serial or len(serial) > 40 or any(c not in "0123456789abcdef" for c in serial):
            raise ValidationError("serial", f"not a certificate serial (hex): {serial[:64]!r}")
        try:
            cert = await self.store.get(ISSUED_CERTS, serial)
        except NotFound:
            raise NotFound(
                f"no certificate with serial {serial} was issued by this cluster "
                "(see `dockyard-controller cert ls`)"
            ) from None
        record = await self._revoke(cert, reason or "revoked by an admin")
        log.info(
            "cert.revoked",
            subject=cert.subject_id,
            role=cert.role,
            serials=[serial],
            reason=record.reason,
        )
        self.on_change()
        return record

    async def _revoke(self, cert: IssuedCert, reason: str) -> RevokedCert:
        record = RevokedCert(
            serial=cert.serial,
            subject_id=cert.subject_id,
            revoked_at=now_timestamp(),
            not_after=cert.not_after,
            reason=reason,
        )
        await self.store.put(REVOKED_CERTS, cert.serial, record)
        self.revoked[cert.serial] = _expiry(cert.not_after)
        self.on_revoke(cert.serial, cert.subject_id)
        return record

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
                async for event in self.store.watch(REVOKED_CERTS, revision):
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


def _issued_record(cert: x509.Certificate) -> IssuedCert:
    identity = pki.identity_of(cert)
    return IssuedCert(
        serial=identity.serial,
        subject_id=identity.id,
        role=identity.role,
        not_after=_timestamp(cert.not_valid_after_utc),
    )


def offline_certificates(directory: Path) -> list[Path]:
    """The certificates `init`, `join` and `user create` wrote under a state dir's pki/."""
    found = [directory / "admin" / "cert.pem", directory / "controller.pem"]
    found += sorted(directory.glob("users/*/cert.pem")) + sorted(directory.glob("issued/*.pem"))
    return [path for path in found if path.is_file()]


def node_sans(node_id: str, hosts: list[str], observed: str) -> list[str]:
    """The SANs of a node's certificate: its ID, loopback and the address the controller
    saw the request come from. A requested host that is none of these is refused: the
    controller cannot vouch for it (a node that named a controller's address could
    otherwise pass for it wherever only the address is checked)."""
    names = [node_id, *LOOPBACK]
    seen = _plain_ip(observed)
    if seen is not None:
        names.append(str(seen))
    for index, text in enumerate(hosts):
        host = _host_part(text)
        ip = _plain_ip(host)
        if host.lower() in names or (ip is not None and (ip == seen or ip.is_loopback)):
            continue
        raise ValidationError(
            f"hosts[{index}]",
            f"{text[:80]!r} is not the address this request came from "
            f"({seen or 'unknown'}): a node certificate names only the node's ID, loopback "
            "and the address the controller sees it connect from",
        )
    return names


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _host_part(text: str) -> str:
    """The host of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("[") and "]" in text:
        return text[1 : text.index("]")]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, an IPv4-mapped IPv6 one as IPv4; None for a name or nothing."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


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
        host = _host_part(text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not _HOSTNAME.match(host):
                raise ValidationError(
                    f"hosts[{index}]", f"not a host name or IP: {text[:80]!r}"
                ) from None
    return key


class NodeCAServicer(ca_pb2_grpc.NodeCAServicer):
    """Args:
    state_dir: the controller's state dir, whose offline-made certificates (`init`,
        `user create`) are recorded before they are listed or revoked.
    """

    def __init__(self, ca: ClusterCA, state_dir: Path | None = None) -> None:
        self._ca = ca
        self._renewals = renewal_limiter(ca.node_validity.total_seconds())
        self._state_dir = state_dir

    @grpc_errors
    async def IssueNodeCertificate(
        self, request: IssueNodeCertificateRequest, context: Context
    ) -> NodeCertificate:
        hosts, observed = list(request.hosts), host_of_peer(context.peer())
        check_certificate_request(request.csr_pem, hosts)
        if await self._ca.token_role(request.token) == pki.NODE:
            node_sans("pending", hosts, observed)  # refused before a use of the token is spent
        try:
            role = await self._ca.redeem(request.token)
        except TokenRefused as exc:
            log.warning("join.refused", peer=context.peer(), reason=str(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise AssertionError("unreachable") from exc
        # The controller names the node: a token holder cannot claim a node's ID.
        subject = secrets.token_hex(10)
        issued = await self._ca.issue(request.csr_pem, role, subject, hosts, observed)
        log.info("join.accepted", peer=context.peer(), node_id=subject, role=role)
        return issued

    @grpc_errors
    async def RenewNodeCertificate(
        self, request: RenewNodeCertificateRequest, context: Context
    ) -> NodeCertificate:
        identity = peer_identity(context)
        if identity is None or identity.role not in (pki.NODE, pki.CONTROLLER):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only a node renews its own certificate"
            )
            raise AssertionError("unreachable")
        check_certificate_request(request.csr_pem, list(request.hosts))  # a bad one costs nothing
        await self._limit_renewals(identity.id, context)
        try:
            return await self._ca.issue(
                request.csr_pem,
                identity.role,
                identity.id,
                list(request.hosts),
                host_of_peer(context.peer()),
            )
        except SubjectRemoved as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise AssertionError("unreachable") from exc

    @grpc_errors
    async def ListCertificates(
        self, request: ListCertificatesRequest, context: Context
    ) -> ListCertificatesResponse:
        if self._state_dir is not None:
            await self._ca.record_offline(self._state_dir)
        issued, revoked = await self._ca.certificates()
        return ListCertificatesResponse(issued=issued, revoked=revoked)

    @grpc_errors
    async def RevokeCertificate(
        self, request: RevokeCertificateRequest, context: Context
    ) -> RevokeCertificateResponse:
        if self._state_dir is not None:
            await self._ca.record_offline(self._state_dir)
        identity = peer_identity(context)
        by = f"{identity.role} {identity.id}" if identity is not None else "unknown"
        revoked = await self._ca.revoke_serial(
            request.serial, request.reason[:200] or f"revoked by {by}"
        )
        return RevokeCertificateResponse(revoked=revoked)

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
