"""Just the printed fields of a protobuf message, read straight from its wire format.

The fast path (`cli/fast.py`) prints `dockyard -H AGENT ps` from a few fields of each
container; loading the protobuf runtime and the generated stubs to read them costs more
than the rest of the command. `decode` reads a message with a `Schema` (field number ->
name and type) into plain objects whose attributes are named as the generated
classes' are, with proto3's defaults for absent fields, and skips the fields the
schema does not name. Anything it does not expect (a known field with another wire
type, a group, a truncated or over-long value, invalid UTF-8) is a `WireError`, after
which the caller falls back to the full CLI. tests/cli/test_fast_path.py checks every
schema's numbers, names and types against the generated descriptors, so a change of
the .proto breaks a test rather than the output.
"""

from __future__ import annotations

STRING, INT32, INT64, BOOL, MESSAGE = "string", "int32", "int64", "bool", "message"
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_WIRE = {STRING: _LENGTH, INT32: _VARINT, INT64: _VARINT, BOOL: _VARINT, MESSAGE: _LENGTH}


class WireError(Exception):
    """The bytes are not the message the schema describes."""


class Field:
    """One field a schema reads: its name, type, whether repeated, its message's schema."""

    __slots__ = ("kind", "name", "repeated", "schema")

    def __init__(
        self, name: str, kind: str, repeated: bool = False, schema: Schema | None = None
    ) -> None:
        self.name, self.kind, self.repeated, self.schema = name, kind, repeated, schema


class Schema:
    """The fields of the message `full_name` that a reader needs, by field number."""

    __slots__ = ("fields", "full_name")

    def __init__(self, full_name: str, fields: dict[int, Field]) -> None:
        self.full_name, self.fields = full_name, fields


class Message:
    """A decoded message: one attribute per field of its schema."""

    def __init__(self, schema: Schema) -> None:
        for field in schema.fields.values():
            setattr(self, field.name, _default(field))


def _default(field: Field) -> object:
    if field.repeated:
        return []
    if field.kind == MESSAGE:
        assert field.schema is not None
        return Message(field.schema)
    return {STRING: "", BOOL: False}.get(field.kind, 0)


def decode(data: bytes | memoryview, schema: Schema) -> Message:
    """The message `schema` describes, read from `data` (WireError if it cannot be)."""
    message = Message(schema)
    _merge(memoryview(data), schema, message)
    return message


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WireError("truncated or over-long varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _merge(data: memoryview, schema: Schema, message: Message) -> None:
    at, end = 0, len(data)
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, at = _varint(data, at)
            chunk = None
        elif wire == _LENGTH:
            size, at = _varint(data, at)
            if at + size > end:
                raise WireError("truncated length-delimited field")
            chunk, at, value = data[at : at + size], at + size, 0
        elif wire in (_FIXED64, _FIXED32):
            at += 8 if wire == _FIXED64 else 4
            if at > end:
                raise WireError("truncated fixed-width field")
            continue
        else:
            raise WireError(f"wire type {wire}")
        field = schema.fields.get(number)
        if field is None:
            continue
        if _WIRE[field.kind] != wire:
            raise WireError(f"{schema.full_name} field {number}: wire type {wire}")
        _store(message, field, value, chunk)


def _store(message: Message, field: Field, value: int, chunk: memoryview | None) -> None:
    if field.kind == MESSAGE:
        assert chunk is not None and field.schema is not None
        if field.repeated:
            item = Message(field.schema)
            _merge(chunk, field.schema, item)
            getattr(message, field.name).append(item)
        else:  # a message field seen twice merges, as protobuf's parsers do
            _merge(chunk, field.schema, getattr(message, field.name))
        return
    if field.kind == STRING:
        assert chunk is not None
        try:
            decoded: object = str(chunk, "utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"field {field.name}: invalid UTF-8") from exc
    elif field.kind == BOOL:
        decoded = value != 0
    else:
        value &= 0xFFFF_FFFF_FFFF_FFFF
        if value >= 1 << 63:
            value -= 1 << 64
        if field.kind == INT32:  # an int32 is sent sign-extended; keep its low 32 bits
            value = ((value + (1 << 31)) & 0xFFFF_FFFF) - (1 << 31)
        decoded = value
    if field.repeated:
        getattr(message, field.name).append(decoded)
    else:
        setattr(message, field.name, decoded)


# The fields `dockyard ps` prints of an agent's containers (cli/container_table.py).
TIMESTAMP = Schema(
    "google.protobuf.Timestamp", {1: Field("seconds", INT64), 2: Field("nanos", INT32)}
)
CONTAINER_STATE = Schema(
    "dockyard.v1.ContainerState",
    {
        1: Field("status", STRING),
        3: Field("exit_code", INT32),
        4: Field("has_exit_code", BOOL),
        6: Field("started_at", MESSAGE, schema=TIMESTAMP),
        7: Field("finished_at", MESSAGE, schema=TIMESTAMP),
        9: Field("restart_count", INT32),
    },
)
CONTAINER_CONFIG = Schema(
    "dockyard.v1.CreateContainerRequest",
    {3: Field("command", STRING, repeated=True), 4: Field("entrypoint", STRING, repeated=True)},
)
PORT_MAPPING = Schema(
    "dockyard.v1.PortMapping",
    {
        1: Field("host_ip", STRING),
        2: Field("host_port", INT32),
        3: Field("container_port", INT32),
        4: Field("protocol", STRING),
    },
)
CONTAINER_NETWORK = Schema(
    "dockyard.v1.ContainerNetwork",
    {6: Field("ports", MESSAGE, repeated=True, schema=PORT_MAPPING)},
)
CONTAINER_RECORD = Schema(
    "dockyard.v1.ContainerRecord",
    {
        1: Field("id", STRING),
        2: Field("name", STRING),
        3: Field("image", STRING),
        5: Field("created_at", MESSAGE, schema=TIMESTAMP),
        6: Field("state", MESSAGE, schema=CONTAINER_STATE),
        7: Field("config", MESSAGE, schema=CONTAINER_CONFIG),
        9: Field("network", MESSAGE, schema=CONTAINER_NETWORK),
    },
)
LIST_CONTAINERS_RESPONSE = Schema(
    "dockyard.v1.ListContainersResponse",
    {1: Field("containers", MESSAGE, repeated=True, schema=CONTAINER_RECORD)},
)
