"""deploy/package: the wheel and the Debian package build, lintian finds no error, the
package holds what it should, and it installs (dpkg -i) with the commands on the PATH.

The install is a real one (CI's machine is fresh and root). It runs only when nothing of
the package is on the host already, and the package is purged at the end, also when the
test fails: /usr/local/bin's links (deploy/install's) are not the package's and are left
alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
COMMANDS = ["dockyard", "dockyard-controller", "dockyard-agent"]
UNITS = ["dockyard-agent", "dockyard-controller"]
# What an install writes outside /opt/dockyard: none of it may be there before.
HOST_PATHS = [
    Path("/opt/dockyard"),
    *(Path("/usr/bin") / c for c in COMMANDS),
    *(Path("/etc/default") / u for u in UNITS),
    *(Path("/lib/systemd/system") / f"{u}.service" for u in UNITS),
    *(Path("/etc/systemd/system") / f"{u}.service" for u in UNITS),
]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The first test builds the package (pip fetches the dependencies, lintian reads every
# file): on a loaded machine that takes longer than the default per-test timeout.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    for tool in ("dpkg-deb", "lintian"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (deploy/install installs it)")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [str(ROOT / "deploy" / "package"), "--out", str(out), "--lintian"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    deb = out / f"dockyard_{VERSION}_{arch}.deb"
    wheel = out / f"dockyard-{VERSION}-py3-none-any.whl"
    assert deb.is_file() and wheel.is_file(), sorted(p.name for p in out.iterdir())
    assert done.stdout.strip().splitlines()[-1] == str(deb)
    return wheel, deb


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_package_holds_the_virtualenv_commands_units_and_settings(
    built: tuple[Path, Path],
) -> None:
    _, deb = built
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    entries = {line.split()[5].removeprefix("."): line for line in listing}
    for command in COMMANDS:
        line = entries[f"/usr/bin/{command}"]
        assert line.endswith(f"-> /opt/dockyard/bin/{command}"), line
        assert f"/opt/dockyard/bin/{command}" in entries
    for unit in UNITS:
        assert f"/lib/systemd/system/{unit}.service" in entries
        assert f"/etc/default/{unit}" in entries
    assert "/opt/dockyard/bin/python" in entries
    assert any(
        p.startswith("/opt/dockyard/lib/python3") and p.endswith("/dockyard/cli/main.py")
        for p in entries
    )
    assert not any(p.endswith(".pyc") or "__pycache__" in p for p in entries)
    assert all(line.split()[1] == "root/root" for line in listing)

    depends = field(deb, "Depends")
    for package in ("runc", "conmon", "containernetworking-plugins", "iptables", "python3"):
        assert package in depends.replace(",", " ").split(), depends
    assert field(deb, "Recommends") == "etcd-server, tini"  # tini: `--init`
    assert field(deb, "Version") == VERSION
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True, check=True
    )
    assert conffiles.stdout.split() == [f"/etc/default/{u}" for u in UNITS]


def test_the_units_run_the_packaged_commands(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, deb = built
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    for unit in UNITS:
        text = (tmp_path / "lib/systemd/system" / f"{unit}.service").read_text()
        start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert start.startswith(f"ExecStart=/usr/bin/{unit} run "), start
        settings = (tmp_path / "etc/default" / unit).read_text()
        # Nothing set until `init`/`join` writes this host's settings.
        assert not [line for line in settings.splitlines() if line.startswith("DOCKYARD_")]
    # The virtualenv runs from wherever it lies (its python finds its own site-packages).
    python = tmp_path / "opt/dockyard/bin/python"
    code = "from dockyard.common.version import package_version; print(package_version())"
    answered = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": SYSTEM_PATH},
    )
    assert answered.stdout.strip() == VERSION, answered.stderr


def test_the_wheel_holds_every_package(built: tuple[Path, Path]) -> None:
    import zipfile

    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package


@pytest.fixture
def installable() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root")
    present = [str(p) for p in HOST_PATHS if p.exists() or p.is_symlink()]
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "dockyard"], capture_output=True, text=True
    )
    if present or "installed" in status.stdout:
        pytest.skip(f"this host already has Dockyard installed: {present or 'package'}")
    try:
        yield
    finally:
        subprocess.run(["dpkg", "--purge", "dockyard"], capture_output=True, timeout=120)


def test_dpkg_installs_it_and_the_commands_answer_from_the_path(
    built: tuple[Path, Path], installable: None
) -> None:
    _, deb = built
    installed = subprocess.run(
        ["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    for command in COMMANDS:
        assert shutil.which(command, path=SYSTEM_PATH) == f"/usr/bin/{command}"
    answered = subprocess.run(
        ["dockyard", "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["client"]["version"] == VERSION
    for daemon in ("dockyard-controller", "dockyard-agent"):
        shown = subprocess.run(
            [daemon, "--version"], capture_output=True, text=True, timeout=60, env=env
        )
        assert shown.returncode == 0 and VERSION in shown.stdout, shown.stdout + shown.stderr
    # postinst compiled the byte code; removing the package takes it away again.
    assert list(Path("/opt/dockyard/lib").rglob("__pycache__"))
    removed = subprocess.run(
        ["dpkg", "--purge", "dockyard"], capture_output=True, text=True, timeout=120
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not [str(p) for p in HOST_PATHS if p.exists() or p.is_symlink()]
