from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dockyard.agent.images.errors import InvalidReference
from dockyard.agent.images.reference import Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/ns/name:v1", "localhost:5000", "ns/name", "v1", None),
        ("registry.example.com/a/b/c", "registry.example.com", "a/b/c", "latest", None),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None),
        (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST),
        (f"host:1/app:t@{DIGEST}", "host:1", "app", "t", DIGEST),
        ("a__b/c-d--e.f_g", "docker.io", "a__b/c-d--e.f_g", "latest", None),
    ],
)
def test_valid(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == Reference(registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("busybox:" + "a" * 129, "129 characters"),
        ("busybox:-bad", "tag '-bad'"),
        ("busybox:a!b", "tag 'a!b'"),
        ("busybox@sha256:abc", "64 lowercase hex"),
        ("busybox@md5:" + "a" * 32, "64 lowercase hex"),
        ("a//b", "empty path component"),
        ("bad_-name", "may only contain"),
        ("-host.com/x", "not a valid hostname"),
        ("x/" + "a" * 260, "longer than 255"),
    ],
)
def test_invalid_says_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason.replace("!", "\\!")):
        parse_reference(text)


def test_familiar_and_str() -> None:
    ref = parse_reference("busybox")
    assert ref.familiar() == "busybox:latest"
    assert str(ref) == "docker.io/library/busybox:latest"
    assert parse_reference("user/app:1").familiar() == "user/app:1"
    local = parse_reference(f"localhost:5000/app@{DIGEST}")
    assert local.familiar() == f"localhost:5000/app@{DIGEST}"
    assert str(local) == f"localhost:5000/app@{DIGEST}"


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_host = st.sampled_from(
    ["", "localhost/", "localhost:5000/", "reg.example.com/", "127.0.0.1:5000/"]
)


@given(
    _host,
    st.lists(_component, min_size=1, max_size=3),
    st.none() | _tag,
    st.none() | st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True),
)
def test_roundtrip(host: str, parts: list[str], tag: str | None, digest: str | None) -> None:
    # a first component with '.' is a registry host by Docker's rules, not a path
    assume(host or len(parts) == 1 or "." not in parts[0])
    text = host + "/".join(parts) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar()) == ref
    assert ref.digest == digest
    assert ref.tag == (tag or (None if digest else "latest"))
