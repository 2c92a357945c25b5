"""What the manager keeps per container beside the runtime's record.

The image digest (so an image in use is not removed), the create request as the API
received it, and whether the user stopped the container (restart policies skip it then).
One JSON file per container, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from dockyard.v1.containers_pb2 import CreateContainerRequest

__all__ = ["ContainerMeta", "MetaStore"]


@dataclass
class ContainerMeta:
    """The manager's record of one container."""

    id: str
    image_digest: str
    request: CreateContainerRequest
    manually_stopped: bool = False
    lease: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, compare=False)

    @property
    def auto_remove(self) -> bool:
        """Removed once it exits (`--rm`)."""
        return self.request.auto_remove

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "image_digest": self.image_digest,
            "manually_stopped": self.manually_stopped,
            "request": json_format.MessageToDict(self.request),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerMeta:
        """Inverse of `to_dict`."""
        request = json_format.ParseDict(data.get("request") or {}, CreateContainerRequest())
        return cls(
            id=str(data["id"]),
            image_digest=str(data.get("image_digest", "")),
            request=request,
            manually_stopped=bool(data.get("manually_stopped", False)),
        )


class MetaStore:
    """`<root>/<container id>.json` files. Methods block: call them in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load_all(self) -> dict[str, ContainerMeta]:
        """Every readable record (unreadable ones are skipped)."""
        self.root.mkdir(parents=True, exist_ok=True)
        metas = {}
        for path in self.root.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, json_format.ParseError):
                meta = ContainerMeta.from_dict(json.loads(path.read_text()))
                metas[meta.id] = meta
        return metas

    def save(self, meta: ContainerMeta) -> None:
        """Write one record atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{meta.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta.to_dict()))
        os.replace(tmp, path)

    def delete(self, container_id: str) -> None:
        """Forget one container."""
        (self.root / f"{container_id}.json").unlink(missing_ok=True)
