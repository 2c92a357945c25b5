"""Named endpoints a client can address (like docker contexts), kept in the user's config
dir: the CLI reads and edits them, `dockyard-controller init | join | user create` write
the admin's."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dockyard.common.addresses import CONTROLLER_PORT, normalize
from dockyard.common.validation import ValidationError, check_name

DEFAULT_CONTEXT = "default"
DEFAULT_HOST = f"127.0.0.1:{CONTROLLER_PORT}"


class ContextError(Exception):
    pass


@dataclass
class Context:
    name: str
    host: str
    description: str = ""
    tls: dict[str, str] = field(default_factory=dict)  # ca, cert, key paths (security issue)

    @property
    def hosts(self) -> list[str]:
        """Every controller of the context, in the order a client tries them: `host`
        holds one address, or several comma-separated (the controllers of one cluster)."""
        return [h for h in self.host.split(",") if h]


def config_dir() -> Path:
    override = os.environ.get("DOCKYARD_CONFIG")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("dockyard"))


class ContextStore:
    """The contexts file: `current-context` and a map of named contexts."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or config_dir()) / "config.yaml"

    def _read(self) -> dict[str, object]:
        if not self.path.exists():
            return {"current-context": DEFAULT_CONTEXT, "contexts": {}}
        import yaml  # here, not at startup: `dockyard -H ...` never reads contexts

        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ContextError(f"{self.path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ContextError(f"{self.path}: expected a mapping at the top level")
        data.setdefault("contexts", {})
        data.setdefault("current-context", DEFAULT_CONTEXT)
        return data

    def _write(self, data: dict[str, object]) -> None:
        import yaml

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=True))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def _contexts(self, data: dict[str, object]) -> dict[str, dict[str, object]]:
        contexts = data["contexts"]
        assert isinstance(contexts, dict)
        return contexts

    def list(self) -> list[Context]:
        data = self._read()
        stored = [
            _from_fields(name, fields) for name, fields in sorted(self._contexts(data).items())
        ]
        return [Context(DEFAULT_CONTEXT, DEFAULT_HOST, "built-in: the local controller"), *stored]

    def current(self) -> str:
        return str(self._read()["current-context"])

    def get(self, name: str) -> Context:
        for context in self.list():
            if context.name == name:
                return context
        raise ContextError(f"context {name!r} not found (see `dockyard context ls`)")

    def create(
        self, name: str, host: str, description: str = "", overwrite: bool = False,
        tls: dict[str, str] | None = None,
    ) -> Context:
        try:
            check_name("name", name)
        except ValidationError as exc:
            raise ContextError(f"context {exc}") from exc
        if name == DEFAULT_CONTEXT:
            raise ContextError(f"context {name!r} is built in and cannot be replaced")
        try:
            hosts = [normalize(h.strip(), CONTROLLER_PORT) for h in host.split(",") if h.strip()]
        except ValueError as exc:
            raise ContextError(f"--host: {exc}") from exc
        if not hosts:
            raise ContextError("--host: expected at least one HOST:PORT")
        if len(set(hosts)) != len(hosts):
            raise ContextError(f"--host: {host!r} names one address twice")
        host = ",".join(hosts)
        data = self._read()
        contexts = self._contexts(data)
        if name in contexts and not overwrite:
            raise ContextError(f"context {name!r} already exists (use --overwrite to replace it)")
        context = Context(name, host, description, dict(tls or {}))
        fields = asdict(context)
        del fields["name"]
        contexts[name] = fields
        self._write(data)
        return context

    def use(self, name: str) -> None:
        self.get(name)
        data = self._read()
        data["current-context"] = name
        self._write(data)

    def remove(self, name: str) -> None:
        if name == DEFAULT_CONTEXT:
            raise ContextError("the default context cannot be removed")
        data = self._read()
        contexts = self._contexts(data)
        if name not in contexts:
            raise ContextError(f"context {name!r} not found")
        del contexts[name]
        if data["current-context"] == name:
            data["current-context"] = DEFAULT_CONTEXT
        self._write(data)


def _from_fields(name: str, fields: dict[str, object]) -> Context:
    tls = fields.get("tls")
    return Context(
        name=name,
        host=str(fields.get("host", "")),
        description=str(fields.get("description", "")),
        tls={str(k): str(v) for k, v in tls.items()} if isinstance(tls, dict) else {},
    )
