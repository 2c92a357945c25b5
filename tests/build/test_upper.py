"""A container's overlayfs upper dir as a layer: deletions (0/0 character devices) become
`.wh.NAME`, an opaque directory `.wh..wh..opq`, hard links stay links, symlinks are
never followed, and the runtime's mount points (/etc/hosts...) are left out."""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path

import pytest

from dockyard.agent.build.upper import UnsupportedUpper, layer_from_upper
from dockyard.agent.images.blobs import BlobStore
from tests.images.test_unpack_hostile import needs_root


@needs_root
def test_upper_dir_to_layer(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("")
    (upper / "etc" / "resolv.conf").write_text("")
    (upper / "etc" / "app.conf").write_text("conf\n")
    os.mknod(upper / "etc" / "group", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "opq" / "new").write_text("new\n")
    (upper / "file").write_text("data\n")
    os.link(upper / "file", upper / "hard")
    os.symlink("/etc/shadow", upper / "link")
    os.chown(upper / "file", 1000, 1001)

    blobs = BlobStore(tmp_path / "store")
    layer = layer_from_upper(blobs, upper)

    with gzip.open(blobs.path(layer.digest)) as raw, tarfile.open(fileobj=raw) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["etc/app.conf"]).read() == b"conf\n"  # type: ignore[union-attr]
    assert set(members) == {
        "etc",
        "etc/app.conf",
        "etc/.wh.group",
        "opq",
        "opq/.wh..wh..opq",
        "opq/new",
        "file",
        "hard",
        "link",
    }
    assert members["etc/.wh.group"].isreg() and members["etc/.wh.group"].size == 0
    assert (members["file"].uid, members["file"].gid) == (1000, 1001)
    assert members["hard"].islnk() and members["hard"].linkname == "file"
    assert members["link"].issym() and members["link"].linkname == "/etc/shadow"
    assert layer.diff_id.startswith("sha256:")


@needs_root
def test_metacopy_upper_is_refused(tmp_path: Path) -> None:
    """A metacopy file's data is in a lower layer: committing the empty upper file
    would lose it, so the commit is refused."""
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "chowned").write_text("")
    os.setxattr(upper / "chowned", "trusted.overlay.metacopy", b"")
    with pytest.raises(UnsupportedUpper, match="metacopy"):
        layer_from_upper(BlobStore(tmp_path / "store"), upper)
