"""Named volumes: `<state dir>/volumes/<name>/_data`, kept until removed (`docker volume`).

A volume's record (`volume.json`: labels, creation time) sits beside its data and is
written atomically before the data directory appears, so a crash leaves either no
volume or a whole one. Which containers use a volume is the manager's to say.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dockyard.agent.containers.errors import InvalidArgument, NotFound
from dockyard.common.remove_tree import remove_tree
from dockyard.common.validation import VOLUME_NAME_PATTERN

__all__ = ["Volume", "VolumeStore", "check_volume_name"]
_RECORD = "volume.json"
_DATA = "_data"


@dataclass(frozen=True)
class Volume:
    name: str
    mountpoint: Path
    created_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


def check_volume_name(field_name: str, name: str) -> str:
    if not VOLUME_NAME_PATTERN.match(name):
        raise InvalidArgument(
            field_name,
            f"invalid volume name {name[:80]!r}: use 1-64 letters, "
            "digits, '_', '.' or '-', starting with a letter or "
            "digit",
        )
    return name


class VolumeStore:
    """The node's named volumes (blocking file work: call it from a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def get(self, name: str) -> Volume:
        directory = self.root / check_volume_name("name", name)
        try:
            record = json.loads((directory / _RECORD).read_text())
        except FileNotFoundError:
            raise NotFound(f"no such volume: {name}") from None
        return Volume(
            name,
            directory / _DATA,
            datetime.fromisoformat(record["created_at"]),
            dict(record.get("labels", {})),
        )

    def list(self) -> list[Volume]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            named = VOLUME_NAME_PATTERN.match(entry.name)  # not a staging or trash dir
            if named and entry.is_dir() and (entry / _RECORD).exists():
                found.append(self.get(entry.name))
        return found

    def create(self, name: str, labels: dict[str, str] | None = None) -> Volume:
        """Make the volume; an existing one is returned as it is (as docker does)."""
        return self.ensure(name, labels)[0]

    def ensure(self, name: str, labels: dict[str, str] | None = None) -> tuple[Volume, bool]:
        """The volume, and whether this call made it."""
        check_volume_name("name", name)
        with self._lock:
            try:
                return self.get(name), False
            except NotFound:
                pass
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
            (staging / _DATA).mkdir(mode=0o755)
            record = {"created_at": datetime.now(UTC).isoformat(), "labels": labels or {}}
            (staging / _RECORD).write_text(json.dumps(record))
            os.chmod(staging, 0o755)
            os.rename(staging, self.root / name)
        return self.get(name), True

    def remove(self, name: str) -> None:
        """Delete the volume and its data (the caller checked nothing uses it)."""
        volume = self.get(name)
        with self._lock:
            trash = self.root / f".removing.{name}"
            os.rename(volume.mountpoint.parent, trash)
            remove_tree(trash)  # any depth: a container wrote it
