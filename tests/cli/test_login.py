"""`dockyard login|logout` against a real registry behind htpasswd auth, writing docker's
config.json in a private DOCKER_CONFIG, and the credential-helper protocol against a
tiny helper script (never the user's own ~/.docker)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.images.conftest import RegistryServer, auth_registry

__all__ = ["auth_registry"]

HELPER = '''#!{python}
"""docker-credential-{name}: keeps credentials in a JSON file (the test's keychain)."""
import json, sys
from pathlib import Path
store = Path({store!r})
data = json.loads(store.read_text()) if store.exists() else {{}}
action, text = sys.argv[1], sys.stdin.read()
with open(store.with_suffix(".calls"), "a") as calls:
    calls.write(action + "\\n")
if action == "store":
    entry = json.loads(text)
    data[entry["ServerURL"]] = {{"Username": entry["Username"], "Secret": entry["Secret"]}}
    store.write_text(json.dumps(data))
elif action == "get":
    if text.strip() not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": text.strip(), **data[text.strip()]}}))
elif action == "erase":
    if data.pop(text.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    store.write_text(json.dumps(data))
'''


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    environment["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    environment["PATH"] = f"{tmp_path / 'bin'}:{environment['PATH']}"
    return environment


def dockyard(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dockyard"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def make_helper(tmp_path: Path, name: str) -> Path:
    """docker-credential-NAME on the test's PATH; returns its keychain file."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    store = tmp_path / f"{name}-keychain.json"
    script = tmp_path / "bin" / f"docker-credential-{name}"
    script.write_text(HELPER.format(python=sys.executable, name=name, store=str(store)))
    script.chmod(0o755)
    return store


def config(env: dict[str, str]) -> dict[str, object]:
    return json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())


def test_login_checks_and_keeps_credentials_in_config_json(
    env: dict[str, str], auth_registry: RegistryServer
) -> None:
    host = auth_registry.host
    wrong = dockyard(env, "login", "-u", "dock", "--password-stdin", host, stdin="nope\n")
    assert wrong.returncode == 1 and f"login to {host} refused" in wrong.stderr
    assert not (Path(env["DOCKER_CONFIG"]) / "config.json").exists()
    Path(env["DOCKER_CONFIG"]).mkdir()
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"auths": {"other.example:5000": {"auth": "eDp5"}}, "detachKeys": "ctrl-x"})
    )
    done = dockyard(env, "login", "-u", "dock", "--password-stdin", host, stdin="yard-secret\n")
    assert done.returncode == 0, done.stderr
    assert "Login Succeeded" in done.stdout
    written = config(env)
    assert written["detachKeys"] == "ctrl-x"  # the rest of the file is kept
    auths = written["auths"]
    assert isinstance(auths, dict) and "other.example:5000" in auths
    assert base64.b64decode(auths[host]["auth"]).decode() == "dock:yard-secret"
    mode = stat.S_IMODE((Path(env["DOCKER_CONFIG"]) / "config.json").stat().st_mode)
    assert mode == 0o600
    out = dockyard(env, "logout", host)
    assert out.returncode == 0 and f"Removing login credentials for {host}" in out.stdout
    assert host not in config(env)["auths"]  # type: ignore[operator]
    again = dockyard(env, "logout", host)
    assert again.returncode == 0 and f"Not logged in to {host}" in again.stdout


def test_creds_store_and_cred_helpers_speak_the_helper_protocol(
    tmp_path: Path, env: dict[str, str], auth_registry: RegistryServer
) -> None:
    from dockyard.cli import docker_config

    host = auth_registry.host
    keychain = make_helper(tmp_path, "testkeychain")
    per_host = make_helper(tmp_path, "perhost")
    Path(env["DOCKER_CONFIG"]).mkdir()
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"credsStore": "testkeychain"})
    )
    done = dockyard(env, "login", "-u", "dock", "--password-stdin", host, stdin="yard-secret")
    assert done.returncode == 0, done.stderr
    assert "docker-credential-testkeychain" in done.stdout
    assert json.loads(keychain.read_text()) == {host: {"Username": "dock", "Secret": "yard-secret"}}
    assert config(env)["auths"] == {host: {}}  # as docker writes it: no secret in the file
    os.environ["DOCKER_CONFIG"], saved_path = env["DOCKER_CONFIG"], os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        assert docker_config.get_login(host) == docker_config.Login("dock", "yard-secret")
        assert docker_config.get_login("unknown.example") is None
        # credHelpers wins over credsStore for its host
        data = config(env)
        data["credHelpers"] = {host: "perhost"}
        (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps(data))
        assert docker_config.get_login(host) is None  # the per-host helper has nothing yet
    finally:
        os.environ["PATH"] = saved_path
        del os.environ["DOCKER_CONFIG"]
    done = dockyard(env, "login", "-u", "dock", "--password-stdin", host, stdin="yard-secret")
    assert done.returncode == 0 and "docker-credential-perhost" in done.stdout
    assert host in json.loads(per_host.read_text())
    out = dockyard(env, "logout", host)
    assert out.returncode == 0 and "Removing login credentials" in out.stdout
    assert json.loads(per_host.read_text()) == {}
    assert per_host.with_suffix(".calls").read_text().split() == ["get", "store", "erase"]


def test_a_missing_helper_is_named(
    tmp_path: Path, env: dict[str, str], auth_registry: RegistryServer
) -> None:
    Path(env["DOCKER_CONFIG"]).mkdir()
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"credsStore": "gone"}))
    out = dockyard(
        env, "login", "-u", "dock", "--password-stdin", auth_registry.host, stdin="yard-secret"
    )
    assert out.returncode == 1
    assert "credential helper docker-credential-gone is not on PATH" in out.stderr
