"""The image service's transfer progress as dockerd streams it (`docker pull`/`push`).

dockerd writes one JSON object per line: a header (`Pulling from library/busybox`), then
per layer `Pulling fs layer`, `Downloading` with `progressDetail` {current, total} and a
`progress` bar, `Verifying Checksum`, `Download complete`, `Extracting`, `Pull complete`
(or `Already exists`), and a footer (`Digest: ...`, `Status: Downloaded newer image for
...`). A push has `Preparing`, `Pushing`, `Pushed` / `Layer already exists`, and a last
line `TAG: digest: sha256:... size: N` with an `aux` object. A failure is a line with
`errorDetail` and `error`: the status code is already sent when it happens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dockyard.agent.images.models import Image
from dockyard.agent.images.progress import ProgressEvent, Status
from dockyard.agent.images.reference import Reference

__all__ = [
    "PullRenderer",
    "PushRenderer",
    "error_line",
    "line",
    "progress_bar",
    "pull_footer",
    "pull_header",
    "push_footer",
    "push_header",
]

_PULL_STATUS = {
    Status.WAITING: "Pulling fs layer",
    Status.DOWNLOADING: "Downloading",
    Status.VERIFYING: "Verifying Checksum",
    Status.EXTRACTING: "Extracting",
    Status.DONE: "Pull complete",
    Status.ALREADY_EXISTS: "Already exists",
}
_PUSH_STATUS = {
    Status.WAITING: "Preparing",
    Status.UPLOADING: "Pushing",
    Status.PUSHED: "Pushed",
    Status.ALREADY_EXISTS: "Layer already exists",
}
_WITH_BYTES = {Status.DOWNLOADING, Status.EXTRACTING, Status.UPLOADING}
_BAR_WIDTH = 50


def line(message: dict[str, Any]) -> bytes:
    """One message of the stream: compact JSON and a newline, as dockerd writes them."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\r\n"


def error_line(message: str) -> bytes:
    """A failure inside the stream (the client prints `message` and exits non-zero)."""
    return line({"errorDetail": {"message": message}, "error": message})


def _human(size: float) -> str:
    """Bytes as docker's progress bar prints them (go-units HumanSize: 3 digits, kB/MB)."""
    units = ["B", "kB", "MB", "GB", "TB"]
    index = 0
    while size >= 1000 and index < len(units) - 1:
        size /= 1000
        index += 1
    return f"{size:.4g}{units[index]}"


def progress_bar(current: int, total: int) -> str:
    """`[=====>      ]  1.2MB/2.5MB`, as dockerd's jsonmessage renders it (a 50-wide bar:
    one `=` per 2 %, then `>`)."""
    if total <= 0 or current > total:
        return _human(current).rjust(8)
    percentage = (current * 100 // total) // 2
    bar = "=" * percentage + ">" + " " * max(0, _BAR_WIDTH - percentage)
    return f"[{bar}] {_human(current).rjust(8)}/{_human(total)}"


def _layer_message(status: str, event: ProgressEvent, with_bytes: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"status": status, "progressDetail": {}, "id": event.id}
    if with_bytes and event.total:
        message["progressDetail"] = {"current": event.current, "total": event.total}
        message["progress"] = progress_bar(event.current, event.total)
    return message


@dataclass
class PullRenderer:
    """Turns one pull's `ProgressEvent`s into dockerd's messages, in order per layer."""

    _last: dict[str, Status] = field(default_factory=dict)

    def render(self, event: ProgressEvent) -> list[dict[str, Any]]:
        """The messages for one event (a finished download also says `Download complete`)."""
        status = _PULL_STATUS.get(event.status)
        if status is None:
            return []
        previous = self._last.get(event.digest)
        self._last[event.digest] = event.status
        messages = []
        if event.status is Status.EXTRACTING and previous in (
            Status.WAITING,
            Status.DOWNLOADING,
            Status.VERIFYING,
        ):
            messages.append(_layer_message("Download complete", event, False))
        if event.status is Status.EXTRACTING and previous is None:
            # A layer a peer or the local store already had: docker shows it as pulled.
            messages.append(_layer_message("Pulling fs layer", event, False))
        messages.append(_layer_message(status, event, event.status in _WITH_BYTES))
        return messages


@dataclass
class PushRenderer:
    """Turns one push's `ProgressEvent`s into dockerd's messages."""

    def render(self, event: ProgressEvent) -> list[dict[str, Any]]:
        """The messages for one event."""
        status = _PUSH_STATUS.get(event.status)
        if status is None:
            return []
        return [_layer_message(status, event, event.status in _WITH_BYTES)]


def pull_header(ref: Reference) -> dict[str, Any]:
    """`Pulling from library/busybox` with the tag (or digest) as id."""
    return {"status": f"Pulling from {ref.repository}", "id": ref.tag or ref.digest or "latest"}


def pull_footer(ref: Reference, image: Image, had: str | None) -> list[dict[str, Any]]:
    """`Digest: ...` and whether the image is new; `had` is the digest held before."""
    name = ref.familiar()
    if had == image.digest:
        status = f"Status: Image is up to date for {name}"
    else:
        status = f"Status: Downloaded newer image for {name}"
    return [{"status": f"Digest: {image.digest}"}, {"status": status}]


def push_header(ref: Reference) -> dict[str, Any]:
    """`The push refers to repository [localhost:5000/busybox]`."""
    return {"status": f"The push refers to repository [{ref.familiar_name()}]"}


def push_footer(ref: Reference, digest: str, size: int) -> list[dict[str, Any]]:
    """`latest: digest: sha256:... size: 527`, then the `aux` object clients read."""
    tag = ref.tag or "latest"
    return [
        {"status": f"{tag}: digest: {digest} size: {size}"},
        {"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": size}},
    ]
