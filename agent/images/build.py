"""Build OCI images from layers described in Python (busybox, whiteout demo, big).

Used by tests, the local cluster and the benchmarks:

    python -m dockyard.agent.images.build busybox --tag localhost:5000/busybox --push
    python -m dockyard.agent.images.build big --layers 5 --layer-size 20M --output big.tar
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from dockyard.agent.images.authoring import Compression, ImageSpec, LayerWriter, write_image
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Image, ImageConfig, Layer
from dockyard.agent.images.progress import ProgressEvent
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.registry import RegistryConfig
from dockyard.common.logging import configure

__all__ = [
    "Dir",
    "Entry",
    "File",
    "Hardlink",
    "Opaque",
    "RandomFile",
    "Symlink",
    "Tree",
    "Whiteout",
    "big_layers",
    "build_image",
    "busybox_layer",
    "busybox_spec",
    "main",
    "whiteout_layers",
    "write_layer",
]

log = structlog.get_logger(__name__)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


@dataclass(frozen=True)
class File:
    """A regular file with literal content."""

    path: str
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class RandomFile:
    """A file of `size` random (incompressible) bytes, streamed, never held in memory."""

    path: str
    size: int
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    """A directory."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    """A symbolic link."""

    path: str
    target: str


@dataclass(frozen=True)
class Hardlink:
    """A hard link to an earlier entry of the same layer."""

    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    """Deletes `path` (file or directory) of the layers below."""

    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides everything the layers below have in directory `path`."""

    path: str


@dataclass(frozen=True)
class Tree:
    """A host directory copied in under `dest` (ownership and modes kept)."""

    source: Path
    dest: str = ""


Entry = File | RandomFile | Dir | Symlink | Hardlink | Whiteout | Opaque | Tree


def _info(path: str, kind: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.strip("/"))
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = 0
    return info


class _RandomReader:
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        count = self.left if size < 0 else min(size, self.left)
        self.left -= count
        return os.urandom(count)


def _add(tar: tarfile.TarFile, entry: Entry) -> None:
    if isinstance(entry, File):
        info = _info(entry.path, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid)
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))
    elif isinstance(entry, RandomFile):
        info = _info(entry.path, tarfile.REGTYPE, entry.mode)
        info.size = entry.size
        tar.addfile(info, _RandomReader(entry.size))
    elif isinstance(entry, Dir):
        tar.addfile(_info(entry.path, tarfile.DIRTYPE, entry.mode, entry.uid, entry.gid))
    elif isinstance(entry, Symlink | Hardlink):
        kind = tarfile.SYMTYPE if isinstance(entry, Symlink) else tarfile.LNKTYPE
        info = _info(entry.path, kind, 0o777)
        info.linkname = entry.target if isinstance(entry, Symlink) else entry.target.strip("/")
        tar.addfile(info)
    elif isinstance(entry, Whiteout):
        parent, _, name = entry.path.strip("/").rpartition("/")
        tar.addfile(_info(f"{parent}/.wh.{name}" if parent else f".wh.{name}", tarfile.REGTYPE))
    elif isinstance(entry, Opaque):
        tar.addfile(_info(f"{entry.path.strip('/')}/.wh..wh..opq", tarfile.REGTYPE))
    else:
        tar.add(entry.source, arcname=entry.dest.strip("/") or ".", recursive=True)


def write_layer(
    store: ImageStore, entries: Sequence[Entry], compression: Compression = "gzip"
) -> Layer:
    """Write one layer blob into the store (blocking; run it in a thread)."""
    writer = LayerWriter(store.blobs, compression, level=1)
    try:
        for entry in entries:
            _add(writer.tar, entry)
    except BaseException:
        writer.discard()
        raise
    return writer.close()


async def build_image(
    store: ImageStore,
    layers: Sequence[Sequence[Entry]],
    ref: Reference,
    spec: ImageSpec | None = None,
    compression: Compression = "gzip",
) -> Image:
    """Build an image from layer descriptions (bottom first) into the store, named `ref`."""
    spec = spec or ImageSpec()
    with store.lease() as lease:
        built: list[Layer] = []
        for entries in layers:
            layer = await asyncio.to_thread(write_layer, store, entries, compression)
            lease.add(layer.digest, layer.diff_id)
            built.append(layer)
        digest = await asyncio.to_thread(write_image, store.blobs, built, spec, lease.digests)
        image = await store.commit(digest, [ref])
    log.info("image.built", ref=str(ref), digest=image.digest, layers=len(built))
    return image


def busybox_layer(busybox: Path = Path("/bin/busybox")) -> list[Entry]:
    """A busybox rootfs: /bin/busybox, its applet symlinks, /etc/passwd+group, /tmp."""
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    entries: list[Entry] = [
        Dir(d)
        for d in (
            "bin",
            "sbin",
            "usr",
            "usr/bin",
            "usr/sbin",
            "etc",
            "home",
            "var",
            "proc",
            "sys",
            "dev",
        )
    ]
    entries += [Dir("root", 0o700), Dir("tmp", 0o1777), Dir("var/tmp", 0o1777)]
    entries.append(File("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [
        Symlink(path, "/bin/busybox") for path in sorted(set(applets)) if path != "bin/busybox"
    ]
    entries += [File("etc/passwd", PASSWD.encode()), File("etc/group", GROUP.encode())]
    return entries


def busybox_spec() -> ImageSpec:
    """Config of the busybox image: `Cmd ["sh"]` and the default PATH."""
    return ImageSpec(config=ImageConfig(cmd=["sh"], env=[DEFAULT_PATH]), history=["busybox rootfs"])


def whiteout_layers() -> list[list[Entry]]:
    """busybox, then a data layer, then a layer that deletes and hides parts of it.

    Final view: /data/keep/{a,b}; /data/gone and /data/file-gone deleted;
    /data/opq holds only `new` (opaque); /data/replaced is a file again.
    """
    data: list[Entry] = [
        Dir("data"),
        Dir("data/keep"),
        File("data/keep/a", b"a\n"),
        File("data/keep/b", b"b\n"),
        Dir("data/gone"),
        File("data/gone/x", b"x\n"),
        File("data/file-gone", b"bye\n"),
        Dir("data/opq"),
        File("data/opq/old1", b"1\n"),
        File("data/opq/old2", b"2\n"),
    ]
    delete: list[Entry] = [
        Whiteout("data/file-gone"),
        Whiteout("data/gone"),
        Dir("data/opq"),
        Opaque("data/opq"),
        File("data/opq/new", b"new\n"),
    ]
    return [busybox_layer(), data, delete]


def big_layers(count: int, size: int) -> list[list[Entry]]:
    """`count` layers of `size` random bytes each (for pull benchmarks)."""
    return [[Dir("data"), RandomFile(f"data/layer{i}.bin", size)] for i in range(count)]


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    suffix = text[-1:].upper()
    return int(float(text[:-1]) * units[suffix]) if suffix in units else int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dockyard.agent.images.build",
        description="Build a test image and put it in a store, a tarball or a registry.",
    )
    parser.add_argument(
        "kind",
        choices=["busybox", "whiteout", "big"],
        help="busybox: static busybox rootfs; whiteout: 3 layers with "
        "deletions and an opaque dir; big: random-data layers",
    )
    parser.add_argument("--tag", "-t", default=None, help="image reference (default: KIND:latest)")
    parser.add_argument("--layers", type=int, default=5, help="big: number of layers")
    parser.add_argument("--layer-size", default="20M", help="big: bytes per layer (K/M/G)")
    parser.add_argument(
        "--compression",
        choices=["gzip", "none"],
        default=None,
        help="layer compression (default: gzip; none for big)",
    )
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--store", type=Path, help="image store directory to build into")
    out.add_argument(
        "--output",
        "-o",
        type=Path,
        help="tarball with both an OCI layout and docker save's manifest.json",
    )
    out.add_argument("--push", action="store_true", help="push to the tag's registry")
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        help="registry host spoken to over plain HTTP (repeatable)",
    )
    parser.add_argument("--auth-file", type=Path, default=None, help="docker config.json")
    parser.add_argument("--verbose", "-v", action="store_true", help="log to stderr")
    return parser


def _layers_for(args: argparse.Namespace) -> tuple[list[list[Entry]], ImageSpec, Compression]:
    if args.kind == "busybox":
        return [busybox_layer()], busybox_spec(), args.compression or "gzip"
    if args.kind == "whiteout":
        return whiteout_layers(), busybox_spec(), args.compression or "gzip"
    spec = ImageSpec(config=ImageConfig(cmd=["sh"], env=[DEFAULT_PATH]))
    return big_layers(args.layers, _size(args.layer_size)), spec, args.compression or "none"


def _print_progress(event: ProgressEvent) -> None:
    print(f"{event.id}: {event.status} {event.current}/{event.total}", file=sys.stderr)


async def _run(args: argparse.Namespace) -> str:
    ref = parse_reference(args.tag or f"{args.kind}:latest")
    layers, spec, compression = _layers_for(args)
    config = RegistryConfig(
        insecure_registries=frozenset(args.insecure_registry), auth_file=args.auth_file
    )
    with tempfile.TemporaryDirectory(prefix="dockyard-build-") as tmp:
        service = ImageService(args.store or Path(tmp), config)
        image = await build_image(service.store, layers, ref, spec, compression)
        if args.output:
            await service.save([str(ref)], args.output)
        elif args.push:
            await service.push(ref, _print_progress)
    return image.digest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: build an image; prints its manifest digest."""
    args = _parser().parse_args(argv)
    configure(level="debug" if args.verbose else "warning")
    print(asyncio.run(_run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
