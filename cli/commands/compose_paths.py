"""What a compose file means relative to where it lies, settled before files merge.

As docker does: relative bind sources (`./data`, `../x`, `~/x`) and `env_file` paths
are resolved against the compose file's directory, as are the `file:` of top-level
secrets and configs. `env_file` contents and `environment` become one mapping of
strings: a `KEY` without a value takes the shell's value (dropped when the shell has
none), YAML booleans and numbers are written as docker writes them (`true`, `3`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dockyard.cli.commands.compose_merge import as_mapping
from dockyard.cli.commands.service_parse import SpecError

__all__ = ["env_text", "read_env_file", "resolve_paths"]

MAX_ENV_FILE_BYTES = 1 << 20


def env_text(value: Any) -> str:
    """A YAML scalar as docker writes it into the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_env_file(
    where: str, path: Path, environ: Mapping[str, str], *, unquote: bool = True
) -> dict[str, str]:
    """`KEY=VALUE` lines (`#` comments, blank lines, an `export ` prefix); a bare `KEY`
    takes the shell's value. Compose strips one pair of matching quotes around a value
    (`unquote`); `--env-file` of the service commands keeps them, as docker does."""
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{where}: cannot read env file {path}: {exc.strerror}") from None
    if len(text) > MAX_ENV_FILE_BYTES:
        raise SpecError(f"{where}: env file {path} is larger than 1 MiB")
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not key or any(c.isspace() for c in key):
            raise SpecError(f"{where}: {path}:{number}: {raw!r} is not KEY=VALUE")
        if not sep:
            if key in environ:
                found[key] = environ[key]
            continue
        if unquote and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def _absolute(base: Path, text: str) -> str:
    return str((Path(text).expanduser() if text.startswith("~") else base / text).resolve())


def _is_relative(text: str) -> bool:
    return text.startswith((".", "~"))


def _volume(base: Path, value: Any) -> Any:
    if isinstance(value, Mapping):
        source = str(value.get("source") or "")
        if value.get("type", "volume") == "bind" and source and not source.startswith("/"):
            return {**value, "source": _absolute(base, source)}
        return value
    parts = str(value).split(":")
    if len(parts) > 1 and _is_relative(parts[0]):
        parts[0] = _absolute(base, parts[0])
    return ":".join(parts)


def _env_files(where: str, value: Any) -> list[tuple[str, bool]]:
    entries = [value] if isinstance(value, str) else list(value or [])
    found = []
    for entry in entries:
        if isinstance(entry, Mapping):
            found.append((str(entry.get("path", "")), bool(entry.get("required", True))))
        else:
            found.append((str(entry), True))
    return found


def _environment(
    where: str, service: Mapping[str, Any], base: Path, environ: Mapping[str, str]
) -> dict[str, str] | None:
    if "env_file" not in service and "environment" not in service:
        return None
    values: dict[str, str] = {}
    for path_text, required in _env_files(f"{where}.env_file", service.get("env_file")):
        path = (
            Path(_absolute(base, path_text)) if not path_text.startswith("/") else Path(path_text)
        )
        if not required and not path.exists():
            continue
        values.update(read_env_file(f"{where}.env_file", path, environ))
    for key, value in as_mapping(service.get("environment")).items():
        if value is None:
            if key in environ:
                values[key] = environ[key]
            else:
                values.pop(key, None)
        else:
            values[key] = env_text(value)
    return values


def _service(name: str, service: Mapping[str, Any], base: Path, env: Mapping[str, str]) -> Any:
    where = f"services.{name}"
    resolved = dict(service)
    environment = _environment(where, service, base, env)
    if environment is not None:
        resolved["environment"] = environment
        resolved.pop("env_file", None)
    if "volumes" in service:
        resolved["volumes"] = [_volume(base, v) for v in service["volumes"] or []]
    return resolved


def _objects(value: Any, base: Path) -> Any:
    if not isinstance(value, Mapping):
        return value
    return {
        name: (
            {**entry, "file": _absolute(base, str(entry["file"]))}
            if isinstance(entry, Mapping) and entry.get("file")
            else entry
        )
        for name, entry in value.items()
    }


def resolve_paths(document: Mapping[str, Any], base: Path, environ: Mapping[str, str]) -> Any:
    """The document with its paths absolute and each service's environment settled."""
    resolved = dict(document)
    services = document.get("services")
    if isinstance(services, Mapping):
        resolved["services"] = {
            name: _service(str(name), s or {}, base, environ) for name, s in services.items()
        }
    for key in ("secrets", "configs"):
        if key in document:
            resolved[key] = _objects(document[key], base)
    return resolved
