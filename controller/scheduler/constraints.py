"""Placement constraints and preferences: parsing, validation and matching.

A constraint is `KEY==VALUE` or `KEY!=VALUE`, with KEY one of `node.id`,
`node.hostname`, `node.name`, `node.role`, `node.platform.os`,
`node.platform.arch` or `node.labels.<label>` (swarmkit's `constraint.go`).
Values compare case-insensitively, as swarmkit does; a node without the label
fails `==` and passes `!=`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Placement, PlacementPreference

__all__ = [
    "LABEL_PREFIX",
    "Constraint",
    "ConstraintError",
    "check_placement",
    "node_label",
    "parse_constraint",
    "parse_constraints",
    "spread_label",
]

LABEL_PREFIX = "node.labels."
_OPERATORS = ("==", "!=")
_NODE_KEYS = frozenset(
    {"node.id", "node.hostname", "node.name", "node.role", "node.platform.os", "node.platform.arch"}
)
_LABEL_KEY = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_./-]*[a-zA-Z0-9])?$")
# swarmkit's value pattern: no '=' or '!', so `a==b==c` is refused, not misread.
_VALUE = re.compile(r"^[a-zA-Z0-9:\-_\s.*()?+\[\]\\^$|/@]+$")
# Agents report what the kernel says; constraints use OCI names.
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
# Every Dockyard node is a worker: controllers are not nodes.
_ROLE = "worker"


class ConstraintError(ValueError):
    """A placement constraint or preference is malformed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """One parsed constraint: `key` is lower-case for node fields, the label key as written."""

    text: str
    key: str
    equal: bool
    value: str

    @property
    def operator(self) -> str:
        return "==" if self.equal else "!="

    def matches(self, node: Node) -> bool:
        """Whether `node` satisfies this constraint."""
        actual = self._actual(node)
        if actual is None:  # a missing label: == fails, != holds
            return not self.equal
        same = actual.casefold() == self.value.casefold()
        return same if self.equal else not same

    def _actual(self, node: Node) -> str | None:
        key = self.key
        if key.startswith(LABEL_PREFIX):
            return node_label(node, key[len(LABEL_PREFIX) :])
        if key == "node.id":
            return node.id
        if key == "node.hostname":
            return node.description.hostname
        if key == "node.name":
            return node.spec.name
        if key == "node.role":
            return _ROLE
        if key == "node.platform.os":
            return node.description.platform.os
        arch = node.description.platform.architecture
        return _ARCH_ALIASES.get(arch, arch)


def node_label(node: Node, label: str) -> str | None:
    """The node's label value, or None when it does not have the label."""
    labels = node.spec.labels
    return labels.get(label)


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint, raising ConstraintError that names it and what is wrong."""
    for operator in _OPERATORS:
        key, found, value = text.partition(operator)
        if found:
            break
    else:
        raise ConstraintError(f"constraint {text!r} needs == or !=")
    key, value = key.strip(), value.strip()
    if not key:
        raise ConstraintError(f"constraint {text!r} needs a key before {operator}")
    if key.lower().startswith(LABEL_PREFIX):
        label = key[len(LABEL_PREFIX) :]
        if not label:
            raise ConstraintError(f"constraint {text!r} needs a label name after {LABEL_PREFIX!r}")
        if not _LABEL_KEY.match(label):
            raise ConstraintError(f"invalid label key {label!r} in constraint {text!r}")
        key = LABEL_PREFIX + label
    elif key.lower() in _NODE_KEYS:
        key = key.lower()
    else:
        raise ConstraintError(f"unknown constraint key {key!r} in {text!r}")
    if not value:
        raise ConstraintError(f"constraint {text!r} needs a value after {operator}")
    if not _VALUE.match(value):
        raise ConstraintError(f"invalid value {value!r} in constraint {text!r}")
    return Constraint(text=text.strip(), key=key, equal=operator == "==", value=value)


def parse_constraints(texts: Iterable[str]) -> list[Constraint]:
    """Parse every constraint; the first malformed one raises ConstraintError."""
    return [parse_constraint(text) for text in texts]


def spread_label(preference: PlacementPreference) -> str:
    """The label a `spread=node.labels.KEY` preference balances over (KEY)."""
    descriptor = preference.spread.strip()
    if not descriptor:
        raise ConstraintError("placement preference needs spread=node.labels.<key>")
    if not descriptor.lower().startswith(LABEL_PREFIX):
        raise ConstraintError(
            f"placement preference spread={descriptor!r} must be node.labels.<key>"
        )
    label = descriptor[len(LABEL_PREFIX) :]
    if not _LABEL_KEY.match(label):
        raise ConstraintError(
            f"placement preference spread={descriptor!r} has an invalid label key {label!r}"
        )
    return label


def check_placement(placement: Placement) -> None:
    """Validate a service's placement (for the API): raise ConstraintError when wrong."""
    parse_constraints(placement.constraints)
    for preference in placement.preferences:
        spread_label(preference)
    if placement.max_replicas_per_node < 0:
        raise ConstraintError(
            f"max_replicas_per_node must not be negative, got {placement.max_replicas_per_node}"
        )
