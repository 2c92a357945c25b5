"""Fixtures for the end-to-end CLI tests: a real registry and a real runc agent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, Daemon
from tests.images.conftest import RegistryServer, registry
from tests.ports import free_port

__all__ = ["AgentUnderTest", "registry"]


def have_runc() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("runc") is not None
        and shutil.which("conmon") is not None
        and Path("/bin/busybox").exists()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if have_runc():
        return
    skip = pytest.mark.skip(reason="needs root, runc, conmon and /bin/busybox")
    for item in items:
        if "runc" in item.keywords and "tests/cli/" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class AgentUnderTest:
    address: str
    daemon: Daemon
    config_dir: Path

    def cli(
        self, *args: str, timeout: float = 60, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`dockyard -H <agent> ARGS`, as a user runs it (not a terminal: plain output);
        `input_text` is its stdin (none by default)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env["DOCKYARD_CONFIG"] = str(self.config_dir)
        stdin = {"input": input_text} if input_text is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(
            [str(BIN / "dockyard"), "-H", self.address, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            **stdin,
        )  # type: ignore[call-overload]

    def ok(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = self.cli(*args, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(
                f"dockyard {' '.join(args)} exited {result.returncode}: {result.stderr}\n"
                f"--- agent log ---\n{self.daemon.log()[-4000:]}"
            )
        return result


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentUnderTest]:
    """`dockyard-agent run --runtime runc` with no controller to reach; every container,
    mount and cgroup it made is removed at teardown, also when the test fails."""
    from tests.runtime.conftest import cleanup_everything

    state = tmp_path / "agent-state"
    cgroup = f"dockyard-cli-test-{uuid.uuid4().hex[:8]}"
    address = f"127.0.0.1:{free_port()}"
    # --allow-privileged: the e2e tests run --privileged and seccomp=unconfined containers
    args = [
        str(BIN / "dockyard-agent"),
        "run",
        "--runtime",
        "runc",
        "--controller",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(state),
        "--listen",
        address,
        "--name",
        "cli-e2e",
        "--cgroup-parent",
        cgroup,
        "--log-level",
        "debug",
        "--insecure",
        "--allow-privileged",
        "--docker-api-socket",  # not the host's /run/dockyard/docker.sock
        "",
    ]
    daemon = Daemon("agent", args, tmp_path / "agent.log")
    under_test = AgentUnderTest(address, daemon, tmp_path / "cli-config")
    try:
        daemon.start()
        deadline = time.monotonic() + 30
        while under_test.cli("ps", timeout=10).returncode != 0:
            assert daemon.process is not None
            if daemon.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent did not come up:\n{daemon.log()[-4000:]}")
            time.sleep(0.1)
        yield under_test
    finally:
        daemon.stop()
        daemon.kill()
        cleanup_everything(state / "runtime", cgroup)
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = [line.split()[4] for line in f]
        for mount in sorted((m for m in mounts if m.startswith(str(state))), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


@pytest.fixture
def busybox_ref(registry: RegistryServer) -> str:
    """A busybox image built locally and pushed to the test registry."""
    ref = f"{registry.host}/cli/busybox:latest"
    subprocess.run(
        [sys.executable, "-m", "dockyard.agent.images.build", "busybox", "--tag", ref, "--push"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return ref
