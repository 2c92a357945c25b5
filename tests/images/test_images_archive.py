from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from dockyard.agent.images.build import build_image, busybox_layer, busybox_spec, whiteout_layers
from dockyard.agent.images.errors import ImageError, ImageNotFound, ImageStoreError
from dockyard.agent.images.models import ImageConfig
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.service import ImageService

SKOPEO = shutil.which("skopeo")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")


def skopeo(*args: str) -> str:
    assert SKOPEO is not None
    return subprocess.run(
        [SKOPEO, "--insecure-policy", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture
async def busybox(tmp_path: Path) -> ImageService:
    service = ImageService(tmp_path / "src")
    await build_image(
        service.store, whiteout_layers(), parse_reference("example/wh:1"), busybox_spec()
    )
    return service


async def test_save_then_load_round_trip(busybox: ImageService, tmp_path: Path) -> None:
    original = busybox.resolve("example/wh:1")
    await busybox.tag("example/wh:1", "localhost:5000/wh:copy")
    out = tmp_path / "images.tar"
    await busybox.save(["example/wh:1", "localhost:5000/wh:copy"], out)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= names

    target = ImageService(tmp_path / "dst")
    loaded = await target.load(out)
    assert [image.digest for image in loaded] == [original.digest]
    assert set(loaded[0].references) == {"docker.io/example/wh:1", "localhost:5000/wh:copy"}
    assert target.resolve("localhost:5000/wh:copy").config.cmd == ["sh"]
    assert (target.lower_dirs(loaded[0])[0] / "data" / "opq" / "new").is_file()


@needs_skopeo
async def test_load_docker_save_tarball(busybox: ImageService, tmp_path: Path) -> None:
    ours = tmp_path / "ours.tar"
    await busybox.save(["example/wh:1"], ours)
    docker_tar = tmp_path / "docker.tar"
    # skopeo writes the classic docker save layout: <hex>.json config, <id>/layer.tar
    skopeo("copy", f"oci-archive:{ours}", f"docker-archive:{docker_tar}:example/wh:saved")
    with tarfile.open(docker_tar) as tar:
        names = set(tar.getnames())
        assert "manifest.json" in names and "oci-layout" not in names

    target = ImageService(tmp_path / "dst")
    (image,) = await target.load(docker_tar)
    assert image.references == ("docker.io/example/wh:saved",)
    assert image.id == busybox.resolve("example/wh:1").id  # same config, same image id
    assert (target.lower_dirs(image)[-1] / "bin" / "busybox").is_file()


@needs_skopeo
async def test_load_oci_layout_tarball(busybox: ImageService, tmp_path: Path) -> None:
    ours = tmp_path / "ours.tar"
    await busybox.save(["example/wh:1"], ours)
    oci = tmp_path / "oci.tar"
    skopeo("copy", f"oci-archive:{ours}", f"oci-archive:{oci}:registry.example.com/wh:oci")
    with tarfile.open(oci) as tar:
        assert "manifest.json" not in tar.getnames()
    target = ImageService(tmp_path / "dst")
    (image,) = await target.load(oci)
    assert image.references == ("registry.example.com/wh:oci",)
    assert image.id == busybox.resolve("example/wh:1").id


@needs_skopeo
async def test_saved_tarball_reads_as_docker_archive_and_oci(
    busybox: ImageService, tmp_path: Path
) -> None:
    ours = tmp_path / "ours.tar"
    await busybox.save(["example/wh:1"], ours)
    docker_view = json.loads(skopeo("inspect", "--raw", "--config", f"docker-archive:{ours}"))
    oci_view = json.loads(skopeo("inspect", "--raw", "--config", f"oci-archive:{ours}"))
    assert docker_view["config"]["Cmd"] == ["sh"] == oci_view["config"]["Cmd"]


async def test_load_rejects_other_tarballs(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    with tarfile.open(bogus, "w") as tar:
        tar.add(__file__, "hello.py")
    with pytest.raises(ImageStoreError, match="neither a docker save tarball"):
        await ImageService(tmp_path / "s").load(bogus)


async def test_import_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "hostname").write_text("imported\n")
    tar_path = tmp_path / "rootfs.tar.gz"
    with gzip.open(tar_path, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(rootfs, ".")
    service = ImageService(tmp_path / "store")
    image = await service.import_rootfs(tar_path, "imported:v1", ImageConfig(cmd=["sh"]))
    assert len(image.layers) == 1
    (lower,) = service.lower_dirs(image)
    assert (lower / "etc" / "hostname").read_text() == "imported\n"
    assert (lower / "bin" / "busybox").stat().st_mode & 0o111
    assert service.list()[0].repository == "imported"
    assert service.inspect("imported:v1").config.cmd == ["sh"]


async def test_remove_and_gc_leave_no_orphans(tmp_path: Path) -> None:
    service = ImageService(tmp_path)
    store = service.store
    base = await build_image(store, [busybox_layer()], parse_reference("bb:1"), busybox_spec())
    wh = await build_image(store, whiteout_layers(), parse_reference("wh:1"), busybox_spec())
    await service.tag("wh:1", "wh:2")

    assert await service.remove("wh:1") == ["Untagged: wh:1"]
    with pytest.raises(ImageError, match="must be forced"):
        await service.tag("wh:2", "wh:3")
        await service.remove(wh.id)
    lines = await service.remove(wh.id, force=True)
    assert lines[-1] == f"Deleted: {wh.digest}"
    with pytest.raises(ImageNotFound):
        service.resolve("wh:2")

    kept = {base.digest, base.config_digest, *(lay.digest for lay in base.layers)}
    assert store.blobs.digests() == kept
    assert {p.name for p in store.snapshots_dir.iterdir()} == {
        lay.diff_id[7:] for lay in base.layers
    }

    assert await service.remove("bb:1") == ["Untagged: bb:1", f"Deleted: {base.digest}"]
    assert store.blobs.digests() == set()
    assert list(store.snapshots_dir.iterdir()) == []
    assert list(store.records_dir.iterdir()) == []
    assert service.list() == []
