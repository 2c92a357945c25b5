"""Detach keys: the key sequence that lets go of an attached container (Docker's
``--detach-keys``, default ``ctrl-p,ctrl-q``), found in the client's input stream."""

from __future__ import annotations

from dockyard.agent.containers.errors import InvalidArgument

__all__ = ["DEFAULT_DETACH_KEYS", "DetachScanner", "parse_detach_keys"]

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_MAX_KEYS = 16
_CTRL_SPECIALS = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str, field: str = "detach_keys") -> bytes:
    """Docker's syntax (``term.ToBytes``): comma-separated ``ctrl-<c>`` or single
    characters; ``""`` is the default sequence.

    Raises:
        InvalidArgument: an unknown key, or more than 16 of them.
    """
    keys = bytearray()
    for key in (text or DEFAULT_DETACH_KEYS).split(","):
        lowered = key.lower()
        if lowered.startswith("ctrl-") and len(key) == 6:
            char = lowered[5]
            if "a" <= char <= "z":
                keys.append(ord(char) - ord("a") + 1)
            elif char in _CTRL_SPECIALS:
                keys.append(_CTRL_SPECIALS[char])
            else:
                raise InvalidArgument(field, f"unknown detach key {key!r}")
        elif len(key) == 1 and key.isascii():
            keys.append(ord(key))
        else:
            raise InvalidArgument(
                field, f"unknown detach key {key!r} (use ctrl-<letter> or one character)"
            )
    if len(keys) > _MAX_KEYS:
        raise InvalidArgument(field, f"{len(keys)} detach keys: at most {_MAX_KEYS}")
    return bytes(keys)


class DetachScanner:
    """Passes input through, holding back a partial detach sequence (flushed when the
    next byte does not continue it), and says when the whole sequence was typed."""

    def __init__(self, keys: bytes) -> None:
        """``keys`` from :func:`parse_detach_keys` (empty: never detach)."""
        self._keys = keys
        self._matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to send on, and whether the sequence is complete (the bytes typed
        after it are dropped: the client detached)."""
        if not self._keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self._keys[self._matched]:
                self._matched += 1
                if self._matched == len(self._keys):
                    self._matched = 0
                    return bytes(out), True
                continue
            out += self._keys[: self._matched]
            self._matched = 0
            if byte == self._keys[0]:
                self._matched = 1
                if len(self._keys) == 1:
                    return bytes(out), True
            else:
                out.append(byte)
        return bytes(out), False
