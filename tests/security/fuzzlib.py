"""What the gRPC fuzz tests share: hypothesis strategies that build request messages from
their protobuf descriptors (huge, unicode and control-character strings, extreme numbers,
unknown enum values, long repeated fields and maps), and the checks every answer passes.
"""

from __future__ import annotations

import base64
import json
import operator
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.common.etcd_pki import EtcdTLS

__all__ = [
    "ALLOWED",
    "FIELD_NAME",
    "MessageStrategies",
    "build_message",
    "check_answer",
    "edge_integers",
    "etcd_snapshot",
    "nasty_strings",
    "run_examples",
    "settle",
]

T = TypeVar("T")

ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAVAILABLE,
    }
)
"""Deliberate answers: never UNKNOWN or INTERNAL, which mean an unhandled error."""
FIELD_NAME = re.compile(r"^[a-z_][\w.\[\]]*: ")
MAX_DETAILS = 4096

_chars = st.characters(exclude_categories=("Cs",))  # proto3 strings are valid UTF-8
nasty_strings = st.one_of(
    st.text(_chars, max_size=40),
    st.text(st.characters(max_codepoint=0x1F), max_size=8),  # control characters only
    st.sampled_from(
        [
            "",
            " ",
            "a",
            "-",
            "web",
            "a\n",
            "\na",
            "a\x00b",
            "é",
            "名前",
            "a" * 63,
            "a" * 64,
            "a" * 129,
            "../../etc",
            "=",
            "a=b",
            "%s%n",
            "\u202e",
            "*",
        ]
    ),
    # huge: up to 40 000 characters, so a request with 50 of them stays under 4 MiB
    st.builds(
        operator.mul, st.sampled_from(["a", "é", "\x00", "=", "ab=", "\n"]), st.integers(0, 40_000)
    ),
)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def edge_integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], often at an edge (the bounds, 0, ±1, 2**16, 100 000)."""
    edges = [
        v for v in (low, high, -1, 0, 1, 2, 65535, 65536, 100_000, 100_001) if low <= v <= high
    ]
    return st.one_of(st.sampled_from(edges), st.integers(0, 5), st.integers(low, high))


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


class MessageStrategies:
    """Random messages of any type: each field unset or a random value, nested up to 6 deep.

    Args:
        hints: Values mixed into a string field's random ones, by field name: they get a
            request past the first checks, so the fuzzer reaches the later ones.
        fields: A field's whole strategy, by field name, instead of the generated one.
    """

    def __init__(
        self,
        hints: Mapping[str, Sequence[str]] | None = None,
        fields: Mapping[str, st.SearchStrategy[Any]] | None = None,
    ) -> None:
        self.hints = dict(hints or {})
        self.fields = dict(fields or {})
        self._made: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def scalar(self, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
        """Values of one scalar field (a repeated field's items)."""
        kind = fd.type
        if fd.name in self.fields:
            return self.fields[fd.name]
        if kind == FieldDescriptor.TYPE_STRING:
            hints = self.hints.get(fd.name)
            return st.one_of(st.sampled_from(hints), nasty_strings) if hints else nasty_strings
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            width = 64 if kind == FieldDescriptor.TYPE_DOUBLE else 32
            return st.one_of(st.floats(width=width), st.sampled_from([0.0, 1.0, -1.0, 1e300]))
        if kind == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown values too
            known = [v.number for v in fd.enum_type.values]
            return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
        low, high = _INT_RANGES[kind]
        return edge_integers(low, high)

    def _value(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.name not in self.fields:
            return self.message_of(fd.message_type, depth + 1)
        return self.scalar(fd)

    def message_of(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Random messages of the type `descriptor` describes."""
        key = (descriptor.full_name, depth)
        if key not in self._made:
            self._made[key] = self._make(descriptor, depth)
        return self._made[key]

    def _make(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        if depth > 6:
            return st.just(cls())
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for fd in descriptor.fields:
            if _is_map(fd):
                key_fd = fd.message_type.fields_by_name["key"]
                value_fd = fd.message_type.fields_by_name["value"]
                optional[fd.name] = st.dictionaries(
                    self.scalar(key_fd), self._value(value_fd, depth), max_size=50
                )
            elif fd.is_repeated:
                optional[fd.name] = st.lists(self._value(fd, depth), max_size=50)
            else:
                optional[fd.name] = self._value(fd, depth)
        return st.fixed_dictionaries({}, optional=optional).map(
            lambda values: build_message(cls, values)
        )


def build_message(cls: type[Message], values: Mapping[str, Any]) -> Message:
    """A message of `cls` with `values` by field name (lists, dicts and messages as such)."""
    msg = cls()
    for name, value in values.items():
        fd = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def check_answer(
    method: str,
    request: Message,
    code: grpc.StatusCode,
    details: str,
    max_bytes: int,
    allowed: frozenset[grpc.StatusCode] = ALLOWED,
) -> None:
    """The answer is deliberate, INVALID_ARGUMENT names the field, the message is short."""
    size = request.ByteSize()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert size > max_bytes, f"{method}: RESOURCE_EXHAUSTED for {size} bytes"
    else:
        assert code in allowed, f"{method} answered {code.name}: {details[:2000]}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert FIELD_NAME.match(details), f"{method}: the error names no field: {details!r}"
    assert len(details) <= MAX_DETAILS, f"{method}: a {len(details)}-character error message"


def run_examples(
    examples: int, check: Callable[..., None], **strategies: st.SearchStrategy[Any]
) -> None:
    """Call `check` with `examples` drawings of the keyword strategies."""

    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(**strategies)
    def run(**values: Any) -> None:
        check(**values)

    run()


def settle(snapshot: Callable[[], T], timeout: float, interval: float) -> T:
    """A snapshot once two in a row, `interval` apart, are the same (or the last one after
    `timeout`): background work an accepted request started has stopped changing things."""
    deadline = time.monotonic() + timeout
    before = snapshot()
    while time.monotonic() < deadline:
        time.sleep(interval)
        after = snapshot()
        if after == before:
            return after
        before = after
    return before


def etcd_snapshot(
    endpoint: str, prefix: str, exclude: Sequence[str] = (), tls: EtcdTLS | None = None
) -> dict[str, int]:
    """Every key under `prefix` with its mod revision, read with etcdctl (keys starting
    with one of `exclude`, written by the daemon's own loops, left out). `tls`: the
    client certificates of a controller's embedded etcd (`Cluster.etcd_tls`)."""
    result = subprocess.run(
        [
            "etcdctl",
            "--endpoints",
            endpoint,
            *(tls.etcdctl_args() if tls else []),
            "get",
            "--prefix",
            prefix,
            "--keys-only",
            "-w",
            "json",
        ],
        capture_output=True,
        text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        timeout=20,
        check=True,
    )
    keys = {}
    for kv in json.loads(result.stdout).get("kvs", []):
        key = base64.b64decode(kv["key"]).decode(errors="replace")
        if not key.startswith(tuple(exclude)):
            keys[key] = int(kv["mod_revision"])
    return keys
