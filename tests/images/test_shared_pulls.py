"""The image service's shared pulls are items of its task scope: callers of one
reference share one transfer and get its error; the last caller leaving cancels it;
`close` cancels the transfers under way and leaves no task pending."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from dockyard.agent.images.errors import ManifestNotFound
from dockyard.agent.images.service import ImageService
from tests.busy_worker import settle

pytestmark = pytest.mark.timeout(30)


class FakeTransfer:
    """`ImageService._pull` that waits for `go`, then fails or answers."""

    def __init__(self, error: Exception | None = None) -> None:
        self.go = asyncio.Event()
        self.started = 0
        self.cancelled = 0
        self.error = error

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started += 1
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return "image"


def _service(tmp_path: Path, transfer: FakeTransfer, monkeypatch: pytest.MonkeyPatch) -> Any:
    service = ImageService(tmp_path / "images")
    monkeypatch.setattr(service, "_pull", transfer)
    return service


def _others() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_callers_share_one_transfer_and_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer = FakeTransfer(ManifestNotFound("no such image"))
    service = _service(tmp_path, transfer, monkeypatch)
    with structlog.testing.capture_logs() as logs:
        callers = [asyncio.create_task(service.pull("busybox")) for _ in range(2)]
        await settle()
        transfer.go.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert transfer.started == 1
    assert all(isinstance(r, ManifestNotFound) for r in results)
    assert not [e for e in logs if e["event"] == "task.failed"]  # the callers' error
    await service.close()
    assert _others() == set()


async def test_the_last_caller_leaving_cancels_the_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer = FakeTransfer()
    service = _service(tmp_path, transfer, monkeypatch)
    callers = [asyncio.create_task(service.pull("busybox")) for _ in range(2)]
    await settle()
    callers[0].cancel()
    await settle()
    assert transfer.cancelled == 0  # one caller still waits
    callers[1].cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    assert transfer.cancelled == 1
    await service.close()
    assert _others() == set()


async def test_close_cancels_the_transfers_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer = FakeTransfer()
    service = _service(tmp_path, transfer, monkeypatch)
    caller = asyncio.create_task(service.pull("busybox"))
    await settle()
    await service.close()
    assert transfer.cancelled == 1
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert _others() == set()


async def test_no_task_is_left_between_pulls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service dropped without close() leaves nothing pending once its pulls are done,
    and a pull that starts while the last one's scope is closing runs in a new one."""
    transfer = FakeTransfer()
    service = _service(tmp_path, transfer, monkeypatch)
    first = asyncio.create_task(service.pull("busybox"))
    await settle()
    transfer.go.set()
    assert await first == "image"
    assert _others() == set()
    transfer.go.clear()
    second = asyncio.create_task(service.pull("busybox"))
    await settle()
    closing = asyncio.create_task(service._transfers.close())  # as an idle close does
    third = asyncio.create_task(service.pull("alpine"))
    await settle()
    transfer.go.set()
    assert await third == "image"
    await closing
    with pytest.raises(asyncio.CancelledError):
        await second  # the close cancelled the transfer it held, not the new scope's
    assert _others() == set()
