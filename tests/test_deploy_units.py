"""deploy/systemd: the units parse as systemd reads them, and every flag they and the
example environment files pass is one the daemons accept."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
BIN = Path(sys.executable).parent
UNITS = ["dockyard-controller", "dockyard-agent"]


def exec_start(unit: str) -> list[str]:
    text = (SYSTEMD / f"{unit}.service").read_text()
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def example_options(unit: str) -> list[str]:
    """The words of the example environment file's *_OPTS variable."""
    text = (SYSTEMD / f"{unit}.env").read_text()
    match = re.search(r'^DOCKYARD_\w+_OPTS="([^"]*)"', text, re.MULTILINE)
    assert match, f"{unit}.env sets no DOCKYARD_*_OPTS"
    return shlex.split(match.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_every_flag_is_one_the_daemon_accepts(unit: str) -> None:
    command = exec_start(unit)
    assert command[0] == f"/usr/local/bin/{unit}" and command[1] == "run"
    usage = subprocess.run(
        [str(BIN / unit), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    accepted = set(re.findall(r"(--[a-z][a-z0-9-]*)", usage))
    used = {word for word in command[2:] + example_options(unit) if word.startswith("--")}
    assert used, "no flags found"
    assert used <= accepted, f"{unit} run does not accept {sorted(used - accepted)}"


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_reads_the_unit_without_a_complaint(unit: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # systemd checks that ExecStart's program exists: point it at this install's.
    text = (SYSTEMD / f"{unit}.service").read_text()
    copy = tmp_path / f"{unit}.service"
    copy.write_text(text.replace(f"/usr/local/bin/{unit}", str(BIN / unit)))
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if str(copy) in line or unit in line
    ]
    assert checked.returncode == 0 and not complaints, checked.stdout + checked.stderr


def test_the_agent_unit_leaves_its_containers_running_when_it_stops() -> None:
    text = (SYSTEMD / "dockyard-agent.service").read_text()
    assert "\nKillMode=process\n" in text  # conmon and the containers outlive the agent
