"""The daemons' event loop: uvloop's where it is installed, asyncio's otherwise.

uvloop (libuv under asyncio's interface) runs a callback, a socket read and a timer
for a fraction of the pure-Python loop's CPU; the controller's work is thousands of
small callbacks a second (every gRPC message is several). Set
DOCKYARD_EVENT_LOOP=asyncio to run on the standard loop.

The runc agent stays on the standard loop (``libuv=False``): libuv gives a child's
piped stdin and stdout a socketpair, not a pipe, and what the agent runs does not all
take that (``nft -f -`` opens /dev/stdin, which a socket cannot be opened as; a
``docker exec -i`` process would read a socket), and a child that exits before it read
its input makes uvloop's write raise where asyncio's ``communicate`` ignores the broken
pipe. The controller, its reader and the hollow fleet pipe nothing a child opens.
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


def loop_factory(libuv: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default (``libuv`` False, or
    the environment says so, or uvloop is not installed)."""
    if not libuv or os.environ.get(ENV, "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], libuv: bool = True) -> T:
    """`asyncio.run(main)` on uvloop (asyncio's loop with ``libuv`` False); logs which
    loop it is."""
    with asyncio.Runner(loop_factory=loop_factory(libuv)) as runner:
        loop = runner.get_loop()
        log.info("event_loop", loop=f"{type(loop).__module__}.{type(loop).__name__}")
        return runner.run(main)
