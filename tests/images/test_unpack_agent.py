"""Hostile image archives through a real `dockyard-agent --runtime runc`: `Load` and `Import`.

A handful of crafted `docker save` archives (and rootfs tarballs for `Import`) whose
one layer attacks the node: a directory later replaced by a symlink to a host file,
whiteouts of `.` and `..`, writes and hard links through symlinks, opaque markers
through symlinks, escapes. Each answer must be OK or INVALID_ARGUMENT; afterwards a
sentinel directory beside the agent's state dir is unchanged (inode, mode, owner,
ctime, bytes), the busybox image the agent pulled first still has every snapshot file
as it was, a refused archive left no image and no temporary snapshot, and the agent
still answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.v1 import images_pb2 as ipb
from tests.agent.conftest import (  # noqa: F401 - fixtures
    Agent,
    agent,
    agent_factory,
    image_registry,
)
from tests.images.test_unpack_hostile import tree_state
from tests.runtime.conftest import _have_runc

pytestmark = pytest.mark.skipif(not _have_runc(), reason="needs root, runc, conmon, busybox")

Item = tuple[str, str, str, int]  # kind, name, link, mode

SENTINEL = "@SENTINEL@"
# from a snapshot root (<tmp>/agent0/images/snapshots/.tmp-x), four levels up is <tmp>
UP = "../../../../sentinel"

ATTACKS: dict[str, list[Item]] = {
    "dir then symlink to a host file": [
        ("dir", "d", "", 0o4777),
        ("file", "d/x", "", 0o644),
        ("sym", "d", f"{SENTINEL}/file", 0),
    ],
    "dir then symlink to a host dir": [
        ("dir", "a/b", "", 0o777),
        ("sym", "a", f"{SENTINEL}/dir", 0),
    ],
    "whiteout of ..": [("file", ".wh...", "", 0o644)],
    "whiteout of .": [("file", "x/.wh..", "", 0o644)],
    "write through a symlink": [("sym", "s", SENTINEL, 0), ("file", "s/evil", "", 0o4777)],
    "relative symlink escape": [("sym", "s", UP, 0), ("file", "s/file", "", 0o777)],
    "hard link to a host file": [("link", "h", f"{SENTINEL}/file", 0)],
    "hard link through a symlink": [("sym", "s", SENTINEL, 0), ("link", "h", "s/file", 0)],
    "opaque through a symlink": [
        ("sym", "s", f"{SENTINEL}/dir", 0),
        ("file", "s/.wh..wh..opq", "", 0o644),
    ],
    "whiteout of a symlink": [("sym", "s", f"{SENTINEL}/dir", 0), ("file", ".wh.s", "", 0o644)],
    "escape with ..": [("file", "../../../../sentinel/file", "", 0o777)],
    "absolute name": [("file", f"{SENTINEL}/file", "", 0o777)],
    # logged from the chrooted thread with the agent's own logging setup: kept, harmless
    "aufs bookkeeping and a fifo": [
        ("file", ".wh..wh.plnk/1.2", "", 0o644),
        ("fifo", "p", "", 0o4666),
    ],
}


def layer_tar(items: list[Item], sentinel: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, link, mode in items:
            info = tarfile.TarInfo(name.replace(SENTINEL, str(sentinel)))
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = link.replace(SENTINEL, str(sentinel))
            info.mode = mode
            data = b"pwned\n" if kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def docker_archive(path: Path, layer: bytes, tag: str) -> Path:
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        [{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("config.json", config),
            ("layer.tar", layer),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_hostile_archives_change_nothing_on_the_node(agent: Agent, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    sentinel = tmp_path / "sentinel"
    (sentinel / "dir").mkdir(parents=True)
    (sentinel / "file").write_bytes(b"host file\n")
    (sentinel / "dir" / "inner").write_bytes(b"inner\n")
    os.chmod(sentinel / "file", 0o640)
    snapshots = agent.state_dir / "images" / "snapshots"
    before = {"sentinel": tree_state(sentinel), "snapshots": tree_state(snapshots)}
    del before["snapshots"]["."]  # the snapshots directory itself gains entries
    base_images = {i.digest for i in agent.images.List(ipb.ListImagesRequest()).images}
    tally: dict[str, Counter[str]] = {
        "tried": Counter(),
        "refused": Counter(),
        "changes": Counter(),
    }

    for index, (attack, items) in enumerate(ATTACKS.items()):
        layer = layer_tar(items, sentinel)
        tag = f"hostile/case{index}:latest"
        archive = docker_archive(tmp_path / f"case{index}.tar", layer, tag)
        rootfs = tmp_path / f"rootfs{index}.tar"
        rootfs.write_bytes(layer)
        calls = {
            "load": ipb.LoadImagesRequest(path=str(archive)),
            "import": ipb.ImportImageRequest(path=str(rootfs), reference=tag + "i"),
        }
        for verb, request in calls.items():
            refused = _answer(agent, request)
            key = f"{verb}: {attack}"
            tally["tried"][key] += 1
            tally["refused"][key] += refused
            after = {"sentinel": tree_state(sentinel), "snapshots": tree_state(snapshots)}
            changed = after["sentinel"] != before["sentinel"] or any(
                after["snapshots"].get(p) != v for p, v in before["snapshots"].items()
            )
            tally["changes"][key] += changed
            assert not changed, f"{key}: the host changed"
            leftovers = [p for p in os.listdir(snapshots) if p.startswith(".")]
            assert leftovers == [], f"{key}: left {leftovers}"
            listed = agent.images.List(ipb.ListImagesRequest()).images
            assert base_images <= {i.digest for i in listed}
            names = {i.repository.removeprefix("docker.io/") for i in listed}
            assert (f"hostile/case{index}" in names) is not refused, (key, names)
    _print(tally)
    assert sum(tally["changes"].values()) == 0
    assert sum(tally["refused"].values()) > 0


def _answer(agent: Agent, request: Any) -> bool:  # noqa: F811 - not the fixture
    """Whether the call was refused (INVALID_ARGUMENT); any other failure fails the test."""
    try:
        if isinstance(request, ipb.LoadImagesRequest):
            agent.images.Load(request, timeout=60)
        else:
            agent.images.Import(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert "layer" in (exc.details() or ""), exc.details()
        return True
    return False


def _print(tally: dict[str, Counter[str]]) -> None:
    lines = [
        "| attack (agent API) | tried | refused | host changes found |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {key} | {tally['tried'][key]} | {tally['refused'][key]} | {tally['changes'][key]} |"
        for key in tally["tried"]
    ]
    print("\n" + "\n".join(lines))
