"""Session-wide guards, loaded by the root conftest (`pytest_plugins`).

- A private HOME, XDG_CONFIG_HOME/XDG_DATA_HOME/XDG_CACHE_HOME and DOCKYARD_CONFIG for
  the whole session (set before collection, so in-process CLI tests and every
  subprocess see them): no test reads or writes the user's own configuration, such as
  the `local` context `deploy/quickstart` leaves current. The DOCKYARD_* variables that
  pick a daemon or TLS material are unset.
- Hypothesis prints the reproduction blob of a failing example (`print_blob=True`,
  profile `dockyard`, loaded unless HYPOTHESIS_PROFILE names another): a random CI run
  can be replayed with `@reproduce_failure`.
- With DOCKYARD_REQUIRE_ALL=1 (CI sets it), a skipped test fails: a missing
  prerequisite (root, runc, the registry, skopeo, dockerd...) must not pass silently.
  A skip whose reason starts with `optional:` stays a skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

PRIVATE_VARIABLES = (
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "DOCKYARD_CONFIG",
)
UNSET_VARIABLES = (
    "DOCKYARD_HOST",
    "DOCKYARD_CONTEXT",
    "DOCKYARD_CERT_PATH",
    "DOCKYARD_TLS_CACERT",
    "DOCKYARD_TLS_CERT",
    "DOCKYARD_TLS_KEY",
)
REQUIRE_ALL = "DOCKYARD_REQUIRE_ALL"
OPTIONAL_SKIP = "optional:"

# Hypothesis's own "ci" profile (chosen when CI is set) derandomizes; CI should explore
# new examples on every run, and a failure prints the blob that replays it.
settings.register_profile("dockyard", print_blob=True, derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dockyard"))


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="dockyard-test-home-"))
    values = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
        "DOCKYARD_CONFIG": home / ".config" / "dockyard",
    }
    saved = {name: os.environ.get(name) for name in (*PRIVATE_VARIABLES, *UNSET_VARIABLES)}
    for name, path in values.items():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ[name] = str(path)
    for name in UNSET_VARIABLES:
        os.environ.pop(name, None)

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(home, ignore_errors=True)

    config.add_cleanup(restore)


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _unexpected(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The reason, if this is a skip that DOCKYARD_REQUIRE_ALL turns into a failure."""
    if os.environ.get(REQUIRE_ALL) != "1" or not report.skipped:
        return None
    if hasattr(report, "wasxfail"):
        return None
    reason = _skip_reason(report.longrepr)
    return None if reason.startswith(OPTIONAL_SKIP) else reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    reason = _unexpected(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"skipped with {REQUIRE_ALL}=1 (a prerequisite is missing): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    reason = _unexpected(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"skipped with {REQUIRE_ALL}=1 (a prerequisite is missing): {reason}"
