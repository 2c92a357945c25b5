"""`docker commit` against a runc agent's Docker API, with Debian's docker CLI and Docker's
Python SDK: the container's writable layer (new files, deletions as whiteouts, an
opaque directory) becomes a layer of a new image that `docker run` runs."""

from __future__ import annotations

import os
import struct
import uuid

import pytest

from tests.dockerapi.conftest import BUSYBOX, DockerAgent

pytestmark = [pytest.mark.runc]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_cli_commit_keeps_changes_deletions_and_config(docker_agent: DockerAgent) -> None:
    name = _name("commit")
    image = f"committed/{name}:v1"
    script = (
        "echo hello > /hello && rm /etc/group && mkdir -p /data/sub && "
        "echo old > /data/sub/old && ln -s /hello /link"
    )
    docker_agent.ok("run", "--name", name, "-e", "FROM_RUN=yes", BUSYBOX, "sh", "-c", script)
    try:
        image_id = docker_agent.ok(
            "commit",
            "--author",
            "tester",
            "--message",
            "a message",
            "--change",
            'CMD ["cat", "/hello"]',
            "--change",
            "ENV GREETING=hi",
            "--change",
            "LABEL purpose=test",
            name,
            image,
        ).strip()
        assert image_id.startswith("sha256:")
        listed = docker_agent.ok("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
        assert f"{image} {image_id[7:19]}" in listed
        assert docker_agent.ok("run", "--rm", image) == "hello\n"
        out = docker_agent.ok(
            "run",
            "--rm",
            image,
            "sh",
            "-c",
            "test ! -e /etc/group && echo $GREETING $FROM_RUN && cat /data/sub/old "
            "&& readlink /link && test -e /etc/passwd && echo kept",
        )
        assert out == "hi yes\nold\n/hello\nkept\n"
        inspect = docker_agent.ok(
            "image", "inspect", "--format", "{{.Author}}|{{.Comment}}|{{.Config.Labels}}", image
        )
        assert inspect.strip() == "tester|a message|map[purpose:test]"
    finally:
        docker_agent.docker("rm", "-f", name)
        docker_agent.docker("rmi", image)


def test_cli_commit_opaque_directory(docker_agent: DockerAgent) -> None:
    """A directory removed and made again hides what the image had in it."""
    base, name = _name("opqbase"), _name("opq")
    base_image, image = f"committed/{base}:v1", f"committed/{name}:v1"
    docker_agent.ok("run", "--name", base, BUSYBOX, "sh", "-c", "mkdir /d && touch /d/a /d/b")
    try:
        docker_agent.ok("commit", base, base_image)
        docker_agent.ok("run", "--name", name, base_image, "sh", "-c", "rm -r /d && mkdir /d")
        docker_agent.ok("commit", name, image)
        assert docker_agent.ok("run", "--rm", image, "ls", "-A", "/d") == ""
        assert docker_agent.ok("run", "--rm", base_image, "ls", "/d") == "a\nb\n"
    finally:
        docker_agent.docker("rm", "-f", base, name)
        docker_agent.docker("rmi", image, base_image)


def test_sdk_commit_of_running_container(docker_agent: DockerAgent) -> None:
    client = docker_agent.client()
    name = _name("sdkcommit")
    container = client.containers.run(
        BUSYBOX, ["sh", "-c", "echo made > /made && sleep 300"], name=name, detach=True
    )
    try:
        for _ in range(100):
            if container.exec_run(["cat", "/made"]).output == b"made\n":
                break
        image = container.commit(
            repository="committed/sdk", tag=name, changes=["WORKDIR /tmp", "USER nobody"]
        )
        assert f"committed/sdk:{name}" in image.tags
        assert image.attrs["Config"]["WorkingDir"] == "/tmp"
        out = client.containers.run(
            f"committed/sdk:{name}", ["sh", "-c", "cat /made; pwd; id -u"], remove=True
        )
        assert out == b"made\n/tmp\n65534\n"
    finally:
        container.remove(force=True)
        client.images.remove(f"committed/sdk:{name}")
        client.close()


def test_commit_refuses_bad_changes(docker_agent: DockerAgent) -> None:
    name = _name("badchange")
    docker_agent.ok("create", "--name", name, BUSYBOX, "true")
    try:
        done = docker_agent.docker("commit", "--change", "RUN echo no", name, "committed/bad:x")
        assert done.returncode != 0
        assert "RUN is not a valid change command" in done.stderr
    finally:
        docker_agent.docker("rm", "-f", name)


def test_commit_keeps_file_capabilities(docker_agent: DockerAgent) -> None:
    """What `setcap` leaves on a file the container wrote (set here from the host on the
    container's upper dir: busybox has no setcap) is in the committed image's layer and
    in the image store's snapshot of it."""
    name = _name("caps")
    image = f"committed/{name}:v1"
    tool = f"tool-{name}"
    capability = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # net_bind_service
    docker_agent.ok("run", "--name", name, BUSYBOX, "sh", "-c", f"echo tool > /{tool}")
    try:
        cid = docker_agent.ok("inspect", "--format", "{{.Id}}", name).strip()
        uppers = list((docker_agent.agent.state_dir / "runtime").glob(f"**/{cid}/upper"))
        assert len(uppers) == 1, uppers
        os.setxattr(uppers[0] / tool, "security.capability", capability)
        os.setxattr(uppers[0] / tool, "user.note", b"kept")
        docker_agent.ok("commit", name, image)
        assert docker_agent.ok("run", "--rm", image, "cat", f"/{tool}") == "tool\n"
        snapshots = docker_agent.agent.state_dir / "images" / "snapshots"
        found = list(snapshots.glob(f"*/{tool}"))
        assert len(found) == 1, found
        assert os.getxattr(found[0], "security.capability") == capability
        assert os.getxattr(found[0], "user.note") == b"kept"
    finally:
        docker_agent.docker("rm", "-f", name)
        docker_agent.docker("rmi", image)


def test_commit_of_a_too_deep_tree_is_409(docker_agent: DockerAgent) -> None:
    """A container that made 1200 nested directories: commit answers 409 naming the path
    and the limit (the image store unpacks at most 256 levels), not a 500."""
    name = _name("deep")
    script = "mkdir -p $(printf 'd/%.0s' $(seq 1200))"
    docker_agent.ok("run", "--name", name, BUSYBOX, "sh", "-c", script)
    try:
        done = docker_agent.docker("commit", name, f"committed/{name}:v1")
        assert done.returncode != 0
        assert "at most 256" in done.stderr and "d/d/d/" in done.stderr, done.stderr
    finally:
        docker_agent.docker("rm", "-f", name)
