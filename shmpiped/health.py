"""Per-worker metrics and health states, derived from telemetry snapshots.

Pure functions: the manager passes a :class:`~shmpiped.shm.telemetry.RecordSnapshot`
and what it knows about the process; nothing here touches shared memory.

Definitions (the seed's names):

* ``avg_exec_us``: mean exec time over the last 1000 frames; exec time is the
  kernel plus the publication of its outputs, never the wait for input.
* ``jitter_us_rms``: population standard deviation of the same window.
* ``throughput_hz``: ``(n - 1) / (t_last - t_first)`` over the completion
  times of the same window (0 with fewer than two frames).
* ``idle_s``: seconds since the last completed frame (since the worker
  started, before its first frame).
* ``last_metric_age_s``: seconds since the worker last touched its record
  (every frame, and at least every ``read_timeout`` while it waits).

Health, first rule that matches: ``failed`` (a failure is recorded),
``stopped`` (no live process), ``paused`` (the pipeline is paused),
``starting`` (the worker has not reached its loop), ``waiting-input`` (no frame
yet), ``idle`` (running and ``idle_s > max(1 s, 4 x read_timeout)``),
``active``.
"""

from __future__ import annotations

import numpy as np

from .shm import layout

HEALTH_STATES = ("starting", "waiting-input", "active", "idle", "paused", "failed", "stopped")


def exec_statistics(exec_s: np.ndarray) -> dict:
    """avg/jitter/p50/p99 (microseconds) of a window of exec times in seconds."""
    if exec_s.size == 0:
        return {"avg_exec_us": 0.0, "jitter_us_rms": 0.0, "p50_exec_us": 0.0, "p99_exec_us": 0.0}
    p50, p99 = np.percentile(exec_s, [50, 99])
    return {
        "avg_exec_us": float(exec_s.mean() * 1e6),
        "jitter_us_rms": float(exec_s.std() * 1e6),
        "p50_exec_us": float(p50 * 1e6),
        "p99_exec_us": float(p99 * 1e6),
    }


def rolling_throughput(completion_ns: np.ndarray) -> float:
    """(n - 1) / span of the completion times (ns), 0.0 when undefined."""
    if completion_ns.size < 2:
        return 0.0
    span = float(completion_ns[-1] - completion_ns[0]) / 1e9
    return (completion_ns.size - 1) / span if span > 0 else 0.0


def wait_counters(snapshot) -> dict:
    """The counters that move even before a worker's first frame."""
    return {
        "waits": snapshot.field(layout.REC_WAITS),
        "timeouts": snapshot.field(layout.REC_TIMEOUTS),
        "overruns": snapshot.field(layout.REC_OVERRUNS),
        "input_copy": bool(snapshot.field(layout.REC_INPUT_COPY)),
        "frame_sync_skew_events": snapshot.field(layout.REC_SKEW_EVENTS),
        "frame_sync_skipped_generations": snapshot.field(layout.REC_SKIPPED_GENERATIONS),
        "frame_sync_timeouts": snapshot.field(layout.REC_SYNC_TIMEOUTS),
    }


def worker_metrics(snapshot, now_ns: int) -> dict:
    """The per-worker metric fields of status(), from one telemetry snapshot."""
    exec_s = snapshot.exec_window_s()
    frames = snapshot.frames
    started = snapshot.field(layout.REC_STARTED_NS)
    metrics = {
        "frames_processed": frames,
        "last_exec_us": snapshot.field(layout.REC_LAST_EXEC_NS) / 1e3,
        **exec_statistics(exec_s),
        "throughput_hz": rolling_throughput(snapshot.completion_window_ns()),
        "metrics_window": int(exec_s.size),
        "runtime_s": max((now_ns - started) / 1e9, 1e-12) if started else 0.0,
        "last_output_count": snapshot.field(layout.REC_LAST_OUTPUT_COUNT),
        **wait_counters(snapshot),
    }
    metrics["last_exec_ms"] = metrics["last_exec_us"] / 1e3
    metrics["avg_exec_ms"] = metrics["avg_exec_us"] / 1e3
    return metrics


def idle_and_age(snapshot, now_ns: int) -> tuple[float | None, float | None]:
    """(idle_s, last_metric_age_s) from a snapshot; None when unknown."""
    if snapshot is None:
        return None, None
    started = snapshot.field(layout.REC_STARTED_NS)
    last_frame = snapshot.field(layout.REC_LAST_FRAME_NS)
    heartbeat = snapshot.field(layout.REC_HEARTBEAT_NS)
    progress = last_frame or started
    idle = max(0.0, (now_ns - progress) / 1e9) if progress else None
    age = max(0.0, (now_ns - heartbeat) / 1e9) if heartbeat else None
    return idle, age


def derive_health(*, failed: bool, alive: bool, paused: bool, snapshot, running: bool,
                  idle_s: float | None, read_timeout: float) -> str:
    """The health state of one worker, by the rules in this module's docstring."""
    if failed:
        return "failed"
    if not alive:
        return "stopped"
    if paused:
        return "paused"
    if snapshot is None or snapshot.state not in (layout.WS_RUNNING, layout.WS_PAUSED):
        return "starting"
    if snapshot.frames <= 0:
        return "waiting-input"
    if running and idle_s is not None and idle_s > max(1.0, 4.0 * read_timeout):
        return "idle"
    return "active"


def histogram(snapshot, counts_offset: int, sum_offset: int) -> dict:
    """A telemetry histogram: per-bucket ``counts`` (bounds in ``layout.HIST_BOUNDS_S``, then +Inf) and ``sum_s``."""
    return {"counts": snapshot.histogram(counts_offset), "sum_s": snapshot.field(sum_offset) / 1e9}
