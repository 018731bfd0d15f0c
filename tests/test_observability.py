"""Telemetry, health states, status()/runtime_snapshot(), events and benchmarks, for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shmpiped import SyntheticInputConfig
from shmpiped.health import exec_statistics, rolling_throughput, worker_metrics
from shmpiped.kernels.registry import default_registry
from shmpiped.shm import NamespaceBlock

from .conftest import pipeline, push, scale_pipeline, stream, wait_for
from .plugins import SleepyCopy, SlowStartCopy

REGISTRY = default_registry().extended(SlowStartCopy, SleepyCopy)


def health_of(manager, name):
    return manager.status()["workers"][name]["health"]


# ---------------------------------------------------------------------- formulas


def test_exec_statistics_match_the_seed_definitions():
    stats = exec_statistics(np.array([1e-3, 3e-3]))
    assert stats["avg_exec_us"] == pytest.approx(2000.0)
    assert stats["jitter_us_rms"] == pytest.approx(1000.0)  # population standard deviation
    assert stats["p50_exec_us"] == pytest.approx(2000.0)
    assert exec_statistics(np.array([]))["avg_exec_us"] == 0.0


def test_rolling_throughput_is_n_minus_one_over_span():
    assert rolling_throughput(np.array([0, 1_000_000_000, 2_000_000_000])) == pytest.approx(1.0)
    assert rolling_throughput(np.array([5])) == 0.0
    assert rolling_throughput(np.array([7, 7])) == 0.0


def test_metrics_from_a_real_record_with_known_exec_times(namespace):
    block = NamespaceBlock.acquire(namespace)
    try:
        block.reset_record(0, "k", 1)
        record = block.worker_record(0)
        record.start(os.getpid(), None)
        # 1500 frames 1 ms apart; exec times alternate 10 us / 30 us
        for i in range(1500):
            record.record_frame(10_000 if i % 2 == 0 else 30_000, (i + 1) * 1_000_000, i + 1, 0)
        metrics = worker_metrics(block.snapshot(0), 1501 * 1_000_000)
    finally:
        block.close(unlink=True)
    assert metrics["frames_processed"] == 1500
    assert metrics["metrics_window"] == 1000  # the rolling window is the last 1000 frames
    assert metrics["avg_exec_us"] == pytest.approx(20.0)
    assert metrics["jitter_us_rms"] == pytest.approx(10.0)
    assert metrics["throughput_hz"] == pytest.approx(1000.0)
    assert metrics["last_exec_us"] == pytest.approx(30.0)
    assert metrics["p99_exec_us"] == pytest.approx(30.0)


# ---------------------------------------------------------------------- health states, for real


def test_every_health_state_is_reached(namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("output")], [
        {"name": "slow", "kind": "test.slow_start_copy", "input": "input", "output": "output",
         "parameters": {"start_delay_s": 1.5}, "read_timeout": 0.1}])
    m = manager_factory(config, registry=REGISTRY)
    m.build()
    m.start(wait=False)
    assert health_of(m, "slow") == "starting"
    assert m.status()["workers"]["slow"]["idle_s"] is None
    wait_for(lambda: health_of(m, "slow") == "waiting-input", timeout=10)
    assert any(e["type"] == "worker_started" for e in m.events)
    push(m, "input", [1, 2, 3, 4])
    wait_for(lambda: health_of(m, "slow") == "active")
    wait_for(lambda: health_of(m, "slow") == "idle", timeout=5)  # no frame for > max(1 s, 4 x 0.1 s)
    push(m, "input", [1, 2, 3, 4])
    wait_for(lambda: health_of(m, "slow") == "active")
    m.pause()
    assert health_of(m, "slow") == "paused"
    m.resume()
    os.kill(m.workers["slow"].pid, signal.SIGTERM)  # a clean exit nobody asked for
    wait_for(lambda: health_of(m, "slow") == "stopped")
    status = m.status()
    assert status["state"] == "running" and status["summary"]["stopped_workers"] == 1
    m.restart()  # brings back dead workers
    wait_for(lambda: health_of(m, "slow") == "waiting-input", timeout=10)
    os.kill(m.workers["slow"].pid, signal.SIGKILL)
    wait_for(lambda: health_of(m, "slow") == "failed")
    assert m.status()["summary"]["failed_workers"] == 1


def test_hung_worker_shows_a_growing_metric_age(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, read_timeout=0.1))
    m.build()
    m.start()
    time.sleep(0.3)
    assert m.status()["workers"]["scale"]["last_metric_age_s"] < 0.5  # it touches its record while waiting
    os.kill(m.workers["scale"].pid, signal.SIGSTOP)
    try:
        time.sleep(1.0)
        assert m.status()["workers"]["scale"]["last_metric_age_s"] > 0.8
    finally:
        os.kill(m.workers["scale"].pid, signal.SIGCONT)


# ---------------------------------------------------------------------- status payload


STATUS_KEYS = {"state", "namespace", "workers", "sources", "sinks", "failures", "metrics",
               "synthetic_sources", "streams", "end_to_end", "histogram_bounds_s", "placement_policy",
               "summary"}
WORKER_KEYS = {"pid", "kind", "alive", "exitcode", "cpu_slot", "gpu_uuid", "health", "idle_s", "last_metric_age_s",
               "last_frame_time", "heartbeat_time", "restarts",
               "frames_processed", "last_exec_us", "last_exec_ms", "avg_exec_us", "avg_exec_ms",
               "jitter_us_rms", "p50_exec_us", "p99_exec_us", "throughput_hz", "metrics_window", "runtime_s",
               "last_output_count", "overruns", "input_copy", "waits", "timeouts", "frame_sync_skew_events",
               "frame_sync_skipped_generations", "frame_sync_timeouts", "exec_histogram", "realtime", "proc"}
SUMMARY_KEYS = {"workers_total", "active_workers", "idle_workers", "paused_workers", "failed_workers",
                "stopped_workers", "waiting_workers", "sources_total", "active_sources", "failed_sources",
                "sinks_total", "active_sinks", "failed_sinks"}


def test_status_and_snapshot_keys_are_complete_and_json(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    for i in range(30):
        push(m, "input", np.full(4, i))
    wait_for(lambda: m.status()["workers"]["scale"].get("frames_processed") == 30)
    status = m.status()
    assert set(status) == STATUS_KEYS
    assert set(status["workers"]["scale"]) == WORKER_KEYS
    assert set(status["summary"]) == SUMMARY_KEYS
    assert status["streams"]["input"]["count"] == 30 and status["streams"]["input"]["role"] == "source"
    assert status["streams"]["output"]["role"] == "sink"
    histogram = status["workers"]["scale"]["exec_histogram"]
    assert len(histogram["counts"]) == len(status["histogram_bounds_s"]) + 1
    assert sum(histogram["counts"]) == 30 and histogram["sum_s"] > 0
    snapshot = m.runtime_snapshot()
    assert set(snapshot) == STATUS_KEYS | {"timestamp", "graph"}
    assert abs(snapshot["timestamp"] - time.time()) < 5
    assert snapshot["graph"]["sink_streams"] == ("output",)
    json.loads(json.dumps(snapshot))


def test_end_to_end_latency_of_sink_streams(namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("mid"), stream("output")], [
        {"name": "a", "kind": "cpu.copy", "input": "input", "output": "mid"},
        {"name": "b", "kind": "cpu.scale", "input": "mid", "output": "output", "parameters": {"factor": 2}}])
    m = manager_factory(config)
    m.build()
    m.start()
    origins = []
    for i in range(50):
        push(m, "input", np.full(4, i))
        origins.append(m.get_stream("input").origin_ns)
    assert m.get_stream("output").origin_ns == origins[-1]  # carried through both stages
    e2e = wait_for(lambda: (e := m.status()["end_to_end"].get("output")) and e["samples"] == 50 and e)
    assert list(m.status()["end_to_end"]) == ["output"]
    assert e2e["producer"] == "b"
    assert 0 < e2e["p50_us"] <= e2e["p90_us"] <= e2e["p99_us"] <= e2e["max_us"] < 1e6
    assert sum(e2e["histogram"]["counts"]) == 50


def test_overrun_is_counted_and_reported(namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("output")], [
        {"name": "sleepy", "kind": "test.sleepy_copy", "input": "input", "output": "output",
         "parameters": {"sleep_s": 0.05}}])
    m = manager_factory(config, registry=REGISTRY, slots=3)
    m.build()
    m.start()
    writer = m.get_stream("input")
    for i in range(200):  # much faster than the kernel: its input slot is overwritten under it
        writer.write(np.full(4, i))
        time.sleep(0.001)
    worker = wait_for(lambda: (w := m.status()["workers"]["sleepy"]).get("overruns", 0) > 0 and w)
    assert worker["overruns"] >= 1
    assert any(e["type"] == "overrun_burst" and e["kernel"] == "sleepy" for e in m.events)


def test_a_kernel_slower_than_its_input_ring_computes_whole_copies_instead_of_dropping_every_frame(
        namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("output")], [
        {"name": "sleepy", "kind": "test.sleepy_copy", "input": "input", "output": "output",
         "parameters": {"sleep_s": 0.03}}])
    m = manager_factory(config, registry=REGISTRY, slots=3)
    m.build()
    m.start()
    writer, output = m.get_stream("input"), m.get_stream("output")
    before = m.status()["workers"]["sleepy"]
    assert before["input_copy"] is False and before["overruns"] == 0
    seen = []
    for i in range(1, 400):  # 2 ms apart: the 3-slot ring turns over every 6 ms, the kernel takes 30
        writer.write(np.full(4, i))
        time.sleep(0.002)
        if output.count:
            seen.append(output.read())
    worker = m.status()["workers"]["sleepy"]
    assert worker["input_copy"] is True and worker["overruns"] >= 2
    assert worker["frames_processed"] >= 10  # about 800 ms / 30 ms, less the lapped copies
    assert seen and all(len(set(frame.tolist())) == 1 for frame in seen)  # each output is one whole frame


def test_lifecycle_events_are_recorded(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    m.start_synthetic_input(SyntheticInputConfig(stream_name="input", pattern="ramp", rate_hz=200.0))
    m.stop_synthetic_input("input")
    m.pause()
    m.resume()
    m.stop()
    types = [e["type"] for e in m.events]
    for expected in ("state_changed", "worker_spawned", "worker_started", "synthetic_input_started",
                     "synthetic_input_stopped", "worker_stopped"):
        assert expected in types
    states = [(e["previous"], e["state"]) for e in m.events if e["type"] == "state_changed"]
    assert states == [("initialized", "built"), ("built", "running"), ("running", "paused"),
                      ("paused", "running"), ("running", "built")]
    assert all(isinstance(e["time"], float) for e in m.events)


def test_synthetic_input_drives_the_pipeline_and_reports(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, factor=1.0))
    m.build()
    m.start()
    snapshot = m.start_synthetic_input({"stream_name": "input", "pattern": "ramp", "rate_hz": 200.0,
                                        "period": 8.0})
    assert snapshot["alive"] and snapshot["pattern"] == "ramp"
    wait_for(lambda: m.status()["workers"]["scale"].get("frames_processed", 0) >= 20, timeout=10)
    status = m.synthetic_input_status()["input"]
    assert status["frames_written"] >= 20 and status["alive"]
    assert 100 < status["effective_rate_hz"] < 260
    assert m.runtime_snapshot()["graph"]["source_streams"] == ("input",)
    m.stop_synthetic_input("input")
    assert m.synthetic_input_status() == {}


def test_benchmark_reports_throughput_latency_and_workers(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    with pytest.raises(Exception, match="RUNNING"):
        m.benchmark(0.1)
    m.start()
    report = m.benchmark(duration_s=0.6, warmup_s=0.2,
                         source={"stream_name": "input", "pattern": "random", "rate_hz": 300.0})
    assert report["output_stream"] == "output"
    assert report["frames"] > 0 and report["throughput_hz"] > 0
    assert report["inter_arrival_ms"]["p50"] is not None and "p50" in report["latency_ms"]
    assert 0 < report["end_to_end_us"]["p50"] < 1e6
    assert report["workers"]["scale"]["avg_exec_us"] > 0
    assert m.synthetic_input_status() == {}


def test_bench_command_prints_a_report(tmp_path, namespace):
    path = tmp_path / "p.yaml"
    path.write_text(
        f"namespace: {namespace}\n"
        "shared_memory:\n"
        "  - {name: input, shape: [16], dtype: float32}\n"
        "  - {name: output, shape: [16], dtype: float32}\n"
        "kernels:\n"
        "  - {name: copy, kind: cpu.copy, input: input, output: output}\n")
    result = subprocess.run(
        [sys.executable, "-m", "shmpiped.cli", "bench", str(path), "--duration", "1",
         "--source", "input:random:500", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] > 100 and report["end_to_end"]["output"]["p99_us"] > 0
    assert "state transition" not in result.stderr  # the figures are the output: lifecycle logs only when asked
    verbose = subprocess.run(
        [sys.executable, "-m", "shmpiped.cli", "--log-level", "info", "benchmark", str(path), "--duration", "0.5",
         "--source", "input:random:500", "--json"], capture_output=True, text=True, timeout=60)
    assert verbose.returncode == 0 and "state transition: built -> running" in verbose.stderr, verbose.stderr
    bad = subprocess.run([sys.executable, "-m", "shmpiped.cli", "bench", str(path), "--source", "input"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "STREAM:PATTERN[:RATE_HZ]" in bad.stderr


def test_manager_opens_and_closes_viewers(namespace, manager_factory, tmp_path):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    m.start_synthetic_input({"stream_name": "input", "pattern": "sine", "rate_hz": 100.0})
    png = tmp_path / "out.png"
    viewer = m.open_viewer("output", mode="png", png_path=str(png), interval=0.05)
    wait_for(lambda: png.exists() and png.stat().st_size > 0, timeout=15)
    assert viewer.alive
    m.close_viewers()
    assert not viewer.alive
    with pytest.raises(KeyError):
        m.open_viewer("nope")


def test_view_command_snapshots_a_running_stream(namespace, manager_factory, tmp_path):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    push(m, "input", [1, 2, 3, 4])
    png = tmp_path / "view.png"
    result = subprocess.run(
        [sys.executable, "-m", "shmpiped.cli", "view", "output", "--namespace", namespace,
         "--png", str(png), "--frames", "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    missing = subprocess.run([sys.executable, "-m", "shmpiped.cli", "view", "nope", "--namespace", namespace],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_frame_sync_counters_show_before_the_first_frame(namespace, manager_factory):
    config = pipeline(namespace, [stream("c0", (1,)), stream("c1", (1,)), stream("cc", (2,))], [
        {"name": "sync", "kind": "cpu.concatenate", "inputs": ["c0", "c1"], "output": "cc",
         "synchronization": {"mode": "matching_frame_id"}}])
    m = manager_factory(config)
    m.build()
    m.start()
    m.get_stream("c0").write([2], frame_id=2)
    m.get_stream("c1").write([1], frame_id=1)  # never matches: no frame is ever computed
    worker = wait_for(lambda: (w := m.status()["workers"]["sync"]).get("frame_sync_skew_events", 0) >= 1 and w)
    assert "frames_processed" not in worker and worker["health"] == "waiting-input"
