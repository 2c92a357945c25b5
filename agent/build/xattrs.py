"""A file's extended attributes as a layer carries them: PAX ``SCHILY.xattr.NAME``
records, the way Docker's archive package and containerd write them.

Only what the image store's unpacker sets again is carried: ``security.capability``
(``setcap``'s file capabilities, which Docker carries) and ``user.*``. Overlayfs's own
``trusted.overlay.*``, SELinux labels and ACLs are not. Read from an open fd (regular
files and directories: a symlink cannot hold either kind on Linux). Blocking.
"""

from __future__ import annotations

import os

__all__ = ["CARRIED_XATTRS", "PAX_XATTR_PREFIX", "pax_xattrs"]

CARRIED_XATTRS = ("security.capability", "user.")
PAX_XATTR_PREFIX = "SCHILY.xattr."
MAX_XATTR_BYTES = 64 * 1024  # XATTR_SIZE_MAX: the kernel's bound for one value


def pax_xattrs(fd: int) -> dict[str, str]:
    """The carried xattrs of the open file ``fd`` as PAX records (values as bytes
    decoded with ``surrogateescape``, so tarfile writes them back byte for byte)."""
    try:
        names = os.listxattr(fd)
    except OSError:  # a filesystem without xattrs
        return {}
    records: dict[str, str] = {}
    for name in sorted(names):
        if not name.startswith(CARRIED_XATTRS):
            continue
        try:
            value = os.getxattr(fd, name)
        except OSError:  # removed meanwhile
            continue
        if len(value) <= MAX_XATTR_BYTES:
            records[PAX_XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
    return records
