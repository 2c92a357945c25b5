"""One-command joins: `dockyard-agent join`, `dockyard-controller init` and `join` write
the unit's /etc/default settings (here: a file under tmp, never the real /etc) and, with
--start, enable and start the unit (here: a fake systemctl on the PATH that records what
it was asked)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.common.host_service import options_value, render_settings
from tests.conftest import BIN, Cluster, LoopThread


def fake_systemctl(tmp_path: Path, fail: str = "") -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with a systemctl that logs its arguments."""
    directory = tmp_path / "fake-bin"
    directory.mkdir()
    log = tmp_path / "systemctl.log"
    script = directory / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        f'case "$1" in {fail or "none-fails"}) echo "Failed to {fail}: unit masked" >&2; exit 1;; '
        "esac\nexit 0\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}, log


def settings_of(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("DOCKYARD_"):
            name, _, value = line.partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def run(
    cluster: Cluster,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env={**cluster.env(), **(env or {})},
        timeout=60,
    )


def test_settings_replace_what_the_file_shows_and_keep_the_rest() -> None:
    current = (
        "# the agent's settings\n#DOCKYARD_LISTEN=10.0.0.11:7401\n"
        'OTHER=1\nDOCKYARD_AGENT_OPTS="--runtime runc"\n'
    )
    text = render_settings(
        current, {"DOCKYARD_LISTEN": "10.0.0.5:7401", "DOCKYARD_AGENT_OPTS": "--state-dir /srv/a b"}
    )
    assert text == (
        "# the agent's settings\nDOCKYARD_LISTEN=10.0.0.5:7401\nOTHER=1\n"
        'DOCKYARD_AGENT_OPTS="--state-dir /srv/a b"\n'
    )
    assert render_settings("", {"DOCKYARD_X": ""}) == 'DOCKYARD_X=""\n'
    with pytest.raises(ValueError, match="quote or space"):
        options_value(["--state-dir", "/srv/with space"])


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    cluster = cluster_factory()
    cluster.start_controller()
    return cluster


def test_agent_join_no_start_writes_the_settings_and_starts_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    env, log = fake_systemctl(tmp_path)
    settings = tmp_path / "etc" / "default" / "dockyard-agent"
    state = tmp_path / "agent-a"
    joined = run(
        cluster,
        "dockyard-agent",
        "join",
        "--token",
        cluster.join_token(),
        cluster.join_address,
        "--state-dir",
        str(state),
        "--name",
        "host-a",
        "--api-host",
        "127.0.0.1",
        "--settings-file",
        str(settings),
        "--no-start",
        env=env,
    )
    assert joined.returncode == 0, joined.stderr
    assert "node name: host-a" in joined.stdout
    assert "not started: systemctl enable --now dockyard-agent" in joined.stdout
    assert "dockyard node inspect host-a" in joined.stdout
    assert not log.exists()
    values = settings_of(settings)
    assert values["DOCKYARD_LISTEN"] == "127.0.0.1:7401"
    assert values["DOCKYARD_AGENT_OPTS"] == f"--state-dir {state.resolve()}"
    assert oct(settings.stat().st_mode & 0o777) == "0o644"


def test_agent_join_starts_the_unit_with_systemctl(cluster: Cluster, tmp_path: Path) -> None:
    env, log = fake_systemctl(tmp_path)
    settings = tmp_path / "dockyard-agent"
    settings.write_text("# kept\n#DOCKYARD_LISTEN=10.0.0.11:7401\nEXTRA=yes\n")
    joined = run(
        cluster,
        "dockyard-agent",
        "join",
        "--token",
        cluster.join_token(),
        cluster.join_address,
        "--state-dir",
        str(tmp_path / "agent-b"),
        "--name",
        "host-b",
        "--settings-file",
        str(settings),
        "--start",
        env=env,
    )
    assert joined.returncode == 0, joined.stderr
    assert log.read_text().splitlines() == [
        "daemon-reload",
        "enable dockyard-agent.service",
        "restart dockyard-agent.service",
    ]
    assert "started: dockyard-agent.service" in joined.stdout
    assert "journalctl -fu dockyard-agent" in joined.stdout
    text = settings.read_text()
    assert text.startswith("# kept\nDOCKYARD_LISTEN=127.0.0.1:7401\nEXTRA=yes\n")


def test_a_failing_systemctl_is_one_clear_line(cluster: Cluster, tmp_path: Path) -> None:
    env, _ = fake_systemctl(tmp_path, fail="enable")
    joined = run(
        cluster,
        "dockyard-agent",
        "join",
        "--token",
        cluster.join_token(),
        cluster.join_address,
        "--state-dir",
        str(tmp_path / "agent-c"),
        "--settings-file",
        str(tmp_path / "s"),
        "--start",
        env=env,
    )
    assert joined.returncode == 1
    assert joined.stderr.strip() == (
        "dockyard-agent: joined, but systemctl enable "
        "dockyard-agent.service failed: Failed to enable: unit "
        "masked"
    )


def test_a_join_outside_the_units_state_dir_leaves_etc_and_systemd_alone(
    cluster: Cluster, tmp_path: Path
) -> None:
    env, log = fake_systemctl(tmp_path)
    joined = run(
        cluster,
        "dockyard-agent",
        "join",
        "--token",
        cluster.join_token(),
        cluster.join_address,
        "--state-dir",
        str(tmp_path / "agent-d"),
        "--start",
        env=env,
    )
    assert joined.returncode == 0, joined.stderr
    assert "settings not written: --state-dir" in joined.stdout
    assert not log.exists()


def test_controller_init_writes_its_settings_and_starts_the_unit(tmp_path: Path) -> None:
    env, log = fake_systemctl(tmp_path)
    settings = tmp_path / "dockyard-controller"
    state = tmp_path / "controller"
    base = {**os.environ, "DOCKYARD_CONFIG": str(tmp_path / "cli"), **env}
    common = [
        "init",
        "--state-dir",
        str(state),
        "--listen",
        "127.0.0.1:7490",
        "--advertise",
        "10.9.9.9:7490",
        "--settings-file",
        str(settings),
    ]
    done = subprocess.run(
        [str(BIN / "dockyard-controller"), *common, "--no-start"],
        capture_output=True,
        text=True,
        env=base,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not log.exists()
    values = settings_of(settings)
    assert values["DOCKYARD_LISTEN"] == "127.0.0.1:7490"
    assert values["DOCKYARD_CONTROLLER_OPTS"] == (
        f"--state-dir {state.resolve()} --advertise 10.9.9.9:7490"
    )
    # The unit's flags are ones `run` accepts.
    usage = subprocess.run(
        [str(BIN / "dockyard-controller"), "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for word in values["DOCKYARD_CONTROLLER_OPTS"].split():
        assert not word.startswith("--") or word in usage, word

    other = tmp_path / "controller-2"
    started = subprocess.run(
        [
            str(BIN / "dockyard-controller"),
            "init",
            "--state-dir",
            str(other),
            "--settings-file",
            str(settings),
            "--start",
        ],
        capture_output=True,
        text=True,
        env=base,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert log.read_text().splitlines()[-1] == "restart dockyard-controller.service"
    assert "journalctl -fu dockyard-controller" in started.stdout
    assert settings_of(settings)["DOCKYARD_CONTROLLER_OPTS"] == f"--state-dir {other.resolve()}"


def test_controller_join_writes_the_etcd_flags_and_starts_the_unit(
    cluster_factory: Callable[..., Cluster], loop_thread: LoopThread, tmp_path: Path
) -> None:
    from dockyard.common.etcd_server import EtcdServer

    first = cluster_factory()
    etcd = EtcdServer(first.root / "shared-etcd" / "data", log_path=first.root / "etcd.log")
    loop_thread.run(etcd.start())
    try:
        first.etcd_endpoints = [etcd.endpoint]
        first.start_controller()
        token = first.run_tool(
            "dockyard-controller",
            "token",
            "create",
            "--role",
            "controller",
            "--ttl",
            "0",
            "-H",
            first.address,
            *first.tls_args(),
        ).stdout.strip()
        env, log = fake_systemctl(tmp_path)
        settings = tmp_path / "dockyard-controller"
        state = tmp_path / "controller-2"
        # the cluster's secrets key file, copied: a loose copy is refused before anything
        keys = tmp_path / "encryption-keys"
        first.run_tool("dockyard-controller", "encryption-key", "create", str(keys))
        keys.chmod(0o644)

        def join() -> subprocess.CompletedProcess[str]:
            return run(
                first,
                "dockyard-controller",
                "join",
                "--token",
                token,
                first.join_address,
                "--state-dir",
                str(state),
                "--listen",
                "127.0.0.1:7491",
                "--etcd",
                etcd.endpoint,
                "--etcd-prefix",
                "/dockyard",
                "--context",
                "second",
                "--settings-file",
                str(settings),
                "--encryption-key-file",
                str(keys),
                "--start",
                env=env,
            )

        refused = join()
        assert refused.returncode == 2 and "chmod 600" in refused.stderr, refused.stderr
        assert not state.exists() and not settings.exists()
        keys.chmod(0o600)
        joined = join()
        assert joined.returncode == 0, joined.stderr
        assert "joined as controller" in joined.stdout
        assert "journalctl -fu dockyard-controller" in joined.stdout
        assert log.read_text().splitlines()[-1] == "restart dockyard-controller.service"
        values = settings_of(settings)
        assert values["DOCKYARD_LISTEN"] == "127.0.0.1:7491"
        assert values["DOCKYARD_CONTROLLER_OPTS"] == (
            f"--state-dir {state.resolve()} --etcd {etcd.endpoint} "
            f"--encryption-key-file {keys.resolve()}"
        )
    finally:
        first.stop()
        loop_thread.run(etcd.stop())
