"""Registry credentials where docker keeps them: `config.json` and credential helpers.

The file is `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`). A registry
whose host is in `credHelpers`, or any registry when `credsStore` is set, keeps its
credentials in that helper (`docker-credential-NAME store|get|erase`, JSON on stdin and
stdout: docker's credential-helper protocol); the file then holds an empty `auths`
entry for it, as docker writes. Otherwise `auths[server].auth` is base64 `user:secret`.
Every other key of the file is kept as it was; writes are atomic and mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.common.atomic_file import write_atomic

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
HELPER_TIMEOUT = 30.0
MAX_HELPER_OUTPUT = 64 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024
NOT_FOUND = "credentials not found in native keychain"


class CredentialsError(Exception):
    """The config file or a credential helper failed (the message says which)."""


@dataclass(frozen=True)
class Login:
    username: str
    secret: str


def config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def server_key(registry: str) -> str:
    """How docker names a registry in config.json: Docker Hub by its v1 URL, any other
    by its host[:port] (`https://`, a path or a trailing slash dropped)."""
    host = registry.strip().removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    if host in ("", "docker.io", "index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB_SERVER
    return host


def read_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CredentialsError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: expected a JSON object")
    return data


def write_config(data: dict[str, Any], path: Path | None = None) -> None:
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_atomic(path, json.dumps(data, indent="\t").encode(), mode=0o600)
    except OSError as exc:
        raise CredentialsError(f"cannot write {path}: {exc}") from exc


def helper_for(data: dict[str, Any], key: str) -> str | None:
    """The credential helper that keeps `key`'s credentials, if any."""
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(key), str) and helpers[key]:
        return str(helpers[key])
    store = data.get("credsStore")
    return str(store) if isinstance(store, str) and store else None


def _run_helper(name: str, action: str, stdin: str) -> str:
    program = f"docker-credential-{name}"
    try:
        result = subprocess.run(
            [program, action],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CredentialsError(f"credential helper {program} is not on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise CredentialsError(
            f"{program} {action} did not finish in {HELPER_TIMEOUT:g} s"
        ) from exc
    output = result.stdout[:MAX_HELPER_OUTPUT]
    if result.returncode != 0:
        message = output.strip() or result.stderr[:500].strip() or f"exit {result.returncode}"
        if NOT_FOUND in message:
            raise KeyError(stdin)
        raise CredentialsError(f"{program} {action}: {message}")
    return output


def store_login(registry: str, login: Login) -> str:
    """Keep `login` for `registry`; returns where ("helper NAME" or the file's path)."""
    data = read_config()
    key = server_key(registry)
    helper = helper_for(data, key)
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise CredentialsError(f"{config_path()}: `auths` is not an object")
    if helper:
        _run_helper(
            helper,
            "store",
            json.dumps({"ServerURL": key, "Username": login.username, "Secret": login.secret}),
        )
        auths[key] = {}
        where = f"credential helper docker-credential-{helper}"
    else:
        token = base64.b64encode(f"{login.username}:{login.secret}".encode()).decode()
        auths[key] = {"auth": token}
        where = str(config_path())
    write_config(data)
    return where


def get_login(registry: str) -> Login | None:
    """The login kept for `registry` (helper first, as docker does), or None."""
    data = read_config()
    key = server_key(registry)
    helper = helper_for(data, key)
    if helper:
        try:
            answer = json.loads(_run_helper(helper, "get", key))
        except KeyError:
            return None
        except ValueError as exc:
            raise CredentialsError(f"docker-credential-{helper} get: not JSON: {exc}") from exc
        if not isinstance(answer, dict) or not answer.get("Secret"):
            return None
        return Login(str(answer.get("Username", "")), str(answer["Secret"]))
    auths = data.get("auths")
    entry = auths.get(key) if isinstance(auths, dict) else None
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CredentialsError(
                f"{config_path()}: the auth of {key} is not base64 user:password"
            ) from exc
        return Login(user, secret)
    if entry.get("username"):
        return Login(str(entry["username"]), str(entry.get("password", "")))
    return None


def erase_login(registry: str) -> bool:
    """Forget `registry`'s login; returns whether there was one."""
    data = read_config()
    key = server_key(registry)
    helper = helper_for(data, key)
    found = False
    if helper:
        try:
            _run_helper(helper, "erase", key)
            found = True
        except KeyError:
            pass
    auths = data.get("auths")
    if isinstance(auths, dict) and key in auths:
        del auths[key]
        found = True
        write_config(data)
    return found
