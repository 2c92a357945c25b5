"""File capabilities (`setcap`) and user.* xattrs are carried into layers as PAX
`SCHILY.xattr.*` records, as Docker carries them: from a container's upper dir
(commit, RUN) and from the context's files (COPY); the image store's unpacker sets
them again. Overlayfs's trusted.* xattrs are never carried."""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
from pathlib import Path

from dockyard.agent.build.cache import sources_digest
from dockyard.agent.build.context import Source, unpack_into
from dockyard.agent.build.copy_step import CopyPlan, copy_into
from dockyard.agent.build.upper import layer_from_upper
from dockyard.agent.images.blobs import BlobStore
from tests.images.test_unpack_hostile import needs_root

# vfs_cap_data revision 2: effective flag, cap_net_bind_service (10) permitted
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def _mark(path: Path) -> None:
    os.setxattr(path, "security.capability", CAPABILITY)
    os.setxattr(path, "user.origin", b"\xffbinary\x00value")  # not UTF-8: kept byte for byte


def _members(blobs: BlobStore, digest: str) -> dict[str, tarfile.TarInfo]:
    with gzip.open(blobs.path(digest)) as raw, tarfile.open(fileobj=raw) as tar:
        return {m.name: m for m in tar.getmembers()}


@needs_root
def test_upper_xattrs_reach_the_layer_and_back(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "bin").mkdir(parents=True)
    (upper / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    _mark(upper / "bin" / "tool")
    os.setxattr(upper / "bin", "user.dir", b"yes")
    os.setxattr(upper / "bin", "trusted.overlay.origin", b"x")  # overlayfs's own
    blobs = BlobStore(tmp_path / "store")
    layer = layer_from_upper(blobs, upper)

    members = _members(blobs, layer.digest)
    records = members["bin/tool"].pax_headers
    assert (
        records["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAPABILITY
    )
    assert members["bin"].pax_headers["SCHILY.xattr.user.dir"] == "yes"
    assert not any("trusted" in k for m in members.values() for k in m.pax_headers)

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    unpack_into(blobs.path(layer.digest), unpacked)  # the image store's unpacker
    assert os.getxattr(unpacked / "bin" / "tool", "security.capability") == CAPABILITY
    assert os.getxattr(unpacked / "bin" / "tool", "user.origin") == b"\xffbinary\x00value"
    assert os.getxattr(unpacked / "bin", "user.dir") == b"yes"


@needs_root
def test_copy_carries_the_context_files_xattrs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "dir").mkdir(parents=True)
    (context / "tool").write_bytes(b"tool\n")
    _mark(context / "tool")
    (context / "dir" / "inner").write_bytes(b"inner\n")
    os.setxattr(context / "dir" / "inner", "user.inner", b"1")
    rootfs, scratch = tmp_path / "rootfs", tmp_path / "scratch"
    rootfs.mkdir()
    scratch.mkdir()
    sources = [Source(("tool",), False), Source(("dir",), True)]
    copy_into(CopyPlan(context, sources, "/usr/bin", True, (1000, 1000)), rootfs, scratch)
    tool = rootfs / "usr" / "bin" / "tool"
    assert os.stat(tool).st_uid == 1000  # --chown first: it would clear the capability
    assert os.getxattr(tool, "security.capability") == CAPABILITY
    assert os.getxattr(tool, "user.origin") == b"\xffbinary\x00value"
    assert os.getxattr(rootfs / "usr" / "bin" / "inner", "user.inner") == b"1"


@needs_root
def test_a_changed_capability_is_a_cache_miss(tmp_path: Path) -> None:
    """COPY's cache key covers the xattrs it carries."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "tool").write_bytes(b"tool\n")
    sources = [Source(("tool",), False)]
    plain = sources_digest(context, sources)
    os.setxattr(context / "tool", "security.capability", CAPABILITY)
    with_cap = sources_digest(context, sources)
    assert with_cap != plain
    os.setxattr(context / "tool", "user.origin", b"other")
    assert sources_digest(context, sources) not in (plain, with_cap)
    for name in ("security.capability", "user.origin"):
        os.removexattr(context / "tool", name)
    assert sources_digest(context, sources) == plain
