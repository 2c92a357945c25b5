"""The PKI helpers without a cluster: roles in certificates, CSRs, tokens."""

from __future__ import annotations

import datetime as dt

import pytest

from dockyard.common import pki
from dockyard.common.authz import allowed


def test_a_signed_csr_gets_the_cas_subject_not_its_own() -> None:
    ca = pki.CertificateAuthority.create()
    key = pki.new_key()
    cert = ca.sign_csr(
        pki.make_csr(key, "somebody-else"), pki.NODE, "n123", validity=dt.timedelta(days=90)
    )
    identity = pki.identity_of(pki.cert_pem(cert))
    assert (identity.role, identity.id) == (pki.NODE, "n123")
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90)
    assert len(ca.fingerprint) == 64 and ca.fingerprint == pki.fingerprint(ca.cert_pem)


def test_tokens_pin_the_ca_and_keep_only_a_hash() -> None:
    ca = pki.CertificateAuthority.create()
    token = pki.JoinToken.new(ca.fingerprint)
    parsed = pki.parse_token(str(token))
    assert parsed == token and str(token).startswith(f"DYTKN-1-{ca.fingerprint}-")
    assert token.secret not in token.secret_hash
    for bad in ("", "DYTKN-1-abc-def", "TOKEN", f"DYTKN-1-{'z' * 64}-x"):
        with pytest.raises(pki.TokenError):
            pki.parse_token(bad)


def test_roles_map_to_methods() -> None:
    node = pki.Identity(pki.NODE, "n1", "1")
    viewer = pki.Identity(pki.READ_ONLY, "v", "2")
    admin = pki.Identity(pki.ADMIN, "a", "3")
    assert allowed(node, "/dockyard.v1.Dispatcher/Session")
    assert not allowed(node, "/dockyard.v1.Control/ListNodes")
    assert allowed(viewer, "/dockyard.v1.Control/ListNodes")
    assert allowed(viewer, "/dockyard.v1.Control/GetInfo")
    assert not allowed(viewer, "/dockyard.v1.Control/UpdateNode")
    assert not allowed(viewer, "/dockyard.v1.Control/ListJoinTokens")
    assert not allowed(viewer, "/dockyard.v1.Dispatcher/Session")
    assert allowed(admin, "/dockyard.v1.Control/RotateJoinTokens")
