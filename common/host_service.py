"""After `init`/`join`: write the daemon's /etc/default settings, start its systemd unit.

The packaged units (deploy/systemd) read `/etc/default/dockyard-agent` and
`/etc/default/dockyard-controller` and run with the state dir under /var/lib/dockyard.
A join into that state dir (or one given `--settings-file`) writes the settings the
unit needs; when systemd runs, it then enables and starts the unit. A join into any other
state dir (the local cluster's, the tests') touches neither /etc nor systemd.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dockyard.common.atomic_file import write_atomic

__all__ = [
    "HostService",
    "ServiceError",
    "service_options",
    "systemd_runs",
]

SETTINGS_DIR = Path("/etc/default")
STATE_ROOT = Path("/var/lib/dockyard")
SYSTEMD_RUNTIME = Path("/run/systemd/system")
SYSTEMCTL_TIMEOUT = 60.0
_ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=")


class ServiceError(Exception):
    """systemctl failed; the message has its output."""


def systemd_runs() -> bool:
    """True when systemd is this host's init (sd_booted(3)'s test)."""
    return SYSTEMD_RUNTIME.is_dir()


@dataclass(frozen=True)
class HostService:
    """The unit a command sets up, and where its settings go."""

    unit: str
    settings_file: Path | None
    start: bool | None

    @property
    def default_state_dir(self) -> Path:
        """The state dir the unit's ExecStart names."""
        return STATE_ROOT / self.unit.removeprefix("dockyard-")

    def applies_to(self, state_dir: Path) -> bool:
        """Whether this join/init is the unit's: its state dir, or a settings file given."""
        return self.settings_file is not None or _same(state_dir, self.default_state_dir)

    def state_dir_options(self, state_dir: Path) -> list[str]:
        """`--state-dir` for the unit's options when it is not the unit's own."""
        return (
            []
            if _same(state_dir, self.default_state_dir)
            else ["--state-dir", str(state_dir.resolve())]
        )

    def settle(self, state_dir: Path, values: dict[str, str]) -> bool:
        """Write the settings and, when asked (or systemd runs), enable and start the unit.

        Returns whether the unit was started. Says on stdout what it did or why not.
        """
        if not self.applies_to(state_dir):
            click.echo(
                f"settings not written: --state-dir {state_dir} is not the "
                f"{self.unit} unit's ({self.default_state_dir}); give --settings-file "
                "to write them"
            )
            return False
        path = self.settings_file or SETTINGS_DIR / self.unit
        write_settings(path, values)
        click.echo(f"settings: {path}")
        start = systemd_runs() if self.start is None else self.start
        if not start:
            click.echo(
                f"not started{'' if self.start is False else ' (systemd does not run)'}:"
                f" systemctl enable --now {self.unit}"
            )
            return False
        start_unit(self.unit)
        click.echo(f"started: {self.unit}.service (enabled)")
        return True


def _same(one: Path, other: Path) -> bool:
    return one.resolve() == other.resolve()


def render_settings(current: str, values: dict[str, str]) -> str:
    """`current` with each of `values` set: a line that sets (or a commented one that
    shows) a variable is replaced, the rest kept; missing ones are appended."""
    lines = current.splitlines()
    pending = dict(values)
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if match and match.group(1) in pending:
            name = match.group(1)
            lines[index] = f"{name}={_quote(pending.pop(name))}"
    lines.extend(f"{name}={_quote(value)}" for name, value in pending.items())
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """systemd's EnvironmentFile quoting: double quotes, backslash escapes."""
    if value and re.fullmatch(r"[A-Za-z0-9_.:/,@%+=-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def options_value(words: list[str]) -> str:
    """A *_OPTS value from its words (the unit splits it on whitespace)."""
    for word in words:
        if not word or any(c.isspace() for c in word) or shlex.quote(word) != word:
            raise ValueError(f"{word!r} cannot be passed in the unit's options (quote or space)")
    return " ".join(words)


def write_settings(path: Path, values: dict[str, str]) -> None:
    """Set `values` in the settings file at `path`, atomically, 0644."""
    for name, value in values.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or "\n" in value:
            raise ValueError(f"setting {name}={value!r}: expected NAME=one line")
    current = path.read_text() if path.exists() else ""
    write_atomic(path, render_settings(current, values).encode())


def start_unit(unit: str) -> None:
    """systemctl daemon-reload, then enable --now the unit (restart it if it ran)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise ServiceError("systemctl is not on the PATH: start the daemon yourself")
    for args in (["daemon-reload"], ["enable", f"{unit}.service"], ["restart", f"{unit}.service"]):
        done = subprocess.run(
            [systemctl, *args], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT
        )
        if done.returncode != 0:
            raise ServiceError(
                f"systemctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}"
            )


def service_options(unit: str) -> Callable[[Any], Any]:
    """--settings-file and --start/--no-start of `init` and `join`; the command gets
    `service`, a HostService."""

    def decorate(command: Any) -> Any:
        def to_service(context: click.Context, _: click.Parameter, value: Any) -> Any:
            settings = context.params.pop("settings_file", None)
            return HostService(unit, settings, value)

        command = click.option(
            "--start/--no-start",
            "service",
            default=None,
            callback=to_service,
            help=f"Enable and start {unit}.service after writing its settings "
            "[when systemd runs]; --no-start only writes them.",
        )(command)
        return click.option(
            "--settings-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            is_eager=True,
            metavar="PATH",
            help=f"Where the unit's settings go [{SETTINGS_DIR / unit}, written only for "
            f"--state-dir {STATE_ROOT / unit.removeprefix('dockyard-')}].",
        )(command)

    return decorate


def controller_settings(
    service: HostService,
    state_dir: Path,
    listen: str,
    advertise: str,
    endpoints: list[str],
    etcd_prefix: str,
    etcd_tls: dict[str, Path | str | None],
) -> dict[str, str]:
    """DOCKYARD_LISTEN and DOCKYARD_CONTROLLER_OPTS for what `init`/`join` was given."""
    words = service.state_dir_options(state_dir)
    if advertise:
        words += ["--advertise", advertise]
    for endpoint in endpoints:
        words += ["--etcd", endpoint]
    if etcd_prefix != "/dockyard":
        words += ["--etcd-prefix", etcd_prefix]
    for flag, value in etcd_tls.items():
        if value is not None:
            words += [flag, str(Path(value).resolve()) if isinstance(value, Path) else value]
    return {"DOCKYARD_LISTEN": listen, "DOCKYARD_CONTROLLER_OPTS": options_value(words)}
