"""A real headless browser for the dashboard: Debian's chromium, driven by Playwright.

Playwright never downloads a browser here: it launches `/usr/bin/chromium` (or
DOCKYARD_CHROMIUM) through `executable_path`. The browser holds a client certificate
for the controller's origin, as a user's browser would after importing it. Screenshots
go to DOCKYARD_TEST_ARTIFACTS (default `test-artifacts/` in the checkout)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("DOCKYARD_CHROMIUM", "/usr/bin/chromium")
CHECKOUT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DOCKYARD_TEST_ARTIFACTS", CHECKOUT / "test-artifacts"))


def _have_browser() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return shutil.which(CHROMIUM) is not None or Path(CHROMIUM).is_file()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _have_browser():
        return
    skip = pytest.mark.skip(reason=f"needs playwright and {CHROMIUM} (deploy/install)")
    for item in items:
        if "tests/dashboard/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


def artifacts(name: str) -> Path:
    directory = ARTIFACTS / "dashboard" / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory
