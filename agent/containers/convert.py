"""Runtime and image values to their protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.agent.containers.service import ContainerView
from dockyard.agent.images.models import Image, ImageSummary
from dockyard.agent.runtime.base import ContainerSpec, ContainerState, LogRecord, NetworkInfo, Stats
from dockyard.v1 import containers_pb2 as cpb
from dockyard.v1 import images_pb2 as ipb

__all__ = [
    "container_network",
    "container_record",
    "container_state",
    "create_request",
    "image_record",
    "image_summary",
    "log_line",
    "stats_message",
    "timestamp",
]


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf timestamp, or None."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def container_state(state: ContainerState) -> cpb.ContainerState:
    """The state message."""
    return cpb.ContainerState(
        status=state.status.value,
        pid=state.pid,
        exit_code=state.exit_code or 0,
        has_exit_code=state.exit_code is not None,
        oom_killed=state.oom_killed,
        started_at=timestamp(state.started_at),
        finished_at=timestamp(state.finished_at),
        error=state.error,
        restart_count=state.restart_count,
    )


def container_network(network: NetworkInfo) -> cpb.ContainerNetwork:
    """Where the container is reachable: mode, address and the ports as bound."""
    return cpb.ContainerNetwork(
        mode=network.mode,
        ip_address=network.ip_address,
        prefix_length=network.prefix_length,
        gateway=network.gateway,
        bridge=network.bridge,
        ports=[
            cpb.PortMapping(
                host_ip=p.host_ip,
                host_port=p.host_port,
                container_port=p.container_port,
                protocol=p.protocol,
            )
            for p in network.ports
        ],
    )


def create_request(spec: ContainerSpec, auto_remove: bool = False) -> cpb.CreateContainerRequest:
    """The request that would create the container again (shown as its `config`)."""
    return cpb.CreateContainerRequest(
        image=spec.image,
        name=spec.name,
        command=list(spec.command or ()),
        entrypoint=list(spec.entrypoint or ()),
        clear_entrypoint=spec.entrypoint is not None and not spec.entrypoint,
        env=list(spec.env),
        workdir=spec.workdir or "",
        user=spec.user or "",
        memory_bytes=spec.memory_bytes,
        nano_cpus=spec.nano_cpus,
        pids_limit=spec.pids_limit,
        read_only=spec.read_only,
        volumes=[
            cpb.VolumeSpec(
                host_path="" if v.volume else str(v.host),
                volume=v.volume,
                container_path=v.container,
                read_only=v.read_only,
            )
            for v in spec.volumes
        ],
        restart_policy=cpb.RestartPolicySpec(
            name=spec.restart_policy.name.value, max_retries=spec.restart_policy.max_retries
        ),
        network=spec.network,
        labels=dict(spec.labels),
        cap_add=list(spec.cap_add),
        cap_drop=list(spec.cap_drop),
        hostname=spec.hostname or "",
        auto_remove=auto_remove,
        privileged=spec.privileged,
        seccomp=spec.seccomp,
        ports=[
            cpb.PortMapping(
                host_ip=p.host_ip,
                host_port=p.host_port,
                container_port=p.container_port,
                protocol=p.protocol,
            )
            for p in spec.ports
        ],
        tmpfs=[
            cpb.TmpfsSpec(container_path=t.container, size_bytes=t.size_bytes) for t in spec.tmpfs
        ],
        tty=spec.tty,
        open_stdin=spec.open_stdin,
        stdin_once=spec.stdin_once,
    )


def container_record(view: ContainerView) -> cpb.ContainerRecord:
    """The record message of one container."""
    info = view.info
    return cpb.ContainerRecord(
        id=info.id,
        name=info.name,
        image=info.image,
        image_digest=view.meta.image_digest,
        created_at=timestamp(info.created_at),
        state=container_state(info.state),
        config=create_request(info.config, view.meta.auto_remove),
        log_path=str(info.log_path or ""),
        network=container_network(info.network) if info.network is not None else None,
    )


def log_line(record: LogRecord) -> cpb.LogLine:
    """One log line message."""
    return cpb.LogLine(
        stream=record.stream, timestamp=timestamp(record.timestamp), data=record.data
    )


def stats_message(stats: Stats) -> cpb.ContainerStats:
    """One stats sample message."""
    return cpb.ContainerStats(
        read_at=timestamp(stats.read_at),
        cpu_usage_ns=stats.cpu_usage_ns,
        cpu_percent=stats.cpu_percent,
        memory_usage=stats.memory_usage,
        memory_limit=stats.memory_limit,
        pids=stats.pids,
    )


def image_record(image: Image, config_json: str = "") -> ipb.ImageRecord:
    """The record message of one image."""
    return ipb.ImageRecord(
        id=image.id,
        references=list(image.references),
        digest=image.digest,
        size=image.size,
        created=timestamp(_parse_time(image.created)),
        architecture=image.platform.architecture,
        os=image.platform.os,
        layers=[layer.digest for layer in image.layers],
        config_json=config_json,
    )


def image_summary(row: ImageSummary) -> ipb.ImageSummaryRecord:
    """One row of the image list."""
    return ipb.ImageSummaryRecord(
        repository=row.repository,
        tag=row.tag,
        id=row.image_id,
        digest=row.digest,
        size=row.size,
        created=timestamp(_parse_time(row.created)),
    )
