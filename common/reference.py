"""Image references parsed by Docker's rules (github.com/distribution/reference).

`busybox` is `docker.io/library/busybox:latest`; the first path component is a
registry host when it contains '.' or ':', is 'localhost', or has uppercase letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


class InvalidReference(ValueError):
    """An image reference that Docker's rules refuse; the message says why."""


__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "InvalidReference",
    "Reference",
    "parse_reference",
    "pinned_digest",
]

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
LEGACY_REGISTRY = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A fully qualified image reference.

    Attributes:
        registry: Registry host, with port if any (`docker.io`, `localhost:5000`).
        repository: Repository path inside the registry (`library/busybox`).
        tag: Tag, or None when the reference only has a digest.
        digest: `sha256:<hex>` manifest digest, or None.
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def familiar_name(self) -> str:
        """The repository as docker prints it (`busybox`, `user/app`, `host:5000/x`)."""
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        prefix = OFFICIAL_NAMESPACE + "/"
        if self.repository.startswith(prefix) and "/" not in self.repository[len(prefix) :]:
            return self.repository[len(prefix) :]
        return self.repository

    def familiar(self) -> str:
        """Short docker form: `busybox:latest`, `localhost:5000/app@sha256:...`."""
        return self.familiar_name() + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        """A copy with `tag` and no digest."""
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """A copy pinned to `digest` (the tag is kept for display)."""
        return replace(self, digest=digest)

    def _suffix(self) -> str:
        text = f":{self.tag}" if self.tag else ""
        return text + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str) -> Reference:
    """Parse an image reference the way `docker pull` does.

    Args:
        text: `[registry/][namespace/]name[:tag][@sha256:<64 hex>]`.

    Returns:
        The normalized reference (tag `latest` when neither tag nor digest is given).

    Raises:
        InvalidReference: the text is empty or breaks a rule; the message says which.
    """
    if not text:
        raise InvalidReference("invalid reference format: the reference is empty")
    remainder, digest = _split_digest(text)
    remainder, tag = _split_tag(text, remainder)
    registry, repository = _split_domain(remainder)
    _check_repository(text, repository)
    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        raise InvalidReference(
            f"invalid reference format: repository name {text!r} is longer than "
            f"{MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def pinned_digest(image: str) -> str:
    """The manifest digest an image reference pins (`name@sha256:...`), or ""."""
    if "@" not in image:
        return ""
    try:
        return parse_reference(image).digest or ""
    except InvalidReference:
        return ""


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    remainder, digest = text.split("@", 1)
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidReference(
            f"invalid reference format: digest {digest!r} in {text!r} is not "
            "'sha256:' followed by 64 lowercase hex digits"
        )
    return remainder, digest


def _split_tag(text: str, remainder: str) -> tuple[str, str | None]:
    colon = remainder.rfind(":")
    if colon == -1 or "/" in remainder[colon + 1 :]:
        return remainder, None
    tag = remainder[colon + 1 :]
    if len(tag) > 128:
        raise InvalidReference(
            f"invalid reference format: tag in {text!r} is {len(tag)} characters long (at most 128)"
        )
    if not _TAG_RE.fullmatch(tag):
        raise InvalidReference(
            f"invalid reference format: tag {tag!r} in {text!r} must start with a "
            "letter, digit or '_' and contain only letters, digits, '_', '.' and '-'"
        )
    return remainder[:colon], tag


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    is_domain = sep and (
        any(c in first for c in ".:") or first == "localhost" or first.lower() != first
    )
    if not is_domain:
        repository = name if "/" in name else f"{OFFICIAL_NAMESPACE}/{name}"
        return DEFAULT_REGISTRY, repository
    if not _DOMAIN_RE.fullmatch(first):
        raise InvalidReference(
            f"invalid reference format: registry host {first!r} is not a valid hostname[:port]"
        )
    if first == LEGACY_REGISTRY:
        first = DEFAULT_REGISTRY
    if first == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"{OFFICIAL_NAMESPACE}/{rest}"
    return first, rest


def _check_repository(text: str, repository: str) -> None:
    for component in repository.split("/"):
        if not component:
            raise InvalidReference(
                f"invalid reference format: {text!r} has an empty path component"
            )
        if _PATH_COMPONENT_RE.fullmatch(component):
            continue
        if _PATH_COMPONENT_RE.fullmatch(component.lower()):
            raise InvalidReference(
                f"invalid reference format: repository name {repository!r} must be lowercase"
            )
        raise InvalidReference(
            f"invalid reference format: repository path component {component!r} in "
            f"{text!r} may only contain lowercase letters, digits and separators "
            "('.', '_', '__', '-') between them"
        )
