"""One revision shared between the controller and its reader process: the controller's
own last write, which a read on the read port waits for (read-your-writes).

An 8-byte counter in an anonymous shared memory file (memfd), which the controller
writes as its store commits and the reader process (given the descriptor) reads
without a system call or a round trip: the controller's event loop is never asked.
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = ["RevisionCell"]

_FORMAT = "<Q"
_SIZE = struct.calcsize(_FORMAT)


class RevisionCell:
    """A revision that only moves forward, shared through a file descriptor."""

    def __init__(self, fd: int, writable: bool) -> None:
        self.fd = fd
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._map = mmap.mmap(fd, _SIZE, access=access)

    @classmethod
    def create(cls) -> RevisionCell:
        """A new cell (0), its descriptor closed on exec unless passed on explicitly."""
        fd = os.memfd_create("dockyard-own-write")
        os.ftruncate(fd, _SIZE)
        return cls(fd, writable=True)

    @classmethod
    def attach(cls, fd: int) -> RevisionCell:
        """The cell another process created, read-only (the reader process)."""
        return cls(fd, writable=False)

    def set(self, revision: int) -> None:
        """Raise the cell to `revision` (never lowers it)."""
        if revision > self.get():
            struct.pack_into(_FORMAT, self._map, 0, revision)

    def get(self) -> int:
        """The current value: read until two reads agree (no torn value)."""
        first = struct.unpack_from(_FORMAT, self._map, 0)[0]
        while True:
            second = struct.unpack_from(_FORMAT, self._map, 0)[0]
            if second == first:
                return int(first)
            first = second

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
