"""The daemons' event loop: uvloop's where it is installed, asyncio's otherwise.

uvloop (libuv under asyncio's interface) runs a callback, a socket read and a timer
for a fraction of the pure-Python loop's CPU; the controller's and the agents' work is
thousands of small callbacks a second (every gRPC message is several). Set
DOCKYARD_EVENT_LOOP=asyncio to run on the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

__all__ = ["ENV", "loop_factory", "run"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

ENV = "DOCKYARD_EVENT_LOOP"
"""`asyncio` runs the daemons on the standard loop; anything else (or unset) on uvloop."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default."""
    if os.environ.get(ENV, "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the daemons' loop; logs which loop it is."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        loop = runner.get_loop()
        log.info("event_loop", loop=f"{type(loop).__module__}.{type(loop).__name__}")
        return runner.run(main)
