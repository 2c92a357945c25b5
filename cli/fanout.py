"""One call to many targets at once: bounded concurrency, a deadline per target.

Each target's action runs in its own daemon thread (the gRPC client is blocking), at
most `limit` at a time. A target that fails, or gives no answer before its deadline,
becomes an `Outcome` with the cause; it never holds back the others' results, and a
stuck call does not keep the process alive after the others have printed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import click

from dockyard.cli.client import CliError, Target
from dockyard.cli.deadline import set_deadline

T = TypeVar("T")
DEFAULT_LIMIT = 8
MAX_LIMIT = 64


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one target answered (`value`), or why it did not (`error`)."""

    target: Target
    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _run_one(target: Target, action: Callable[[Target], T], deadline: float) -> Outcome[T]:
    set_deadline(deadline)
    try:
        return Outcome(target, value=action(target))
    except CliError as exc:
        return Outcome(target, error=exc.message)
    except click.ClickException as exc:
        return Outcome(target, error=exc.format_message())
    except OSError as exc:
        return Outcome(target, error=str(exc))
    except Exception as exc:  # one target's bug is its own line, not a hang
        return Outcome(target, error=f"{type(exc).__name__}: {exc}")


def run_each(
    targets: Sequence[Target],
    action: Callable[[Target], T],
    timeout: float,
    limit: int = DEFAULT_LIMIT,
) -> list[Outcome[T]]:
    """`action(target)` for every target, `limit` at a time, each within `timeout`
    seconds of its start; outcomes in the order of `targets`."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    limit = max(1, min(limit, MAX_LIMIT))
    results: queue.Queue[tuple[int, Outcome[T]]] = queue.Queue()
    slots = threading.BoundedSemaphore(limit)
    started: dict[int, float] = {}
    lock = threading.Lock()

    def work(index: int, target: Target) -> None:
        with slots:
            begin = time.monotonic()
            with lock:
                started[index] = begin
            results.put((index, _run_one(target, action, begin + timeout)))

    for index, target in enumerate(targets):
        threading.Thread(
            target=work, args=(index, target), daemon=True, name=f"dockyard-target-{index}"
        ).start()
    outcomes: dict[int, Outcome[T]] = {}
    while len(outcomes) < len(targets):
        with lock:
            pending = [started.get(i) for i in range(len(targets)) if i not in outcomes]
        # Wait until the earliest running target's deadline (or a while, if none runs yet).
        running = [begin for begin in pending if begin is not None]
        wait = (min(running) + timeout - time.monotonic()) if running else timeout
        try:
            index, outcome = results.get(timeout=max(0.01, wait))
            outcomes.setdefault(index, outcome)
        except queue.Empty:
            now = time.monotonic()
            with lock:
                overdue = [
                    i
                    for i, begin in started.items()
                    if i not in outcomes and now >= begin + timeout
                ]
            for i in overdue:
                outcomes[i] = Outcome(targets[i], error=f"no answer within {timeout:g} s")
    return [outcomes[i] for i in range(len(targets))]
