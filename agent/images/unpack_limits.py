"""How much one layer may unpack to: bytes and entries, against the store's filesystem.

A layer blob is bounded by the size its manifest declares, but what it unpacks to is
not: a few megabytes of gzip or zstd can expand to terabytes of zeros (a decompression
bomb), and a tar of empty entries can use up the filesystem's inodes. Each layer gets a
budget when its unpack starts (`UnpackLimits.budget`): the uncompressed tar stream may
be at most ``max_bytes`` long and a share of the space free on the snapshot's
filesystem, and hold at most ``max_entries`` entries and that share of the free inodes.
Past either, the unpack stops with a LayerError naming the limit, and the caller removes
the partial snapshot.

The bytes counted are the uncompressed tar stream's (headers and padding included, as
the diff id hashes them): never less than what the files take, so a layer that fits
its budget fits the disk, and trailing data after the end of the archive counts too.
Concurrent unpacks each measure the free space alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dockyard.agent.images.errors import LayerError

__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_MAX_LAYER_BYTES", "Budget", "UnpackLimits"]

DEFAULT_MAX_LAYER_BYTES = 64 << 30
"""64 GiB: larger than any image layer in common use (CUDA runtimes are a few GiB)."""
DEFAULT_MAX_ENTRIES = 1_000_000
"""A million entries: a whole distribution's /usr is about a hundred thousand."""


@dataclass(frozen=True)
class UnpackLimits:
    """The bounds on one layer's unpacked size (configurable per image store).

    Attributes:
        max_bytes: The longest uncompressed tar stream of a layer, in bytes.
        max_entries: The most entries a layer may hold.
        free_share: The share of the snapshot filesystem's free space (and free
            inodes) one layer may take, leaving the rest to the node.
    """

    max_bytes: int = DEFAULT_MAX_LAYER_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES
    free_share: float = 0.9

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_entries <= 0:
            raise ValueError("UnpackLimits: max_bytes and max_entries must be positive")
        if not 0 < self.free_share <= 1:
            raise ValueError("UnpackLimits: free_share must be in (0, 1]")

    def budget_at(self, directory: Path) -> Budget:
        """The budget for a layer written under ``directory`` (an import's)."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return self.budget(fd)
        finally:
            os.close(fd)

    def budget(self, dest_fd: int) -> Budget:
        """This layer's budget, from the free space of the filesystem holding ``dest_fd``."""
        fs = os.fstatvfs(dest_fd)
        free_bytes = int(fs.f_bavail * fs.f_frsize * self.free_share)
        if free_bytes < self.max_bytes:
            bytes_limit = (
                free_bytes,
                f"{self.free_share:.0%} of the "
                f"{fs.f_bavail * fs.f_frsize} bytes free in the image store",
            )
        else:
            bytes_limit = (self.max_bytes, f"the {self.max_bytes}-byte limit on a layer")
        entries_limit = (self.max_entries, f"the {self.max_entries}-entry limit on a layer")
        if fs.f_files:  # 0: the filesystem has no fixed inode count (btrfs)
            free_inodes = int(fs.f_favail * self.free_share)
            if free_inodes < self.max_entries:
                entries_limit = (
                    free_inodes,
                    f"{self.free_share:.0%} of the {fs.f_favail} inodes free in the image store",
                )
        return Budget(*bytes_limit, *entries_limit)


@dataclass
class Budget:
    """One unpack's budget, spent as the stream is read and the entries come."""

    max_bytes: int
    bytes_reason: str
    max_entries: int
    entries_reason: str
    bytes_read: int = 0
    entries: int = 0

    def spend_bytes(self, count: int, layer: str) -> None:
        self.bytes_read += count
        if self.bytes_read > self.max_bytes:
            raise LayerError(
                f"layer {layer} unpacks to more than {self.max_bytes} bytes, "
                f"over {self.bytes_reason}; refused"
            )

    def spend_entry(self, layer: str) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise LayerError(
                f"layer {layer} has more than {self.max_entries} entries, "
                f"over {self.entries_reason}; refused"
            )
