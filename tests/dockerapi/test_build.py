"""`docker build` (the legacy builder's `POST /build`) against a runc agent's Docker API,
with clients we did not write: Docker's Python SDK (`images.build`) and Debian's docker
CLI with `DOCKER_BUILDKIT=0`. Hostile contexts (a symlink to /etc/shadow, a `../`
member, an absolute member) are refused or never read through, and a failed build
leaves no container and no intermediate image behind."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.agent.conftest import ImageRegistry
from tests.dockerapi.conftest import BUSYBOX, DOCKER, DockerAgent

pytestmark = [pytest.mark.runc]

DOCKERFILE = """\
ARG BASE=busybox
FROM ${BASE}:latest AS first
ARG GREETING=hello
ENV TARGET=world \\
    EXTRA="two words"
WORKDIR /app
COPY --chown=nobody:nobody files/ ./files/
COPY top.txt glob-*.txt /app/
RUN echo "$GREETING $TARGET" > /app/greeting && rm /etc/group \\
    && echo built-output
RUN ["sh", "-c", "echo exec form > /app/exec"]
LABEL purpose="a test" stage=one
EXPOSE 8080/tcp
USER nobody
CMD ["cat", "/app/greeting"]
"""


def _tar(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def _context() -> dict[str, bytes]:
    return {
        "Dockerfile": DOCKERFILE.encode(),
        "files/a.txt": b"a\n",
        "files/sub/b.txt": b"b\n",
        "top.txt": b"top\n",
        "glob-1.txt": b"1\n",
        "glob-2.txt": b"2\n",
    }


def _build_error(client: Any, context: bytes, **kwargs: Any) -> str:
    """The error line of a failing build, the whole stream read (the SDK's high-level
    build leaves the response open when it raises)."""
    chunks = list(
        client.api.build(fileobj=io.BytesIO(context), custom_context=True, decode=True, **kwargs)
    )
    errors = [c["error"] for c in chunks if "error" in c]
    assert errors, chunks
    return str(errors[-1])


def _leftovers(agent: DockerAgent) -> tuple[str, str]:
    containers = agent.ok("ps", "-aq", "--filter", "label=dockyard.build")
    dangling = agent.ok("images", "-q", "--filter", "dangling=true")
    return containers.strip(), dangling.strip()


def test_sdk_build_runs_every_instruction(docker_agent: DockerAgent) -> None:
    client = docker_agent.client()
    tag = f"built/sdk-{uuid.uuid4().hex[:8]}:v1"
    before = _leftovers(docker_agent)
    try:
        image, logs = client.images.build(
            fileobj=io.BytesIO(_tar(_context())),
            custom_context=True,
            encoding="gzip",
            tag=tag,
            buildargs={"GREETING": "hi"},
            labels={"from.sdk": "yes"},
        )
        text = "".join(chunk.get("stream", "") for chunk in logs)
        assert "Step 1/" in text and "built-output" in text
        assert f"Successfully tagged {tag}" in text
        assert tag in image.tags
        config = image.attrs["Config"]
        assert config["Cmd"] == ["cat", "/app/greeting"]
        assert config["User"] == "nobody"
        assert config["WorkingDir"] == "/app"
        assert "EXTRA=two words" in config["Env"]
        assert config["Labels"] == {"purpose": "a test", "stage": "one", "from.sdk": "yes"}
        assert "8080/tcp" in config["ExposedPorts"]
        assert client.containers.run(tag, remove=True) == b"hi world\n"
        listing = client.containers.run(
            tag,
            [
                "sh",
                "-c",
                "cat files/a.txt files/sub/b.txt top.txt glob-1.txt glob-2.txt exec; "
                "stat -c %u files/a.txt; test ! -e /etc/group && echo gone",
            ],
            remove=True,
        )
        assert listing == b"a\nb\ntop\n1\n2\nexec form\n65534\ngone\n"
        assert _leftovers(docker_agent) == before
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_cli_build_with_legacy_builder(docker_agent: DockerAgent, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS base\n"
        "RUN echo from-base > /base.txt\n"
        "FROM busybox\n"
        "COPY --from=base /base.txt /copied.txt\n"
        "COPY --from=0 /base.txt /by-index.txt\n"
        "ADD layer.tar.gz /unpacked/\n"
        'CMD ["sh", "-c", "cat /copied.txt /by-index.txt /unpacked/inner.txt"]\n'
    )
    (tmp_path / "layer.tar.gz").write_bytes(_tar({"inner.txt": b"inner\n"}))
    tag = f"built/cli-{uuid.uuid4().hex[:8]}"
    env = docker_agent.env() | {"DOCKER_BUILDKIT": "0"}
    done = subprocess.run(
        [DOCKER, "-H", docker_agent.host, "build", "-t", tag, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    try:
        assert done.returncode == 0, done.stderr + done.stdout + docker_agent.agent.log()
        assert "Successfully built" in done.stdout
        assert docker_agent.ok("run", "--rm", tag) == "from-base\nfrom-base\ninner\n"
    finally:
        docker_agent.docker("rmi", tag)


def test_failed_run_reports_the_step_and_cleans_up(docker_agent: DockerAgent) -> None:
    client = docker_agent.client()
    before = _leftovers(docker_agent)
    context = {"Dockerfile": b"FROM busybox\nRUN touch /x\nRUN echo failing; exit 3\n"}
    assert "returned a non-zero code: 3" in _build_error(client, _tar(context))
    assert _leftovers(docker_agent) == before
    client.close()


def test_symlink_to_host_file_is_never_read(docker_agent: DockerAgent) -> None:
    """A context symlink to /etc/shadow is copied as a link: the image never holds the
    host's file (COPY of it names a link, not its content)."""
    link = tarfile.TarInfo("secret")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    up = tarfile.TarInfo("dir/up")
    up.type, up.linkname = tarfile.SYMTYPE, "../" * 40 + "etc"  # the host's /etc
    context = {"Dockerfile": b"FROM busybox\nCOPY secret /secret\nCOPY dir/ /dir/\n"}
    client = docker_agent.client()
    tag = f"built/link-{uuid.uuid4().hex[:8]}"
    try:
        client.images.build(
            fileobj=io.BytesIO(_tar(context, [link, up])), custom_context=True, tag=tag
        )
        out = client.containers.run(
            tag,
            ["sh", "-c", "readlink /secret; readlink /dir/up; ls /dir/up/ | head -1"],
            remove=True,
        )
        lines = out.decode().splitlines()
        assert lines[:2] == ["/etc/shadow", "../" * 40 + "etc"]  # links, inside the image
        host_shadow = Path("/etc/shadow").read_bytes()
        assert host_shadow not in out
        via = {"Dockerfile": b"FROM busybox\nCOPY dir/up/shadow /stolen\n"}
        assert "no such file" in _build_error(client, _tar(via, [up]))
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_destination_through_an_image_symlink(docker_agent: DockerAgent) -> None:
    """A usr-merged image (`/lnk -> usr/lib/real`, as Debian's `/lib -> usr/lib`): COPY to
    `/lnk/x`, to `/lnk`, and under `WORKDIR /lnk/app` land in `/usr/lib/real`, `COPY
    --from` reads through it; a link `/evil -> /../../../../etc` leads to the image's
    /etc, never the host's."""
    marker = f"dockyard-{uuid.uuid4().hex[:8]}"
    dockerfile = (
        "FROM busybox AS links\n"
        "RUN mkdir /real && echo src > /real/src && ln -s /real /lnk\n"
        "FROM busybox\n"
        "RUN mkdir -p /usr/lib/real && ln -s usr/lib/real /lnk && ln -s /../../../../etc /evil\n"
        "COPY one /lnk/one\n"
        "COPY --from=links /lnk/src /from-image\n"
        "COPY two /lnk\n"
        "WORKDIR /lnk/app\n"
        "COPY three .\n"
        f"COPY one /evil/{marker}\n"
    )
    context = {"Dockerfile": dockerfile.encode(), "one": b"1\n", "two": b"2\n", "three": b"3\n"}
    client = docker_agent.client()
    tag = f"built/usrmerge-{uuid.uuid4().hex[:8]}"
    try:
        client.images.build(fileobj=io.BytesIO(_tar(context)), custom_context=True, tag=tag)
        out = client.containers.run(
            tag,
            [
                "sh",
                "-c",
                "cat /from-image /usr/lib/real/one /usr/lib/real/two /usr/lib/real/app/three "
                f"/etc/{marker}"
                "; readlink /lnk; readlink /evil; ls",
            ],
            remove=True,
        )
        assert out.decode().splitlines() == [
            "src",  # COPY --from through the other image's link
            "1",
            "2",
            "3",
            "1",
            "usr/lib/real",  # the links stay links
            "/../../../../etc",
            "three",  # the working dir, /lnk/app
        ]
        assert not Path("/etc", marker).exists()
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_too_deep_run_tree_fails_naming_it(docker_agent: DockerAgent) -> None:
    """A RUN that makes 1200 nested directories (past Python's recursion limit, past the
    256 levels the image store unpacks): the build fails naming the path and the limit,
    and leaves nothing behind, the container's deep tree included."""
    client = docker_agent.client()
    before = _leftovers(docker_agent)
    deep = "RUN mkdir -p $(printf 'd/%.0s' $(seq 1200))\n"
    error = _build_error(client, _tar({"Dockerfile": b"FROM busybox\n" + deep.encode()}))
    assert "d/d/d/" in error and "at most 256" in error, error
    assert _leftovers(docker_agent) == before
    client.close()
    trash = docker_agent.agent.state_dir / "runtime" / "trash"
    for _ in range(100):  # the removed container's directory goes in the background
        if not trash.is_dir() or not any(trash.iterdir()):
            break
        time.sleep(0.1)
    assert not trash.is_dir() or not any(trash.iterdir())


def test_copy_keeps_file_capabilities(docker_agent: DockerAgent) -> None:
    """A context file with a file capability and a user xattr (PAX `SCHILY.xattr.*`, as
    docker's CLI sends `setcap`'d files): COPY carries both through the context, the copy
    and the layer, and the image store's snapshot of the layer has them."""
    name = f"tool-{uuid.uuid4().hex[:8]}"
    capability = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # net_bind_service
    tool = tarfile.TarInfo(name)
    tool.size, tool.mode = 5, 0o755
    tool.pax_headers = {
        "SCHILY.xattr.security.capability": capability.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.origin": "context",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dockerfile = f"FROM busybox\nCOPY {name} /usr/local/bin/\n".encode()
        header = tarfile.TarInfo("Dockerfile")
        header.size = len(dockerfile)
        tar.addfile(header, io.BytesIO(dockerfile))
        tar.addfile(tool, io.BytesIO(b"tool\n"))
    client = docker_agent.client()
    tag = f"built/caps-{uuid.uuid4().hex[:8]}"
    try:
        client.images.build(fileobj=io.BytesIO(buffer.getvalue()), custom_context=True, tag=tag)
        assert client.containers.run(tag, ["cat", f"/usr/local/bin/{name}"], remove=True) == (
            b"tool\n"
        )
        snapshots = docker_agent.agent.state_dir / "images" / "snapshots"
        found = list(snapshots.glob(f"*/usr/local/bin/{name}"))
        assert len(found) == 1, found
        assert os.getxattr(found[0], "security.capability") == capability
        assert os.getxattr(found[0], "user.origin") == b"context"
    finally:
        client.images.remove(tag, force=True)
        client.close()


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a/../../escape.txt"])
def test_context_member_outside_is_refused(docker_agent: DockerAgent, name: str) -> None:
    context = _tar({"Dockerfile": b"FROM busybox\n", name: b"x\n"})
    client = docker_agent.client()
    with pytest.raises(docker.errors.APIError) as raised:
        client.images.build(fileobj=io.BytesIO(context), custom_context=True)
    assert "build context" in str(raised.value)
    client.close()
    assert BUSYBOX  # the agent still serves
    assert docker_agent.ok("images", "-q", BUSYBOX)


def test_run_step_is_not_privileged(docker_agent: DockerAgent) -> None:
    """RUN runs like any container of the agent: no CAP_SYS_ADMIN, so no mount."""
    client = docker_agent.client()
    context = {"Dockerfile": b"FROM busybox\nRUN mkdir -p /m && mount -t tmpfs none /m\n"}
    assert "returned a non-zero code" in _build_error(client, _tar(context))
    client.close()


def _build_dirs(agent: DockerAgent) -> list[str]:
    tmp = agent.agent.state_dir / "tmp"
    return sorted(p.name for p in tmp.glob("build-*")) if tmp.is_dir() else []


def _build_until_its_run_started(
    agent: DockerAgent, tmp_path: Path
) -> tuple[subprocess.Popen[str], list[str]]:
    """`docker build` (legacy builder) of a RUN step that sleeps, read until the step
    printed "started": the CLI process (running; the caller kills it) and its lines."""
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nCOPY Dockerfile /x\nRUN echo started && sleep 120\n"
    )
    cli = subprocess.Popen(
        [DOCKER, "-H", agent.host, "build", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=agent.env() | {"DOCKER_BUILDKIT": "0"},
    )
    seen = []
    try:
        assert cli.stdout is not None
        for row in cli.stdout:
            seen.append(row)
            if row.strip() == "started":
                break
    except BaseException:
        cli.kill()
        cli.communicate()
        raise
    return cli, seen


def test_client_gone_mid_run_cleans_up(docker_agent: DockerAgent, tmp_path: Path) -> None:
    """The CLI killed while a RUN step runs: its container, the intermediate images
    and the build's directory go."""
    before = _leftovers(docker_agent)
    cli, seen = _build_until_its_run_started(docker_agent, tmp_path)
    try:
        assert any("Running in" in row for row in seen), seen
        running = docker_agent.ok("ps", "-q", "--filter", "label=dockyard.build").strip()
        assert running
    finally:
        cli.kill()
        cli.communicate()
    for _ in range(300):
        if _leftovers(docker_agent) == before and not _build_dirs(docker_agent):
            break
        time.sleep(0.1)
    assert _leftovers(docker_agent) == before
    assert _build_dirs(docker_agent) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(docker_agent.agent.state_dir / "tmp") not in mounts


COMPOSE = "/usr/bin/docker-compose"


@pytest.mark.skipif(not Path(COMPOSE).exists(), reason="needs Debian's docker-compose")
def test_compose_build(docker_agent: DockerAgent, tmp_path: Path) -> None:
    """docker-compose 1.29's `build:` (with args) through the legacy builder's API."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text(
        'FROM busybox\nARG WORD=unset\nRUN echo "$WORD" > /word\nCMD ["cat", "/word"]\n'
    )
    (tmp_path / "docker-compose.yml").write_text(
        'version: "3.7"\nservices:\n  app:\n    build:\n      context: ./app\n'
        "      args:\n        WORD: composed\n"
    )
    name = f"dyb{uuid.uuid4().hex[:6]}"
    env = {**docker_agent.env(), "DOCKER_HOST": docker_agent.host, "DOCKER_BUILDKIT": "0"}

    def compose(*args: str) -> str:
        done = subprocess.run(
            [COMPOSE, "--no-ansi", "-p", name, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    try:
        assert "Successfully built" in compose("build")
        assert docker_agent.ok("run", "--rm", f"{name}_app") == "composed\n"
    finally:
        compose("down", "--rmi", "local")
    assert f"{name}_app" not in docker_agent.ok("images", "--format", "{{.Repository}}")


def test_layer_cache(docker_agent: DockerAgent) -> None:
    """A second build reuses RUN and COPY steps (`Using cache`, RUN not run again); a
    changed file runs COPY and what follows again; nocache runs everything."""
    client = docker_agent.client()
    tag = f"built/cache-{uuid.uuid4().hex[:8]}"
    dockerfile = (
        b'FROM busybox\nENV A=1\nRUN echo ran""-first; cat /proc/sys/kernel/random/uuid > /id\n'
        b'COPY data.txt /data.txt\nRUN echo ran""-second; cat /data.txt > /copy\n'
    )

    def build(data: bytes, **kwargs: Any) -> tuple[str, bytes]:
        context = _tar({"Dockerfile": dockerfile, "data.txt": data})
        _, logs = client.images.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=tag, **kwargs
        )
        text = "".join(chunk.get("stream", "") for chunk in logs)
        return text, client.containers.run(tag, ["cat", "/id", "/copy"], remove=True)

    try:
        first, out1 = build(b"one\n")
        assert "ran-first" in first and "Using cache" not in first
        second, out2 = build(b"one\n")
        assert second.count("Using cache") == 3, second
        assert "ran-first" not in second and "ran-second" not in second
        assert out2 == out1
        third, out3 = build(b"two\n")
        assert third.count("Using cache") == 1, third
        assert "ran-second" in third and "ran-first" not in third
        assert out3.splitlines()[0] == out1.splitlines()[0]
        assert out3.splitlines()[1] == b"two"
        fourth, _ = build(b"two\n", nocache=True)
        assert "Using cache" not in fourth and "ran-first" in fourth
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_target_and_scratch_stage(docker_agent: DockerAgent) -> None:
    """`target` stops at a stage; a `scratch` stage holds only what was copied in."""
    client = docker_agent.client()
    tag = f"built/target-{uuid.uuid4().hex[:8]}"
    dockerfile = (
        b"FROM busybox AS tools\nRUN echo tools > /tools.txt\n"
        b"FROM scratch AS bare\nCOPY --from=tools /tools.txt /bin/busybox /\n"
        b'CMD ["/busybox", "cat", "/tools.txt"]\n'
        b"FROM busybox\nRUN echo final > /final.txt\n"
    )
    try:
        context = _tar({"Dockerfile": dockerfile})
        image, _ = client.images.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=tag, target="bare"
        )
        assert len(image.attrs["RootFS"]["Layers"]) == 1
        assert client.containers.run(tag, remove=True) == b"tools\n"
        missing = _build_error(client, _tar({"Dockerfile": b"FROM busybox\n"}), target="nope")
        assert "failed to reach build target nope" in missing
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_sdk_build_from_path_with_dockerignore(docker_agent: DockerAgent, tmp_path: Path) -> None:
    """`images.build(path=...)`: the SDK tars the directory itself (its .dockerignore
    applied); ADD of a URL is refused with a message naming the step."""
    (tmp_path / "Dockerfile").write_text('FROM busybox\nCOPY . /ctx/\nCMD ["ls", "/ctx"]\n')
    (tmp_path / ".dockerignore").write_text("secret.txt\n")
    (tmp_path / "kept.txt").write_text("kept\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    client = docker_agent.client()
    tag = f"built/path-{uuid.uuid4().hex[:8]}"
    try:
        client.images.build(path=str(tmp_path), tag=tag)
        listed = client.containers.run(tag, ["ls", "-A", "/ctx"], remove=True).split()
        assert b"kept.txt" in listed and b"Dockerfile" in listed
        assert b"secret.txt" not in listed
        url = _tar({"Dockerfile": b"FROM busybox\nADD https://example.com/x /x\n"})
        assert "ADD from a URL is not supported" in _build_error(client, url)
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_agent_restart_mid_build_cleans_up(docker_agent: DockerAgent, tmp_path: Path) -> None:
    """The agent killed while a RUN step runs (its container lives on with conmon, the
    build's directory stays): the restarted agent removes both."""
    cli, _ = _build_until_its_run_started(docker_agent, tmp_path)
    try:
        assert _build_dirs(docker_agent)
        docker_agent.agent.crash()
    finally:
        cli.kill()
        cli.communicate()
    docker_agent.agent.start()
    for _ in range(300):
        if not _build_dirs(docker_agent) and not _leftovers(docker_agent)[0]:
            break
        time.sleep(0.1)
    assert _leftovers(docker_agent)[0] == ""
    assert _build_dirs(docker_agent) == []
    assert str(docker_agent.agent.state_dir / "tmp") not in Path("/proc/self/mountinfo").read_text()
    docker_agent.ok("image", "prune", "-f")


def test_from_pulls_a_missing_image(
    docker_agent: DockerAgent, image_registry: ImageRegistry
) -> None:
    """FROM an image the store lacks pulls it (`pull=1` pulls one it has)."""
    client = docker_agent.client()
    ref = image_registry.busybox
    tag = f"built/pulled-{uuid.uuid4().hex[:8]}"
    try:
        docker_agent.docker("rmi", ref)  # busybox:latest keeps the content
        context = _tar({"Dockerfile": f"FROM {ref}\nRUN echo pulled > /p\n".encode()})
        _, logs = client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag)
        assert any("Pulling" in chunk.get("stream", "") for chunk in logs)
        assert ref in docker_agent.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
        _, logs = client.images.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=tag, pull=True
        )
        assert any("Pulling" in chunk.get("stream", "") for chunk in logs)
        assert client.containers.run(tag, ["cat", "/p"], remove=True) == b"pulled\n"
    finally:
        client.images.remove(tag, force=True)
        client.close()
