"""Pull/push progress: one plain line per status change off a terminal, bars on one."""

from __future__ import annotations

import io
import sys

from dockyard.cli.progress import ImageProgressView, follow_progress
from dockyard.v1.images_pb2 import ImageProgress, ImageRecord


def events() -> list[ImageProgress]:
    return [
        ImageProgress(id="71cd98504628", status="waiting"),
        ImageProgress(id="71cd98504628", status="downloading", current=10, total=100),
        ImageProgress(id="71cd98504628", status="downloading", current=60, total=100),
        ImageProgress(id="71cd98504628", status="extracting", current=100, total=100),
        ImageProgress(id="71cd98504628", status="done"),
        ImageProgress(
            id="reg/busybox:latest",
            status="done",
            done=True,
            image=ImageRecord(id="sha256:abc", digest="sha256:def"),
        ),
    ]


def test_plain_lines_once_per_status() -> None:
    out = io.StringIO()
    image = follow_progress(events(), out)
    assert image is not None and image.digest == "sha256:def"
    assert out.getvalue().splitlines() == [
        "71cd98504628: waiting",
        "71cd98504628: downloading",
        "71cd98504628: extracting",
        "71cd98504628: done",
    ]


def test_bars_draw_and_rich_loads_only_then() -> None:
    out = io.StringIO()
    sys.modules.pop("rich.progress", None)
    with ImageProgressView(out, bars=False) as view:
        view.update(events()[0])
    assert "rich.progress" not in sys.modules
    with ImageProgressView(out, bars=True) as view:
        for event in events():
            view.update(event)
    assert "71cd98504628" in out.getvalue()
