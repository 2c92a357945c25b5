"""One scrape: list the containers (async), then read every counter in a thread and
render the Prometheus text format. Scrapes run one at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_TYPE,
)
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from prometheus_client.registry import Collector

from dockyard.agent.metrics.collector import ContainerCollector
from dockyard.agent.metrics.source import ContainerRef, ContainerSource

__all__ = ["TEXT_TYPE", "AgentMetrics"]

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Scrape:
    """The container families of one container list, and how long the scrape took."""

    def __init__(
        self, containers: ContainerCollector, refs: Sequence[ContainerRef], previous_seconds: float
    ) -> None:
        self._containers = containers
        self._refs = refs
        self._previous = previous_seconds

    def collect(self) -> Iterable[Metric]:
        yield from self._containers.collect(self._refs)
        yield GaugeMetricFamily(
            "dockyard_metrics_scrape_duration_seconds",
            "How long the previous scrape of this endpoint took.",
            value=self._previous,
        )


class AgentMetrics:
    """Renders the agent's `/metrics`.

    Args:
        source: Lists the node's containers.
        containers: Reads their counters.
        node_collectors: The node's own families (process, conmon, image store, pulls).
    """

    def __init__(
        self,
        source: ContainerSource,
        containers: ContainerCollector,
        node_collectors: Sequence[Collector] = (),
    ) -> None:
        self._source = source
        self._containers = containers
        self._node = tuple(node_collectors)
        self._lock = asyncio.Lock()
        self._previous = 0.0

    async def render(self, openmetrics: bool = False) -> tuple[bytes, str]:
        """The exposition and its content type (OpenMetrics when asked for)."""
        async with self._lock:
            start = time.perf_counter()
            refs = await self._source()
            body = await asyncio.to_thread(self._render, refs, openmetrics)
            self._previous = time.perf_counter() - start
        return body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE

    def _render(self, refs: Sequence[ContainerRef], openmetrics: bool) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(self._containers, refs, self._previous))
        for collector in self._node:
            registry.register(collector)
        return (generate_openmetrics if openmetrics else generate_latest)(registry)
