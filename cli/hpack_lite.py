"""HPACK (RFC 7541) for the fast path's few unary calls, without the `hpack` package.

`hpack` loads `logging` and more: a third of what is left of `dockyard ps`'s start-up.
The fast path's request headers are few and fixed, so `encode` writes them as literals
without indexing (names from the static table where it has them, no Huffman coding);
`Decoder` reads whatever a server sends (indexed fields, literals with or without
indexing, the dynamic table and its size updates, Huffman-coded strings). Anything
malformed is an `HpackError`, after which the fast path falls back to the full CLI.
tests/cli/test_fast_path.py checks both against the `hpack` package.
"""

from __future__ import annotations

MAX_TABLE_SIZE = 4096
"""SETTINGS_HEADER_TABLE_SIZE: the client never raises it from the default."""
ENTRY_OVERHEAD = 32


class HpackError(Exception):
    """A header block this decoder cannot read."""


def _integer(value: int, prefix: int, flags: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _integer(len(raw), 7, 0) + raw


_STATIC_NAMES: dict[str, int] = {}
_STATIC_PAIRS: dict[tuple[str, str], int] = {}


def encode(headers: list[tuple[str, str]]) -> bytes:
    """A header block: each field indexed when the static table has it whole, else a
    literal without indexing (its name indexed when the static table has the name)."""
    if not _STATIC_NAMES:
        for index, (name, value) in enumerate(STATIC_TABLE, 1):
            _STATIC_NAMES.setdefault(name, index)
            _STATIC_PAIRS.setdefault((name, value), index)
    out = bytearray()
    for name, value in headers:
        pair = _STATIC_PAIRS.get((name, value))
        if pair is not None:
            out += _integer(pair, 7, 0x80)
            continue
        index = _STATIC_NAMES.get(name, 0)
        out += _integer(index, 4, 0x00)
        if not index:
            out += _string(name)
        out += _string(value)
    return bytes(out)


class Decoder:
    """One connection's HPACK decoder (its dynamic table lives across header blocks)."""

    def __init__(self) -> None:
        self.table: list[tuple[str, str]] = []  # newest first
        self.size = 0
        self.max_size = MAX_TABLE_SIZE

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        at = 0
        while at < len(block):
            first = block[at]
            if first & 0x80:  # indexed field
                index, at = _read_integer(block, at, 7)
                headers.append(self._entry(index))
            elif first & 0x40:  # literal with incremental indexing
                name, value, at = self._literal(block, at, 6)
                headers.append((name, value))
                self._add(name, value)
            elif first & 0x20:  # dynamic table size update
                size, at = _read_integer(block, at, 5)
                if size > MAX_TABLE_SIZE:
                    raise HpackError(f"table size {size} above the settings' {MAX_TABLE_SIZE}")
                self.max_size = size
                self._evict()
            else:  # literal without indexing, or never indexed
                name, value, at = self._literal(block, at, 4)
                headers.append((name, value))
        return headers

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise HpackError(f"no table entry {index}")

    def _literal(self, block: bytes, at: int, prefix: int) -> tuple[str, str, int]:
        index, at = _read_integer(block, at, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, at = _read_string(block, at)
        value, at = _read_string(block, at)
        return name, value, at

    def _add(self, name: str, value: str) -> None:
        self.table.insert(0, (name, value))
        self.size += len(name.encode()) + len(value.encode()) + ENTRY_OVERHEAD
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.table:
            name, value = self.table.pop()
            self.size -= len(name.encode()) + len(value.encode()) + ENTRY_OVERHEAD


def _read_integer(block: bytes, at: int, prefix: int) -> tuple[int, int]:
    if at >= len(block):
        raise HpackError("truncated integer")
    limit = (1 << prefix) - 1
    value = block[at] & limit
    at += 1
    if value < limit:
        return value, at
    shift = 0
    while True:
        if at >= len(block) or shift > 28:
            raise HpackError("truncated or over-long integer")
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _read_string(block: bytes, at: int) -> tuple[str, int]:
    if at >= len(block):
        raise HpackError("truncated string")
    huffman = block[at] & 0x80
    length, at = _read_integer(block, at, 7)
    if at + length > len(block):
        raise HpackError("truncated string")
    raw = block[at : at + length]
    data = huffman_decode(raw) if huffman else raw
    try:
        return data.decode(), at + length
    except UnicodeDecodeError as exc:
        raise HpackError("a header that is not UTF-8") from exc


_DECODING: dict[tuple[int, int], int] = {}


def huffman_decode(data: bytes) -> bytes:
    """RFC 7541 Appendix B's Huffman code, decoded; the padding must be at most 7 bits,
    all ones (EOS's prefix), and EOS itself must not appear."""
    if not _DECODING:
        for symbol, (code, length) in enumerate(zip(HUFFMAN_CODES, HUFFMAN_LENGTHS, strict=True)):
            _DECODING[(length, code)] = symbol
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            found = _DECODING.get((length, code))
            if found is not None:
                if found == EOS:
                    raise HpackError("EOS in a Huffman-coded string")
                out.append(found)
                code = length = 0
            elif length > 30:
                raise HpackError("not a Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("bad Huffman padding")
    return bytes(out)


EOS = 256
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)
HUFFMAN_CODES = (
    8184,
    8388568,
    268435426,
    268435427,
    268435428,
    268435429,
    268435430,
    268435431,
    268435432,
    16777194,
    1073741820,
    268435433,
    268435434,
    1073741821,
    268435435,
    268435436,
    268435437,
    268435438,
    268435439,
    268435440,
    268435441,
    268435442,
    1073741822,
    268435443,
    268435444,
    268435445,
    268435446,
    268435447,
    268435448,
    268435449,
    268435450,
    268435451,
    20,
    1016,
    1017,
    4090,
    8185,
    21,
    248,
    2042,
    1018,
    1019,
    249,
    2043,
    250,
    22,
    23,
    24,
    0,
    1,
    2,
    25,
    26,
    27,
    28,
    29,
    30,
    31,
    92,
    251,
    32764,
    32,
    4091,
    1020,
    8186,
    33,
    93,
    94,
    95,
    96,
    97,
    98,
    99,
    100,
    101,
    102,
    103,
    104,
    105,
    106,
    107,
    108,
    109,
    110,
    111,
    112,
    113,
    114,
    252,
    115,
    253,
    8187,
    524272,
    8188,
    16380,
    34,
    32765,
    3,
    35,
    4,
    36,
    5,
    37,
    38,
    39,
    6,
    116,
    117,
    40,
    41,
    42,
    7,
    43,
    118,
    44,
    8,
    9,
    45,
    119,
    120,
    121,
    122,
    123,
    32766,
    2044,
    16381,
    8189,
    268435452,
    1048550,
    4194258,
    1048551,
    1048552,
    4194259,
    4194260,
    4194261,
    8388569,
    4194262,
    8388570,
    8388571,
    8388572,
    8388573,
    8388574,
    16777195,
    8388575,
    16777196,
    16777197,
    4194263,
    8388576,
    16777198,
    8388577,
    8388578,
    8388579,
    8388580,
    2097116,
    4194264,
    8388581,
    4194265,
    8388582,
    8388583,
    16777199,
    4194266,
    2097117,
    1048553,
    4194267,
    4194268,
    8388584,
    8388585,
    2097118,
    8388586,
    4194269,
    4194270,
    16777200,
    2097119,
    4194271,
    8388587,
    8388588,
    2097120,
    2097121,
    4194272,
    2097122,
    8388589,
    4194273,
    8388590,
    8388591,
    1048554,
    4194274,
    4194275,
    4194276,
    8388592,
    4194277,
    4194278,
    8388593,
    67108832,
    67108833,
    1048555,
    524273,
    4194279,
    8388594,
    4194280,
    33554412,
    67108834,
    67108835,
    67108836,
    134217694,
    134217695,
    67108837,
    16777201,
    33554413,
    524274,
    2097123,
    67108838,
    134217696,
    134217697,
    67108839,
    134217698,
    16777202,
    2097124,
    2097125,
    67108840,
    67108841,
    268435453,
    134217699,
    134217700,
    134217701,
    1048556,
    16777203,
    1048557,
    2097126,
    4194281,
    2097127,
    2097128,
    8388595,
    4194282,
    4194283,
    33554414,
    33554415,
    16777204,
    16777205,
    67108842,
    8388596,
    67108843,
    134217702,
    67108844,
    67108845,
    134217703,
    134217704,
    134217705,
    134217706,
    134217707,
    268435454,
    134217708,
    134217709,
    134217710,
    134217711,
    134217712,
    67108846,
    1073741823,
)
HUFFMAN_LENGTHS = (
    13,
    23,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    24,
    30,
    28,
    28,
    30,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    30,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    6,
    10,
    10,
    12,
    13,
    6,
    8,
    11,
    10,
    10,
    8,
    11,
    8,
    6,
    6,
    6,
    5,
    5,
    5,
    6,
    6,
    6,
    6,
    6,
    6,
    6,
    7,
    8,
    15,
    6,
    12,
    10,
    13,
    6,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    8,
    7,
    8,
    13,
    19,
    13,
    14,
    6,
    15,
    5,
    6,
    5,
    6,
    5,
    6,
    6,
    6,
    5,
    7,
    7,
    6,
    6,
    6,
    5,
    6,
    7,
    6,
    5,
    5,
    6,
    7,
    7,
    7,
    7,
    7,
    15,
    11,
    14,
    13,
    28,
    20,
    22,
    20,
    20,
    22,
    22,
    22,
    23,
    22,
    23,
    23,
    23,
    23,
    23,
    24,
    23,
    24,
    24,
    22,
    23,
    24,
    23,
    23,
    23,
    23,
    21,
    22,
    23,
    22,
    23,
    23,
    24,
    22,
    21,
    20,
    22,
    22,
    23,
    23,
    21,
    23,
    22,
    22,
    24,
    21,
    22,
    23,
    23,
    21,
    21,
    22,
    21,
    23,
    22,
    23,
    23,
    20,
    22,
    22,
    22,
    23,
    22,
    22,
    23,
    26,
    26,
    20,
    19,
    22,
    23,
    22,
    25,
    26,
    26,
    26,
    27,
    27,
    26,
    24,
    25,
    19,
    21,
    26,
    27,
    27,
    26,
    27,
    24,
    21,
    21,
    26,
    26,
    28,
    27,
    27,
    27,
    20,
    24,
    20,
    21,
    22,
    21,
    21,
    23,
    22,
    22,
    25,
    25,
    24,
    24,
    26,
    23,
    26,
    27,
    26,
    26,
    27,
    27,
    27,
    27,
    27,
    28,
    27,
    27,
    27,
    27,
    27,
    26,
    30,
)
