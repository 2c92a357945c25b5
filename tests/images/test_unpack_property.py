"""Property: no layer, however hostile, changes anything outside its own snapshot.

Hypothesis builds tar streams from a small alphabet of entries (files, directories,
symlinks aimed at a sentinel directory beside the store, hard links, whiteouts, opaque
markers, devices, fifos, `.`/`..`/empty/absolute names, duplicates, long names, deep
nesting, trusted.* xattrs), one attack class per test, plus random noise. Each layer
goes through the real store (`ImageStore.ensure_snapshot`, so the diff id matches and
the real unpacker runs) and afterwards:

- the sentinel tree (bytes, modes, owners, mtimes, link targets) is unchanged;
- the store's other snapshot, its blobs and the directory around the store are too;
- a refused layer (LayerError) left no snapshot and no temporary directory.

Half the examples resolve with the O_NOFOLLOW walk instead of openat2, and half run
the unpacker without its chroot and capability fence, so each defence is tried on its
own. Counts per class go to the terminal (`-s`) and to `$DOCKYARD_FUZZ_REPORT` if set.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.agent.images import safe_fs, unpack
from dockyard.agent.images.confine import Confinement
from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Layer
from tests.images.test_unpack_hostile import tree_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, devices)")

EXAMPLES_PER_CLASS = int(os.environ.get("DOCKYARD_FUZZ_EXAMPLES", "30"))
COMPONENTS = [
    "a",
    "b",
    "s",
    "d",
    ".",
    "..",
    "",
    ".wh.a",
    ".wh.s",
    ".wh..",
    ".wh...",
    ".wh.",
    ".wh..wh..opq",
    ".wh..wh.plnk",
]
SIMPLE = ["a", "b", "s", "a/b", "s/x", "d/d/d"]
MODES = [0o777, 0o4755, 0o6777, 0o000, 0o1777, 0o644]


@dataclass(frozen=True)
class Spec:
    """One tar entry to write."""

    kind: str  # file dir sym link chr blk fifo
    name: str
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    mtime: int = 1_000_000
    xattrs: tuple[tuple[str, str], ...] = ()
    pax: tuple[tuple[str, str], ...] = ()  # raw PAX records (mtime, uid, ...)


# ----- strategies ------------------------------------------------------------------


def link_targets() -> st.SearchStrategy[str]:
    """Symlink and hard-link targets, many aimed at the sentinel beside the store."""
    sentinel = st.sampled_from(["SENTINEL", "SENTINEL/file", "SENTINEL/dir", "SENTINEL/link"])
    relative = st.builds(
        lambda k, rest: "../" * k + rest,
        st.integers(1, 6),
        st.sampled_from(
            ["sentinel", "sentinel/file", "sentinel/dir", "", "store/snapshots/other/kept"]
        ),
    )
    inside = st.sampled_from([*SIMPLE, "a/c", "/a", "./s"])
    return st.one_of(
        sentinel, relative, inside, inside, st.sampled_from(["/", ".", "..", "", "a/../../x"])
    )


def names() -> st.SearchStrategy[str]:
    parts = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4)
    return st.builds(
        lambda prefix, p, suffix: prefix + "/".join(p) + suffix,
        st.sampled_from(["", "", "", "./", "/"]),
        parts,
        st.sampled_from(["", "", "/"]),
    )


def entries(
    name: st.SearchStrategy[str] | None = None, kinds: list[str] | None = None
) -> st.SearchStrategy[Spec]:
    kind = st.sampled_from(kinds or ["file", "dir", "sym", "link", "chr", "fifo"])
    xattr = st.tuples(
        st.sampled_from(
            [
                "trusted.overlay.opaque",
                "trusted.overlay.redirect",
                "security.selinux",
                "user.x",
                "security.capability",
            ]
        ),
        st.sampled_from(["y", "/SENTINEL", "x"]),
    )
    if name is None:
        name = st.one_of(names(), st.sampled_from(SIMPLE))
    return st.builds(
        Spec,
        kind,
        name,
        link_targets(),
        st.sampled_from(MODES),
        st.sampled_from([0, 1000]),
        st.sampled_from([0, 12345, 2**31 - 1]),
        st.lists(xattr, max_size=2).map(tuple),
    )


def core(attack: str) -> st.SearchStrategy[list[Spec]]:
    """The entries that make one attack class."""
    simple = st.sampled_from(SIMPLE)
    to_sentinel = st.sampled_from(
        ["SENTINEL", "SENTINEL/file", "../../../sentinel", "../../../sentinel/file"]
    )
    if attack == "dir then symlink":
        return st.builds(
            lambda n, m, t, child: [
                Spec("dir", n, mode=m, mtime=4242),
                Spec("file", f"{n}/{child}", mode=m),
                Spec("sym", n, link=t),
            ],
            simple,
            st.sampled_from(MODES),
            to_sentinel,
            st.sampled_from(["x", ".wh.x", ".wh..wh..opq"]),
        )
    if attack == "symlink then entries":
        return st.builds(
            lambda n, t, after: [Spec("sym", n, link=t), *after],
            simple,
            to_sentinel,
            st.lists(
                entries(st.sampled_from(["a", "s", "a/file", "s/file", "s/dir/x", "a/b/c"])),
                max_size=3,
            ),
        )
    if attack == "hard links":
        return st.lists(
            st.one_of(entries(kinds=["link", "sym", "file", "dir"])), min_size=1, max_size=5
        )
    if attack == "whiteouts":
        return st.lists(
            st.one_of(
                entries(
                    st.sampled_from(
                        [
                            ".wh..",
                            ".wh...",
                            ".wh.",
                            "a/.wh...",
                            "s/.wh.file",
                            ".wh.s",
                            "./.wh...",
                            ".wh..wh..",
                            ".wh.a/.wh..",
                        ]
                    ),
                    kinds=["file"],
                ),
                entries(st.sampled_from(SIMPLE), kinds=["sym", "dir"]),
            ),
            min_size=1,
            max_size=5,
        )
    if attack == "opaque markers":
        return st.lists(
            st.one_of(
                entries(
                    st.sampled_from(
                        [
                            ".wh..wh..opq",
                            "s/.wh..wh..opq",
                            "a/.wh..wh..opq/x",
                            "a/b/.wh..wh..opq",
                            ".wh..wh..opq/.wh..wh..opq",
                        ]
                    ),
                    kinds=["file", "dir", "sym"],
                ),
                entries(st.sampled_from(SIMPLE), kinds=["sym", "dir", "file"]),
            ),
            min_size=1,
            max_size=5,
        )
    if attack == "bad names":
        return st.lists(
            entries(
                st.sampled_from(
                    [
                        "",
                        ".",
                        "./",
                        "..",
                        "../x",
                        "/",
                        "/etc/x",
                        "a/../../x",
                        "a//..",
                        "a/./../..",
                        "x\x00y",
                        "./../sentinel/file",
                    ]
                )
            ),
            min_size=1,
            max_size=3,
        )
    if attack == "devices and fifos":
        return st.lists(entries(kinds=["chr", "blk", "fifo", "sym"]), min_size=1, max_size=4)
    if attack == "duplicates":
        return st.builds(
            lambda n, kinds: [Spec(k, n, link="SENTINEL/file") for k in kinds],
            simple,
            st.lists(
                st.sampled_from(["file", "dir", "sym", "link", "fifo"]), min_size=2, max_size=5
            ),
        )
    if attack == "long names and deep nesting":
        deep = st.builds(lambda n: "d/" * n + "f", st.sampled_from([50, 255, 256, 257, 2100]))
        long = st.builds(lambda n: "x" * n, st.sampled_from([255, 256, 5000]))
        return st.lists(
            entries(st.one_of(deep, long), kinds=["file", "dir", "sym"]), min_size=1, max_size=2
        )
    if attack == "metadata extremes":
        record = st.tuples(
            st.sampled_from(["mtime", "atime", "uid", "gid", "size"]),
            st.sampled_from(
                ["1e30", "-1e30", "nan", "inf", "-1", str(1 << 40), str(1 << 63), "0", "x"]
            ),
        )
        return st.lists(
            st.builds(
                lambda spec, pax: Spec(**{**spec.__dict__, "pax": tuple(pax)}),
                entries(kinds=["file", "dir", "sym", "chr", "fifo"]),
                st.lists(record, min_size=1, max_size=2),
            ),
            min_size=1,
            max_size=3,
        )
    if attack == "xattrs":
        return st.lists(
            entries(kinds=["file", "dir"]).filter(lambda s: bool(s.xattrs)), min_size=1, max_size=3
        )
    return st.lists(entries(), min_size=1, max_size=8)  # "mixed"


ATTACKS = [
    "dir then symlink",
    "symlink then entries",
    "hard links",
    "whiteouts",
    "opaque markers",
    "bad names",
    "devices and fifos",
    "duplicates",
    "long names and deep nesting",
    "xattrs",
    "metadata extremes",
    "mixed",
]


def streams(attack: str) -> st.SearchStrategy[list[Spec]]:
    """The attack's entries between a little noise (mostly plain names, so that most
    streams get past their first entry)."""
    noise = st.lists(
        entries(st.sampled_from([*SIMPLE, "a/c", "b/.wh.c", "s/.wh..wh..opq"])), max_size=3
    )
    return st.builds(
        lambda before, main, after: [*before, *main, *after], noise, core(attack), noise
    )


# ----- the site: a store with a sentinel beside it ----------------------------------


@dataclass
class Tally:
    tried: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    changes: Counter[str] = field(default_factory=Counter)


TALLY = Tally()


class StoreSite:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sentinel = base / "sentinel"
        (self.sentinel / "dir").mkdir(parents=True)
        (self.sentinel / "file").write_bytes(b"host file\n")
        (self.sentinel / "dir" / "inner").write_bytes(b"inner\n")
        (self.sentinel / "link").symlink_to("file")
        os.chmod(self.sentinel / "file", 0o640)
        os.chmod(self.sentinel / "dir", 0o750)
        os.utime(self.sentinel / "dir", (1, 1))
        self.store = ImageStore(base / "store")
        other = self.store.snapshots_dir / ("0" * 64)
        other.mkdir()
        (other / "kept").write_bytes(b"another image's layer\n")
        self.before = self.outside()

    def outside(self) -> dict[str, Any]:
        return {
            "sentinel": tree_state(self.sentinel),
            "other": tree_state(self.store.snapshots_dir / ("0" * 64)),
            "blobs": sorted(os.listdir(self.store.blobs.dir)),
            "base": sorted(os.listdir(self.base)),
            "store": sorted(os.listdir(self.store.root)),
        }

    def tar(self, specs: list[Spec]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for spec in specs:
                info = tarfile.TarInfo(spec.name)
                info.type = {
                    "file": tarfile.REGTYPE,
                    "dir": tarfile.DIRTYPE,
                    "sym": tarfile.SYMTYPE,
                    "link": tarfile.LNKTYPE,
                    "chr": tarfile.CHRTYPE,
                    "blk": tarfile.BLKTYPE,
                    "fifo": tarfile.FIFOTYPE,
                }[spec.kind]
                info.linkname = spec.link.replace("SENTINEL", str(self.sentinel))
                info.mode, info.uid, info.gid, info.mtime = (
                    spec.mode,
                    spec.uid,
                    spec.uid,
                    spec.mtime,
                )
                info.devmajor, info.devminor = (1, 3) if spec.kind != "fifo" else (0, 0)
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.replace("SENTINEL", str(self.sentinel))
                    for k, v in spec.xattrs
                } | dict(spec.pax)
                data = b"layer data\n" if spec.kind == "file" else b""
                info.size = len(data)
                try:
                    tar.addfile(info, io.BytesIO(data) if data else None)
                except (ValueError, tarfile.TarError):
                    continue  # a name tarfile itself cannot write (NUL)
        return out.getvalue()

    def unpack(self, specs: list[Spec]) -> bool:
        """Unpack through the store; True if refused. Leaves no snapshot either way."""
        data = self.tar(specs)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = self.store.blobs.path(digest)
        blob.write_bytes(data)
        layer = Layer(digest, len(data), "application/vnd.oci.image.layer.v1.tar", digest)
        try:
            asyncio.run(self.store.ensure_snapshot(layer))
            refused = False
        except LayerError:
            refused = True
            leftovers = [p for p in os.listdir(self.store.snapshots_dir) if p != "0" * 64]
            assert leftovers == [], f"a refused layer left {leftovers}"
        finally:
            blob.unlink()
        shutil.rmtree(self.store.snapshot_path(digest), ignore_errors=True)
        return refused


@pytest.fixture(scope="module")
def site() -> Iterator[StoreSite]:
    base = Path(tempfile.mkdtemp(prefix="dockyard-unpack-fuzz-"))
    try:
        yield StoreSite(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        _report()


def _unconfined(_root_fd: int, fn: Callable[[Confinement], Any]) -> Any:
    return fn(Confinement())


@pytest.mark.parametrize("attack", ATTACKS)
def test_no_layer_changes_anything_outside_its_snapshot(site: StoreSite, attack: str) -> None:
    @settings(
        max_examples=EXAMPLES_PER_CLASS,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(specs=streams(attack), use_openat2=st.booleans(), confined=st.booleans())
    def check(specs: list[Spec], use_openat2: bool, confined: bool) -> None:
        saved = list(safe_fs._openat2_state)
        mp = pytest.MonkeyPatch()
        try:
            if not use_openat2:
                safe_fs._openat2_state[:] = [False]
            if not confined:
                mp.setattr(unpack, "run_confined", _unconfined, raising=False)
            refused = site.unpack(specs)
        finally:
            safe_fs._openat2_state[:] = saved
            mp.undo()
        TALLY.tried[attack] += 1
        TALLY.refused[attack] += refused
        changed = site.outside() != site.before
        TALLY.changes[attack] += changed
        assert not changed, f"host changed by {specs}"

    check()


def _report() -> None:
    rows = [
        (a, TALLY.tried[a], TALLY.refused[a], TALLY.changes[a]) for a in ATTACKS if TALLY.tried[a]
    ]
    if not rows:
        return
    total = ("total", *(sum(r[i] for r in rows) for i in (1, 2, 3)))
    lines = [
        "| attack class | cases tried | refused | host changes found |",
        "|---|---:|---:|---:|",
        *(f"| {a} | {t} | {r} | {c} |" for a, t, r, c in [*rows, total]),
    ]
    print("\n" + "\n".join(lines))
    target = os.environ.get("DOCKYARD_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps({"rows": rows}, indent=1))
