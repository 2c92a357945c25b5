"""What the container service keeps per container beside the runtime's record.

The image digest (so an image in use is not removed), ``--rm`` (or removal by a
`Containers.Run` call), and whether the user
stopped the container (restart policies skip it then). One JSON file per container,
written atomically (or none: a hollow agent keeps them in memory).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.common.atomic_file import write_atomic

__all__ = ["ContainerMeta", "MetaStore"]


@dataclass
class ContainerMeta:
    """The service's record of one container."""

    id: str
    image_digest: str
    auto_remove: bool = False
    """Removed once it exits (`--rm`)."""
    removed_by_call: bool = False
    """A `Containers.Run` call removes it: if the agent restarts meanwhile, the call is
    gone and the container is `--rm` (`auto_remove`) from then on."""
    manually_stopped: bool = False
    lease: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "image_digest": self.image_digest,
            "manually_stopped": self.manually_stopped,
            "auto_remove": self.auto_remove,
            "removed_by_call": self.removed_by_call,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerMeta:
        """Inverse of `to_dict` (also of the records of 0.1, which kept the request)."""
        auto_remove = data.get("auto_remove", (data.get("request") or {}).get("autoRemove"))
        return cls(
            id=str(data["id"]),
            image_digest=str(data.get("image_digest", "")),
            auto_remove=bool(auto_remove),
            manually_stopped=bool(data.get("manually_stopped", False)),
            removed_by_call=bool(data.get("removed_by_call", False)),
        )


class MetaStore:
    """`<root>/<container id>.json` files; none with `root` None. Methods block: call them
    in a thread."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def load_all(self) -> dict[str, ContainerMeta]:
        """Every readable record (unreadable ones are skipped)."""
        if self.root is None:
            return {}
        self.root.mkdir(parents=True, exist_ok=True)
        metas = {}
        for path in self.root.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
                meta = ContainerMeta.from_dict(json.loads(path.read_text()))
                metas[meta.id] = meta
        return metas

    def save(self, meta: ContainerMeta) -> None:
        """Write one record atomically."""
        if self.root is None:
            return
        # Not synced (one per create): a record a power cut lost is not loaded.
        data = json.dumps(meta.to_dict()).encode()
        write_atomic(self.root / f"{meta.id}.json", data, durable=False)

    def delete(self, container_id: str) -> None:
        """Forget one container."""
        if self.root is not None:
            (self.root / f"{container_id}.json").unlink(missing_ok=True)
