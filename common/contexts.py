"""Named endpoints a client can address (like docker contexts), kept in the user's config
dir: the CLI reads and edits them, `dockyard-controller init | join | user create` write
the admin's."""

from __future__ import annotations

import builtins
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dockyard.common.addresses import CONTROLLER_PORT, normalize
from dockyard.common.atomic_file import write_atomic
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
    members: list[str] = field(default_factory=list)
    """A group: the names of other contexts, addressed together (its `host` is empty)."""

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

        write_atomic(self.path, yaml.safe_dump(data, sort_keys=True).encode(), mode=0o600)

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

    def expand(self, names: builtins.list[str]) -> builtins.list[Context]:
        """The contexts `names` address: a group stands for its members (groups of
        groups too); each context once, in the order first named."""
        return _expand({c.name: c for c in self.list()}, names)

    def every(self) -> builtins.list[Context]:
        """Every stored context that names endpoints (groups stand for their members;
        the built-in `default` only when nothing else is stored)."""
        stored = [c for c in self.list() if c.name != DEFAULT_CONTEXT]
        if not stored:
            return self.list()
        return self.expand([c.name for c in stored])

    def create_group(
        self, name: str, members: builtins.list[str], description: str = "", overwrite: bool = False
    ) -> Context:
        """A context naming other contexts: a call through it goes to all of them."""
        self._check_new_name(name)
        if not members:
            raise ContextError("--member: a group needs at least one context")
        if len(set(members)) != len(members):
            raise ContextError(f"--member: {','.join(members)!r} names one context twice")
        data = self._read()
        contexts = self._contexts(data)
        if name in contexts and not overwrite:
            raise ContextError(f"context {name!r} already exists (use --overwrite to replace it)")
        known = {c.name for c in self.list()}
        for member in members:
            if member not in known:
                raise ContextError(f"--member: context {member!r} not found")
        contexts[name] = {
            "host": "",
            "description": description,
            "tls": {},
            "members": list(members),
        }
        group = Context(name, "", description, {}, list(members))
        _expand({**{c.name: c for c in self.list()}, name: group}, [name])  # refuses a cycle
        self._write(data)
        return group

    def _check_new_name(self, name: str) -> None:
        try:
            check_name("name", name)
        except ValidationError as exc:
            raise ContextError(f"context {exc}") from exc
        if name == DEFAULT_CONTEXT:
            raise ContextError(f"context {name!r} is built in and cannot be replaced")

    def create(
        self,
        name: str,
        host: str,
        description: str = "",
        overwrite: bool = False,
        tls: dict[str, str] | None = None,
    ) -> Context:
        self._check_new_name(name)
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
        del fields["name"], fields["members"]
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


def _expand(known: dict[str, Context], names: list[str]) -> list[Context]:
    """The endpoint contexts `names` stand for, each once (see ContextStore.expand)."""
    found: dict[str, Context] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ContextError(
                f"context group {path[0]!r} contains itself: {' -> '.join((*path, name))}"
            )
        if name not in known:
            where = f" (a member of group {path[-1]!r})" if path else ""
            raise ContextError(f"context {name!r} not found{where} (see `dockyard context ls`)")
        context = known[name]
        if not context.members:
            found.setdefault(name, context)
        for member in context.members:
            visit(member, (*path, name))

    for name in names:
        visit(name, ())
    return list(found.values())


def _from_fields(name: str, fields: dict[str, object]) -> Context:
    tls = fields.get("tls")
    members = fields.get("members")
    return Context(
        name=name,
        host=str(fields.get("host", "")),
        description=str(fields.get("description", "")),
        tls={str(k): str(v) for k, v in tls.items()} if isinstance(tls, dict) else {},
        members=[str(m) for m in members] if isinstance(members, list) else [],
    )
