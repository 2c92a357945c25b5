"""The node's images as Docker's API shows them: summaries, inspect, history, filters.

Docker names an image by its config digest (`Id`), lists it once with all its tags
(`RepoTags`, `RepoDigests` in familiar form: `busybox:latest`, `busybox@sha256:...`) and
matches the `reference` filter against those familiar names with shell globs.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from dockyard.agent.images.errors import ImageNotFound, InvalidReference
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Image
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.common.distribution.media import digest_hex

__all__ = [
    "ImageFilters",
    "created_unix",
    "find_image",
    "history",
    "inspect",
    "repo_digests",
    "repo_tags",
    "summary",
]

_HEX = frozenset("0123456789abcdef")


def _refs(image: Image) -> list[Reference]:
    found = []
    for text in image.references:
        try:
            found.append(parse_reference(text))
        except InvalidReference:
            continue
    return found


def repo_tags(image: Image) -> list[str]:
    """`busybox:latest`, `localhost:5000/app:1`: the tags naming the image."""
    return sorted(r.familiar() for r in _refs(image) if r.tag and not r.digest)


def repo_digests(image: Image) -> list[str]:
    """`busybox@sha256:<manifest>`: one per repository the image is known in."""
    names = sorted({r.familiar_name() for r in _refs(image)})
    return [f"{name}@{image.digest}" for name in names]


def created_unix(created: str) -> int:
    """An RFC 3339 creation time as Unix seconds (0 when absent or unreadable)."""
    if not created:
        return 0
    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def summary(image: Image, containers: int = -1) -> dict[str, Any]:
    """One entry of `GET /images/json`."""
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": repo_tags(image),
        "RepoDigests": repo_digests(image),
        "Created": created_unix(image.created),
        "Size": image.size,
        "SharedSize": -1,
        "VirtualSize": image.size,
        "Labels": dict(image.config.labels) or None,
        "Containers": containers,
    }


def inspect(image: Image, config_json: bytes) -> dict[str, Any]:
    """`GET /images/{name}/json`, the image config read from its stored blob."""
    config = _parse(config_json)
    return {
        "Id": image.id,
        "RepoTags": repo_tags(image),
        "RepoDigests": repo_digests(image),
        "Parent": "",
        "Comment": str(config.get("comment") or ""),
        "Created": image.created or "0001-01-01T00:00:00Z",
        "Container": "",
        "ContainerConfig": {},
        "DockerVersion": str(config.get("docker_version") or ""),
        "Author": str(config.get("author") or ""),
        "Config": _container_config(config.get("config")),
        "Architecture": image.platform.architecture,
        "Variant": image.platform.variant or "",
        "Os": image.platform.os,
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": [layer.diff_id for layer in image.layers]},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }


def _parse(config_json: bytes) -> dict[str, Any]:
    try:
        value = json.loads(config_json)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _container_config(value: Any) -> dict[str, Any]:
    """The config's `config` object with the fields Docker's clients read filled in."""
    config = dict(value) if isinstance(value, dict) else {}
    defaults: dict[str, Any] = {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": None,
        "Cmd": None,
        "Image": "",
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": None,
    }
    return {**defaults, **config}


def history(image: Image, config_json: bytes) -> list[dict[str, Any]]:
    """`GET /images/{name}/history`: newest first, as `docker history` prints it.

    The config's `history` says which steps made a layer (`empty_layer` ones did not);
    each layer's size is its blob's. Only the newest entry carries the image id and tags.
    """
    config = _parse(config_json)
    steps = config.get("history")
    if not isinstance(steps, list) or not steps:
        steps = [{"created": image.created} for _ in image.layers] or [{"created": image.created}]
    sizes = [layer.size for layer in image.layers]
    rows = []
    layer_index = 0
    for item in steps:
        step = item if isinstance(item, dict) else {}
        size = 0
        if not step.get("empty_layer") and layer_index < len(sizes):
            size = sizes[layer_index]
            layer_index += 1
        rows.append(
            {
                "Id": "<missing>",
                "Created": created_unix(str(step.get("created") or "")),
                "CreatedBy": str(step.get("created_by") or ""),
                "Tags": None,
                "Size": size,
                "Comment": str(step.get("comment") or ""),
            }
        )
    rows.reverse()
    rows[0]["Id"] = image.id
    rows[0]["Tags"] = repo_tags(image) or None
    return rows


def find_image(store: ImageStore, name: str) -> Image:
    """The image `name` means, as docker resolves it: a reference (`busybox`,
    `busybox:latest`, `docker.io/library/busybox`, `name@digest`), a full or short id
    (any unique hex prefix of the id, `sha256:` or not), or a manifest digest.

    Raises:
        ImageNotFound: nothing matches (or a prefix matches several).
    """
    try:
        return store.resolve(name)
    except (ImageNotFound, InvalidReference, ValueError):
        pass
    prefix = name.removeprefix("sha256:")
    if prefix and len(prefix) <= 64 and set(prefix) <= _HEX:
        matches = [i for i in store.images() if digest_hex(i.id).startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
    raise ImageNotFound(f"No such image: {name}")


class ImageFilters:
    """`GET /images/json`'s `filters`: `dangling`, `reference` (globs), `label`.

    Args:
        filters: The decoded `filters` query (name -> list of values); docker also sends
            the older `{name: {value: true}}` form, which the caller flattens.

    Raises:
        ValueError: an unknown filter or an unreadable value (the message names it).
    """

    _KNOWN = frozenset({"dangling", "reference", "label", "before", "since"})

    def __init__(self, filters: Mapping[str, Iterable[str]]) -> None:
        unknown = set(filters) - self._KNOWN
        if unknown:
            raise ValueError(f"invalid filter '{sorted(unknown)[0]}'")
        self.dangling: bool | None = None
        for value in filters.get("dangling", ()):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"invalid filter 'dangling={value}'")
            self.dangling = value.lower() in ("true", "1")
        self.references = list(filters.get("reference", ()))
        self.labels = list(filters.get("label", ()))
        self.before = list(filters.get("before", ()))
        self.since = list(filters.get("since", ()))

    def matches(self, image: Image, store: ImageStore) -> bool:
        """Whether the image passes every filter."""
        tags = repo_tags(image)
        if self.dangling is not None and self.dangling != (not tags):
            return False
        if self.references and not any(_reference_matches(p, image) for p in self.references):
            return False
        if not all(_label_matches(label, image.config.labels) for label in self.labels):
            return False
        created = created_unix(image.created)
        for name in self.before:
            if created >= created_unix(find_image(store, name).created):
                return False
        return all(created > created_unix(find_image(store, name).created) for name in self.since)


def _reference_matches(pattern: str, image: Image) -> bool:
    """docker's reference filter: a glob over the familiar name, with or without tag."""
    for ref in _refs(image):
        names = {ref.familiar_name(), ref.name}
        if ":" in pattern.rsplit("/", 1)[-1] or "@" in pattern:
            candidates = {f"{n}:{ref.tag}" for n in names} if ref.tag else set()
            candidates |= {f"{n}@{ref.digest}" for n in names} if ref.digest else set()
        else:
            candidates = names
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            return True
    return False


def _label_matches(wanted: str, labels: Mapping[str, str]) -> bool:
    key, sep, value = wanted.partition("=")
    if key not in labels:
        return False
    return not sep or labels[key] == value
