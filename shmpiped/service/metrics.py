"""Prometheus metrics: one custom collector over the pipeline's runtime snapshot.

The collector keeps no state.  Each scrape calls ``get_snapshot()`` (the dict
:meth:`PipelineManager.runtime_snapshot` returns, plus an optional ``daemon``
dict written by the daemon) and builds fresh metric families from it, so a
label value that disappears from the snapshot disappears from the next scrape.

Usage::

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(manager.runtime_snapshot))

or, without a registry, ``render(snapshot) -> bytes`` with ``CONTENT_TYPE``, or
``exposition(snapshot, accept, accept_encoding) -> (body, headers)``, which adds
the process collector and negotiates the format (OpenMetrics or text) and gzip
with prometheus_client's own helpers, as its HTTP server does.

Rules (the catalogue is ``docs/metrics.md``):

* labels are only ``pipeline`` (the snapshot's ``namespace``), ``worker``,
  ``stream``, ``state``, and the info families' own (``shmpiped_build_info``,
  ``shmpiped_worker_info``): identifiers are labels of an info series, never values;
* times are exported as Unix timestamps (``*_timestamp_seconds``), so that
  ``time() - x`` keeps growing when the snapshot stops being refreshed;
* a gauge whose source field is None or absent is omitted (never NaN); a
  live worker that has not completed a frame yet reports 0 frames, 0
  overruns and an all-zero exec histogram, so that ``rate()`` sees its first
  increments; worker health and pipeline state always exist;
* histograms come from per-bucket counts (``len(bounds) + 1`` entries, the
  last one for values above the largest bound) and ``sum_s``; they are
  exported as cumulative ``le`` buckets with ``+Inf == _count``.  A
  histogram whose counts do not match its bounds is omitted;
* the optional ``snapshot["daemon"]`` dict::

    {"loop_duration_seconds": {"counts": [...], "sum_s": float, "bounds_s": [...]},
     "loop_iterations_total": int, "latency_budget_s": float, "target_rate_hz": float | None,
     "failures_total": int, "restarts_total": int, "last_reload_successful": bool,
     "last_reload_success_time": float}

  every missing or malformed piece just omits its family.
"""

from __future__ import annotations

import functools
import gzip
import math
import platform
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..health import HEALTH_STATES

__all__ = ["CONTENT_TYPE", "PIPELINE_STATES", "WORKER_HEALTH_STATES", "SnapshotCollector", "exposition",
           "render"]

#: The Content-Type header of :func:`render`'s output: the classic text format 0.0.4, which every
#: Prometheus reads.  (recent prometheus_client versions label their output 1.0.0, which differs only in how
#: non-ASCII names are escaped; shmpiped's names and label names are plain ASCII.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``PipelineManager.state`` values, in lifecycle order (``PipelineState``; not imported: the
#: manager module is heavy).
PIPELINE_STATES = ("initialized", "built", "running", "paused", "failed", "stopped")
#: Worker health states, in ``shmpiped.health`` order.
WORKER_HEALTH_STATES = HEALTH_STATES

Snapshot = Mapping[str, Any]
#: Linux scheduling policies, as ``shmpiped.realtime.POLICY_NAMES`` names them.
SCHEDULING_POLICIES = ("other", "fifo", "rr", "batch", "idle", "deadline")
#: status() ``proc`` key -> counter family, help (read from /proc/<pid>/stat and /proc/<pid>/status).
_PROC_COUNTERS = (
    ("voluntary_context_switches", "shmpiped_worker_voluntary_context_switches_total",
     "Times the worker's loop gave up the CPU to wait (voluntary context switches of its main thread)."),
    ("involuntary_context_switches", "shmpiped_worker_involuntary_context_switches_total",
     "Times the worker's loop was preempted (involuntary context switches of its main thread)."),
    ("minor_page_faults", "shmpiped_worker_minor_page_faults_total",
     "Page faults of the worker process served without I/O."),
    ("major_page_faults", "shmpiped_worker_major_page_faults_total",
     "Page faults of the worker process that needed I/O (swap, files): a cause of jitter."),
    ("cpu_seconds", "shmpiped_worker_cpu_seconds_total", "CPU time (user + system) of the worker process."),
)


# ---------------------------------------------------------------------- helpers


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, bools, strings, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _micro(value: Any) -> float | None:
    """Microseconds to seconds; None stays None."""
    number = _number(value)
    return None if number is None else number / 1e6


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _le(bound: float) -> str:
    # 1e-6 * 10**(k/4) carries float noise (9.999999999999999e-06); 12 significant digits
    # give stable, readable `le` values without moving any bucket edge measurably.
    return floatToGoString(float(f"{bound:.12g}"))


def _buckets(counts: Any, bounds: Any, sum_s: Any) -> tuple[list[tuple[str, float]], float] | None:
    """Cumulative ``(le, count)`` buckets and the sum, or None when the pieces do not fit."""
    if not isinstance(counts, Sequence) or not isinstance(bounds, Sequence):
        return None
    if isinstance(counts, (str, bytes)) or isinstance(bounds, (str, bytes)):
        return None
    if len(bounds) == 0 or len(counts) != len(bounds) + 1:
        return None
    edges = [_number(b) for b in bounds]
    per_bucket = [_number(c) for c in counts]
    total_sum = _number(sum_s)
    if any(e is None for e in edges) or any(c is None or c < 0 for c in per_bucket) or total_sum is None:
        return None
    if any(lower >= upper for lower, upper in zip(edges, edges[1:])):  # strictly increasing
        return None
    buckets, running = [], 0.0
    for edge, count in zip(edges, per_bucket):
        running += count
        buckets.append((_le(edge), running))
    buckets.append(("+Inf", running + per_bucket[-1]))
    return buckets, total_sum


class _Families:
    """Families created on first use, yielded in creation order; duplicate label sets dropped."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def _get(self, cls, name: str, doc: str, labels: Sequence[str]) -> Metric:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = cls(name, doc, labels=list(labels))
        return family

    def _fresh(self, name: str, values: Sequence[str]) -> bool:
        key = (name, tuple(values))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: Any) -> None:
        number = _number(value)
        if number is not None and self._fresh(name, list(labels.values())):
            self._get(GaugeMetricFamily, name, doc, labels).add_metric(list(labels.values()), number)

    def counter(self, name: str, doc: str, labels: dict[str, str], value: Any) -> None:
        # CounterMetricFamily strips a trailing "_total" and adds it back on exposition.
        number = _number(value)
        if number is not None and number >= 0 and self._fresh(name, list(labels.values())):
            self._get(CounterMetricFamily, name, doc, labels).add_metric(list(labels.values()), number)

    def histogram(self, name: str, doc: str, labels: dict[str, str], counts: Any, bounds: Any,
                  sum_s: Any) -> None:
        built = _buckets(counts, bounds, sum_s)
        if built is not None and self._fresh(name, list(labels.values())):
            buckets, total_sum = built
            family = self._get(HistogramMetricFamily, name, doc, labels)
            family.add_metric(list(labels.values()), buckets, sum_value=total_sum)

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._families.values()))


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """build_info's labels; cupy is looked up in the installed distributions, never imported."""
    cupy = "none"
    module = sys.modules.get("cupy")
    if module is not None:
        cupy = str(getattr(module, "__version__", "none"))
    else:
        for dist in metadata.packages_distributions().get("cupy", []):  # cupy, cupy-cuda12x, ...
            try:
                cupy = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return {"version": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "cupy": cupy}


# ---------------------------------------------------------------------- families


def _build_info(out: _Families, versions: dict[str, str]) -> None:
    out.gauge("shmpiped_build_info", "shmpiped build information; constant 1.", versions, 1)


def _pipeline(out: _Families, snap: Snapshot, pipeline: str, daemon: Mapping) -> None:
    state = snap.get("state")
    for name in PIPELINE_STATES:
        out.gauge("shmpiped_pipeline_state", "Pipeline lifecycle state: 1 for the current state, 0 otherwise.",
                  {"pipeline": pipeline, "state": name}, 1 if state == name else 0)
    failures = _number(daemon.get("failures_total"))
    if failures is None and isinstance(snap.get("failures"), Sequence):
        failures = len(snap["failures"])
    out.counter("shmpiped_pipeline_failures_total", "Component failures recorded for the pipeline.",
                {"pipeline": pipeline}, failures)


def _workers(out: _Families, snap: Snapshot, pipeline: str, bounds: Any) -> None:
    for worker, entry in _mapping(snap.get("workers")).items():
        entry = _mapping(entry)
        labels = {"pipeline": pipeline, "worker": str(worker)}
        health = entry.get("health")
        for name in WORKER_HEALTH_STATES:
            out.gauge("shmpiped_worker_health", "Worker health: 1 for the current state, 0 otherwise.",
                      {**labels, "state": name}, 1 if health == name else 0)
        fresh = entry.get("alive") is True  # a live worker without a completed frame: zeros
        frames = entry.get("frames_processed", 0 if fresh else None)
        out.counter("shmpiped_worker_frames_total",
                    "Frames computed and published by the worker process.", labels, frames)
        hist = _mapping(entry.get("exec_histogram"))
        counts, sum_s = hist.get("counts"), hist.get("sum_s")
        if not hist and fresh and isinstance(bounds, Sequence):
            counts, sum_s = [0] * (len(bounds) + 1), 0.0
        out.histogram("shmpiped_worker_exec_seconds",
                      "Per-frame exec time (kernel plus publication) of the worker process.",
                      labels, counts, bounds, sum_s)
        out.gauge("shmpiped_worker_avg_exec_seconds", "Mean exec time over the last 1000 frames.",
                  labels, _micro(entry.get("avg_exec_us")))
        out.gauge("shmpiped_worker_jitter_rms_seconds",
                  "Standard deviation of the exec time over the last 1000 frames.", labels,
                  _micro(entry.get("jitter_us_rms")))
        out.gauge("shmpiped_worker_throughput_hertz", "Completion rate over the last 1000 frames.",
                  labels, entry.get("throughput_hz"))
        out.counter("shmpiped_worker_exec_seconds_squared_total",
                    "Sum of the squared per-frame exec times (s^2): with _sum and _count of "
                    "shmpiped_worker_exec_seconds, the exec-time jitter over any window.", labels,
                    hist.get("sumsq_s2", 0.0 if fresh and not hist else None))
        out.gauge("shmpiped_worker_last_frame_timestamp_seconds",
                  "When the worker last completed a frame, seconds since the Unix epoch.", labels,
                  entry.get("last_frame_time"))
        out.gauge("shmpiped_worker_heartbeat_timestamp_seconds",
                  "When the worker last updated its telemetry record (frame or wait), seconds since the "
                  "Unix epoch.", labels, entry.get("heartbeat_time"))
        out.gauge("shmpiped_worker_idle_seconds",
                  "Deprecated (use time() - shmpiped_worker_last_frame_timestamp_seconds): seconds since the "
                  "worker last completed a frame, as of the snapshot.", labels, entry.get("idle_s"))
        out.gauge("shmpiped_worker_last_metric_age_seconds",
                  "Deprecated (use time() - shmpiped_worker_heartbeat_timestamp_seconds): seconds since the "
                  "worker last updated its telemetry record, as of the snapshot.", labels,
                  entry.get("last_metric_age_s"))
        out.counter("shmpiped_worker_restarts_total", "Times the worker was respawned.", labels,
                    entry.get("restarts"))
        out.counter("shmpiped_worker_overruns_total",
                    "Frames the worker dropped because the writer lapped it while it read them.", labels,
                    entry.get("overruns", 0 if fresh else None))
        cpu = _number(entry.get("cpu_slot"))
        out.gauge("shmpiped_worker_info",
                  "Worker identity; constant 1: kernel kind, pinned CPU ('' when unpinned) and GPU UUID "
                  "('' on the CPU; joins dcgm-exporter's UUID label).",
                  {**labels, "kind": str(entry.get("kind") or ""),
                   "cpu": "" if cpu is None else str(int(cpu)), "gpu_uuid": str(entry.get("gpu_uuid") or "")}, 1)
        _realtime(out, labels, entry)
    for source, entry in _mapping(snap.get("sources")).items():  # sources that run in a process of their own
        if isinstance(_mapping(entry).get("proc"), Mapping):
            _realtime(out, {"pipeline": pipeline, "worker": str(source)}, _mapping(entry))


def _realtime(out: _Families, labels: dict[str, str], entry: Mapping) -> None:
    """Scheduling as the kernel holds it, and the /proc counters, of one worker (or source) process."""
    proc = _mapping(entry.get("proc"))
    for key, name, doc in _PROC_COUNTERS:
        out.counter(name, doc, labels, proc.get(key))
    effective = _mapping(_mapping(entry.get("realtime")).get("effective"))
    if not effective:
        return
    policy = effective.get("policy")
    out.gauge("shmpiped_worker_realtime_priority",
              "Real-time priority of the worker process as the kernel holds it (0 when not fifo or rr).", labels,
              effective.get("priority") if policy in ("fifo", "rr") else 0)
    out.gauge("shmpiped_worker_memory_locked_bytes", "Memory the worker process has locked (VmLck).", labels,
              effective.get("memory_locked_bytes"))
    for name in SCHEDULING_POLICIES:
        out.gauge("shmpiped_worker_scheduling_policy",
                  "Scheduling policy of the worker process as the kernel holds it: 1 for the current one.",
                  {**labels, "state": name}, 1 if policy == name else 0)


def _streams(out: _Families, snap: Snapshot, pipeline: str, bounds: Any) -> None:
    for stream, entry in _mapping(snap.get("end_to_end")).items():
        hist = _mapping(_mapping(entry).get("histogram"))
        out.histogram("shmpiped_end_to_end_latency_seconds",
                      "Latency from a frame's origin to its publication on this sink stream.",
                      {"pipeline": pipeline, "stream": str(stream)}, hist.get("counts"), bounds,
                      hist.get("sum_s"))
    for stream, entry in _mapping(snap.get("streams")).items():
        out.counter("shmpiped_stream_frames_total", "Publications on the stream.",
                    {"pipeline": pipeline, "stream": str(stream)}, _mapping(entry).get("count"))


def _inputs(out: _Families, snap: Snapshot, pipeline: str) -> None:
    for stream, entry in _mapping(snap.get("synthetic_sources")).items():
        entry = _mapping(entry)
        labels = {"pipeline": pipeline, "stream": str(entry.get("stream_name") or stream)}
        out.gauge("shmpiped_synthetic_input_rate_hertz",
                  "Effective write rate of the synthetic input (lifetime frames / elapsed).", labels,
                  entry.get("effective_rate_hz"))
        out.gauge("shmpiped_synthetic_input_target_rate_hertz", "Requested rate of the synthetic input.",
                  labels, entry.get("requested_rate_hz"))
        out.counter("shmpiped_synthetic_input_frames_total", "Frames written by the synthetic input.",
                    labels, entry.get("frames_written"))
    for entry in _mapping(snap.get("sources")).values():
        entry = _mapping(entry)
        stream = entry.get("stream")
        if not isinstance(stream, str):
            continue
        labels = {"pipeline": pipeline, "stream": stream}
        out.counter("shmpiped_source_frames_total", "Frames (generations) written by the source thread.",
                    labels, entry.get("frames_written"))
        out.gauge("shmpiped_source_target_rate_hertz", "Requested rate of the source.", labels,
                  _mapping(entry.get("plugin_metrics")).get("requested_rate_hz"))


def _daemon(out: _Families, daemon: Mapping, pipeline: str) -> None:
    labels = {"pipeline": pipeline}
    loop = _mapping(daemon.get("loop_duration_seconds"))
    out.histogram("shmpiped_supervisor_loop_duration_seconds", "Duration of one supervisor loop iteration.",
                  labels, loop.get("counts"), loop.get("bounds_s"), loop.get("sum_s"))
    out.counter("shmpiped_supervisor_loop_iterations_total", "Supervisor loop iterations.", labels,
                daemon.get("loop_iterations_total"))
    out.counter("shmpiped_pipeline_restarts_total", "Pipeline restarts performed by the daemon.", labels,
                daemon.get("restarts_total"))
    out.gauge("shmpiped_pipeline_target_rate_hertz", "Configured target loop rate of the pipeline.", labels,
              daemon.get("target_rate_hz"))
    out.gauge("shmpiped_latency_budget_seconds",
              "End-to-end latency budget of the pipeline (`shmpiped run --latency-budget`), read by the "
              "latency alert and panels.", labels, daemon.get("latency_budget_s"))
    successful = daemon.get("last_reload_successful")
    out.gauge("shmpiped_config_last_reload_successful",
              "Whether the last reload of the pipeline file was applied (1) or refused, the running pipeline "
              "unchanged (0).", labels, None if successful is None else int(bool(successful)))
    out.gauge("shmpiped_config_last_reload_success_timestamp_seconds",
              "When the pipeline file was last loaded successfully (start or reload), since the Unix epoch.",
              labels, daemon.get("last_reload_success_time"))


def families(snapshot: Snapshot | None, versions: dict[str, str] | None = None) -> list[Metric]:
    """The metric families of one snapshot (None: build info only)."""
    out = _Families()
    _build_info(out, versions if versions is not None else _versions())
    if isinstance(snapshot, Mapping):
        pipeline = str(snapshot.get("namespace") or "default")
        bounds = snapshot.get("histogram_bounds_s")
        daemon = _mapping(snapshot.get("daemon"))
        _pipeline(out, snapshot, pipeline, daemon)
        _workers(out, snapshot, pipeline, bounds)
        _streams(out, snapshot, pipeline, bounds)
        _inputs(out, snapshot, pipeline)
        _daemon(out, daemon, pipeline)
    return list(out)


# ---------------------------------------------------------------------- public API


class SnapshotCollector:
    """A prometheus_client custom collector: fresh families from ``get_snapshot()`` at every scrape.

    ``get_snapshot`` returns the runtime snapshot dict (optionally with a
    ``daemon`` entry) or None when there is no pipeline; then only
    ``shmpiped_build_info`` is exposed.  An exception it raises propagates
    (the scrape fails and Prometheus records it).
    """

    def __init__(self, get_snapshot: Callable[[], Snapshot | None]) -> None:
        self._get_snapshot = get_snapshot
        self._versions = _versions()  # constant for the life of the process

    def describe(self) -> Iterable[Metric]:
        # Unchecked collector: nothing is known before a snapshot exists.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from families(self._get_snapshot(), self._versions)


def _registry(snapshot: Snapshot | None, process: bool) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    if process:  # process_* of this process (the daemon): CPU, memory, open files, start time
        ProcessCollector(registry=registry)
    return registry


def render(snapshot: Snapshot | None, *, process: bool = False) -> bytes:
    """The Prometheus text exposition (``CONTENT_TYPE``) of one snapshot (``process``: with ``process_*``)."""
    return generate_latest(_registry(snapshot, process))


def negotiate(accept: str | None, accept_encoding: str | None) -> tuple[str, bool]:
    """(Content-Type, gzip) that prometheus_client's exposition picks for these request headers."""
    return choose_encoder(accept or "")[1], gzip_accepted(accept_encoding or "")


def exposition(snapshot: Snapshot | None, accept: str | None = None,
               accept_encoding: str | None = None) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and headers of a /metrics response for these request headers: OpenMetrics when
    ``Accept`` asks for ``application/openmetrics-text``, else the text format; gzip when
    ``Accept-Encoding`` allows it.  The process collector is included."""
    encoder, content_type = choose_encoder(accept or "")
    body = encoder(_registry(snapshot, process=True))
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding or ""):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return body, headers
