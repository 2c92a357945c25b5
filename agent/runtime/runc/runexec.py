"""One runc execution per start: conmon's ``create`` turned into ``run --detach``.

conmon always runs ``RUNTIME [global flags] create [flags] ID`` and the agent then ran
``runc start ID``: two runc processes per start. conmon takes any runtime path, so the
agent gives it a small shell shim that replaces the first ``create`` argument with
``run --detach`` (same flags: ``--bundle``, ``--pid-file``, ``--console-socket``...) and
execs runc. The container is created and started by one runc; conmon still holds its
stdio, log and exit code as before.

The shim is written atomically at the runtime's start and rewritten when the runc path
changes, so a half-written file is never executed.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

__all__ = ["SHIM_NAME", "shim_text", "write_shim"]

SHIM_NAME = "runc-run-detached"


def shim_text(runc: str) -> str:
    """The shim's text for the runc at ``runc`` (POSIX sh: dash is enough)."""
    return f"""#!/bin/sh
# Written by the dockyard agent (runtime/runc/runexec.py): conmon runs
# `RUNTIME [flags] create [flags] ID`; this runs `runc [flags] run --detach [flags] ID`.
swapped=
for arg do
    shift
    if [ -z "$swapped" ] && [ "$arg" = create ]; then
        swapped=1
        set -- "$@" run --detach
    else
        set -- "$@" "$arg"
    fi
done
exec {shlex.quote(runc)} "$@"
"""


def write_shim(directory: Path, runc: str) -> Path | None:
    """Write (or keep, when it is already right) the shim under ``directory`` (blocking).

    Written to a temporary name, made executable, then renamed over the old one. None
    when ``directory`` is on a ``noexec`` mount: conmon could not run it there, and
    starts keep ``runc create`` + ``runc start``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if os.statvfs(directory).f_flag & os.ST_NOEXEC:
        return None
    path = directory / SHIM_NAME
    text = shim_text(runc)
    try:
        if path.read_text() == text and os.access(path, os.X_OK):
            return path
    except OSError:
        pass
    tmp = directory / f".{SHIM_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path
