"""``/containers/{id}/logs``, ``/stats`` and ``/top``: what ``docker logs|stats|top`` read."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
from aiohttp import web

from dockyard.agent.containers.errors import FailedPrecondition
from dockyard.agent.dockerapi.container_view import docker_time
from dockyard.agent.dockerapi.containers import flag
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, conflict
from dockyard.agent.dockerapi.lookup import docker_errors, find_container
from dockyard.agent.dockerapi.responses import JSON, json_response
from dockyard.agent.dockerapi.stream import MULTIPLEXED, RAW_STREAM, frame, stream_id
from dockyard.agent.metrics.netdev import InterfaceCounters, read_net_dev
from dockyard.agent.runtime.base import ContainerStatus, Stats

__all__ = ["add_routes"]

STATS_INTERVAL = 1.0
"""Seconds between two samples of a stats stream (dockerd's)."""
ONE_SHOT_GAP = 0.5
"""Seconds between the two samples of ``stream=false`` (the client's CPU percent is the
difference between them)."""
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _since(text: str) -> datetime | None:
    if not text or text == "0":
        return None
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        raise bad_request(f"invalid since: {text[:64]!r}") from None


def _tail(text: str) -> int | None:
    if not text or text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"invalid tail: {text[:64]!r}") from None
    return None if value < 0 else value


async def _logs(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
    if not (stdout or stderr):
        raise bad_request("Bad parameters: you must choose at least one stream")
    view = await find_container(ctx, ref)
    timestamps = flag(request, "timestamps")
    lines = ctx.require_containers().logs(
        view.info.id,
        follow=flag(request, "follow"),
        tail=_tail(request.query.get("tail", "")),
        since=_since(request.query.get("since", "")),
        timestamps=timestamps,
    )
    tty = view.info.config.tty  # a terminal's output is one stream: sent raw, as dockerd does
    response = web.StreamResponse(
        status=200, headers={"Content-Type": RAW_STREAM if tty else MULTIPLEXED}
    )
    await response.prepare(request)
    wanted = {"stdout": stdout, "stderr": stderr}
    with docker_errors(ref):
        async for line in lines:
            if not wanted[line.stream]:
                continue
            data = line.data
            if timestamps:
                data = docker_time(line.timestamp).encode() + b" " + data
            await response.write(data if tty else frame(stream_id(line.stream), data))
    await response.write_eof()
    return response


def _system_cpu_ns() -> int:
    """The host's CPU time (every CPU, every mode) in ns, as dockerd's system_cpu_usage."""
    with open("/proc/stat", "rb") as stat:
        fields = stat.readline().split()[1:]
    return sum(int(f) for f in fields[:8]) * 1_000_000_000 // _CLOCK_TICKS


def _cpu(stats: Stats | None, system_ns: int, online: int) -> dict[str, Any]:
    if stats is None:
        return {
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }
    return {
        "cpu_usage": {
            "total_usage": stats.cpu_usage_ns,
            "usage_in_kernelmode": 0,
            "usage_in_usermode": stats.cpu_usage_ns,
        },
        "system_cpu_usage": system_ns,
        "online_cpus": online,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


@dataclass(frozen=True, slots=True)
class Sample:
    """One read of a container for ``/stats``: its cgroup counters, the host's CPU time
    (the base of docker's CPU %) and its own network namespace's interfaces."""

    stats: Stats
    system_ns: int
    interfaces: list[InterfaceCounters] = field(default_factory=list)


def stats_body(
    view_id: str,
    name: str,
    sample: Sample,
    previous: Sample | None,
    host_memory: int,
) -> dict[str, Any]:
    """One ``/stats`` object (``precpu_stats`` from the previous sample)."""
    online = os.cpu_count() or 1
    stats, system_ns = sample.stats, sample.system_ns
    pre_stats, pre_system = (previous.stats, previous.system_ns) if previous else (None, 0)
    return {
        "read": docker_time(stats.read_at),
        "preread": docker_time(pre_stats.read_at if pre_stats else None),
        "id": view_id,
        "name": f"/{name}",
        "pids_stats": {"current": stats.pids},
        "blkio_stats": {
            "io_service_bytes_recursive": None,
            "io_serviced_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu(stats, system_ns, online),
        "precpu_stats": _cpu(pre_stats, pre_system, online) if pre_stats else _cpu(None, 0, 0),
        "memory_stats": {
            "usage": stats.memory_usage,
            "limit": stats.memory_limit if 0 < stats.memory_limit < host_memory else host_memory,
            "stats": {},
        },
        "networks": {i.interface: _interface(i) for i in sample.interfaces},
    }


def _interface(counters: InterfaceCounters) -> dict[str, int]:
    return {
        "rx_bytes": counters.receive_bytes,
        "rx_packets": counters.receive_packets,
        "rx_errors": counters.receive_errors,
        "rx_dropped": counters.receive_dropped,
        "tx_bytes": counters.transmit_bytes,
        "tx_packets": counters.transmit_packets,
        "tx_errors": counters.transmit_errors,
        "tx_dropped": counters.transmit_dropped,
    }


async def _sample(ctx: DockerApiContext, container_id: str) -> Sample:
    containers = ctx.require_containers()
    stats = await containers.stats(container_id)
    info = (await containers.inspect(container_id)).info
    # A host-network container's namespace is the host's: docker shows no interfaces.
    pid = info.state.pid if info.config.network != "host" else 0
    return await asyncio.to_thread(_host_reads, stats, pid)


def _host_reads(stats: Stats, pid: int) -> Sample:
    """The host's CPU time and `pid`'s interfaces (blocking: run in a thread)."""
    return Sample(stats, _system_cpu_ns(), read_net_dev(pid) if pid > 0 else [])


async def _stats(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    view = await find_container(ctx, ref)
    info = view.info
    host_memory = psutil.virtual_memory().total
    if info.state.status is not ContainerStatus.RUNNING:  # docker shows zeros then
        stopped = Sample(Stats(datetime.now(UTC), 0, 0.0, 0, 0, 0), 0)
        return json_response(stats_body(info.id, info.name, stopped, None, host_memory))
    stream = flag(request, "stream", True)
    one_shot = flag(request, "one-shot")
    with docker_errors(ref):
        try:
            previous = await _sample(ctx, info.id)
            if not stream:
                if one_shot:
                    return json_response(
                        stats_body(info.id, info.name, previous, None, host_memory)
                    )
                await asyncio.sleep(ONE_SHOT_GAP)
                current = await _sample(ctx, info.id)
                return json_response(stats_body(info.id, info.name, current, previous, host_memory))
        except FailedPrecondition:
            raise conflict(f"container {info.name} is not running") from None
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        await response.prepare(request)
        first = stats_body(info.id, info.name, previous, None, host_memory)
        await response.write(json.dumps(first).encode() + b"\n")
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                current = await _sample(ctx, info.id)
            except (FailedPrecondition, DockerApiError):
                break
            body = stats_body(info.id, info.name, current, previous, host_memory)
            await response.write(json.dumps(body).encode() + b"\n")
            previous = current
    await response.write_eof()
    return response


def _processes(pid: int) -> list[psutil.Process]:
    try:
        init = psutil.Process(pid)
        return [init, *init.children(recursive=True)]
    except psutil.Error:
        return []


def _top_rows(pid: int) -> list[list[str]]:
    """``ps -ef`` columns of the container's processes (blocking: run in a thread)."""
    rows = []
    for process in _processes(pid):
        try:
            with process.oneshot():
                times = process.cpu_times()
                used = int(times.user + times.system)
                rows.append(
                    [
                        process.username() if process.uids().real != 0 else "root",
                        str(process.pid),
                        str(process.ppid()),
                        "0",
                        datetime.fromtimestamp(process.create_time()).strftime("%H:%M"),
                        "?",
                        f"{used // 3600:02d}:{used // 60 % 60:02d}:{used % 60:02d}",
                        " ".join(process.cmdline()) or f"[{process.name()}]",
                    ]
                )
        except psutil.Error:
            continue  # gone meanwhile
    return rows


async def _top(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    view = await find_container(ctx, ref)
    if view.info.state.status is not ContainerStatus.RUNNING:
        raise conflict(f"Container {view.info.id} is not running")
    if request.query.get("ps_args", "-ef") not in ("", "-ef", "ef", "aux", "-aux"):
        raise bad_request("ps_args: only the default (-ef) columns are supported by dockyard")
    rows = await asyncio.to_thread(_top_rows, view.info.state.pid)
    titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    return json_response({"Titles": titles, "Processes": rows})


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """Logs, stats and top."""

    @routes.get("/containers/{id}/logs")
    async def logs(request: web.Request) -> web.StreamResponse:
        return await _logs(ctx, request)

    @routes.get("/containers/{id}/stats")
    async def stats(request: web.Request) -> web.StreamResponse:
        return await _stats(ctx, request)

    @routes.get("/containers/{id}/top")
    async def top(request: web.Request) -> web.StreamResponse:
        return await _top(ctx, request)
