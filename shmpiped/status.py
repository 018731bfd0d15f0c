"""The pieces of ``PipelineManager.status()``: per-worker entries, end-to-end latency, streams, summary.

Pure functions over what the manager holds (worker handles and their
telemetry snapshots, streams, the graph); the manager composes them under its
lock and keeps the side effects (remembered metrics, overrun events).  Every
key is described in docs/status.md.
"""

from __future__ import annotations

import collections
import time

from . import health, realtime
from .config_realtime import RealtimeConfig
from .shm import layout


def realtime_entry(handle, alive: bool, problems: list[str]) -> tuple[dict, dict | None]:
    """A worker's ``realtime`` entry (requested, and effective as read back from /proc) and its ``proc``
    counters (None once it is gone): two small /proc reads."""
    requested = handle.realtime or RealtimeConfig()
    read = realtime.read_proc(handle.pid) if alive else None
    entry = {"requested": requested.as_status(), "effective": None, "applied": None, "problems": []}
    if read is None:
        return entry, None
    effective, counters = read
    effective.update(wait=handle.wait_strategy, spin_us=requested.spin_us)
    shortfalls = realtime.shortfalls(requested, effective, handle.affinity)
    entry.update(effective=effective, applied=not shortfalls,
                 problems=shortfalls + list(problems) if shortfalls else [])
    return entry, counters


def worker_entry(handle, snap, now_ns: int, *, failed: bool, state: str, restarts: int,
                 realtime_problems: list[str] = ()) -> tuple[dict, dict | None]:
    """One worker's status entry, and its metrics once it has processed a frame (else None);
    ``state`` is the pipeline's; ``realtime_problems`` the privileges its settings lack (build)."""
    alive = handle.alive
    idle_s, age_s = health.idle_and_age(snap, now_ns)
    worker_health = health.derive_health(
        failed=failed, alive=alive, paused=state == "paused", snapshot=snap, running=state == "running",
        idle_s=idle_s, read_timeout=handle.config.read_timeout,
    )
    if worker_health in ("stopped", "starting"):
        idle_s = age_s = None
    entry = {
        "pid": handle.pid,
        "kind": handle.config.kind,
        "alive": alive,
        "exitcode": handle.exitcode,
        "cpu_slot": handle.cpu_slot,
        "health": worker_health,
        "idle_s": idle_s,
        "last_metric_age_s": age_s,
        **_timestamps(snap, now_ns),
        "gpu_uuid": snap.gpu_uuid if snap is not None else None,
        "restarts": restarts,
    }
    entry["realtime"], entry["proc"] = realtime_entry(handle, alive, list(realtime_problems))
    metrics = None
    if snap is not None and snap.frames:
        metrics = worker_metrics(handle, snap, now_ns)
        entry.update(metrics)
        entry["exec_histogram"] = {**health.histogram(snap, layout.REC_EXEC_HIST, layout.REC_EXEC_SUM_NS),
                                   "sumsq_s2": snap.exec_sumsq_s2}
    elif snap is not None:  # no frame yet: lapped every time, or a frame-id barrier still skipping
        entry.update(health.wait_counters(snap))
    return entry, metrics


def _timestamps(snap, now_ns: int) -> dict:
    """Wall-clock times (Unix seconds) of the worker's last completed frame and of its last record update
    (heartbeat); None when it has none.  Unlike ``idle_s``, they stay true in a snapshot served late."""
    if snap is None:
        return {"last_frame_time": None, "heartbeat_time": None}
    wall_now = time.time()
    as_wall = lambda mono_ns: wall_now - (now_ns - mono_ns) / 1e9 if mono_ns else None  # noqa: E731
    return {"last_frame_time": as_wall(snap.field(layout.REC_LAST_FRAME_NS)),
            "heartbeat_time": as_wall(snap.field(layout.REC_HEARTBEAT_NS))}


def worker_metrics(handle, snap, now_ns: int) -> dict:
    """The seed's per-worker metrics (what ``status()["metrics"]`` keeps after a worker stops)."""
    return {"pid": handle.pid, "cpu_slot": handle.cpu_slot, **health.worker_metrics(snap, now_ns)}


def end_to_end(config, graph, snaps: dict) -> dict:
    """Latency from origin to each sink stream, from the telemetry of its producer."""
    result = {}
    producers = {out: k.name for k in config.kernels for out in k.outputs}
    as_us = lambda value: None if value is None else value * 1e6  # noqa: E731
    for stream in graph.sink_streams():
        producer = producers.get(stream)
        snap = snaps.get(producer)
        if snap is None:
            continue
        stats = snap.latency_stats()
        result[stream] = {
            "producer": producer,
            "samples": stats.count,
            "window": min(stats.count, layout.WINDOW),
            "p50_us": as_us(stats.p50_s),
            "p90_us": as_us(stats.p90_s),
            "p99_us": as_us(stats.p99_s),
            "max_us": as_us(stats.max_s),
            "histogram": health.histogram(snap, layout.REC_LATENCY_HIST, layout.REC_LATENCY_SUM_NS),
        }
    return result


def stream_entries(streams: dict, owned: set, graph) -> dict:
    result = {}
    for name, stream in streams.items():
        if stream.closed:
            continue
        damaged = stream.damage()  # checked first: a truncated file reads as zeros, a corrupted count as garbage
        count = stream.count
        result[name] = {
            "damaged": damaged,
            "count": count,
            "frame_id": stream.frame_id if count else None,
            "write_time": stream.write_time,
            "role": graph.stream_role(name),
            "owned": name in owned,
            "storage": stream.storage,
            "gpu_device": stream.gpu_device,
            "cpu_mirror": stream.cpu_mirror,
        }
    return result


def summary(workers: dict, sources: dict, sinks: dict) -> dict:
    """Counts of workers per health state, and of live and failed sources and sinks."""
    count = collections.Counter(w["health"] for w in workers.values())
    live = lambda entries: sum(1 for e in entries.values() if not e.get("last_error") and e.get("alive"))  # noqa: E731
    failed = lambda entries: sum(1 for e in entries.values() if e.get("last_error"))  # noqa: E731
    return {
        "workers_total": len(workers),
        "active_workers": count["active"],
        "idle_workers": count["idle"],
        "paused_workers": count["paused"],
        "failed_workers": count["failed"],
        "stopped_workers": count["stopped"],
        "waiting_workers": count["waiting-input"] + count["starting"],
        "sources_total": len(sources),
        "active_sources": live(sources),
        "failed_sources": failed(sources),
        "sinks_total": len(sinks),
        "active_sinks": live(sinks),
        "failed_sinks": failed(sinks),
    }
