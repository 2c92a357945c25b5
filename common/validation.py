"""Checks on names and labels shared by the CLI (early, friendly errors) and the
controller (the authority: nothing unchecked reaches etcd)."""

from __future__ import annotations

import ipaddress
import re

# \Z, not $: `$` also matches before a trailing newline, which let "web\n" through.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
LABEL_KEY_PATTERN = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_./-]{0,126}[a-zA-Z0-9])?\Z")
MAX_LABEL_VALUE = 256
MAX_LABELS = 64
# A reference (ID, ID prefix or name) is at most a 64-character node ID.
MAX_REF_LENGTH = 128
# Docker's rule for container names (without the leading slash), capped at 128: the CLI
# and the agent check the same one.
CONTAINER_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}\Z")
# Named volumes (the agent's, a service's --mount type=volume): Docker's volume names.
VOLUME_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}\Z")
# Mounts of one container, and the largest tmpfs: the controller and the agent agree.
MAX_MOUNTS = 64
MAX_TMPFS_BYTES = 1 << 40
# setrlimit's resources by Docker's names (`--ulimit nofile=...`).
ULIMIT_NAMES = frozenset(
    {
        "as",
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)
# The namespaced sysctls a container may set (`--sysctl`): Docker's list.
SYSCTL_KEY_PATTERN = re.compile(r"(kernel\.(msg|sem|shm)\w*|fs\.mqueue\.[\w.]+|net\.[\w.\-/]+)\Z")


class ValidationError(ValueError):
    """A request field is wrong. `field` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_name(field: str, name: str) -> str:
    if not name:
        raise ValidationError(field, "must not be empty")
    if not NAME_PATTERN.match(name):
        raise ValidationError(
            field,
            f"invalid name {name!r}: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    return name


def check_ref(field: str, ref: str) -> str:
    """A reference to a node, service or task: an ID, a unique ID prefix or a name."""
    if not ref:
        raise ValidationError(field, "must not be empty")
    if len(ref) > MAX_REF_LENGTH:
        raise ValidationError(field, f"a reference is at most {MAX_REF_LENGTH} characters")
    return ref


def check_label_key(field: str, key: str) -> str:
    if not key:
        raise ValidationError(field, "label key must not be empty")
    if not LABEL_KEY_PATTERN.match(key):
        raise ValidationError(
            field,
            f"invalid label key {key!r}: use up to 128 letters, digits, '_', '.', '/' or '-', "
            "starting and ending with a letter or digit",
        )
    return key


def check_label_value(field: str, key: str, value: str) -> str:
    if len(value) > MAX_LABEL_VALUE:
        raise ValidationError(field, f"label {key!r}: value longer than {MAX_LABEL_VALUE} chars")
    if any(ord(ch) < 32 for ch in value):
        raise ValidationError(field, f"label {key!r}: value contains a control character")
    return value


def check_labels(field: str, labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValidationError(field, f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        check_label_key(field, key)
        check_label_value(field, key, value)
    return labels


def parse_label(field: str, text: str) -> tuple[str, str]:
    """`key=value` or bare `key` (empty value), as `docker node update --label-add`."""
    key, _, value = text.partition("=")
    if not key:
        raise ValidationError(field, f"malformed label {text!r}: the key before '=' is empty")
    return check_label_key(field, key), check_label_value(field, key, value)


def check_subnet(text: str) -> ipaddress.IPv4Network:
    """An IPv4 network (``10.87.0.0/16``) of /8 to /29 that a bridge can use.

    Raises:
        ValueError: it is not one.
    """
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"bridge subnet {text!r}: {exc} (expected e.g. 10.87.0.0/16)") from None
    if not 8 <= network.prefixlen <= 29:
        raise ValueError(f"bridge subnet {text}: the prefix must be between /8 and /29")
    if (
        network.is_loopback
        or network.is_multicast
        or network.is_link_local
        or (network.is_unspecified or network.is_reserved)
    ):
        raise ValueError(f"bridge subnet {text}: not a usable unicast range")
    return network
