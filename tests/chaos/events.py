"""Follow the controllers' `/v1/events` stream beside a chaos scenario.

A thread reads the Server-Sent Events of one controller's HTTP API and, when that
controller stops answering (killed, stopped, etcd gone), resumes from the last event id
on the next one. It keeps (revision, task id) of every task event, so the checker can
tell whether each task change it saw in etcd was also on the stream.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request


class EventFollower:
    def __init__(self, addresses: list[str], since: int) -> None:
        self.addresses = addresses  # host:port of each controller's HTTP API
        self.position = str(since)
        self.revision = since  # the newest revision delivered so far
        self.tasks: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def seen(self) -> tuple[int, set[tuple[int, str]]]:
        with self._lock:
            return self.revision, set(self.tasks)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            address = self.addresses[index % len(self.addresses)]
            with contextlib.suppress(OSError, ValueError):  # gone: the next controller
                self._read(address)
            index += 1
            time.sleep(0.1)

    def _read(self, address: str) -> None:
        url = f"http://{address}/v1/events?since={self.position}"
        with urllib.request.urlopen(url, timeout=2) as stream:
            frame: dict[str, str] = {}
            while not self._stop.is_set():
                raw = stream.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if line:
                    field, _, value = line.partition(": ")
                    frame[field] = value
                    continue
                if "data" in frame and "id" in frame:
                    self._take(frame["id"], json.loads(frame["data"]))
                frame = {}

    def _take(self, position: str, data: dict[str, object]) -> None:
        with self._lock:
            self.position = position
            revision = int(str(data.get("revision", 0)))
            self.revision = max(self.revision, revision)
            if data.get("kind") == "task":
                self.tasks.add((revision, str(data["id"])))
