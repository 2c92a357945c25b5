"""The cluster's PKI: a CA on EC P-256, certificates that carry a role, join tokens.

Every certificate names its holder in the subject: the node, user or controller
ID in CN and the role in OU (`admin`, `read-only`, `node`, `controller`), so the
controller can authorize a call from the peer certificate alone. gRPC's TLS
needs ECDSA or RSA keys, hence P-256 everywhere.

Every certificate also carries its role as a DNS name (`dockyard-controller`,
`dockyard-node`, ...; `role_host`), which only the CA puts there and only in that
role's certificates. A client that needs a controller (an agent's session and
renewal, a join, the CLI) checks the server's certificate for
`dockyard-controller` rather than for the address it dialled, as swarmkit's
agents check for `swarm-manager`: a node's certificate, whatever addresses it
names, is refused where a controller is expected.

A join token is `DYTKN-1-<sha256 of the CA's DER, hex>-<secret>`: the first part
lets a joining host check that it talks to the right cluster before it trusts
anything; only a hash of the secret is kept by the controller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockyard.common.statedir import write_private

__all__ = [
    "ADMIN",
    "CA_VALIDITY",
    "CLIENT_VALIDITY",
    "CONTROLLER",
    "CONTROLLER_TLS_NAME",
    "NODE",
    "NODE_VALIDITY",
    "READ_ONLY",
    "ROLES",
    "TOKEN_PREFIX",
    "CertificateAuthority",
    "Identity",
    "JoinToken",
    "PKIError",
    "TokenError",
    "cert_pem",
    "controller_sans",
    "fingerprint",
    "hash_secret",
    "identity_of",
    "key_pem",
    "load_cert",
    "load_csr_key",
    "load_key",
    "make_csr",
    "new_key",
    "parse_token",
    "role_host",
    "same_hash",
]

ADMIN = "admin"
READ_ONLY = "read-only"
NODE = "node"
CONTROLLER = "controller"
ROLES = (ADMIN, READ_ONLY, NODE, CONTROLLER)
TOKEN_PREFIX = "DYTKN-1-"
NODE_VALIDITY = dt.timedelta(days=90)
CA_VALIDITY = dt.timedelta(days=3650)
CLIENT_VALIDITY = dt.timedelta(days=365)
_CLOCK_SKEW = dt.timedelta(minutes=5)


def role_host(role: str) -> str:
    """The DNS name every certificate of ``role`` carries (and no other certificate)."""
    return f"dockyard-{role}"


CONTROLLER_TLS_NAME = role_host(CONTROLLER)
"""What a client checks a controller's certificate for (``grpc.ssl_target_name_override``)."""
_ROLE_HOSTS = frozenset(role_host(role) for role in ROLES)


class PKIError(Exception):
    """A certificate, key or CSR that cannot be used."""


class TokenError(PKIError):
    """A join token that is malformed."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for."""

    role: str
    id: str
    serial: str  # hex


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("expected an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from exc


def fingerprint(pem: bytes) -> str:
    """The sha256 of the certificate's DER, as lowercase hex."""
    der = load_cert(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def identity_of(cert: x509.Certificate | bytes) -> Identity:
    """Role (OU) and ID (CN) of a certificate this CA issued."""
    if isinstance(cert, bytes):
        cert = load_cert(cert)
    subject = cert.subject
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not cn or not ou or str(ou[0].value) not in ROLES:
        raise PKIError("certificate has no dockyard role (OU) or id (CN)")
    return Identity(str(ou[0].value), str(cn[0].value), format(cert.serial_number, "x"))


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "pending") -> bytes:
    """A PEM CSR; the CA decides the subject, so the CN is only a hint."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a signed CSR (the subject is the CA's to choose, not the CSR's)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PKIError(f"csr: not a PEM certificate request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PKIError("csr: the signature does not match its key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PKIError("csr: expected an EC P-256 key")
    return public_key


def controller_sans(*addresses: str) -> list[str]:
    """127.0.0.1, ::1, localhost, this host's name and the hosts of `addresses`."""
    names = ["127.0.0.1", "::1", "localhost", socket.gethostname()]
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]") if address else ""
        if host and host not in ("0.0.0.0", "::") and host not in names:
            names.append(host)
    return names


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


class CertificateAuthority:
    """The cluster CA: its certificate and private key, in memory."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, cluster_name: str = "dockyard") -> CertificateAuthority:
        key = new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert: bytes, key: bytes) -> CertificateAuthority:
        return cls(load_cert(cert), load_key(key))

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        return cls.from_pem(
            (directory / "ca.pem").read_bytes(), (directory / "ca-key.pem").read_bytes()
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.pem").write_bytes(self.cert_pem)
        write_private(directory / "ca-key.pem", key_pem(self.key))

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        role: str,
        subject_id: str,
        *,
        validity: dt.timedelta = NODE_VALIDITY,
        sans: list[str] | None = None,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A certificate for `subject_id` (CN) in `role` (OU), signed by this CA.

        Every certificate is good for both TLS ends: a controller's is its server
        certificate and also what it presents to another controller. Its SANs are
        `role_host(role)` and then `sans`; another role's name in `sans` is a PKIError.
        """
        if role not in ROLES:
            raise PKIError(f"unknown role {role!r}")
        names = [role_host(role)]
        for name in sans or []:
            if name.lower() in _ROLE_HOSTS and name.lower() != role_host(role):
                raise PKIError(
                    f"{name!r} names a role: only a {name.lower()[9:]} certificate carries it"
                )
            if name.lower() not in names:
                names.append(name)
        now = dt.datetime.now(dt.UTC)
        start = not_before or now - min(_CLOCK_SKEW, validity / 10)
        end = (not_before + validity) if not_before else now + validity
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                        x509.NameAttribute(NameOID.COMMON_NAME, subject_id),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_san_entries(names)), critical=False
        )
        return builder.sign(self.key, hashes.SHA256())

    def sign_csr(
        self, csr_pem: bytes, role: str, subject_id: str, *, validity: dt.timedelta = NODE_VALIDITY
    ) -> x509.Certificate:
        """Sign a CSR's public key; the subject is ours to choose, not the CSR's."""
        return self.issue(load_csr_key(csr_pem), role, subject_id, validity=validity)

    def issue_pair(
        self,
        role: str,
        subject_id: str,
        *,
        validity: dt.timedelta = CLIENT_VALIDITY,
        sans: list[str] | None = None,
        not_before: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A new key and its certificate, both PEM (for identities made on this host)."""
        key = new_key()
        cert = self.issue(
            key.public_key(), role, subject_id, validity=validity, sans=sans, not_before=not_before
        )
        return cert_pem(cert), key_pem(key)


@dataclass(frozen=True)
class JoinToken:
    ca_fingerprint: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}{self.ca_fingerprint}-{self.secret}"

    @classmethod
    def new(cls, ca_fingerprint: str) -> JoinToken:
        return cls(ca_fingerprint, secrets.token_hex(16))

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def parse_token(text: str) -> JoinToken:
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(f"a join token starts with {TOKEN_PREFIX}")
    parts = text[len(TOKEN_PREFIX) :].split("-")
    if len(parts) != 2 or len(parts[0]) != 64 or not parts[1]:
        raise TokenError("a join token is DYTKN-1-<CA sha256, 64 hex digits>-<secret>")
    fp, secret = parts
    try:
        int(fp, 16)
    except ValueError as exc:
        raise TokenError("the CA fingerprint in the join token is not hex") from exc
    return JoinToken(fp.lower(), secret)


def hash_secret(secret: str) -> str:
    """What the controller keeps of a token's secret (sha256 hex; secrets are random)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
