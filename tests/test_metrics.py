"""Prometheus exposition of real runtime snapshots: names, types, labels, histograms, promtool."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import shmpiped
from shmpiped import PipelineManager, PipelineState
from shmpiped.service.metrics import (
    CONTENT_TYPE,
    PIPELINE_STATES,
    WORKER_HEALTH_STATES,
    SnapshotCollector,
    exposition,
    render,
)

from .conftest import push, scale_pipeline, segments_of, stream, wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ALLOWED_LABELS = {"pipeline", "worker", "stream", "state"}
BUILD_INFO_LABELS = {"version", "python", "numpy", "cupy"}
WORKER_INFO_LABELS = {"pipeline", "worker", "kind", "cpu", "gpu_uuid"}

DAEMON = {
    "loop_duration_seconds": {"counts": [0, 5, 3, 1, 1], "sum_s": 0.25, "bounds_s": [0.001, 0.01, 0.1, 1.0]},
    "loop_iterations_total": 10,
    "started_at": 1_700_000_000.5,
    "latency_budget_s": 0.0015,
    "target_rate_hz": 200.0,
    "failures_total": 3,
    "restarts_total": 2,
    "last_reload_successful": False,
    "last_reload_success_time": 1_700_000_100.25,
}


def parse(body: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(families: dict, family: str, suffix: str = "", **labels) -> list:
    return [s for s in families[family].samples
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict, family: str, suffix: str = "", **labels) -> float:
    found = samples(families, family, suffix, **labels)
    assert len(found) == 1, (family, suffix, labels, found)
    return found[0].value


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(shmpiped_[a-z_]+)` \|", DOCS.read_text(), flags=re.M))


def exposed_names(families: dict) -> set[str]:
    # the parser names counters without "_total"; the exposition (and the docs) use the sample name
    return {f.name + "_total" if f.type == "counter" else f.name for f in families.values()}


def promtool_check(body: bytes) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (CI installs it)"
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    report = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not report.strip(), report


def assert_well_formed(families: dict) -> None:
    """Finite values, allowed labels, cumulative histograms with +Inf == _count."""
    for family in families.values():
        for sample in family.samples:
            assert math.isfinite(sample.value), sample
            labels = set(sample.labels) - {"le"}
            allowed = {"shmpiped_build_info": BUILD_INFO_LABELS,
                       "shmpiped_worker_info": WORKER_INFO_LABELS}.get(family.name, ALLOWED_LABELS)
            assert labels <= allowed, sample
            if "le" in sample.labels:
                assert family.type == "histogram", sample
        if family.type != "histogram":
            continue
        series: dict[tuple, dict] = {}
        for sample in family.samples:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            entry = series.setdefault(key, {"buckets": []})
            if sample.name.endswith("_bucket"):
                entry["buckets"].append((float(sample.labels["le"]), sample.value))
            else:
                entry[sample.name[len(family.name):]] = sample.value
        assert series, family.name
        for key, entry in series.items():
            buckets = entry["buckets"]
            edges = [le for le, _ in buckets]
            counts = [c for _, c in buckets]
            assert edges == sorted(edges) and len(set(edges)) == len(edges), (family.name, key)
            assert edges[-1] == math.inf, (family.name, key)
            assert all(a <= b for a, b in zip(counts, counts[1:])), (family.name, key, counts)
            assert counts[-1] == entry["_count"], (family.name, key)
            assert entry["_sum"] >= 0


# ---------------------------------------------------------------------- a live pipeline


def rich_config(namespace: str) -> dict:
    """Three workers: pushed frames, a synthetic.array source, a synthetic input; a sink."""
    config = scale_pipeline(namespace)
    config["shared_memory"] += [stream("cam"), stream("cam_out"), stream("syn"), stream("syn_out")]
    config["kernels"] += [
        {"name": "camscale", "kind": "cpu.scale", "input": "cam", "output": "cam_out",
         "parameters": {"factor": 2.0}},
        {"name": "syncopy", "kind": "cpu.copy", "input": "syn", "output": "syn_out"},
    ]
    config["sources"] = [{"name": "camera", "kind": "synthetic.array", "stream": "cam",
                          "parameters": {"pattern": "random", "rate_hz": 200}}]
    config["sinks"] = [{"name": "drain", "kind": "null.sink", "stream": "output"}]
    return config


@pytest.fixture(scope="module")
def live():
    """A running pipeline with every kind of input, frames pushed; its snapshot with a daemon entry."""
    name = f"t{uuid.uuid4().hex[:8]}"
    manager = PipelineManager(rich_config(name))
    try:
        manager.build()
        manager.start()
        manager.start_synthetic_input({"stream_name": "syn", "pattern": "ramp", "rate_hz": 100.0})
        for i in range(30):
            push(manager, "input", np.full(4, i, np.float32))
        wait_for(lambda: manager.status()["workers"]["scale"].get("frames_processed") == 30 and all(
            w.get("frames_processed", 0) >= 5 for w in manager.status()["workers"].values()), timeout=10)
        snapshot = {**manager.runtime_snapshot(), "daemon": DAEMON}
        yield manager, snapshot, render(snapshot)
    finally:
        manager.shutdown(force=True)
        leftover = segments_of(name)
        assert not leftover, f"segments left in /dev/shm: {leftover}"


def test_live_exposition_parses_and_is_well_formed(live):
    _, snapshot, body = live
    families = parse(body)
    assert_well_formed(families)
    assert exposed_names(families) == documented_names()  # every family, all of them documented
    assert value(families, "shmpiped_build_info", version=shmpiped.__version__, numpy=np.__version__) == 1
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_promtool_accepts_the_live_exposition(live):
    promtool_check(live[2])


def test_state_sets_have_exactly_one_series_at_one(live):
    _, snapshot, body = live
    families = parse(body)
    pipeline = snapshot["namespace"]
    assert PIPELINE_STATES == tuple(s.value for s in PipelineState)
    states = {s.labels["state"]: s.value for s in samples(families, "shmpiped_pipeline_state")}
    assert states == {s: float(s == "running") for s in PIPELINE_STATES}
    assert {s.labels["pipeline"] for s in families["shmpiped_pipeline_state"].samples} == {pipeline}
    for worker, entry in snapshot["workers"].items():
        health = {s.labels["state"]: s.value for s in samples(families, "shmpiped_worker_health", worker=worker)}
        assert set(health) == set(WORKER_HEALTH_STATES)
        assert sum(health.values()) == 1 and health[entry["health"]] == 1


def test_values_mirror_the_snapshot(live):
    _, snapshot, body = live
    f = parse(body)
    assert set(snapshot["workers"]) == {"scale", "camscale", "syncopy"}
    for worker, w in snapshot["workers"].items():
        assert value(f, "shmpiped_worker_frames", "_total", worker=worker) == w["frames_processed"]
        assert value(f, "shmpiped_worker_restarts", "_total", worker=worker) == w["restarts"] == 0
        assert value(f, "shmpiped_worker_overruns", "_total", worker=worker) == w["overruns"]
        assert value(f, "shmpiped_worker_avg_exec_seconds", worker=worker) == pytest.approx(w["avg_exec_us"] / 1e6)
        assert value(f, "shmpiped_worker_jitter_rms_seconds", worker=worker) == pytest.approx(
            w["jitter_us_rms"] / 1e6)
        assert value(f, "shmpiped_worker_throughput_hertz", worker=worker) == pytest.approx(w["throughput_hz"])
        assert value(f, "shmpiped_worker_idle_seconds", worker=worker) == pytest.approx(w["idle_s"])
        assert value(f, "shmpiped_worker_last_metric_age_seconds", worker=worker) == pytest.approx(
            w["last_metric_age_s"])
        [info] = samples(f, "shmpiped_worker_info", worker=worker)
        assert info.value == 1
        assert info.labels == {"pipeline": snapshot["namespace"], "worker": worker, "kind": w["kind"],
                               "cpu": "" if w["cpu_slot"] is None else str(w["cpu_slot"]), "gpu_uuid": ""}
        # timestamps, not ages: the snapshot's ages and its timestamps tell the same instant
        taken = time.time()
        last_frame = value(f, "shmpiped_worker_last_frame_timestamp_seconds", worker=worker)
        assert last_frame == w["last_frame_time"] and 0 <= taken - last_frame < 60
        assert last_frame + w["idle_s"] == pytest.approx(
            value(f, "shmpiped_worker_heartbeat_timestamp_seconds", worker=worker) + w["last_metric_age_s"],
            abs=1e-3)
        hist = w["exec_histogram"]
        # the sum of squares gives the exec-time jitter: over these few frames (all still in the window)
        # it equals the rolling window's standard deviation
        assert w["frames_processed"] <= 1000
        count = value(f, "shmpiped_worker_exec_seconds", "_count", worker=worker)
        mean = value(f, "shmpiped_worker_exec_seconds", "_sum", worker=worker) / count
        sumsq = value(f, "shmpiped_worker_exec_seconds_squared", "_total", worker=worker)
        assert sumsq == pytest.approx(hist["sumsq_s2"]) and sumsq > 0
        assert math.sqrt(max(sumsq / count - mean ** 2, 0)) == pytest.approx(w["jitter_us_rms"] / 1e6, rel=1e-3,
                                                                            abs=2e-9)
        assert value(f, "shmpiped_worker_exec_seconds", "_count", worker=worker) == sum(hist["counts"])
        assert value(f, "shmpiped_worker_exec_seconds", "_sum", worker=worker) == pytest.approx(hist["sum_s"])
        buckets = samples(f, "shmpiped_worker_exec_seconds", "_bucket", worker=worker)
        assert len(buckets) == len(snapshot["histogram_bounds_s"]) + 1
        assert [float(b.labels["le"]) for b in buckets[:-1]] == pytest.approx(snapshot["histogram_bounds_s"])
        assert [b.value for b in buckets] == list(np.cumsum(hist["counts"]))
    assert value(f, "shmpiped_worker_frames", "_total", worker="scale") == 30
    for name, s in snapshot["streams"].items():
        assert value(f, "shmpiped_stream_frames", "_total", stream=name) == s["count"]
    assert {s.labels["stream"] for s in samples(f, "shmpiped_end_to_end_latency_seconds", "_count")} == \
        set(snapshot["end_to_end"]) == {"output", "cam_out", "syn_out"}
    for name, e in snapshot["end_to_end"].items():
        assert value(f, "shmpiped_end_to_end_latency_seconds", "_count", stream=name) == e["samples"]
    syn = snapshot["synthetic_sources"]["syn"]
    assert value(f, "shmpiped_synthetic_input_target_rate_hertz", stream="syn") == 100.0
    assert value(f, "shmpiped_synthetic_input_rate_hertz", stream="syn") == pytest.approx(syn["effective_rate_hz"])
    assert value(f, "shmpiped_synthetic_input_frames", "_total", stream="syn") == syn["frames_written"]
    assert value(f, "shmpiped_source_frames", "_total", stream="cam") == snapshot["sources"]["camera"]["frames_written"]
    assert value(f, "shmpiped_source_target_rate_hertz", stream="cam") == 200.0
    # the daemon entry
    assert value(f, "shmpiped_pipeline_failures", "_total") == 3  # the daemon's count wins over len(failures)
    assert value(f, "shmpiped_pipeline_restarts", "_total") == 2
    assert value(f, "shmpiped_pipeline_target_rate_hertz") == 200.0
    assert value(f, "shmpiped_supervisor_loop_iterations", "_total") == 10
    assert "shmpiped_daemon_start_time_seconds" not in f  # process_start_time_seconds (process collector)
    assert "shmpiped_worker_cpu_slot" not in f  # shmpiped_worker_info's cpu label
    assert value(f, "shmpiped_latency_budget_seconds", pipeline=snapshot["namespace"]) == 0.0015
    assert value(f, "shmpiped_config_last_reload_successful") == 0
    assert value(f, "shmpiped_config_last_reload_success_timestamp_seconds") == 1_700_000_100.25
    loop = samples(f, "shmpiped_supervisor_loop_duration_seconds", "_bucket")
    assert [(b.labels["le"], b.value) for b in loop] == [("0.001", 0), ("0.01", 5), ("0.1", 8), ("1.0", 9),
                                                         ("+Inf", 10)]
    assert value(f, "shmpiped_supervisor_loop_duration_seconds", "_sum") == 0.25


def test_collector_builds_fresh_families_at_every_scrape(live):
    manager, _, _ = live
    current = {"snapshot": None}
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: current["snapshot"]))
    assert set(parse(generate_latest(registry))) == {"shmpiped_build_info"}  # no pipeline: build info only
    current["snapshot"] = manager.runtime_snapshot()
    before = value(parse(generate_latest(registry)), "shmpiped_worker_frames", "_total", worker="scale")
    for i in range(5):
        push(manager, "input", np.full(4, i, np.float32))
    # the output is published before the worker's telemetry counts the frame
    wait_for(lambda: manager.status()["workers"]["scale"]["frames_processed"] == before + 5)
    current["snapshot"] = manager.runtime_snapshot()
    families = parse(generate_latest(registry))
    assert value(families, "shmpiped_worker_frames", "_total", worker="scale") == before + 5
    assert "shmpiped_supervisor_loop_iterations" not in families  # no daemon entry: omitted
    assert value(families, "shmpiped_pipeline_failures", "_total") == 0  # len(failures)
    # a worker that leaves the snapshot leaves the exposition
    del current["snapshot"]["workers"]["syncopy"]
    families = parse(generate_latest(registry))
    assert not samples(families, "shmpiped_worker_health", worker="syncopy")
    assert samples(families, "shmpiped_worker_health", worker="scale")


# ---------------------------------------------------------------------- lifecycle edges


def test_fresh_worker_exports_zero_counters_and_no_empty_gauges(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    built = parse(render(m.runtime_snapshot()))
    assert value(built, "shmpiped_pipeline_state", state="built") == 1
    assert "shmpiped_worker_health" not in built
    m.start()
    wait_for(lambda: m.status()["workers"]["scale"]["health"] == "waiting-input", timeout=10)
    body = render(m.runtime_snapshot())
    families = parse(body)
    assert_well_formed(families)
    promtool_check(body)
    assert value(families, "shmpiped_worker_health", worker="scale", state="waiting-input") == 1
    assert value(families, "shmpiped_worker_frames", "_total", worker="scale") == 0
    assert value(families, "shmpiped_worker_overruns", "_total", worker="scale") == 0
    assert value(families, "shmpiped_worker_exec_seconds", "_count", worker="scale") == 0
    assert value(families, "shmpiped_worker_exec_seconds_squared", "_total", worker="scale") == 0
    assert 0 <= time.time() - value(families, "shmpiped_worker_heartbeat_timestamp_seconds", worker="scale") < 60
    for gauge in ("shmpiped_worker_avg_exec_seconds", "shmpiped_worker_jitter_rms_seconds",
                  "shmpiped_worker_throughput_hertz", "shmpiped_worker_last_frame_timestamp_seconds"):
        assert gauge not in families  # no frame yet: omitted, not NaN or 0
    assert value(families, "shmpiped_end_to_end_latency_seconds", "_count", stream="output") == 0
    m.shutdown()
    families = parse(render(m.runtime_snapshot()))
    assert value(families, "shmpiped_pipeline_state", state="stopped") == 1
    assert "shmpiped_worker_health" not in families and "shmpiped_stream_frames" not in families


def test_killed_worker_shows_failed_health_failures_and_restarts(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, read_timeout=0.1))
    m.build()
    m.start()
    push(m, "input", [1, 2, 3, 4])
    os.kill(m.workers["scale"].pid, signal.SIGKILL)
    wait_for(lambda: m.status()["workers"]["scale"]["health"] == "failed", timeout=10)
    body = render(m.runtime_snapshot())
    families = parse(body)
    assert_well_formed(families)
    promtool_check(body)
    assert value(families, "shmpiped_pipeline_state", state="failed") == 1
    assert value(families, "shmpiped_worker_health", worker="scale", state="failed") == 1
    assert sum(s.value for s in samples(families, "shmpiped_worker_health", worker="scale")) == 1
    assert value(families, "shmpiped_pipeline_failures", "_total") == 1
    m.restart()
    wait_for(lambda: m.status()["workers"]["scale"]["health"] in ("waiting-input", "active"), timeout=10)
    push(m, "input", [1, 2, 3, 4])
    deadline = time.monotonic() + 5
    while True:
        families = parse(render(m.runtime_snapshot()))
        if value(families, "shmpiped_worker_health", worker="scale", state="active") == 1:
            break
        assert time.monotonic() < deadline, "worker never became active again"
        time.sleep(0.01)
    assert value(families, "shmpiped_worker_restarts", "_total", worker="scale") == 1
    assert value(families, "shmpiped_worker_frames", "_total", worker="scale") == 1  # a new process counts from 0


# ---------------------------------------------------------------------- tolerance


def test_malformed_or_partial_pieces_only_omit_their_family(live):
    _, snapshot, _ = live
    broken = {**snapshot, "daemon": {
        "loop_duration_seconds": {"counts": [1, 2], "sum_s": 0.1, "bounds_s": [0.001, 0.01]},  # one short
        "loop_iterations_total": "many",
        "target_rate_hz": None,
        "started_at": float("nan"),
        "latency_budget_s": float("nan"),
    }}
    worker = dict(snapshot["workers"]["scale"])
    worker.update(avg_exec_us=None, cpu_slot=None, exec_histogram={"counts": [1, 2, 3], "sum_s": 1.0})
    broken["workers"] = {**snapshot["workers"], "scale": worker}
    broken["synthetic_sources"] = {"syn": {**snapshot["synthetic_sources"]["syn"], "requested_rate_hz": None}}
    body = render(broken)
    families = parse(body)
    assert_well_formed(families)
    promtool_check(body)
    for absent in ("shmpiped_supervisor_loop_duration_seconds", "shmpiped_supervisor_loop_iterations",
                   "shmpiped_pipeline_target_rate_hertz", "shmpiped_latency_budget_seconds",
                   "shmpiped_synthetic_input_target_rate_hertz", "shmpiped_pipeline_restarts",
                   "shmpiped_config_last_reload_successful"):
        assert absent not in families, absent
    assert value(families, "shmpiped_pipeline_failures", "_total") == len(snapshot["failures"])
    assert not samples(families, "shmpiped_worker_exec_seconds", "_count", worker="scale")
    assert samples(families, "shmpiped_worker_exec_seconds", "_count", worker="camscale")
    assert not samples(families, "shmpiped_worker_avg_exec_seconds", worker="scale")
    assert samples(families, "shmpiped_worker_info", worker="scale", cpu="")[0].value == 1  # unpinned: ""
    assert not samples(families, "shmpiped_worker_exec_seconds_squared", "_total", worker="scale")
    assert value(families, "shmpiped_worker_health", worker="scale", state="active") == 1
    assert value(families, "shmpiped_synthetic_input_rate_hertz", stream="syn") > 0
    # None and an empty dict are fine too
    assert set(parse(render(None))) == {"shmpiped_build_info"}
    assert set(parse(render({}))) == {"shmpiped_build_info", "shmpiped_pipeline_state"}


# ---------------------------------------------------------------------- negotiated exposition


def test_exposition_negotiates_openmetrics_and_gzip_like_prometheus_client(live):
    """The headers Prometheus sends get OpenMetrics, gzipped; none get the text format; both carry process_*."""
    import gzip

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    _, snapshot, _ = live
    accept = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
              "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
    body, headers = exposition(snapshot, accept, "gzip")
    headers = dict(headers)
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["shmpiped_worker_frames"].type == "counter"
    assert families["shmpiped_worker_info"].samples[0].value == 1
    started = families["process_start_time_seconds"].samples[0].value  # this test process, as an epoch time
    assert time.time() - 7 * 86400 < started <= time.time()
    assert families["process_resident_memory_bytes"].samples[0].value > 0

    plain, headers = exposition(snapshot, None, None)
    assert dict(headers) == {"Content-Type": CONTENT_TYPE}
    text_families = parse(plain)
    assert_well_formed({k: v for k, v in text_families.items() if not k.startswith("process_")})
    assert {"process_cpu_seconds", "process_open_fds", "process_start_time_seconds"} <= set(text_families)
    promtool_check(plain)
    assert "process_" not in render(snapshot).decode()  # render() stays the snapshot's families only
