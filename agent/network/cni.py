"""Run CNI plugins as the CNI specification (1.0) says a runtime does.

Each plugin is an executable found on ``CNI_PATH``; it gets the command and the container
in its environment (``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``,
``CNI_PATH``, ``CNI_ARGS``) and its network configuration as JSON on stdin, and answers
with a result (ADD) or an error object on stdout. A network configuration list runs its
plugins in order for ADD, each given the previous one's result as ``prevResult``, and in
reverse order for DEL; ``runtimeConfig`` carries the capabilities a plugin asks for
(``portMappings`` for ``portmap``).

Everything runs as asyncio subprocesses with a timeout: the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.network.errors import CniError

__all__ = ["CniRunner", "CniTarget"]

log = structlog.get_logger(__name__)

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_STDERR = 2000


@dataclass(frozen=True, slots=True)
class CniTarget:
    """The container a call is about: its id, its netns path and the interface name."""

    container_id: str
    netns: str
    ifname: str = "eth0"


class CniRunner:
    """Finds and executes CNI plugins.

    Args:
        plugin_dirs: Where plugins are looked up, in order (the ``CNI_PATH``).
        timeout: Seconds one plugin call may take before it is killed.
    """

    def __init__(self, plugin_dirs: Sequence[str | Path], timeout: float = 30.0) -> None:
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        self.timeout = timeout

    def find(self, plugin: str) -> Path:
        """The plugin's executable.

        Raises:
            CniError: it is in none of the plugin directories.
        """
        if not plugin or "/" in plugin or plugin.startswith("."):
            raise CniError(plugin or "?", "lookup", f"invalid plugin type {plugin!r}")
        for directory in self.plugin_dirs:
            candidate = directory / plugin
            if os.access(candidate, os.X_OK) and candidate.is_file():
                return candidate
        dirs = ":".join(str(d) for d in self.plugin_dirs)
        raise CniError(
            plugin, "lookup", f"not found in {dirs} (install Debian's containernetworking-plugins)"
        )

    async def exec(
        self,
        command: str,
        config: Mapping[str, Any],
        target: CniTarget,
        cni_args: str = "",
    ) -> dict[str, Any] | None:
        """Run one plugin: ``command`` is ADD, DEL, CHECK or VERSION.

        Returns:
            The plugin's result for ADD (and VERSION), else ``None``.

        Raises:
            CniError: the plugin is missing, failed, timed out or answered garbage; the
                message names it and has its error message and stderr.
        """
        plugin = str(config.get("type", ""))
        path = self.find(plugin)
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": target.container_id,
            "CNI_NETNS": target.netns,
            "CNI_IFNAME": target.ifname,
            "CNI_PATH": ":".join(str(d) for d in self.plugin_dirs),
            "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        }
        if cni_args:
            env["CNI_ARGS"] = cni_args
        stdin = json.dumps(config).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise CniError(plugin, command, f"cannot execute {path}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            await _kill(proc)
            raise CniError(plugin, command, f"no answer within {self.timeout:g} s") from None
        except BaseException:
            await asyncio.shield(_kill(proc))
            raise
        stderr = err.decode(errors="replace").strip()[-_MAX_STDERR:]
        if proc.returncode != 0:
            raise CniError(plugin, command, _error_text(out, stderr, proc.returncode))
        if command not in ("ADD", "VERSION"):
            return None
        try:
            result = json.loads(out)
        except ValueError:
            raise CniError(
                plugin,
                command,
                f"answered with no JSON result: {out[:200]!r}"
                f"{'; stderr: ' + stderr if stderr else ''}",
            ) from None
        if not isinstance(result, dict):
            raise CniError(plugin, command, f"answered {type(result).__name__}, not an object")
        return result

    @staticmethod
    def plugin_config(
        conflist: Mapping[str, Any],
        plugin: Mapping[str, Any],
        runtime_config: Mapping[str, Any],
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """One plugin's stdin: its object with the list's name and version, the
        ``runtimeConfig`` keys of the capabilities it declares, and ``prevResult``."""
        config = dict(plugin)
        config["name"] = conflist["name"]
        config["cniVersion"] = conflist["cniVersion"]
        capabilities = plugin.get("capabilities") or {}
        wanted = {key: value for key, value in runtime_config.items() if capabilities.get(key)}
        if wanted:
            config["runtimeConfig"] = wanted
        if prev_result is not None:
            config["prevResult"] = dict(prev_result)
        return config

    async def add_list(
        self,
        conflist: Mapping[str, Any],
        target: CniTarget,
        runtime_config: Mapping[str, Any] | None = None,
        cni_args: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """ADD every plugin of the list in order; the last result.

        ``cni_args`` maps a plugin type to its ``CNI_ARGS`` (``IP=`` for host-local
        under bridge, say). On a failure nothing is undone here: the caller runs
        :meth:`del_list`, as the specification asks.
        """
        result: dict[str, Any] | None = None
        for plugin in conflist["plugins"]:
            config = self.plugin_config(conflist, plugin, runtime_config or {}, result)
            answer = await self.exec(
                "ADD", config, target, (cni_args or {}).get(plugin["type"], "")
            )
            result = answer if answer is not None else result
        if result is None:
            raise CniError(str(conflist.get("name")), "ADD", "the list has no plugins")
        return result

    async def del_list(
        self,
        conflist: Mapping[str, Any],
        target: CniTarget,
        runtime_config: Mapping[str, Any] | None = None,
        prev_result: Mapping[str, Any] | None = None,
    ) -> list[CniError]:
        """DEL every plugin of the list in reverse order; every plugin runs even when
        one fails. Returns the failures (logged), empty when all succeeded."""
        failures: list[CniError] = []
        for plugin in reversed(conflist["plugins"]):
            config = self.plugin_config(conflist, plugin, runtime_config or {}, prev_result)
            try:
                await self.exec("DEL", config, target)
            except CniError as exc:
                log.warning(
                    "cni.del_failed",
                    container_id=target.container_id,
                    plugin=exc.plugin,
                    error=str(exc),
                )
                failures.append(exc)
        return failures


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await proc.wait()


def _error_text(out: bytes, stderr: str, code: int | None) -> str:
    """The plugin's error object (``msg``, ``details``) and stderr, as one line."""
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        error = json.loads(out)
        message = str(error.get("msg", "")).strip()
        details = str(error.get("details", "")).strip()
        if details and details != message:
            message = f"{message}: {details}" if message else details
    if not message:
        message = out.decode(errors="replace").strip()[:500] or f"exit status {code}"
    if stderr:
        message = f"{message} (stderr: {stderr})"
    return " ".join(message.split())
